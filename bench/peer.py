"""The PyTorch peer of `dino bench`: the official DINO algorithm on timm's VisionTransformer.

The official main_dino.py training loop (the EMA update, the step) on timm's backbone; the
official pieces it uses (DINOHead, DINOLoss, MultiCropWrapper, DataAugmentationDINO,
cosine_scheduler, get_params_groups, clip_gradients, cancel_gradients_last_layer) come from
tools/reference.py, which also writes the parity fixtures; with the settings dino-rs uses
(the presets of trainer/src/config.rs, read from `dino train --print_config`). Every mode prints one JSON line on stdout, like `dino bench`.

    peer.py step    --preset small|imagenet [--batch_size_per_gpu B] [--local_crops_number N]
    peer.py infer   --arch vit_small --patch_size 16 --image_size 224 --batch 1
    peer.py augment --preset imagenet --data_path DIR|IDX-FOLDER --count 200
    peer.py train   --data_path IDX-FOLDER --output_dir DIR --epochs E   (teacher + random init
                    backbones saved as timm-layout safetensors, evaluated by `dino knn/linear`)
    peer.py knn-raw --data_path IDX-FOLDER                                 (raw-pixel k-NN floor)
"""
import argparse
import contextlib
import gzip
import json
import math
import os
import random
import struct
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms

# The official algorithm (DINOHead, DINOLoss, MultiCropWrapper, DataAugmentationDINO, the
# schedules and the optimisation utilities) lives in tools/reference.py, shared with the fixture writers.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import reference  # noqa: E402
from reference import (DINOLoss, DataAugmentationDINO, MultiCropWrapper, cancel_gradients_last_layer,  # noqa: E402
                       clip_gradients, cosine_scheduler, get_params_groups)

ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def backbone(img_size, patch, embed_dim, depth, heads, drop_path=0.0):
    # Official vits: qkv_bias, mlp_ratio 4, LayerNorm eps 1e-6, CLS token output, no classifier;
    # dynamic_img_size interpolates the position embedding for the local crops, as official.
    return VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=heads,
                             mlp_ratio=4, qkv_bias=True, num_classes=0, drop_path_rate=drop_path,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6), dynamic_img_size=True)


def dino_head(in_dim, out_dim, norm_last_layer, hidden_dim, bottleneck_dim):
    """Official DINOHead (the one tools/reference.py writes the parity fixtures with); with
    norm_last_layer the weight-norm magnitude is frozen, as official."""
    head = reference.DINOHead(in_dim, out_dim, 3, hidden_dim, bottleneck_dim)
    if norm_last_layer:
        head.last_layer.weight_g.requires_grad = False
    return head


# ---------------------------------------------------------------------------------------------
# Data: IDX (Fashion-MNIST, as Debian ships it) or a folder of pictures.

def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_split(root, split):
    prefix = "train" if split == "train" else "t10k"
    find = lambda kind: next(os.path.join(root, f) for f in sorted(os.listdir(root))
                             if f.startswith(f"{prefix}-{kind}-idx"))
    return read_idx(find("images")), read_idx(find("labels")).astype(np.int64)


def load_pictures(path, count):
    exts = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(exts)) if os.path.isdir(path) else []
    pics = []
    for f in files:
        try:
            pics.append(Image.open(os.path.join(path, f)).convert("RGB"))
        except Exception:
            pass
    if pics:
        return [pics[i % len(pics)] for i in range(count)]
    images, _ = idx_split(path, "train")
    return [Image.fromarray(images[i]).convert("RGB") for i in range(min(count, len(images)))]


class IdxDataset(torch.utils.data.Dataset):
    def __init__(self, root, split, transform):
        self.images, self.labels = idx_split(root, split)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i]).convert("RGB")), self.labels[i]


# ---------------------------------------------------------------------------------------------

