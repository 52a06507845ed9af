#!/usr/bin/env bash
# Full-size parity: ViT-S/16 and ViT-S/8 (official shapes, random init) against PyTorch + timm,
# at 224x224 and 480x320, on the cpu (flex) and wgpu backends. Needs python3 with torch, timm,
# safetensors (`pip install torch timm safetensors`); about 1 GB of files in $DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${TMPDIR:-/tmp}/dino-parity-full}"
python3 -c "import torch, timm, safetensors" 2>/dev/null || pip install torch timm safetensors
[ -f "$DIR/vits8_ref.safetensors" ] || python3 tools/reference.py full --out "$DIR"
DINO_PARITY_DIR="$DIR" cargo test -p dino-shared --test parity full_size -- --ignored --nocapture
