#!/usr/bin/env python3
"""Test data for the Rust DINO implementation: sample photos, bad inputs and
PIL / torch.optim reference outputs.

Command (from the repository root; needs torch, torchvision, Pillow, numpy,
safetensors and scikit-image for its bundled sample photos):

    python3 tools/make_test_data.py            # writes into tests/

Everything is deterministic (fixed seeds, no network); running it twice gives
identical files for the same library versions.  Writes:

A. tests/images/        real photos and bad-input files for the CLI tests, plus
                        README.md with origin and licence of every file.
B. tests/fixtures/augment_ops.safetensors
                        PIL reference outputs of the augmentation operations
                        DINO uses (as torchvision applies them to PIL images).
                        Every picture is float32 [H, W, 3] holding the uint8
                        values 0..255.  Key `input` is the 64x48 (W x H) RGB
                        input; outputs:
                          brightness_{f}  F.adjust_brightness(img, f)
                          contrast_{f}    F.adjust_contrast(img, f)
                          saturation_{f}  F.adjust_saturation(img, f)
                          hue_{f}         F.adjust_hue(img, f)
                          grayscale       F.rgb_to_grayscale(img, 3)
                          solarize        ImageOps.solarize(img)  (threshold 128)
                          blur_{r}        img.filter(ImageFilter.GaussianBlur(r))
                          hflip           F.hflip(img)
                          resized_crop    F.resized_crop(img, 5, 7, 30, 40, [32, 32], BICUBIC)
                          resized_crop_up F.resized_crop(img, 2, 3, 12, 10, [24, 24], BICUBIC)
                        where {f}/{r} is Python's str() of the float.  The
                        metadata holds the parameter lists as JSON strings.
C. tests/fixtures/adamw.safetensors
                        torch.optim.AdamW driven as official DINO's
                        main_dino.py drives it (two param groups from
                        utils.get_params_groups, per-step lr for all groups and
                        weight decay for group 0, utils.clip_gradients(model, 3.0)
                        before each step).  Keys: w_0 [4,3], b_0 [4], g_0 [3];
                        grad_{w,b,g}_{s} (raw, before clipping) and
                        {w,b,g}_{s+1} (after step s) for s = 0..3; lr [4], wd [4].
"""

import json
import os

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

import skimage
import skimage.data

# The official utilities (utils.get_params_groups, utils.clip_gradients) and the byte-stable
# safetensors writer live in tools/reference.py, the one home of the official algorithm.
from reference import clip_gradients, get_params_groups, save_safetensors

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "tests", "images")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


# --------------------------------------------------------------------------
# A. images
# --------------------------------------------------------------------------

def png_bit_depth(path):
    """Bit depth from the PNG IHDR chunk (byte 24 of the file)."""
    with open(path, "rb") as f:
        head = f.read(26)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return head[24], head[25]  # bit depth, colour type