# `dino train --print_config` keys -> the keys above (the same settings under the peer's names).
DINO_KEYS = {"global_crops_size": "global_size", "local_crops_size": "local_size", "patch_size": "patch",
             "embed_dim": "embed_dim", "depth": "depth", "num_heads": "heads", "out_dim": "out_dim",
             "head_hidden_dim": "hidden", "head_bottleneck_dim": "bottleneck", "norm_last_layer": "norm_last_layer",
             "drop_path_rate": "drop_path", "local_crops_number": "local_crops", "batch_size_per_gpu": "batch",
             "momentum_teacher": "momentum", "lr": "lr", "warmup_epochs": "warmup_epochs",
             "weight_decay": "weight_decay", "weight_decay_end": "weight_decay_end", "clip_grad": "clip_grad",
             "freeze_last_layer": "freeze_last_layer", "min_lr": "min_lr", "warmup_teacher_temp": "warmup_teacher_temp",
             "teacher_temp": "teacher_temp", "warmup_teacher_temp_epochs": "warmup_teacher_temp_epochs",
             "global_crops_scale": "global_crops_scale", "local_crops_scale": "local_crops_scale",
             "blur_radius": "blur_radius"}


def dino_command(args):
    """How to run dino-rs: --dino PATH, else the DINO environment variable, else `cargo run`."""
    if getattr(args, "dino", None):
        return [args.dino]
    if os.environ.get("DINO"):
        return [os.environ["DINO"]]
    return ["cargo", "run", "-q", "-p", "dino-trainer", "--"]


