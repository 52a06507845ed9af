#!/usr/bin/env bash
# Full-size parity: ViT-S/16 and ViT-S/8 (official shapes, random init) against PyTorch + timm,
# at 224x224 and 480x320, and the DINOv2 ViT-S/14 with 4 registers (the hub's
# dinov2_vits14_reg4 shape, random init) against the official DINOv2 forward at 518 (native),
# 224 and 252x336, on the cpu (flex) and wgpu backends. Needs python3 with torch, timm,
# safetensors (`pip install torch timm safetensors`; transformers optional); about 1 GB of
# files in $DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${TMPDIR:-/tmp}/dino-parity-full}"
python3 -c "import torch, timm, safetensors" 2>/dev/null || pip install torch timm safetensors
[ -f "$DIR/vits8_ref.safetensors" ] || python3 tools/reference.py full --only dino --out "$DIR"
[ -f "$DIR/vits14reg4_ref.safetensors" ] || python3 tools/reference.py full --only dinov2 --out "$DIR"
# The workspace's one feature set (as ./test.sh builds it): no second build of Burn.
DINO_PARITY_DIR="$DIR" cargo test --workspace --exclude dino-web --test parity --test parity_v2 full_size -- --ignored --nocapture