def write_images():
    os.makedirs(IMAGES, exist_ok=True)
    p = lambda name: os.path.join(IMAGES, name)

    astronaut = Image.fromarray(skimage.data.astronaut()).convert("RGB")  # 512x512
    chelsea = Image.fromarray(skimage.data.chelsea()).convert("RGB")      # 451x300
    coffee = Image.fromarray(skimage.data.coffee()).convert("RGB")        # 600x400

    def width_to(img, w):
        h = round(img.height * w / img.width)
        return img.resize((w, h), Image.LANCZOS)

    astro320 = astronaut.resize((320, 320), Image.LANCZOS)
    astro320.save(p("astronaut.jpg"), quality=85)
    width_to(chelsea, 320).save(p("chelsea.jpg"), quality=85)
    width_to(coffee, 200).save(p("coffee.png"), optimize=True)

    astro96 = astronaut.resize((96, 96), Image.LANCZOS)

    # 8-bit grayscale
    astro96.convert("L").save(p("gray.png"))

    # 16-bit grayscale: spread the 8-bit values over 0..65535 and add low-bit
    # detail so the file really needs 16 bits.
    g8 = np.asarray(astro96.convert("L"), dtype=np.uint16)
    yy, xx = np.mgrid[0:96, 0:96]
    g16 = (g8 * 257 + ((xx * 7 + yy * 13) % 200)).clip(0, 65535).astype(np.uint16)
    im16 = Image.fromarray(g16)
    if im16.mode != "I;16":
        im16 = Image.frombytes("I;16", (96, 96), g16.astype("<u2").tobytes())
    im16.save(p("gray16.png"))
    chk = Image.open(p("gray16.png"))
    assert chk.mode == "I;16", chk.mode
    assert png_bit_depth(p("gray16.png")) == (16, 0), png_bit_depth(p("gray16.png"))
    assert np.array_equal(np.asarray(chk, dtype=np.uint16), g16)

    # RGBA with an alpha that varies across the picture (radial, 0..255)
    r = np.sqrt((xx - 47.5) ** 2 + (yy - 47.5) ** 2)
    alpha = (255 * (1 - r / r.max())).round().astype(np.uint8)
    rgba = astro96.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(p("rgba.png"))
    chk = Image.open(p("rgba.png"))
    assert chk.mode == "RGBA" and len(set(np.asarray(chk)[..., 3].ravel())) > 50

    # real CMYK JPEG
    astro96.convert("CMYK").save(p("cmyk.jpg"), quality=90)
    chk = Image.open(p("cmyk.jpg"))
    assert chk.mode == "CMYK" and chk.format == "JPEG", (chk.mode, chk.format)

    # palette GIF
    astro96.convert("P", palette=Image.ADAPTIVE, colors=64).save(p("palette.gif"))
    chk = Image.open(p("palette.gif"))
    assert chk.mode == "P" and chk.size == (96, 96), (chk.mode, chk.size)

    # smaller than one 16-px patch
    astronaut.resize((8, 8), Image.LANCZOS).save(p("tiny.png"))

    # bad inputs
    with open(p("not-an-image.jpg"), "w") as f:
        f.write("This is not an image.\n"
                "It is a plain text file with a .jpg extension,\n"
                "used to check that the CLI reports a decoding error.\n")
    open(p("empty.jpg"), "wb").close()
    data = open(p("astronaut.jpg"), "rb").read()
    with open(p("truncated.jpg"), "wb") as f:
        f.write(data[: int(len(data) * 0.4)])

    write_images_readme()