def config(args):
    """The settings in the peer's names: from `--dino_config` (the JSON of `dino train
    --print_config`), else from `dino train --preset P --print_config`, so the presets are declared
    once (trainer/src/config.rs); then --batch_size_per_gpu, --local_crops_number, --epochs, --set."""
    if getattr(args, "dino_config", None):
        with open(args.dino_config) as f:
            dino = json.load(f)
    else:
        cmd = dino_command(args) + ["train", "--preset", args.preset, "--print_config"]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)}: {done.stderr.strip()}")
        dino = json.loads(done.stdout)
    cfg = {}
    if dino["arch"] != "custom":
        cfg["embed_dim"], cfg["depth"], cfg["heads"] = ARCHS[dino["arch"]]
    for ours, peer in DINO_KEYS.items():
        if not (ours in ("embed_dim", "depth", "num_heads") and dino["arch"] != "custom"):
            cfg[peer] = tuple(dino[ours]) if isinstance(dino[ours], list) else dino[ours]
    cfg["epochs"] = dino["epochs"]
    for k in ("batch_size_per_gpu", "local_crops_number", "epochs"):
        v = getattr(args, k, None)
        if v is not None:
            cfg[{"batch_size_per_gpu": "batch", "local_crops_number": "local_crops"}.get(k, k)] = v
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        if key not in cfg:
            sys.exit(f"--set {item}: unknown key {key} (one of {', '.join(sorted(cfg))})")
        cfg[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        if isinstance(cfg[key], list):
            cfg[key] = tuple(cfg[key])
    return cfg


def build(cfg):
    student = MultiCropWrapper(
        backbone(cfg["global_size"], cfg["patch"], cfg["embed_dim"], cfg["depth"], cfg["heads"], cfg["drop_path"]),
        dino_head(cfg["embed_dim"], cfg["out_dim"], cfg["norm_last_layer"], cfg["hidden"], cfg["bottleneck"]))
    # Official: the teacher has no drop-path; it starts as the student and never gets gradients.
    teacher = MultiCropWrapper(
        backbone(cfg["global_size"], cfg["patch"], cfg["embed_dim"], cfg["depth"], cfg["heads"]),
        dino_head(cfg["embed_dim"], cfg["out_dim"], cfg["norm_last_layer"], cfg["hidden"], cfg["bottleneck"]))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def autocast(args):
    """bf16 autocast on CUDA for `--dtype bf16` (official DINO's `--use_fp16` autocasts to fp16
    with a GradScaler; bf16 has fp32's range and needs no scaler); a no-op otherwise."""
    enabled = getattr(args, "dtype", "fp32") == "bf16"
    return torch.autocast(getattr(args, "device", "cpu"), dtype=torch.bfloat16, enabled=enabled)


def synchronize(args):
    if getattr(args, "device", "cpu") == "cuda":
        torch.cuda.synchronize()


def train_step(student, teacher, dino_loss, optimizer, globals_, locals_, epoch, lr, wd, m, cfg, amp=None):
    """The body of official train_one_epoch (single process: no all-reduce, no fp16 scaler);
    `amp`: an autocast context for the forward passes and the loss (bf16 on CUDA)."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if i == 0:
            group["weight_decay"] = wd
    with amp if amp is not None else contextlib.nullcontext():
        teacher_output = teacher([globals_])
        student_output = student([globals_] + ([locals_] if locals_ is not None else []))
    teacher_output, student_output = teacher_output.float(), student_output.float()
    with torch.no_grad():  # before the loss moves the centre
        entropy = teacher_entropy(teacher_output, dino_loss.center, dino_loss.teacher_temp_schedule[epoch])
    loss = dino_loss(student_output, teacher_output, epoch)
    if not math.isfinite(loss.item()):
        sys.exit(f"loss is {loss.item()}, stopping training")
    optimizer.zero_grad()
    loss.backward()
    clip_gradients(student, cfg["clip_grad"])
    cancel_gradients_last_layer(epoch, student, cfg["freeze_last_layer"])
    optimizer.step()
    with torch.no_grad():
        for param_q, param_k in zip(student.parameters(), teacher.parameters()):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
    return loss.item(), entropy


def teacher_entropy(teacher_output, center, temp):
    """Mean entropy (nats) of the centred, sharpened teacher distribution: the paper's collapse
    diagnostic (Section 5.3, Fig. 7). The loss is H(P_t, P_s) = H(P_t) + KL(P_t || P_s), so the
    KL divergence of the figure is the loss minus this."""
    p = F.softmax((teacher_output - center) / temp, dim=-1)
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())


def mode_step(args):
    cfg = config(args)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    student, teacher = build(cfg)
    student, teacher = student.to(dev).train(), teacher.to(dev)
    b, g, l, n = cfg["batch"], cfg["global_size"], cfg["local_size"], cfg["local_crops"]
    dino_loss = DINOLoss(cfg["out_dim"], 2 + n, cfg["warmup_teacher_temp"], cfg["teacher_temp"], 0, 1).to(dev)
    optimizer = torch.optim.AdamW(get_params_groups(student))
    globals_ = torch.randn(2 * b, 3, g, g).to(dev)
    locals_ = torch.randn(n * b, 3, l, l).to(dev) if n > 0 else None
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            synchronize(args)
            start = time.perf_counter()
        train_step(student, teacher, dino_loss, optimizer, globals_, locals_, 0, 1e-4, 0.04, cfg["momentum"], cfg,
                   amp=autocast(args))
    synchronize(args)
    secs = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    print(json.dumps({"bench": "step", "impl": "pytorch", "backend": args.device, "dtype": args.dtype,
                      "peak_mib": peak, "threads": torch.get_num_threads(),
                      "batch": b, "global": g, "local": l, "local_crops": n, "out_dim": cfg["out_dim"],
                      "iters": args.iters, "seconds_per_step": secs / args.iters,
                      "images_per_s": b * args.iters / secs}))


def last_selfattention(model, x):
    """CLS features and the last block's softmaxed attention (official get_last_selfattention)."""
    x = model._pos_embed(model.patch_embed(x))
    for blk in model.blocks[:-1]:
        x = blk(x)
    last = model.blocks[-1]
    y = last.norm1(x)
    B, N, C = y.shape
    attn_mod = last.attn
    qkv = attn_mod.qkv(y).reshape(B, N, 3, attn_mod.num_heads, C // attn_mod.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = attn_mod.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    x = x + out
    x = x + last.mlp(last.norm2(x))
    return model.norm(x)[:, 0], attn


def mode_infer(args):
    dim, depth, heads = ARCHS[args.arch]
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = backbone(args.image_size, args.patch_size, dim, depth, heads).eval().to(dev)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size).to(dev)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            with autocast(args):
                cls, attn = last_selfattention(model, x)
            cls.float().cpu().numpy(), attn.float().cpu().numpy()  # read back, as ours does
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    mean = sum(times) / len(times)
    print(json.dumps({"bench": "infer", "impl": "pytorch", "backend": args.device, "dtype": args.dtype,
                      "threads": torch.get_num_threads(),
                      "image_size": args.image_size, "batch": args.batch, "iters": args.iters, "ms_mean": mean,
                      "ms_median": times[len(times) // 2], "images_per_s": args.batch * 1e3 / mean}))


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


def matmul_shapes(text):
    """'197x384x384,197x384x1536' -> [(197, 384, 384), (197, 384, 1536)]."""
    shapes = []
    for part in text.split(","):
        dims = part.split("x")
        if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise argparse.ArgumentTypeError(f"{part!r} is not MxKxN with positive integers, e.g. 197x384x1536")
        shapes.append(tuple(int(d) for d in dims))
    return shapes


def mode_matmul(args):
    """torch.matmul of [m, k] x [k, n] (what nn.Linear's addmm runs), best and median round."""
    torch.manual_seed(0)
    results = []
    shapes = args.shapes if isinstance(args.shapes, list) else matmul_shapes(args.shapes)
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            x @ w
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.iters):
                x @ w
            rounds.append((time.perf_counter() - start) / args.iters)
        rounds.sort()
        gflops = lambda secs: 2 * m * k * n / secs / 1e9
        results.append({"m": m, "k": k, "n": n, "gflops_best": gflops(rounds[0]),
                        "gflops_median": gflops(rounds[len(rounds) // 2])})
    print(json.dumps({"bench": "matmul", "impl": "pytorch", "backend": "cpu", "threads": torch.get_num_threads(),
                      "iters": args.iters, "rounds": args.rounds, "shapes": results}))


def mode_augment(args):
    cfg = config(args)
    torch.set_num_threads(1)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    pictures = load_pictures(args.data_path, args.count)
    aug = DataAugmentationDINO(cfg["global_crops_scale"], cfg["local_crops_scale"], cfg["local_crops"],
                               cfg["global_size"], cfg["local_size"])
    start = time.perf_counter()
    for _ in range(args.repeat):
        for img in pictures:
            aug(img)
    secs = time.perf_counter() - start
    n = len(pictures) * args.repeat
    print(json.dumps({"bench": "augment", "impl": "pytorch", "threads": 1, "pictures": n,
                      "global": cfg["global_size"], "local": cfg["local_size"], "local_crops": cfg["local_crops"],
                      "images_per_s": n / secs}))


def save_backbone(model, path):
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a reader never sees half a file


def eval_transform(size):
    """eval_knn.py: Resize(size * 256/224, bicubic) of the shorter side, CenterCrop(size)."""
    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


@torch.no_grad()
def knn_top1(backbone_model, root, size, k=20, t=0.07, batch=256):
    """Official weighted k-NN (eval_knn.py) of a backbone: bank = the train split, queries = the
    test split of an IDX folder. The same numbers as `dino knn` up to resampling round-off."""
    backbone_model.eval()
    tf = eval_transform(size)

    def features(split):
        images, labels = idx_split(root, split)
        feats = []
        for i in range(0, len(images), batch):
            x = torch.stack([tf(Image.fromarray(a).convert("RGB")) for a in images[i:i + batch]])
            feats.append(F.normalize(backbone_model(x), dim=1))
        return torch.cat(feats), torch.from_numpy(labels)

    train_f, train_l = features("train")
    val_f, val_l = features("val")
    classes, correct = int(train_l.max()) + 1, 0
    for i in range(0, len(val_f), 500):
        d, idx = (val_f[i:i + 500] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), classes).scatter_add_(1, train_l[idx], (d / t).exp())
        correct += (votes.argmax(1) == val_l[i:i + 500]).sum().item()
    backbone_model.train()
    return 100.0 * correct / len(val_f)


def mode_train(args):
    """Official main_dino.train_dino on one process with the dino-rs `small` preset (or --set)."""
    cfg = config(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    aug = DataAugmentationDINO(cfg["global_crops_scale"], cfg["local_crops_scale"], cfg["local_crops"],
                               cfg["global_size"], cfg["local_size"], cfg["blur_radius"])
    dataset = IdxDataset(args.data_path, "train", aug)
    if args.train_count:
        dataset.images, dataset.labels = dataset.images[:args.train_count], dataset.labels[:args.train_count]
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch"], shuffle=True, drop_last=True,
                                         num_workers=args.num_workers, persistent_workers=args.num_workers > 0)
    student, teacher = build(cfg)
    save_backbone(student.backbone, os.path.join(args.output_dir, "random_init.safetensors"))
    n = cfg["local_crops"]
    epochs = cfg["epochs"]
    dino_loss = DINOLoss(cfg["out_dim"], 2 + n, cfg["warmup_teacher_temp"], cfg["teacher_temp"],
                         cfg["warmup_teacher_temp_epochs"], epochs)
    optimizer = torch.optim.AdamW(get_params_groups(student))
    niter = len(loader)
    lr_schedule = cosine_scheduler(cfg["lr"] * cfg["batch"] / 256.0, cfg["min_lr"], epochs, niter,
                                   cfg["warmup_epochs"])
    wd_schedule = cosine_scheduler(cfg["weight_decay"], cfg["weight_decay_end"], epochs, niter)
    momentum_schedule = cosine_scheduler(cfg["momentum"], 1, epochs, niter)
    eval_root = args.eval_path or args.data_path
    knn20_init = None
    if args.eval_every:
        knn20_init = knn_top1(teacher.backbone, eval_root, cfg["global_size"])
        print(json.dumps({"epoch": 0, "knn20": knn20_init}), flush=True)
    start, train_secs = time.perf_counter(), 0.0
    log = []
    for epoch in range(epochs):
        losses, entropies = [], []
        t0 = time.perf_counter()
        for it, (crops, _) in enumerate(loader):
            gi = epoch * niter + it
            globals_ = torch.cat(crops[:2])
            locals_ = torch.cat(crops[2:]) if n > 0 else None
            loss, entropy = train_step(student, teacher, dino_loss, optimizer, globals_, locals_, epoch,
                                       lr_schedule[gi], wd_schedule[gi], momentum_schedule[gi], cfg)
            losses.append(loss)
            entropies.append(entropy)
        train_secs += time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "iters": (epoch + 1) * niter, "loss": float(np.mean(losses)),
               "teacher_entropy": float(np.mean(entropies)),
               "kl": float(np.mean(losses) - np.mean(entropies)), "train_s": round(train_secs, 1)}
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == epochs):
            rec["knn20"] = knn_top1(teacher.backbone, eval_root, cfg["global_size"])
            # The teacher so far, so that a long run stopped early still leaves a model to score.
            save_backbone(teacher.backbone, os.path.join(args.output_dir, "teacher.safetensors"))
        log.append(rec)
        print(json.dumps(rec), flush=True)
    secs = time.perf_counter() - start
    save_backbone(teacher.backbone, os.path.join(args.output_dir, "teacher.safetensors"))
    with open(os.path.join(args.output_dir, "peer_log.json"), "w") as f:
        json.dump({"config": cfg, "log": log}, f)
    print(json.dumps({"bench": "train", "impl": "pytorch", "threads": torch.get_num_threads(),
                      "images": len(dataset), "epochs": epochs, "seconds": secs, "train_seconds": train_secs,
                      "epoch_losses": [r["loss"] for r in log], "log": log, "knn20_init": knn20_init,
                      "images_per_s": len(dataset) // cfg["batch"] * cfg["batch"] * epochs / train_secs}))


def mode_knn_raw(args):
    """Official weighted k-NN (eval_knn.knn_classifier) on L2-normalised raw pixels: the floor."""
    train, train_labels = idx_split(args.data_path, "train")
    val, val_labels = idx_split(args.data_path, "val")
    feat = lambda a: F.normalize(torch.from_numpy(a.reshape(len(a), -1).astype(np.float32)), dim=1)
    train_f, val_f = feat(train), feat(val)
    train_l, val_l = torch.from_numpy(train_labels), torch.from_numpy(val_labels)
    k, t, classes = args.k, 0.07, int(train_l.max()) + 1
    correct = 0
    for i in range(0, len(val_f), 500):
        sim = val_f[i:i + 500] @ train_f.T
        d, idx = sim.topk(k, dim=1)
        cand = train_l[idx]
        w = (d / t).exp()
        votes = torch.zeros(len(cand), classes).scatter_add_(1, cand, w)
        correct += (votes.argmax(1) == val_l[i:i + 500]).sum().item()
    print(json.dumps({"bench": "knn-raw", "k": k, "top1": 100.0 * correct / len(val_f)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("step", "augment", "train"):
        s = sub.add_parser(name)
        s.add_argument("--preset", default={"augment": "imagenet"}.get(name, "small"), choices=["small", "tiny-imagenet", "imagenet"],
                       help="a dino-rs preset, read from `dino train --preset P --print_config`")
        s.add_argument("--batch_size_per_gpu", type=int)
        s.add_argument("--local_crops_number", type=int)
        s.add_argument("--seed", type=int, default=0)
    for s in (sub.choices["step"],):
        s.add_argument("--iters", type=int, default=10)
        s.add_argument("--warmup", type=int, default=2)
    a = sub.choices["augment"]
    a.add_argument("--data_path", required=True)
    a.add_argument("--count", type=int, default=200)
    a.add_argument("--repeat", type=int, default=1)
    t = sub.choices["train"]
    t.add_argument("--data_path", required=True)
    t.add_argument("--output_dir", required=True)
    t.add_argument("--epochs", type=int, default=None, help="default: the --dino_config's or the preset's")
    t.add_argument("--num_workers", type=int, default=2)
    t.add_argument("--dino_config", help="the JSON of `dino train --print_config`: the same settings as dino-rs")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set out_dim=256 --set lr=0.005 (JSON values)")
    t.add_argument("--eval_every", type=int, default=0, help="k-NN@20 of the teacher every N epochs")
    t.add_argument("--eval_path", help="IDX folder for the k-NN (default: --data_path)")
    t.add_argument("--train_count", type=int, default=0, help="train on the first N pictures only")
    i = sub.add_parser("infer")
    i.add_argument("--arch", default="vit_small", choices=ARCHS)
    i.add_argument("--patch_size", type=int, default=16)
    i.add_argument("--image_size", type=int, default=224)
    i.add_argument("--batch", type=int, default=1)
    i.add_argument("--iters", type=int, default=10)
    i.add_argument("--warmup", type=int, default=2)
    m = sub.add_parser("matmul")
    m.add_argument("--shapes", type=matmul_shapes, default="197x384x384,197x384x1536,197x1536x384",
                   help="comma-separated MxKxN")
    m.add_argument("--iters", type=positive, default=20)
    m.add_argument("--rounds", type=positive, default=15)
    k = sub.add_parser("knn-raw")
    k.add_argument("--data_path", required=True)
    k.add_argument("--k", type=int, default=20)
    for s in (sub.choices["step"], sub.choices["infer"]):
        s.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the peer runs (cuda: bench/gpu.sh)")
        s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                       help="bf16: torch.autocast(bfloat16) around the forward passes (CUDA); fp32 weights, loss and centre")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--dino", help="the dino binary whose presets to read (default: $DINO, else `cargo run`)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"step": mode_step, "infer": mode_infer, "augment": mode_augment, "train": mode_train,
     "knn-raw": mode_knn_raw, "matmul": mode_matmul}[args.mode](args)


if __name__ == "__main__":
    main()
