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
    python3 tools/reference.py small --only dinov2           # only the v2* fixtures
    python3 tools/reference.py small --only video            # video_ref.safetensors: official
                                                             # video_generation.py maps (tiny16)

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

DINOv2 (small mode; section "DINOv2 backbone" below)
    An independent transcription of facebookresearch/dinov2 (DinoVisionTransformer of
    dinov2/models/vision_transformer.py, dinov2/layers/*), inference only, checked each time
    against timm (timm's checkpoint_filter_fn, strict load, forward_features at 98: CLS,
    register and patch tokens within 1e-5) and, when transformers is installed, against
    Dinov2WithRegistersModel / Dinov2Model (from_pretrained of the HF file, strict; last_hidden_state
    at 98 within 1e-5).  Weights and inputs are numpy PCG64 draws (machine independent); the
    outputs are computed on one thread.  Models (patch 14, embed 128, 2 heads, native 98 = 7x7):
      v2reg4   depth 3, 4 registers, LayerScale, GELU MLP (ratio 4)
      v2swiglu depth 4, no registers, LayerScale, SwiGLUFFNFused (hidden 344: w12 [688,128],
               w3 [128,344]), block_chunks=2
    Files
      v2reg4_official.pth      torch.save'd official state dict (hub layout): cls_token,
                               pos_embed [1,50,D], register_tokens [1,4,D], mask_token [1,D],
                               patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,
                               norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*, norm.*
      v2reg4_timm.safetensors  timm layout (timm checkpoint_filter_fn): reg_token, cls_token
                               = cls_token + pos_embed[:, 0], pos_embed [1,49,D] (patches only,
                               no_embed_class), no mask_token
      v2reg4_hf.safetensors    HF Dinov2WithRegistersModel file layout (conversion scripts;
                               what save_pretrained writes, no "dinov2." prefix):
                               embeddings.{cls_token,mask_token,position_embeddings,
                               register_tokens,patch_embeddings.projection.*},
                               encoder.layer.N.{norm1,norm2,layer_scale1.lambda1,
                               layer_scale2.lambda1,attention.attention.{query,key,value}.*,
                               attention.output.dense.*,mlp.fc1.*,mlp.fc2.*}, layernorm.*
      v2swiglu_chunked.pth     official state dict in the block_chunks=2 layout
                               (blocks.0.0.*, blocks.0.1.*, blocks.1.2.*, blocks.1.3.*;
                               mlp.w12.*, mlp.w3.*), incl. mask_token, no register_tokens
      v2swiglu_hf.safetensors  HF Dinov2Model (use_swiglu_ffn) file layout: as above with
                               mlp.weights_in.* [688,..] / mlp.weights_out.*
      NAME_ref.safetensors     float32; per size S in 98, 224, 252x336 (H x W):
                                 input_S [1,3,H,W], cls_S [1,D] (x_norm_clstoken),
                                 patch_S [1,Npatch,D] (x_norm_patchtokens, row-major grid),
                                 attn_cls_S [1,heads,T] (CLS row of the LAST block's softmaxed
                                 attention, T = 1+R+Npatch, order CLS, registers, patches),
                                 v2reg4 only: reg_S [1,4,D] (x_norm_regtokens);
                               attn_cls_224_layer{i} for every block i;
                               metadata 'config' (JSON: embed_dim, depth, num_heads, patch_size,
                               num_register_tokens, ffn, img_size, mlp_ratio, init_values,
                               interpolate_offset 0.1, interpolate_antialias false, ...),
                               'checks' (measured cross-check differences), 'stored_keys'.
      v2reg4_ref extras        pos_252x336 [1,1+432,D]: the interpolated pos_embed (official
                               offset 0.1, no antialias; registers not included);
                               aa_{cls,patch,reg,attn_cls}_S and aa_pos_252x336 for S in 224,
                               252x336: the same with interpolate_offset=0, antialias=True,
                               which is what the hub *_reg models (dinov2_vits14_reg, ...),
                               HF Dinov2WithRegisters and timm dynamic_img_size use (checked
                               against timm and HF within 1e-5);
                               views, numpy float64 then float32: pca_joint_components [3,D],
                               pca_joint_mean [D], pca_joint_proj_{224,252x336} [N,3],
                               pca_joint_rgb_{224,252x336} [N,3] (fit on the patch tokens of
                               both pictures concatenated; components = Vt[:3] with the largest
                               |entry| of each row made positive; rgb = per-component min-max
                               over both pictures), pca_224_components / pca_224_mean /
                               pca_rgb_224 [256,3] (fit on the 224 picture alone);
                               sim_224_r3_c5 [16,16] and sim_224_r3_c5_to_252x336 [18,24]:
                               cosine similarity of patch (row 3, col 5) of patch_224 with
                               every patch of the 224 / 252x336 picture.

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
from PIL import Image, ImageFilter, ImageOps

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


# --------------------------------------------------------------------------- DINOv2 backbone
# An independent transcription of the official facebookresearch/dinov2 backbone, inference path
# only (dinov2/models/vision_transformer.py DinoVisionTransformer and dinov2/layers/*, checked
# against the repository at commit b8931f7, 2025-08-14), cross-checked inside write_dinov2_model
# against timm's VisionTransformer (timm's own checkpoint_filter_fn) and against transformers'
# Dinov2Model / Dinov2WithRegistersModel (the key mapping of transformers' conversion scripts).

V2_SMALL_MODELS = [
    # hub-style: 4 registers, GELU MLP, LayerScale (dinov2_vits14_reg4 in miniature)
    dict(name="v2reg4", patch_size=14, embed_dim=128, depth=2, num_heads=2, mlp_ratio=4,
         num_register_tokens=4, ffn="mlp", img_size=98, init_values=1.0, block_chunks=0,
         seed=3014),
    # ViT-g style: SwiGLUFFNFused, no registers; written in the block-chunked training layout
    dict(name="v2swiglu", patch_size=14, embed_dim=128, depth=2, num_heads=2, mlp_ratio=4,
         num_register_tokens=0, ffn="swiglufused", img_size=98, init_values=1.0, block_chunks=2,
         seed=3015),
]
V2_RESIZED_INPUTS = [("224", (1, 3, 224, 224)), ("252x336", (1, 3, 252, 336))]


def v2_inputs(cfg):
    """(tag, shape) of the reference inputs: the native size (no resizing), then two others."""
    n = cfg["img_size"]
    return [(str(n), (1, 3, n, n))] + V2_RESIZED_INPUTS


# Full-size check (`tools/reference.py full`, then `tools/parity-full.sh`): the hub's
# dinov2_vits14_reg4 shape with random weights.
V2_FULL_MODELS = [
    dict(name="vits14reg4", patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
         num_register_tokens=4, ffn="mlp", img_size=518, init_values=1.0, block_chunks=0,
         seed=4014),
]
V2_INTERPOLATE_OFFSET = 0.1      # the hub's settings for the models without registers
V2_INTERPOLATE_ANTIALIAS = False
V2_AA_INTERPOLATE_OFFSET = 0.0   # the hub's settings for the *_reg models (and HF / timm dynamic)
V2_AA_INTERPOLATE_ANTIALIAS = True
V2_WEIGHT_STD = 0.5              # Linear / Conv weights ~ N(0, (V2_WEIGHT_STD / sqrt(fan_in))^2)
V2_POS_STD = 0.5                 # pos_embed ~ N(0, V2_POS_STD^2): interpolation errors show
V2_TOKEN_STD = 0.5               # cls_token, register_tokens, mask_token
V2_PERTURB_STD = 0.05            # biases, LayerNorm weight - 1 and bias
V2_SIM_QUERY = (3, 5)            # (row, col) of the query patch of the similarity views
V2_CHECK_TOL = 1e-5              # timm / HF cross-checks (max abs difference)


class V2PatchEmbed(nn.Module):
    """dinov2/layers/patch_embed.py PatchEmbed (norm_layer=None, flatten_embedding=True)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x):
        _, _, H, W = x.shape
        assert H % self.patch_size[0] == 0 and W % self.patch_size[1] == 0, (H, W)
        return self.proj(x).flatten(2).transpose(1, 2)  # B HW C


class V2Attention(nn.Module):
    """dinov2/layers/attention.py Attention (MemEffAttention without xFormers falls back to it):
    fused qkv Linear with bias, scale head_dim**-0.5, scaled_dot_product_attention, proj."""

    def __init__(self, dim, num_heads, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = torch.unbind(qkv, 2)
        q, k, v = [t.transpose(1, 2) for t in (q, k, v)]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0)
        x = x.transpose(1, 2).contiguous().view(B, N, C)
        return self.proj(x)


class V2LayerScale(nn.Module):
    """dinov2/layers/layer_scale.py LayerScale: x * gamma (key 'gamma' [dim])."""

    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x):
        return x * self.gamma


class V2Mlp(nn.Module):
    """dinov2/layers/mlp.py Mlp: fc1 - GELU (exact, erf) - fc2."""

    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def v2_swiglu_hidden(embed_dim, mlp_ratio):
    """SwiGLUFFNFused hidden size: Block passes int(dim * mlp_ratio), the layer keeps 2/3 of it
    rounded up to a multiple of 8 (128 * 4 -> 344; ViT-g 1536 * 4 -> 4096)."""
    return (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


class V2SwiGLUFFNFused(nn.Module):
    """dinov2/layers/swiglu_ffn.py SwiGLUFFNFused (= SwiGLUFFN without xFormers; xFormers' packed
    SwiGLU has the same w12 / w3 keys): x1, x2 = w12(x).chunk(2, -1); w3(silu(x1) * x2)."""

    def __init__(self, in_features, hidden_features):
        super().__init__()
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden_features)
        self.w3 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class V2Block(nn.Module):
    """dinov2/layers/block.py Block (NestedTensorBlock on a plain tensor), eval branch:
    x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x))); LayerNorm eps 1e-6."""

    def __init__(self, dim, num_heads, mlp_ratio, init_values, ffn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = V2Attention(dim, num_heads)
        self.ls1 = V2LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        ffn_layer = {"mlp": V2Mlp, "swiglufused": V2SwiGLUFFNFused, "swiglu": V2SwiGLUFFNFused}[ffn]
        self.mlp = ffn_layer(dim, int(dim * mlp_ratio))
        self.ls2 = V2LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class V2BlockChunk(nn.ModuleList):
    """dinov2/models/vision_transformer.py BlockChunk."""

    def forward(self, x):
        for b in self:
            x = b(x)
        return x


class DinoV2Backbone(nn.Module):
    """dinov2/models/vision_transformer.py DinoVisionTransformer, inference path.

    Parameters are registered in the official order, so state_dict() has the official keys in
    the official order: cls_token, pos_embed, [register_tokens], mask_token, patch_embed.proj.*,
    blocks.*, norm.*.  block_chunks > 0 builds the official chunked layout (BlockChunk i holds
    nn.Identity() placeholders then blocks i*chunk .. i*chunk+chunk-1, so block b of chunk c has
    the keys blocks.c.b.*); block_chunks = 0 is the plain layout of the hub checkpoints.
    """

    def __init__(self, img_size=224, patch_size=14, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, init_values=None, ffn_layer="mlp", block_chunks=0,
                 num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1):
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset

        self.patch_embed = V2PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        blocks_list = [V2Block(embed_dim, num_heads, mlp_ratio, init_values, ffn_layer) for _ in range(depth)]
        if block_chunks > 0:
            self.chunked_blocks = True
            chunked_blocks = []
            chunksize = depth // block_chunks
            for i in range(0, depth, chunksize):
                chunked_blocks.append([nn.Identity()] * i + blocks_list[i: i + chunksize])
            self.blocks = nn.ModuleList([V2BlockChunk(p) for p in chunked_blocks])
        else:
            self.chunked_blocks = False
            self.blocks = nn.ModuleList(blocks_list)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x, w, h):
        """Official DinoVisionTransformer.interpolate_pos_encoding, verbatim.

        NB the official names: prepare_tokens_with_masks does ``B, nc, w, h = x.shape``, so
        ``w`` is the image HEIGHT (dim 2) and ``h`` the width (dim 3); scale_factor =
        ((H/P + offset)/M, (W/P + offset)/M) on (rows, cols).  With an offset the op is given
        the scale factor (not out/in sizes) and maps dst -> src = (dst + 0.5) / scale - 0.5;
        with offset 0 it is given size=(H/P, W/P) (src = (dst + 0.5) * M / n - 0.5).
        antialias=True selects torch's separable anti-aliased bicubic (cubic coefficient
        a = -0.5, weights normalised per output pixel) instead of the plain A = -0.75 kernel,
        which changes the result also when upsampling.
        """
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_size
        h0 = h // self.patch_size
        M = int(math.sqrt(N))
        assert N == M * M
        kwargs = {}
        if self.interpolate_offset:
            sx = float(w0 + self.interpolate_offset) / M
            sy = float(h0 + self.interpolate_offset) / M
            kwargs["scale_factor"] = (sx, sy)
        else:
            kwargs["size"] = (w0, h0)
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens_with_masks(self, x, masks=None):
        """Official: patch embed, CLS prepended, position embedding added, THEN the registers
        inserted after CLS (they get no position); mask_token only used with masks."""
        B, nc, w, h = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x, masks=None):
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1: self.num_register_tokens + 1],
            "x_norm_patchtokens": x_norm[:, self.num_register_tokens + 1:],
            "x_prenorm": x,
            "masks": masks,
        }

    def flat_blocks(self):
        """The blocks in order, skipping the chunks' nn.Identity placeholders."""
        if not self.chunked_blocks:
            return list(self.blocks)
        return [b for chunk in self.blocks for b in chunk if not isinstance(b, nn.Identity)]


def build_dinov2(cfg, block_chunks=None, interpolate_offset=V2_INTERPOLATE_OFFSET,
                 interpolate_antialias=V2_INTERPOLATE_ANTIALIAS):
    return DinoV2Backbone(
        img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"],
        depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
        init_values=cfg["init_values"], ffn_layer=cfg["ffn"],
        block_chunks=cfg["block_chunks"] if block_chunks is None else block_chunks,
        num_register_tokens=cfg["num_register_tokens"],
        interpolate_antialias=interpolate_antialias, interpolate_offset=interpolate_offset,
    ).float().eval()


def v2_randn(rng, shape, std=1.0):
    """numpy PCG64 normal draws (float64 -> float32): unlike torch's CPU samplers (trunc_normal_
    goes through erfinv) these are the same bits on every machine."""
    return torch.from_numpy((rng.standard_normal(tuple(shape)) * std).astype(np.float32))


def init_dinov2_weights(model, cfg):
    """Random weights, perturbed so a loader that drops or swaps any tensor fails.

    Linear / Conv2d weights N(0, (V2_WEIGHT_STD/sqrt(fan_in))^2), the q and k rows of every qkv
    weight times QK_SCALE (peaked attention); biases and LayerNorm biases 0.05*randn, LayerNorm
    weights 1 + 0.05*randn; LayerScale gammas uniform in [0.5, 1.5] per channel; cls_token,
    register_tokens, mask_token 0.5*randn; pos_embed V2_POS_STD*randn.
    """
    rng = np.random.Generator(np.random.PCG64(cfg["seed"]))
    D = cfg["embed_dim"]
    norm_names = (".norm1.", ".norm2.")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                v = torch.from_numpy(rng.uniform(0.5, 1.5, size=tuple(p.shape)).astype(np.float32))
            elif name in ("cls_token", "register_tokens", "mask_token"):
                v = v2_randn(rng, p.shape, V2_TOKEN_STD)
            elif name == "pos_embed":
                v = v2_randn(rng, p.shape, V2_POS_STD)
            elif p.ndim == 1:
                is_norm_weight = name.endswith(".weight") and (
                    any(s in name for s in norm_names) or name == "norm.weight")
                v = v2_randn(rng, p.shape, V2_PERTURB_STD) + (1.0 if is_norm_weight else 0.0)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                v = v2_randn(rng, p.shape, V2_WEIGHT_STD / math.sqrt(fan_in))
                if name.endswith("attn.qkv.weight"):
                    v[: 2 * D] *= QK_SCALE
            p.copy_(v)


def to_block_chunks(sd, depth, block_chunks):
    """Plain official state dict (blocks.i.*) -> the block_chunks layout (blocks.c.i.*, c = the
    chunk holding global block i: chunk c has blocks c*chunk .. c*chunk+chunk-1, chunk =
    depth // block_chunks, as in DinoVisionTransformer.__init__).  Key order is kept."""
    chunksize = depth // block_chunks
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            i = int(i)
            assert 0 <= i < depth, k
            k = f"blocks.{i // chunksize}.{i}.{rest}"
        out[k] = v
    return out


def v2_forward(model, img, all_attn=True):
    """forward_features, plus the softmaxed attention of every block (manual_attention: by hand
    from qkv; token order CLS, registers, patches).  Returns (features dict, [attn per block])."""
    x = model.prepare_tokens_with_masks(img)
    attns = []
    for blk in model.flat_blocks():
        if all_attn:
            attns.append(manual_attention(blk, x))
        x = blk(x)
    x_norm = model.norm(x)
    R = model.num_register_tokens
    out = {"x_norm_clstoken": x_norm[:, 0], "x_norm_regtokens": x_norm[:, 1: R + 1],
           "x_norm_patchtokens": x_norm[:, R + 1:], "x_prenorm": x, "x_norm": x_norm}
    ff = model.forward_features(img)
    assert torch.equal(ff["x_prenorm"], x)
    return out, attns


# --- layout conversions --------------------------------------------------------------------------

def v2_hf_rename_keys(depth, swiglu, registers):
    """create_rename_keys of transformers' conversion scripts
    src/transformers/models/dinov2/convert_dinov2_to_hf.py and
    src/transformers/models/dinov2_with_registers/convert_dinov2_with_registers_to_hf.py
    (identical but for the register_tokens entry).  Reproduced here: the transformers 5.x wheel
    does not ship the convert_*.py scripts."""
    rk = [("cls_token", "embeddings.cls_token"), ("mask_token", "embeddings.mask_token"),
          ("pos_embed", "embeddings.position_embeddings")]
    if registers:
        rk.append(("register_tokens", "embeddings.register_tokens"))
    rk += [("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
           ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias")]
    for i in range(depth):
        for n in ("norm1", "norm2"):
            for s in ("weight", "bias"):
                rk.append((f"blocks.{i}.{n}.{s}", f"encoder.layer.{i}.{n}.{s}"))
        for n in (("w12", "w3") if swiglu else ("fc1", "fc2")):
            for s in ("weight", "bias"):
                rk.append((f"blocks.{i}.mlp.{n}.{s}", f"encoder.layer.{i}.mlp.{n}.{s}"))
        rk.append((f"blocks.{i}.ls1.gamma", f"encoder.layer.{i}.layer_scale1.lambda1"))
        rk.append((f"blocks.{i}.ls2.gamma", f"encoder.layer.{i}.layer_scale2.lambda1"))
        rk.append((f"blocks.{i}.attn.proj.weight", f"encoder.layer.{i}.attention.output.dense.weight"))
        rk.append((f"blocks.{i}.attn.proj.bias", f"encoder.layer.{i}.attention.output.dense.bias"))
    rk += [("norm.weight", "layernorm.weight"), ("norm.bias", "layernorm.bias")]
    return rk


def v2_official_to_hf(sd, cfg):
    """The conversion scripts' convert_*_checkpoint on a plain official state dict:
    create_rename_keys + rename_key, read_in_q_k_v (qkv rows [0:D] query, [D:2D] key, [2D:3D]
    value), then 'w12' -> 'weights_in', 'w3' -> 'weights_out'.  The result is the layout of the
    HF hub files (model.safetensors of facebook/dinov2-*), which transformers 5.x still writes
    with save_pretrained although its modules now name the tensors q_proj/k_proj/v_proj/o_proj
    and gate_proj/up_proj/down_proj (it renames and splits on load)."""
    D, depth = cfg["embed_dim"], cfg["depth"]
    state_dict = dict(sd)
    for src, dest in v2_hf_rename_keys(depth, cfg["ffn"] != "mlp", cfg["num_register_tokens"] > 0):
        state_dict[dest] = state_dict.pop(src)
    for i in range(depth):
        w = state_dict.pop(f"blocks.{i}.attn.qkv.weight")
        b = state_dict.pop(f"blocks.{i}.attn.qkv.bias")
        pre = f"encoder.layer.{i}.attention.attention"
        state_dict[f"{pre}.query.weight"] = w[:D, :]
        state_dict[f"{pre}.query.bias"] = b[:D]
        state_dict[f"{pre}.key.weight"] = w[D:2 * D, :]
        state_dict[f"{pre}.key.bias"] = b[D:2 * D]
        state_dict[f"{pre}.value.weight"] = w[-D:, :]
        state_dict[f"{pre}.value.bias"] = b[-D:]
    out = {}
    for key, val in state_dict.items():
        key = key.replace("w12", "weights_in").replace("w3", "weights_out")
        out[key] = val.clone().contiguous()
    return out


def v2_timm_model(cfg, dynamic_img_size=False):
    """timm's own DINOv2 definitions at our size: vit_small_patch14_reg4_dinov2 (reg_tokens=4,
    no_embed_class=True, init_values) for registers, vit_giant_patch14_dinov2 (SwiGLUPacked,
    SiLU) for the SwiGLU model.  timm's giant sets mlp_ratio=2.66667*2 so that
    int(1536*5.33334) = 8192 = 2*4096; that constant only works for 1536, so the packed fc1 width
    2*hidden is given exactly here (mlp_ratio = 2*hidden/D)."""
    kw = dict(pretrained=False, num_classes=0, img_size=cfg["img_size"], embed_dim=cfg["embed_dim"],
              depth=cfg["depth"], num_heads=cfg["num_heads"], init_values=cfg["init_values"],
              dynamic_img_size=dynamic_img_size)
    if cfg["ffn"] == "mlp":
        assert cfg["num_register_tokens"] == 4
        m = timm.create_model("vit_small_patch14_reg4_dinov2", mlp_ratio=cfg["mlp_ratio"], **kw)
    else:
        assert cfg["num_register_tokens"] == 0
        hidden = v2_swiglu_hidden(cfg["embed_dim"], cfg["mlp_ratio"])
        m = timm.create_model("vit_giant_patch14_dinov2", mlp_ratio=2 * hidden / cfg["embed_dim"], **kw)
        assert m.blocks[0].mlp.fc1.out_features == 2 * hidden, m.blocks[0].mlp.fc1
    m = m.float().eval()
    assert m.global_pool == "token" and m.cls_token is not None
    assert m.no_embed_class == (cfg["num_register_tokens"] > 0)
    for name in ("norm_pre", "fc_norm", "head", "patch_drop"):
        assert isinstance(getattr(m, name), (nn.Identity, nn.Dropout)), name
    assert isinstance(m.patch_embed.norm, nn.Identity)
    for blk in m.blocks:
        assert abs(blk.norm1.eps - 1e-6) < 1e-12 and abs(m.norm.eps - 1e-6) < 1e-12
        assert isinstance(blk.attn.q_norm, nn.Identity) and isinstance(blk.attn.k_norm, nn.Identity)
    return m


def v2_official_to_timm(sd, model):
    """timm.models.vision_transformer.checkpoint_filter_fn (its _convert_dinov2: drops
    mask_token; with registers register_tokens -> reg_token and cls_token + pos_embed[:, 0] ->
    cls_token, pos_embed[:, 1:] for the no_embed_class model; mlp.w12/w3 -> mlp.fc1/fc2)."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    out = checkpoint_filter_fn({k: v.clone() for k, v in sd.items()}, model)
    return {k: v.clone().contiguous() for k, v in out.items()}


def v2_hf_config(cfg):
    from transformers import Dinov2Config, Dinov2WithRegistersConfig
    kw = dict(hidden_size=cfg["embed_dim"], num_hidden_layers=cfg["depth"],
              num_attention_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], hidden_act="gelu",
              layer_norm_eps=1e-6, image_size=cfg["img_size"], patch_size=cfg["patch_size"],
              qkv_bias=True, layerscale_value=cfg["init_values"], use_swiglu_ffn=cfg["ffn"] != "mlp")
    if cfg["num_register_tokens"]:
        return Dinov2WithRegistersConfig(num_register_tokens=cfg["num_register_tokens"], **kw)
    return Dinov2Config(**kw)


def v2_hf_load(cfg, hf_sd):
    """Load an HF-layout state dict through transformers' own loading path (from_pretrained on a
    local folder: config.json + model.safetensors, so transformers' checkpoint conversion
    mapping applies); strict: no missing / unexpected / mismatched keys.  Also checks that the
    model's save_pretrained writes back exactly these tensors under exactly these names."""
    import tempfile
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folder only
    from transformers import Dinov2Model, Dinov2WithRegistersModel
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    cls = Dinov2WithRegistersModel if cfg["num_register_tokens"] else Dinov2Model
    with tempfile.TemporaryDirectory() as d:
        v2_hf_config(cfg).save_pretrained(d)
        save_file(hf_sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        model, info = cls.from_pretrained(d, output_loading_info=True)
        model = model.float().eval()
        bad = {k: v for k, v in info.items() if v}
        assert not bad, bad
        d2 = os.path.join(d, "resaved")
        model.save_pretrained(d2)
        back = load_file(os.path.join(d2, "model.safetensors"))
    assert set(back) == set(hf_sd), sorted(set(back) ^ set(hf_sd))
    for k in back:
        assert torch.equal(back[k], hf_sd[k]), k
    return model


def v2_pca(X):
    """PCA to 3 components, numpy float64: mean = X.mean(0); U, S, Vt = svd(X - mean);
    components = Vt[:3], each row's sign flipped so that its entry of largest |value| is
    positive; proj = (X - mean) @ components.T."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(0)
    _, _, Vt = np.linalg.svd(X - mean, full_matrices=False)
    comps = Vt[:3].copy()
    idx = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(3), idx])[:, None]
    return comps, mean, (X - mean) @ comps.T


def v2_rgb(proj):
    """Per-component min-max to [0, 1] over all rows given."""
    lo, hi = proj.min(0), proj.max(0)
    return (proj - lo) / (hi - lo)


def v2_cosine(q, X):
    q = np.asarray(q, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    return X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))


# --- writer --------------------------------------------------------------------------------------

def write_dinov2_model(cfg, out_dir):
    name, P, D = cfg["name"], cfg["patch_size"], cfg["embed_dim"]
    R, depth, nh = cfg["num_register_tokens"], cfg["depth"], cfg["num_heads"]
    assert D // nh == 64 and cfg["img_size"] % P == 0
    grid = cfg["img_size"] // P
    native = str(cfg["img_size"])
    model = build_dinov2(cfg, block_chunks=0)
    init_dinov2_weights(model, cfg)
    sd = contiguous_sd(model.state_dict())
    head_keys = ["cls_token", "pos_embed"] + (["register_tokens"] if R else []) + ["mask_token"]
    assert list(sd)[:len(head_keys)] == head_keys, list(sd)[:6]
    assert sd["pos_embed"].shape == (1, 1 + grid * grid, D) and sd["mask_token"].shape == (1, D)
    if cfg["ffn"] != "mlp":
        hid = v2_swiglu_hidden(D, cfg["mlp_ratio"])
        assert sd["blocks.0.mlp.w12.weight"].shape == (2 * hid, D) and sd["blocks.0.mlp.w3.weight"].shape == (D, hid)
    notes = []

    # the v1 helper is the same official formula (offset 0.1, no antialias): must agree
    with torch.no_grad():
        for H, W in ((224, 224), (252, 336)):
            x_dummy = torch.zeros(1, 1 + (H // P) * (W // P), D)
            a = model.interpolate_pos_encoding(x_dummy, H, W)
            b = interpolate_pos_encoding(model.pos_embed, H, W, P)
            assert torch.equal(a, b), (H, W)

    # ---- layouts
    files = []
    if cfg["block_chunks"]:
        chunked = build_dinov2(cfg)
        csd = to_block_chunks(sd, depth, cfg["block_chunks"])
        assert list(csd) == list(chunked.state_dict()), (list(csd), list(chunked.state_dict()))
        chunked.load_state_dict(csd, strict=True)
        p = os.path.join(out_dir, f"{name}_chunked.pth")
        torch.save(csd, p)
        files.append(p)
    else:
        chunked = None
        p = os.path.join(out_dir, f"{name}_official.pth")
        torch.save(sd, p)
        files.append(p)

    # ---- reference outputs (official settings) and, for the register model, the hub *_reg
    #      interpolation (offset 0, antialias) as aa_* keys
    aa_model = None
    if R:
        aa_model = build_dinov2(cfg, block_chunks=0, interpolate_offset=V2_AA_INTERPOLATE_OFFSET,
                                interpolate_antialias=V2_AA_INTERPOLATE_ANTIALIAS)
        aa_model.load_state_dict(sd, strict=True)
    ref, full = {}, {}
    rng = np.random.Generator(np.random.PCG64(cfg["seed"] + 100))
    with torch.no_grad():
        for tag, shape in v2_inputs(cfg):
            img = v2_randn(rng, shape)
            H, W = shape[2], shape[3]
            out, attns = v2_forward(model, img)
            T = 1 + R + (H // P) * (W // P)
            assert len(attns) == depth and all(a.shape == (1, nh, T, T) for a in attns)
            if chunked is not None:
                cout, cattns = v2_forward(chunked, img)
                assert torch.equal(cout["x_norm"], out["x_norm"]) and all(torch.equal(a, b) for a, b in zip(attns, cattns))
            ref[f"input_{tag}"] = img
            ref[f"cls_{tag}"] = out["x_norm_clstoken"]
            ref[f"patch_{tag}"] = out["x_norm_patchtokens"]
            if R:
                ref[f"reg_{tag}"] = out["x_norm_regtokens"]
            ref[f"attn_cls_{tag}"] = attns[-1][:, :, 0, :]
            if tag == "224":
                for i, a in enumerate(attns):
                    ref[f"attn_cls_224_layer{i}"] = a[:, :, 0, :]
            full[tag] = out
            if tag == "252x336" and R:
                ref[f"pos_{tag}"] = model.interpolate_pos_encoding(torch.zeros(1, 1 + (H // P) * (W // P), D), H, W)
            if aa_model is not None and tag != native:
                aout, aattns = v2_forward(aa_model, img)
                ref[f"aa_cls_{tag}"] = aout["x_norm_clstoken"]
                ref[f"aa_patch_{tag}"] = aout["x_norm_patchtokens"]
                ref[f"aa_reg_{tag}"] = aout["x_norm_regtokens"]
                ref[f"aa_attn_cls_{tag}"] = aattns[-1][:, :, 0, :]
                full["aa_" + tag] = aout
                if tag == "252x336":
                    ref[f"aa_pos_{tag}"] = aa_model.interpolate_pos_encoding(
                        torch.zeros(1, 1 + (H // P) * (W // P), D), H, W)
        # attention is peaked, not uniform (checks QK_SCALE did its job)
        peak = float(ref["attn_cls_224"].max())
        T = ref["attn_cls_224"].shape[-1]
        print(f"  {name}: CLS attention max {peak:.3f} (uniform {1 / T:.4f}), "
              f"|patch_224| mean {float(full['224']['x_norm_patchtokens'].abs().mean()):.3f}")
        assert peak > 10 / T

    # ---- (a) timm cross-check at the native size (and the aa_* outputs via dynamic_img_size)
    timm_model = v2_timm_model(cfg)
    tsd = v2_official_to_timm(sd, timm_model)
    timm_model.load_state_dict(tsd, strict=True)
    if R:
        assert "mask_token" not in tsd and tsd["reg_token"].shape == (1, R, D)
        assert tsd["pos_embed"].shape == (1, grid * grid, D)
        assert torch.equal(tsd["cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
        p = os.path.join(out_dir, f"{name}_timm.safetensors")
        save_safetensors(tsd, p)
        files.append(p)
    checks = {}
    with torch.no_grad():
        tf = timm_model.forward_features(ref[f"input_{native}"])
        nat = full[native]["x_norm"]
        checks["timm_98"] = float((tf - nat).abs().max())
        print(f"  {name}: timm forward_features vs transcription at {native}: max|diff| {checks['timm_98']:.3g} "
              f"(CLS {float((tf[:, 0] - nat[:, 0]).abs().max()):.3g}, "
              f"patches {float((tf[:, 1 + R:] - nat[:, 1 + R:]).abs().max()):.3g})")
        assert checks["timm_98"] < V2_CHECK_TOL, checks
        tdyn = v2_timm_model(cfg, dynamic_img_size=True)
        tdyn.load_state_dict(tsd, strict=True)
        for tag in ("224", "252x336"):
            tf = tdyn.forward_features(ref[f"input_{tag}"])
            if R:
                d = float((tf - full["aa_" + tag]["x_norm"]).abs().max())
                checks[f"timm_dynamic_{tag}_vs_aa"] = d
                print(f"  {name}: timm dynamic_img_size vs aa_* (offset 0, antialias) at {tag}: max|diff| {d:.3g}")
                assert d < V2_CHECK_TOL, (tag, d)
            d = float((tf - full[tag]["x_norm"]).abs().max())
            checks[f"timm_dynamic_{tag}_vs_official"] = d
            print(f"  {name}: timm dynamic_img_size vs official interpolation (offset 0.1) at {tag}: "
                  f"max|diff| {d:.3g} (expected to differ)")

    # ---- (b) HF transformers cross-check
    hf_sd = v2_official_to_hf(sd, cfg)
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    if hf_version is not None:
        hf = v2_hf_load(cfg, hf_sd)
        with torch.no_grad():
            lh = hf(pixel_values=ref[f"input_{native}"]).last_hidden_state
            checks["hf_98"] = float((lh - full[native]["x_norm"]).abs().max())
            print(f"  {name}: HF {type(hf).__name__} last_hidden_state vs transcription at {native}: "
                  f"max|diff| {checks['hf_98']:.3g}")
            assert checks["hf_98"] < V2_CHECK_TOL, checks
            # HF's interpolation: Dinov2WithRegisters = size-based + antialias (= the hub *_reg
            # settings); Dinov2 = size-based, NO offset, no antialias (differs from official).
            other = build_dinov2(cfg, block_chunks=0, interpolate_offset=0.0,
                                 interpolate_antialias=bool(R))
            other.load_state_dict(sd, strict=True)
            for tag in ("224", "252x336"):
                lh = hf(pixel_values=ref[f"input_{tag}"]).last_hidden_state
                o, _ = v2_forward(other, ref[f"input_{tag}"], all_attn=False)
                d_same = float((lh - o["x_norm"]).abs().max())
                d_off = float((lh - full[tag]["x_norm"]).abs().max())
                checks[f"hf_{tag}_vs_offset0_aa{int(bool(R))}"] = d_same
                checks[f"hf_{tag}_vs_official"] = d_off
                print(f"  {name}: HF at {tag}: vs transcription with offset 0, antialias={bool(R)}: "
                      f"max|diff| {d_same:.3g}; vs official offset 0.1 no-antialias: {d_off:.3g}")
                assert d_same < V2_CHECK_TOL, (tag, d_same)
        hf_note = f"loaded by transformers {hf_version} from_pretrained (strict), forward checked"
    else:
        hf_note = "transformers not installed: written by the conversion-script mapping, not checked"
        print(f"  {name}: {hf_note}")
    notes.append(hf_note)
    p = os.path.join(out_dir, f"{name}_hf.safetensors")
    save_safetensors(hf_sd, p)
    files.append(p)

    # ---- views (numpy float64), register model only
    if R:
        p224 = full["224"]["x_norm_patchtokens"][0].double().numpy()
        p2 = full["252x336"]["x_norm_patchtokens"][0].double().numpy()
        n1 = p224.shape[0]
        comps, mean, proj = v2_pca(np.concatenate([p224, p2], 0))
        rgb = v2_rgb(proj)
        ref["pca_joint_components"] = torch.from_numpy(comps)
        ref["pca_joint_mean"] = torch.from_numpy(mean)
        ref["pca_joint_proj_224"] = torch.from_numpy(proj[:n1])
        ref["pca_joint_proj_252x336"] = torch.from_numpy(proj[n1:])
        ref["pca_joint_rgb_224"] = torch.from_numpy(rgb[:n1])
        ref["pca_joint_rgb_252x336"] = torch.from_numpy(rgb[n1:])
        c1, m1, pr1 = v2_pca(p224)
        ref["pca_224_components"] = torch.from_numpy(c1)
        ref["pca_224_mean"] = torch.from_numpy(m1)
        ref["pca_rgb_224"] = torch.from_numpy(v2_rgb(pr1))
        r, c = V2_SIM_QUERY
        q = p224[r * (224 // P) + c]
        ref[f"sim_224_r{r}_c{c}"] = torch.from_numpy(v2_cosine(q, p224).reshape(224 // P, 224 // P))
        ref[f"sim_224_r{r}_c{c}_to_252x336"] = torch.from_numpy(v2_cosine(q, p2).reshape(252 // P, 336 // P))

    ref = {k: v.detach().float().contiguous() for k, v in ref.items()}
    config = {k: cfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size",
                                  "num_register_tokens", "ffn", "img_size")}
    config.update(mlp_ratio=cfg["mlp_ratio"], init_values=cfg["init_values"], layer_norm_eps=1e-6,
                  block_chunks=cfg["block_chunks"], interpolate_offset=V2_INTERPOLATE_OFFSET,
                  interpolate_antialias=V2_INTERPOLATE_ANTIALIAS)
    if cfg["ffn"] != "mlp":
        config["swiglu_hidden"] = v2_swiglu_hidden(D, cfg["mlp_ratio"])
    meta = {
        "config": json.dumps(config, sort_keys=True),
        "model": name, "seed": cfg["seed"], "qk_init_scale": QK_SCALE,
        "weight_std": V2_WEIGHT_STD, "pos_std": V2_POS_STD, "token_std": V2_TOKEN_STD,
        "perturb_std": V2_PERTURB_STD,
        "aa_settings": json.dumps({"interpolate_offset": V2_AA_INTERPOLATE_OFFSET,
                                   "interpolate_antialias": V2_AA_INTERPOLATE_ANTIALIAS}) if R else "",
        "checks": json.dumps(checks, sort_keys=True), "hf": hf_note,
        "stored_keys": ",".join(sorted(ref)),
        "torch_version": torch.__version__, "timm_version": timm.__version__,
        "transformers_version": str(hf_version), "source": "tools/reference.py",
    }
    p = os.path.join(out_dir, f"{name}_ref.safetensors")
    save_safetensors(ref, p, metadata={k: str(v) for k, v in sorted(meta.items())})
    files.append(p)
    verify_dinov2_files(cfg, out_dir, ref)
    return files


def verify_dinov2_files(cfg, out_dir, ref):
    """Reload what was written and reproduce the reference outputs from each layout."""
    name, R, D = cfg["name"], cfg["num_register_tokens"], cfg["embed_dim"]
    if cfg["block_chunks"]:
        sd = torch.load(os.path.join(out_dir, f"{name}_chunked.pth"), map_location="cpu", weights_only=True)
        model = build_dinov2(cfg)
    else:
        sd = torch.load(os.path.join(out_dir, f"{name}_official.pth"), map_location="cpu", weights_only=True)
        model = build_dinov2(cfg)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        for tag, _ in v2_inputs(cfg):
            out, attns = v2_forward(model, ref[f"input_{tag}"])
            assert torch.equal(out["x_norm_clstoken"], ref[f"cls_{tag}"]), tag
            assert torch.equal(out["x_norm_patchtokens"], ref[f"patch_{tag}"]), tag
            assert torch.equal(attns[-1][:, :, 0, :], ref[f"attn_cls_{tag}"]), tag
    if cfg["block_chunks"]:
        # undo the chunking (blocks.c.i.* -> blocks.i.*) and check it round-trips
        plain = {}
        for k, v in sd.items():
            if k.startswith("blocks."):
                _, c, i, rest = k.split(".", 3)
                assert int(c) == int(i) // (cfg["depth"] // cfg["block_chunks"]), k
                k = f"blocks.{i}.{rest}"
            plain[k] = v
        back = to_block_chunks(plain, cfg["depth"], cfg["block_chunks"])
        assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    else:
        plain = sd
    hf = load_file(os.path.join(out_dir, f"{name}_hf.safetensors"))
    exp = v2_official_to_hf(plain, cfg)
    assert set(hf) == set(exp) and all(torch.equal(hf[k], exp[k]) for k in hf)
    if R:
        t = load_file(os.path.join(out_dir, f"{name}_timm.safetensors"))
        assert "reg_token" in t and t["pos_embed"].shape[1] == (cfg["img_size"] // cfg["patch_size"]) ** 2
        assert torch.equal(t["reg_token"], sd["register_tokens"])


def write_dinov2(out_dir, models):
    """The DINOv2 fixtures of `models`, computed on one thread whatever the caller set (the float32 sums,
    hence the last bits of the outputs, depend on torch's thread count)."""
    files = []
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cfg in models:
            files += write_dinov2_model(cfg, out_dir)
    finally:
        torch.set_num_threads(n_threads)
    return files


# --------------------------------------------------------------------------- video

def write_video_reference(out_dir):
    """Official video_generation.py's per-frame map for `dino video`: the head mean of the last
    layer's CLS attention to the patches (`attentions[0, :, 0, 1:]`, then the mean over heads
    that `plt.imsave` draws), on the committed tiny16 backbone (tests/fixtures/tiny16_pretrain.pth,
    timm layout; 3 heads of 32). Frames: tests/images/coffee.png and its mirror image (the CLI
    test writes the mirror with the `image` crate; PNG, so the pixels are exact), at their own
    size cropped top-left to whole 16 px patches (the official script without `--resize`).
    Writes video_ref.safetensors: `mean_attention` [2, 8, 12]."""
    cfg = SMALL_MODELS[0]
    torch.manual_seed(0)
    model = timm.create_model(cfg["timm_name"], pretrained=False, num_classes=0, embed_dim=cfg["embed_dim"],
                              depth=cfg["depth"], num_heads=cfg["num_heads"], img_size=cfg["img_size"]).float().eval()
    sd = torch.load(os.path.join(out_dir, "tiny16_pretrain.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True)
    P = cfg["patch_size"]
    coffee = Image.open(os.path.join(os.path.dirname(out_dir.rstrip("/")), "images", "coffee.png")).convert("RGB")
    maps = []
    with torch.no_grad():
        for frame in (coffee, ImageOps.mirror(coffee)):
            x = np.asarray(frame, dtype=np.float32) / 255.0
            h, w = (x.shape[0] // P) * P, (x.shape[1] // P) * P
            x = torch.from_numpy(x[:h, :w]).permute(2, 0, 1)
            x = ((x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None])[None]
            _, attn, _ = backbone_forward(model, x, P)
            nh = attn.shape[1]
            a = attn[0, :, 0, 1:].reshape(nh, h // P, w // P)
            maps.append(a.mean(0))
    p = os.path.join(out_dir, "video_ref.safetensors")
    save_safetensors({"mean_attention": torch.stack(maps).contiguous()}, p,
                     metadata={"source": "tools/reference.py write_video_reference", "frames": "coffee.png, mirror"})
    return [p]


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
    ap.add_argument("--only", default="all", choices=["all", "dino", "dinov2", "video"],
                    help="small mode: write only the DINO v1 fixtures (tiny*, losses, schedules) "
                         "or only the DINOv2 ones (v2*); default all")
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
    if args.only in ("all", "dino"):
        for cfg in (SMALL_MODELS if small else FULL_MODELS):
            files += write_model(cfg, out_dir, small, max_full)
        if small:
            files += write_losses(out_dir)
            files += write_schedules(out_dir)
    if args.only in ("all", "dinov2"):
        files += write_dinov2(out_dir, V2_SMALL_MODELS if small else V2_FULL_MODELS)
    if small and args.only in ("all", "video"):
        files += write_video_reference(out_dir)

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