def write_images_readme():
    v = skimage.__version__
    text = f"""# Test images

Written by `python3 tools/make_test_data.py` (scikit-image {v}, Pillow
{Image.__version__}).  The three photos come from the sample data bundled with
scikit-image (`skimage.data`); the licence statements below are quoted from the
docstrings of the `skimage.data` functions in the installed package (the
package's `skimage/data/README.txt` says nothing about licences, and its
`LICENSE.txt` covers the code only, BSD-3-Clause).

| file | what | source | licence |
|------|------|--------|---------|
| `astronaut.jpg` | 320x320 RGB JPEG, quality 85 | `skimage.data.astronaut()` (512x512), Lanczos resize | public domain (NASA) |
| `chelsea.jpg` | 320x213 RGB JPEG, quality 85 | `skimage.data.chelsea()` (451x300), Lanczos resize to width 320 | CC0 (Stefan van der Walt) |
| `coffee.png` | 200x133 RGB PNG | `skimage.data.coffee()` (600x400), Lanczos resize to width 200 | CC0 (Rachel Michetti) |
| `gray.png` | 96x96 8-bit grayscale (mode L) PNG | astronaut, 96x96, `convert("L")` | public domain (NASA) |
| `gray16.png` | 96x96 16-bit grayscale PNG (PIL mode `I;16`, IHDR bit depth 16) | gray astronaut `* 257` plus a small low-bit pattern | public domain (NASA) |
| `rgba.png` | 96x96 RGBA PNG, radial alpha 255 (centre) .. 0 (corners) | astronaut, 96x96 | public domain (NASA) |
| `cmyk.jpg` | 96x96 CMYK JPEG (PIL reads it back as mode CMYK) | astronaut, 96x96, `convert("CMYK")` | public domain (NASA) |
| `palette.gif` | 96x96 palette (mode P) GIF, 64 colours | astronaut, 96x96, adaptive palette | public domain (NASA) |
| `tiny.png` | 8x8 RGB PNG (smaller than one 16-px patch) | astronaut, 8x8 | public domain (NASA) |
| `not-an-image.jpg` | plain text with a `.jpg` name | written by the script | — |
| `empty.jpg` | 0 bytes | written by the script | — |
| `truncated.jpg` | first 40% of the bytes of `astronaut.jpg` | written by the script | public domain (NASA) |

## Licence statements as documented by scikit-image

`skimage.data.astronaut()`:

> This image was downloaded from the NASA Great Images database
> <https://flic.kr/p/r9qvLn>`__.
>
> No known copyright restrictions, released into the public domain.

`skimage.data.chelsea()`:

> No copyright restrictions.  CC0 by the photographer (Stefan van der Walt).

`skimage.data.coffee()`:

> This photograph is courtesy of Pikolo Espresso Bar.
> [...]
> No copyright restrictions.  CC0 by the photographer (Rachel Michetti).
"""
    with open(os.path.join(IMAGES, "README.md"), "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# B. augmentation reference outputs
# --------------------------------------------------------------------------

BRIGHTNESS = [0.6, 0.85, 1.3]
CONTRAST = [0.6, 1.4]
SATURATION = [0.8, 1.2]
HUE = [-0.1, -0.03, 0.05, 0.1]
BLUR = [0.1, 0.5, 1.0, 1.7, 2.0]
CROP = {"top": 5, "left": 7, "height": 30, "width": 40, "size": [32, 32],
        "interpolation": "bicubic"}
CROP_UP = {"top": 2, "left": 3, "height": 12, "width": 10, "size": [24, 24],
           "interpolation": "bicubic"}


def as_tensor(img):
    assert img.mode == "RGB", img.mode
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.astype(np.float32).copy())  # [H, W, 3]


def write_augment_ops():
    chelsea = Image.fromarray(skimage.data.chelsea()).convert("RGB")
    img = chelsea.resize((64, 48), Image.BICUBIC)
    assert img.size == (64, 48)

    out = {"input": as_tensor(img)}
    for f in BRIGHTNESS:
        out[f"brightness_{f}"] = as_tensor(F.adjust_brightness(img, f))
    for f in CONTRAST:
        out[f"contrast_{f}"] = as_tensor(F.adjust_contrast(img, f))
    for f in SATURATION:
        out[f"saturation_{f}"] = as_tensor(F.adjust_saturation(img, f))
    for f in HUE:
        out[f"hue_{f}"] = as_tensor(F.adjust_hue(img, f))
    out["grayscale"] = as_tensor(F.rgb_to_grayscale(img, num_output_channels=3))
    out["solarize"] = as_tensor(ImageOps.solarize(img))  # threshold 128
    for r in BLUR:
        out[f"blur_{r}"] = as_tensor(img.filter(ImageFilter.GaussianBlur(radius=r)))
    out["hflip"] = as_tensor(F.hflip(img))
    for key, c in (("resized_crop", CROP), ("resized_crop_up", CROP_UP)):
        out[key] = as_tensor(F.resized_crop(
            img, top=c["top"], left=c["left"], height=c["height"],
            width=c["width"], size=c["size"],
            interpolation=InterpolationMode.BICUBIC))

    meta = {
        "description": "PIL reference outputs of DINO augmentations; float32 "
                       "[H, W, 3] holding uint8 values 0..255",
        "brightness": json.dumps(BRIGHTNESS),
        "contrast": json.dumps(CONTRAST),
        "saturation": json.dumps(SATURATION),
        "hue": json.dumps(HUE),
        "blur": json.dumps(BLUR),
        "solarize_threshold": json.dumps(128),
        "resized_crop": json.dumps(CROP),
        "resized_crop_up": json.dumps(CROP_UP),
        "input": "skimage.data.chelsea() resized to 64x48 (W x H) with PIL BICUBIC",
        "versions": json.dumps({"torch": torch.__version__,
                                "torchvision": __import__("torchvision").__version__,
                                "pillow": Image.__version__}),
    }
    os.makedirs(FIXTURES, exist_ok=True)
    save_safetensors({k: v.contiguous() for k, v in out.items()},
              os.path.join(FIXTURES, "augment_ops.safetensors"), metadata=meta)
    return out


