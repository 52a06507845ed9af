#!/usr/bin/env python3
"""Independent PyTorch reference for the Rust DINO implementation (Caron et al. 2021).

Writes checkpoints in the official DINO layouts plus reference outputs, so Rust
tests can check loading and numerical parity.  Backbones are timm ViTs created
with random weights (``pretrained=False``; no network access), float32, eval mode,
``torch.no_grad``; every random draw comes from a fixed seed, so two runs produce
identical tensors.

Commands (from the repository root):

    python3 tools/reference.py small --out tests/fixtures    # committed fixtures
    python3 tools/reference.py full  --out /tmp/parity-full  # full size, not committed

Models
    small: tiny16 = vit_small_patch16_224(embed_dim=96, depth=2, num_heads=3)
           tiny8  = vit_small_patch8_224 (embed_dim=96, depth=2, num_heads=3)
           DINO head hidden 128, bottleneck 64, out_dim 256
    full:  vits16 = vit_small_patch16_224, vits8 = vit_small_patch8_224
           (embed 384, depth 12, heads 6); head 2048/256, out_dim 4096

Files per model NAME
    NAME_full.pth          torch.save'd official training checkpoint: 'student'
                           (module.backbone.* / module.head.*), 'teacher'
                           (backbone.* / head.*), 'optimizer' {}, 'epoch' 3,
                           'args' argparse.Namespace, 'dino_loss' {'center'}.
                           student = teacher + 0.01*randn (every float tensor).
    NAME_pretrain.pth      teacher backbone state dict, plain timm/DINO keys
                           (layout of the released dino_deitsmall16_pretrain.pth).
    NAME_timm.safetensors  the same teacher backbone state dict as safetensors.
    NAME_ref.safetensors   teacher outputs (float32) for input_224 [2,3,224,224]
                           and input_480x320 [1,3,480,320]; per size tag S:
                             cls_S      [B, D]          final-norm CLS token
                             head_S     [B, out_dim]    DINO head(cls_S)
                             attn_cls_S [B, h, N+1]     CLS query row of the last
                                                        block's softmaxed attention
                                                        (= attn_S[:, :, 0, :])
                             attn_S     [B, h, N+1, N+1] full last-block attention
                             inter_S    [2, B, N+1, D]  get_intermediate_layers(n=2)
                             mask_S     [h, H/P, W/P]   visualize_attention.py
                                                        threshold mask (0.6), item 0
                           attn_S and inter_S are only written when they have at
                           most --max-full-elems elements (small-mode default
                           2**18, full mode: no limit) to keep the committed
                           fixtures small; metadata 'stored_keys' lists the
                           tensors present and 'omitted_keys' the ones left out.
                           Metadata also holds the model/head configuration
                           (embed_dim, depth, num_heads, patch_size, img_size,
                           out_dim, hidden_dim, bottleneck_dim, nlayers, ...).
Small mode only
    losses.safetensors     official DINOLoss fixture (forward, center update,
                           gradient w.r.t. the student output, temp schedule).
    schedules.safetensors  official utils.cosine_scheduler fixtures (float64).

Notes on the forward pass (this reproduces official
``vision_transformer.VisionTransformer``, not timm's forward):
  * tokens = patch_embed.proj(img).flatten(2).transpose(1, 2), CLS prepended,
    plus the position embedding interpolated the official way (bicubic
    F.interpolate with scale_factor=((H/P+0.1)/sqrt(N), (W/P+0.1)/sqrt(N)),
    align_corners=False, recompute_scale_factor unset, so the *given* scale
    factor (not out_size/in_size) maps output to input coordinates:
    src = (dst + 0.5) / scale - 0.5; bicubic A = -0.75, border clamped);
  * timm blocks (same math as DINO's Block), then model.norm;
  * the last block's attention is recomputed by hand from blk.attn.qkv,
    (q @ k^T) * head_dim**-0.5, softmax.
"""

import argparse
import json
import math
import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import ImageFilter, ImageOps

