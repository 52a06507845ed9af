"""Seeds of the reader property tests (shared/tests/fuzz_readers.rs): tiny but complete
weights files in every layout the loaders accept, and small pictures in every decoded format.
Run with the bench venv: bench/.venv/bin/python tools/make_fuzz_corpus.py"""
import io
import pathlib
from functools import partial

import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fuzz-corpus"


def main():
    torch.manual_seed(0)
    # The smallest ViT the loaders accept: 16 dims, 1 block, 1 head, patch 4, 8 px (2x2 grid).
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=1, mlp_ratio=2,
                            qkv_bias=True, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    sd = {k: v.contiguous() for k, v in vit.state_dict().items()}
    w = OUT / "weights"
    torch.save(sd, w / "backbone.pth")
    head = {"mlp.0.weight": torch.randn(8, 16), "mlp.0.bias": torch.zeros(8),
            "last_layer.weight_g": torch.ones(4, 1), "last_layer.weight_v": torch.randn(4, 8)}
    full = {f"module.backbone.{k}": v for k, v in sd.items()} | {f"module.head.{k}": v for k, v in head.items()}
    torch.save({"teacher": full, "student": full, "epoch": 1}, w / "checkpoint.pth")
    save_file(sd, w / "timm.safetensors")
    meta = {"format": "dino-rs",
            "vit": '{"img_size":8,"patch_size":4,"in_chans":3,"embed_dim":16,"depth":1,"num_heads":1,"mlp_ratio":2.0}'}
    save_file(sd, w / "metadata.safetensors", metadata=meta)
    p = OUT / "pictures"
    img = Image.new("RGB", (12, 9))
    img.putdata([(x * 20 % 256, y * 28 % 256, (x * y) % 256) for y in range(9) for x in range(12)])
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif")]:
        img.save(p / f"small.{ext}", fmt)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(p / "rotated.jpg", "JPEG", exif=exif)


if __name__ == "__main__":
    main()