# --------------------------------------------------------------------------
# C. AdamW as official DINO drives it
# --------------------------------------------------------------------------

LR = [1e-3, 2e-3, 1.5e-3, 5e-4]
WD = [0.04, 0.1, 0.2, 0.4]
CLIP = 3.0


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)
        self.norm = torch.nn.LayerNorm(3)


def write_adamw():
    gen = torch.Generator().manual_seed(1234)
    model = Tiny()
    w, b, g = model.linear.weight, model.linear.bias, model.norm.weight
    model.norm.bias.requires_grad_(False)  # only w, b, g take part
    with torch.no_grad():
        w.copy_(torch.randn(4, 3, generator=gen))
        b.copy_(torch.randn(4, generator=gen))
        g.copy_(1.0 + 0.1 * torch.randn(3, generator=gen))

    groups = get_params_groups(model)
    assert groups[0]["params"][0] is w and len(groups[0]["params"]) == 1
    assert groups[1]["params"][0] is b and groups[1]["params"][1] is g
    opt = torch.optim.AdamW(groups)
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["betas"] == (0.9, 0.999)

    out = {"w_0": w.detach().clone(), "b_0": b.detach().clone(),
           "g_0": g.detach().clone()}
    norms = []
    for s in range(4):
        for i, pg in enumerate(opt.param_groups):
            pg["lr"] = LR[s]
            if i == 0:
                pg["weight_decay"] = WD[s]
        gw = torch.randn(4, 3, generator=gen) * 5
        gb = torch.randn(4, generator=gen) * 0.1
        gg = torch.randn(3, generator=gen) * 0.1
        out[f"grad_w_{s}"], out[f"grad_b_{s}"], out[f"grad_g_{s}"] = gw, gb, gg
        opt.zero_grad()
        w.grad, b.grad, g.grad = gw.clone(), gb.clone(), gg.clone()
        norms.append(clip_gradients(model, CLIP))
        opt.step()
        out[f"w_{s + 1}"] = w.detach().clone()
        out[f"b_{s + 1}"] = b.detach().clone()
        out[f"g_{s + 1}"] = g.detach().clone()
    out["lr"] = torch.tensor(LR, dtype=torch.float32)
    out["wd"] = torch.tensor(WD, dtype=torch.float32)

    meta = {
        "description": "torch.optim.AdamW as in official DINO main_dino.py: "
                       "groups [w] (wd=wd[s]) and [b, g] (wd 0); lr[s] for all "
                       "groups; utils.clip_gradients(model, 3.0) on the raw "
                       "grads grad_*_s before each step",
        "lr": json.dumps(LR), "wd": json.dumps(WD), "clip": json.dumps(CLIP),
        "betas": json.dumps([0.9, 0.999]), "eps": json.dumps(1e-8),
        "grad_norms_before_clip": json.dumps(norms),
        "torch": torch.__version__,
    }
    save_safetensors({k: v.float().contiguous() for k, v in out.items()},
              os.path.join(FIXTURES, "adamw.safetensors"), metadata=meta)
    return norms


def main():
    torch.manual_seed(0)
    write_images()
    write_augment_ops()
    norms = write_adamw()
    print("grad norms before clipping (w, b, g) per step:", norms)


if __name__ == "__main__":
    main()