import timm
import safetensors
from safetensors.torch import save_file, load_file

torch.set_num_threads(2)

# --------------------------------------------------------------------------- configs

SMALL_MODELS = [
    dict(name="tiny16", timm_name="vit_small_patch16_224", patch_size=16, embed_dim=96,
         depth=2, num_heads=3, img_size=224, out_dim=256, hidden_dim=128,
         bottleneck_dim=64, nlayers=3, seed=1016),
    dict(name="tiny8", timm_name="vit_small_patch8_224", patch_size=8, embed_dim=96,
         depth=2, num_heads=3, img_size=224, out_dim=256, hidden_dim=128,
         bottleneck_dim=64, nlayers=3, seed=1008),
]

FULL_MODELS = [
    dict(name="vits16", timm_name="vit_small_patch16_224", patch_size=16, embed_dim=384,
         depth=12, num_heads=6, img_size=224, out_dim=4096, hidden_dim=2048,
         bottleneck_dim=256, nlayers=3, seed=2016),
    dict(name="vits8", timm_name="vit_small_patch8_224", patch_size=8, embed_dim=384,
         depth=12, num_heads=6, img_size=224, out_dim=4096, hidden_dim=2048,
         bottleneck_dim=256, nlayers=3, seed=2008),
]

INPUTS = [("224", (2, 3, 224, 224)), ("480x320", (1, 3, 480, 320))]  # (tag, B,C,H,W)
N_INTER = 2           # get_intermediate_layers(x, n=2)
MASK_THRESHOLD = 0.6  # visualize_attention.py default
STUDENT_NOISE = 0.01
QK_SCALE = 3.0       # multiplies the q/k rows of every qkv weight (see build_model)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def save_safetensors(tensors, path, metadata=None):
    """safetensors.torch.save_file, then rewrite the JSON header with sorted keys.

    save_file serialises the metadata from a Rust HashMap, whose order changes
    from run to run; sorting the header makes the files byte-identical across
    runs (tensor data and offsets are untouched).
    """
    save_file(tensors, path, metadata=metadata)
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    os.chmod(path, 0o644)


# --------------------------------------------------------------------------- DINO head

class WeightNormLinear(nn.Module):
    """Linear(bias=False) under the legacy ``torch.nn.utils.weight_norm`` (dim=0).

    Written out explicitly so the state dict keys are exactly the official
    ``weight_g`` [out, 1] and ``weight_v`` [out, in] whatever the torch version
    (recent torch deprecates weight_norm in favour of parametrizations, which use
    different key names).  weight = weight_g * weight_v / ||weight_v||_row.
    """

    def __init__(self, in_dim, out_dim):
        super().__init__()
        lin = nn.Linear(in_dim, out_dim, bias=False)  # default (kaiming-uniform) init, as official
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.weight_v = nn.Parameter(lin.weight.detach().clone())

    def weight(self):
        return self.weight_g * self.weight_v / self.weight_v.norm(p=2, dim=1, keepdim=True)

    def forward(self, x):
        return F.linear(x, self.weight())


class DINOHead(nn.Module):
    """Official main_dino/vision_transformer.py DINOHead (use_bn=False)."""

    def __init__(self, in_dim, out_dim, nlayers=3, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def check_weight_norm_layout(head):
    """Cross-check WeightNormLinear against torch.nn.utils.weight_norm when available."""
    wn = getattr(torch.nn.utils, "weight_norm", None)
    if wn is None:
        return "torch.nn.utils.weight_norm unavailable; explicit weight_g/weight_v used"
    import warnings
    ll = head.last_layer
    out_dim, in_dim = ll.weight_v.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = wn(nn.Linear(in_dim, out_dim, bias=False))
    sd = ref.state_dict()
    assert list(sd.keys()) == ["weight_g", "weight_v"], list(sd.keys())
    assert sd["weight_g"].shape == ll.weight_g.shape and sd["weight_v"].shape == ll.weight_v.shape
    ref.load_state_dict({"weight_g": ll.weight_g.detach(), "weight_v": ll.weight_v.detach()})
    x = torch.randn(5, in_dim, generator=gen(0))
    with torch.no_grad():
        assert torch.allclose(ref(x), ll(x), atol=1e-6, rtol=1e-5)
    return "checked against torch.nn.utils.weight_norm"


# --------------------------------------------------------------------------- backbone

def interpolate_pos_encoding(pos_embed, h, w, patch):
    """Official DINO interpolation; h, w = image height/width in pixels."""
    npatch = (h // patch) * (w // patch)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    h0 = h // patch
    w0 = w // patch
    h0, w0 = h0 + 0.1, w0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(N), w0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(h0) == patch_pos_embed.shape[-2] and int(w0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def prepare_tokens(model, img, patch):
    B, _, H, W = img.shape
    x = model.patch_embed.proj(img).flatten(2).transpose(1, 2)
    x = torch.cat((model.cls_token.expand(B, -1, -1), x), dim=1)
    return x + interpolate_pos_encoding(model.pos_embed, H, W, patch)


def manual_attention(blk, x):
    """Softmaxed attention of ``blk`` for block input x (official get_last_selfattention)."""
    a = blk.attn
    y = blk.norm1(x)
    B, N, C = y.shape
    nh = a.num_heads
    hd = C // nh
    qkv = a.qkv(y).reshape(B, N, 3, nh, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * hd ** -0.5
    attn = attn.softmax(dim=-1)
    # consistency check against timm's (possibly fused) attention module
    out = a.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(out, a(y), atol=1e-5, rtol=1e-4)
    return attn


def backbone_forward(model, img, patch, n_inter=N_INTER):
    x = prepare_tokens(model, img, patch)
    nb = len(model.blocks)
    inter, attn = [], None
    for i, blk in enumerate(model.blocks):
        if i == nb - 1:
            attn = manual_attention(blk, x)
        x = blk(x)
        if nb - i <= n_inter:
            inter.append(model.norm(x))
    out = model.norm(x)
    return out, attn, torch.stack(inter, dim=0)


def threshold_mask(attn, h_featmap, w_featmap, threshold=MASK_THRESHOLD):
    """visualize_attention.py threshold mask of batch item 0."""
    nh = attn.shape[1]
    attentions = attn[0, :, 0, 1:].reshape(nh, -1)
    val, idx = torch.sort(attentions)
    val /= torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - threshold)
    idx2 = torch.argsort(idx)
    for head in range(nh):
        th_attn[head] = th_attn[head][idx2[head]]
    return th_attn.reshape(nh, h_featmap, w_featmap).float()


def check_model_structure(model):
    ident = (nn.Identity, nn.Dropout)
    for name in ("patch_drop", "norm_pre", "fc_norm", "head", "pos_drop"):
        m = getattr(model, name, None)
        assert m is None or isinstance(m, ident), (name, m)
    assert isinstance(model.patch_embed.norm, nn.Identity)
    assert getattr(model, "reg_token", None) is None
    for blk in model.blocks:
        for name in ("ls1", "ls2", "drop_path1", "drop_path2"):
            assert isinstance(getattr(blk, name), nn.Identity), name
        for name in ("q_norm", "k_norm", "norm"):
            m = getattr(blk.attn, name, None)
            assert m is None or isinstance(m, nn.Identity), name
        assert getattr(blk.attn, "gate", None) is None
        assert blk.attn.qkv.bias is not None
        assert abs(blk.norm1.eps - 1e-6) < 1e-12 and isinstance(blk.mlp.act, nn.GELU)
        assert blk.mlp.act.approximate == "none"


# --------------------------------------------------------------------------- checkpoint args

def official_args(cfg, small):
    """argparse.Namespace like main_dino.py's (after init_distributed_mode)."""
    a = argparse.Namespace(
        arch="vit_small", patch_size=cfg["patch_size"], out_dim=cfg["out_dim"],
        norm_last_layer=True, momentum_teacher=0.996, use_bn_in_head=False,
        warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
        use_fp16=False, weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0,
        batch_size_per_gpu=64, epochs=100, freeze_last_layer=1, lr=0.0005,
        warmup_epochs=10, min_lr=1e-06, optimizer="adamw", drop_path_rate=0.1,
        global_crops_scale=(0.4, 1.0), local_crops_number=8, local_crops_scale=(0.05, 0.4),
        data_path="/path/to/imagenet/train/", output_dir=".", saveckp_freq=20, seed=0,
        num_workers=10, dist_url="env://", local_rank=0, rank=0, world_size=1, gpu=0,
    )
    if small:
        # Not in official checkpoints: the reduced models are not a real 'vit_small',
        # so record their true size (a loader may use these when present).
        a.embed_dim = cfg["embed_dim"]
        a.depth = cfg["depth"]
        a.num_heads = cfg["num_heads"]
    return a


# --------------------------------------------------------------------------- per-model

def contiguous_sd(sd, prefix=""):
    return {prefix + k: v.detach().clone().contiguous() for k, v in sd.items()}


def build_model(cfg):
    seed = cfg["seed"]
    torch.manual_seed(seed)  # timm's own random init draws from the global RNG
    model = timm.create_model(
        cfg["timm_name"], pretrained=False, num_classes=0,
        embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        img_size=cfg["img_size"],
    ).float().eval()
    check_model_structure(model)
    # timm init leaves biases at 0, LayerNorm at (1, 0) and cls_token ~1e-6; perturb
    # them so a loader that drops / swaps any of those tensors is caught.
    g = gen(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.cls_token.copy_(0.02 * torch.randn(model.cls_token.shape, generator=g))
        # With timm's std-0.02 init the attention is almost uniform (every weight
        # within ~15% of 1/N).  Scale the q and k projections so the softmax is
        # peaked, the attention check is sensitive and the threshold mask meaningful.
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * cfg["embed_dim"]] *= QK_SCALE

    torch.manual_seed(seed + 2)
    head = DINOHead(cfg["embed_dim"], cfg["out_dim"], nlayers=cfg["nlayers"],
                    hidden_dim=cfg["hidden_dim"], bottleneck_dim=cfg["bottleneck_dim"]).float().eval()
    with torch.no_grad():
        head.last_layer.weight_g.copy_(0.5 + torch.rand(head.last_layer.weight_g.shape, generator=gen(seed + 3)))
    return model, head


def write_model(cfg, out_dir, small, max_full_elems):
    name, P = cfg["name"], cfg["patch_size"]
    model, head = build_model(cfg)
    wn_note = check_weight_norm_layout(head)

    bb_sd = contiguous_sd(model.state_dict())
    head_sd = contiguous_sd(head.state_dict())
    assert list(head_sd)[-2:] == ["last_layer.weight_g", "last_layer.weight_v"], list(head_sd)
    assert head_sd["last_layer.weight_g"].shape == (cfg["out_dim"], 1)
    assert head_sd["last_layer.weight_v"].shape == (cfg["out_dim"], cfg["bottleneck_dim"])

    teacher = {**contiguous_sd(bb_sd, "backbone."), **contiguous_sd(head_sd, "head.")}
    g = gen(cfg["seed"] + 4)
    student = {}
    for k, v in teacher.items():
        s = v.clone()
        if s.is_floating_point():
            s += STUDENT_NOISE * torch.randn(s.shape, generator=g)
        student["module." + k] = s.contiguous()

    ckpt = {
        "student": student,
        "teacher": teacher,
        "optimizer": {},
        "epoch": 3,
        "args": official_args(cfg, small),
        "dino_loss": {"center": torch.zeros(1, cfg["out_dim"])},
    }
    files = []
    p = os.path.join(out_dir, f"{name}_full.pth")
    torch.save(ckpt, p)
    files.append(p)
    p = os.path.join(out_dir, f"{name}_pretrain.pth")
    torch.save(contiguous_sd(bb_sd), p)
    files.append(p)
    p = os.path.join(out_dir, f"{name}_timm.safetensors")
    save_safetensors(contiguous_sd(bb_sd), p)
    files.append(p)

    # ---- reference outputs of the teacher
    ref, omitted = {}, []
    g = gen(cfg["seed"] + 5)
    with torch.no_grad():
        for tag, shape in INPUTS:
            img = torch.randn(shape, generator=g, dtype=torch.float32)
            B, _, H, W = shape
            out, attn, inter = backbone_forward(model, img, P)
            cls = out[:, 0]
            assert torch.equal(inter[-1], out)
            if H == W == cfg["img_size"]:
                # no interpolation needed: must agree with timm's own forward
                tf = model.forward_features(img)
                assert torch.allclose(tf, out, atol=1e-4, rtol=1e-4), (tf - out).abs().max()
            hd = head(cls)
            ref[f"input_{tag}"] = img
            ref[f"cls_{tag}"] = cls
            ref[f"head_{tag}"] = hd
            ref[f"attn_cls_{tag}"] = attn[:, :, 0, :]
            for key, t in ((f"attn_{tag}", attn), (f"inter_{tag}", inter)):
                if max_full_elems is None or t.numel() <= max_full_elems:
                    ref[key] = t
                else:
                    omitted.append(f"{key}{list(t.shape)}")
            ref[f"mask_{tag}"] = threshold_mask(attn, H // P, W // P)
    ref = {k: v.detach().float().contiguous() for k, v in ref.items()}
    meta = {
        "model": name, "timm_name": cfg["timm_name"],
        "embed_dim": cfg["embed_dim"], "depth": cfg["depth"], "num_heads": cfg["num_heads"],
        "patch_size": P, "img_size": cfg["img_size"], "out_dim": cfg["out_dim"],
        "hidden_dim": cfg["hidden_dim"], "bottleneck_dim": cfg["bottleneck_dim"],
        "nlayers": cfg["nlayers"], "mlp_ratio": 4, "layer_norm_eps": 1e-6,
        "n_inter": N_INTER, "mask_threshold": MASK_THRESHOLD, "seed": cfg["seed"],
        "qk_init_scale": QK_SCALE, "student_noise": STUDENT_NOISE,
        "norm_last_layer": True, "weight_norm": wn_note,
        "stored_keys": ",".join(sorted(ref)), "omitted_keys": ",".join(omitted),
        "torch_version": torch.__version__, "timm_version": timm.__version__,
        "source": "tools/reference.py",
    }
    p = os.path.join(out_dir, f"{name}_ref.safetensors")
    save_safetensors(ref, p, metadata={k: str(v) for k, v in sorted(meta.items())})
    files.append(p)

    verify_model_files(cfg, out_dir, ref)
    return files


def verify_model_files(cfg, out_dir, ref):
    """Reload what was written and check it is self-consistent."""
    name = cfg["name"]
    ck = torch.load(os.path.join(out_dir, f"{name}_full.pth"), map_location="cpu", weights_only=False)
    pre = torch.load(os.path.join(out_dir, f"{name}_pretrain.pth"), map_location="cpu", weights_only=True)
    tsf = load_file(os.path.join(out_dir, f"{name}_timm.safetensors"))
    assert set(pre) == set(tsf)
    for k in pre:
        assert torch.equal(pre[k], tsf[k])
        assert torch.equal(pre[k], ck["teacher"]["backbone." + k])
        assert not torch.equal(pre[k], ck["student"]["module.backbone." + k])
    assert set(ck["student"]) == {"module." + k for k in ck["teacher"]}
    # rebuild from the loaded state dicts and reproduce the reference outputs
    model = timm.create_model(cfg["timm_name"], pretrained=False, num_classes=0,
                              embed_dim=cfg["embed_dim"], depth=cfg["depth"],
                              num_heads=cfg["num_heads"], img_size=cfg["img_size"]).eval()
    model.load_state_dict(pre, strict=True)
    head = DINOHead(cfg["embed_dim"], cfg["out_dim"], cfg["nlayers"], cfg["hidden_dim"],
                    cfg["bottleneck_dim"]).eval()
    head.load_state_dict({k[len("head."):]: v for k, v in ck["teacher"].items() if k.startswith("head.")},
                         strict=True)
    with torch.no_grad():
        out, _, _ = backbone_forward(model, ref["input_224"], cfg["patch_size"])
        assert torch.equal(out[:, 0], ref["cls_224"])
        assert torch.equal(head(out[:, 0]), ref["head_224"])


# --------------------------------------------------------------------------- loss / schedules

def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


class DINOLoss(nn.Module):
    """Official main_dino.py DINOLoss (single process: no all_reduce)."""

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp,
                 warmup_teacher_temp_epochs, nepochs, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
        ))

    def forward(self, student_output, teacher_output, epoch):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def write_losses(out_dir, seed=4242):
    batch, ncrops, out_dim = 4, 6, 32
    wtt, tt, wtte, nepochs, epoch = 0.04, 0.07, 3, 10, 1
    g = gen(seed)
    student_output = (torch.randn(batch * ncrops, out_dim, generator=g) * 3).float()
    teacher_output = (torch.randn(batch * 2, out_dim, generator=g) * 3).float()
    center_in = (torch.randn(1, out_dim, generator=g) * 0.5).float()

    crit = DINOLoss(out_dim, ncrops, wtt, tt, wtte, nepochs)
    crit.center = center_in.clone()
    s = student_output.clone().requires_grad_(True)
    loss = crit(s, teacher_output, epoch)
    loss.backward()
    temp = float(crit.teacher_temp_schedule[epoch])
    tensors = {
        "student_output": student_output,
        "teacher_output": teacher_output,
        "center_in": center_in,
        "loss": loss.detach().reshape(1).float(),
        "center_out": crit.center.detach().float(),
        "student_grad": s.grad.detach().float(),
        "teacher_temp_schedule": torch.from_numpy(np.asarray(crit.teacher_temp_schedule, dtype=np.float64)),
    }
    meta = {
        "batch": batch, "ncrops": ncrops, "n_global_crops": 2, "out_dim": out_dim,
        "student_temp": 0.1, "center_momentum": 0.9,
        "warmup_teacher_temp": wtt, "teacher_temp": tt, "warmup_teacher_temp_epochs": wtte,
        "nepochs": nepochs, "epoch": epoch, "temp": repr(temp),
        "dtypes": "teacher_temp_schedule float64, all others float32",
        "student_layout": "crop-major: rows [c*batch:(c+1)*batch] are crop c (crops 0,1 global)",
        "torch_version": torch.__version__, "source": "tools/reference.py",
    }
    p = os.path.join(out_dir, "losses.safetensors")
    save_safetensors({k: v.contiguous() for k, v in tensors.items()}, p,
              metadata={k: str(v) for k, v in sorted(meta.items())})
    return [p]


def write_schedules(out_dir):
    specs = {
        "lr": dict(base_value=5e-4 * 64 / 256, final_value=1e-6, epochs=10, niter_per_ep=7, warmup_epochs=2),
        "wd": dict(base_value=0.04, final_value=0.4, epochs=10, niter_per_ep=7),
        "momentum": dict(base_value=0.996, final_value=1, epochs=10, niter_per_ep=7),
    }
    tensors = {k: torch.from_numpy(np.asarray(cosine_scheduler(**v), dtype=np.float64)) for k, v in specs.items()}
    meta = {"dtype": "float64", "function": "official utils.cosine_scheduler", "source": "tools/reference.py"}
    for k, v in specs.items():
        meta[k] = json.dumps(v, sort_keys=True)
    p = os.path.join(out_dir, "schedules.safetensors")
    save_safetensors(tensors, p, metadata=meta)
    return [p]


# --------------------------------------------------------------------------- training: crops, wrapper, optimisation
# Official main_dino.py (DataAugmentationDINO, the MultiCropWrapper of utils.py) and utils.py
# (GaussianBlur, Solarization, get_params_groups, clip_gradients, cancel_gradients_last_layer);
# bench/peer.py trains with them, tools/make_test_data.py writes the AdamW fixture with them.

class GaussianBlur:
    """utils.GaussianBlur: PIL's Gaussian blur with probability p, radius uniform in [min, max]."""

    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if random.random() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """utils.Solarization: PIL's solarize (threshold 128) with probability p."""

    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    """main_dino.DataAugmentationDINO: 2 global crops (blur p 1.0; blur 0.1 + solarize 0.2) and
    N local crops (blur 0.5), each flipped, colour-jittered and grey-scaled at random, then
    ToTensor + ImageNet Normalize. Crop sizes and the blur radii are parameters here (official:
    224 / 96 px, 0.1-2.0 px) so that small pictures can use the same recipe."""

    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number, global_size=224, local_size=96,
                 blur_radius=(0.1, 2.0)):
        from torchvision import transforms
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                                   p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        bicubic = transforms.InterpolationMode.BICUBIC
        self.global_transfo1 = transforms.Compose([
            transforms.RandomResizedCrop(global_size, scale=global_crops_scale, interpolation=bicubic),
            flip_and_color_jitter, GaussianBlur(1.0, *blur_radius), normalize])
        self.global_transfo2 = transforms.Compose([
            transforms.RandomResizedCrop(global_size, scale=global_crops_scale, interpolation=bicubic),
            flip_and_color_jitter, GaussianBlur(0.1, *blur_radius), Solarization(0.2), normalize])
        self.local_crops_number = local_crops_number
        self.local_transfo = transforms.Compose([
            transforms.RandomResizedCrop(local_size, scale=local_crops_scale, interpolation=bicubic),
            flip_and_color_jitter, GaussianBlur(0.5, *blur_radius), normalize])

    def __call__(self, image):
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops += [self.local_transfo(image) for _ in range(self.local_crops_number)]
        return crops


class MultiCropWrapper(nn.Module):
    """utils.MultiCropWrapper: the backbone once per resolution group (the 2 global crops, then
    the local crops), the head once on all CLS features, concatenated in crop order."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, groups):
        return self.head(torch.cat([self.backbone(x) for x in groups]))


def get_params_groups(model):
    """utils.get_params_groups: biases and 1-D parameters (norms) without weight decay."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.}]


def clip_gradients(model, clip):
    """utils.clip_gradients: per-tensor gradient norm clipping; returns the norms before clipping."""
    norms = []
    for name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    """utils.cancel_gradients_last_layer: no update of the head's last layer in the first epochs."""
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


# --------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", default="small", choices=["small", "full"])
    ap.add_argument("--out", default=None, help="output directory (default: tests/fixtures for small)")
    ap.add_argument("--max-full-elems", type=int, default=None,
                    help="store attn_S / inter_S only if they have at most this many elements "
                         "(default: 2**18 in small mode, unlimited in full mode; <0 = unlimited)")
    args = ap.parse_args(argv)

    small = args.mode == "small"
    out_dir = args.out or ("tests/fixtures" if small else "/tmp/parity-full")
    max_full = args.max_full_elems
    if max_full is None:
        max_full = 2 ** 18 if small else None
    elif max_full < 0:
        max_full = None
    os.makedirs(out_dir, exist_ok=True)

    files = []
    for cfg in (SMALL_MODELS if small else FULL_MODELS):
        files += write_model(cfg, out_dir, small, max_full)
    if small:
        files += write_losses(out_dir)
        files += write_schedules(out_dir)

    print(f"tools/reference.py {args.mode}: torch {torch.__version__}, timm {timm.__version__}, "
          f"safetensors {safetensors.__version__}, numpy {np.__version__}")
    total = 0
    for p in files:
        sz = os.path.getsize(p)
        total += sz
        print(f"  {p:<50s} {sz / 1e6:8.3f} MB")
    print(f"  {'total':<50s} {total / 1e6:8.3f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
