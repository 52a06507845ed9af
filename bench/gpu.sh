#!/usr/bin/env bash
# GPU benchmark, one call: our DINO step and ViT-S/16 inference on wgpu (Vulkan), beside the
# PyTorch peer (bench/peer.py: the official algorithm) on CUDA in fp32 and bf16 autocast, same
# sizes, same run; JSON lines and a markdown table with the ratios.
#
# Made for the GPU machine the `device` tool lends to some tasks (one H200, no cargo, no
# network): build here, carry the binary (and the Vulkan loader .debs in .gl/, see
# ../shared/notes/gpu-device.md), then run this there. Without a GPU it runs our side on any
# wgpu adapter (Mesa's lavapipe) and the peer on the CPU, which checks the script itself.
#
#   bench/gpu.sh [DINO] [OUT_DIR]        DINO: the binary (default target/release/dino)
#   QUICK=1 bench/gpu.sh ...             tiny sizes (a check of the script on lavapipe)
#   BATCHES="8 32 128" ITERS=10 ...      the step's batch sizes and timed iterations
#   INFER_BATCHES="1 32"                 inference batch sizes (an empty list: none)
#   DEADLINE=400 ...                     seconds: the cases left after it are recorded as skipped
#                                        (the device machine gives 10 minutes a command)
#
# Precision: ours runs f32 and f16 (`--use_fp16 true`: f16 products with loss scaling; WGSL has no
# bf16, so `--use_bf16` is for the cpu only); the peer fp32 and bf16 autocast. The table puts
# ours-f16 beside the peer's bf16 (both 16-bit products, f32 master weights).
set -uo pipefail
cd "$(dirname "$0")/.."
dino="${1:-target/release/dino}"
out="${2:-${OUT:-bench/results/gpu}}"
mkdir -p "$out"
jsonl="$out/gpu.jsonl"
: > "$jsonl"
py="${PYTHON:-python3}"
[ -x bench/.venv/bin/python ] && py=bench/.venv/bin/python

# The Vulkan loader carried as .debs (the device machine has none).
if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
fi

cuda=cpu
if command -v nvidia-smi >/dev/null && nvidia-smi -L; then cuda=cuda; fi
echo "peer device: $cuda; torch $($py -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"

if [ "${QUICK:-0}" = 1 ]; then
  BATCHES="${BATCHES-2}"; ITERS="${ITERS:-1}"; WARMUP=1; INFER_BATCHES="${INFER_BATCHES-1}"; IMG=64; PRESET=small
else
  BATCHES="${BATCHES-32 128 8}"; ITERS="${ITERS:-10}"; WARMUP=2; INFER_BATCHES="${INFER_BATCHES-1 32}"; IMG=224; PRESET=imagenet
fi
start=$SECONDS

# Each case is bounded: a slow or failed one is recorded and the script goes on.
run() { # label, command...
  local label="$1"; shift
  local line
  if [ "${DEADLINE:-0}" -gt 0 ] && [ $((SECONDS - start)) -ge "$DEADLINE" ]; then
    echo "{\"case\": \"$label\", \"error\": \"skipped: DEADLINE=$DEADLINE s reached\"}" >> "$jsonl"
    echo "$label: skipped (DEADLINE)"
    return
  fi
  line=$(timeout "${CASE_TIMEOUT:-240}" "$@" 2>"$out/last.err" | tail -1)
  if [ -n "$line" ] && [ "${line:0:1}" = "{" ]; then
    echo "$line" | $py -c "import json,sys; d=json.loads(sys.stdin.read()); d['case']='$label'; print(json.dumps(d))" >> "$jsonl"
    echo "$label: $line"
  else
    echo "{\"case\": \"$label\", \"error\": $($py -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()[-400:]))' "$out/last.err")}" >> "$jsonl"
    echo "$label: FAILED (see $jsonl)"
  fi
}

"$dino" bench infer --device wgpu --image_size 32 --iters 1 --warmup 0 2>&1 | grep -m1 "device:" | tee "$out/adapter.txt"
step_case() { # batch
  local b="$1"
  run "step ours wgpu f32 b$b" "$dino" bench step --preset "$PRESET" --batch_size_per_gpu "$b" --device wgpu --iters "$ITERS" --warmup "$WARMUP"
  for dt in fp32 bf16; do
    run "step peer $cuda $dt b$b" $py bench/peer.py --dino "$dino" step --preset "$PRESET" --batch_size_per_gpu "$b" --device "$cuda" --dtype "$dt" --iters "$ITERS" --warmup "$WARMUP"
  done
  run "step ours wgpu f16 b$b" "$dino" bench step --preset "$PRESET" --batch_size_per_gpu "$b" --device wgpu --use_fp16 true --iters "$ITERS" --warmup "$WARMUP"
}
infer_case() { # batch
  local b="$1"
  run "infer ours wgpu f32 b$b" "$dino" bench infer --image_size "$IMG" --batch "$b" --device wgpu --iters "$ITERS" --warmup "$WARMUP"
  for dt in fp32 bf16; do
    run "infer peer $cuda $dt b$b" $py bench/peer.py infer --image_size "$IMG" --batch "$b" --device "$cuda" --dtype "$dt" --iters "$ITERS" --warmup "$WARMUP"
  done
  run "infer ours wgpu f16 b$b" "$dino" bench infer --image_size "$IMG" --batch "$b" --device wgpu --use_fp16 true --iters "$ITERS" --warmup "$WARMUP"
}
# Step and inference cases alternate (the first batch of each first), so a DEADLINE leaves a
# table with both kinds.
steps=($BATCHES); infers=($INFER_BATCHES)
for ((i = 0; i < ${#steps[@]} || i < ${#infers[@]}; i++)); do
  [ -n "${steps[i]:-}" ] && step_case "${steps[i]}"
  [ -n "${infers[i]:-}" ] && infer_case "${infers[i]}"
done
echo "cases took $((SECONDS - start)) s"

# The table: images/s of each case and ours / peer-fp32, ours / peer-bf16.
$py - "$jsonl" "$out/gpu.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def ips(case):
    r = next((r for r in rows if r.get("case") == case), None)
    if r is None or "error" in r:
        return "skipped" if r is not None and r["error"].startswith("skipped") else "failed"
    return r.get("images_per_s")
lines = ["| case | ours f32 img/s | ours f16 img/s | peer fp32 img/s | peer bf16 img/s | ours f32 / peer fp32 | ours f16 / peer bf16 |",
         "|---|---|---|---|---|---|---|"]
cases = sorted({" ".join(r["case"].split()[:1] + r["case"].split()[-1:]) for r in rows})
for kind_b in cases:
    kind, b = kind_b.split()
    dev = next((r["case"].split()[2] for r in rows if r["case"].startswith(f"{kind} peer") and r["case"].endswith(b)), "cuda")
    o, o16 = ips(f"{kind} ours wgpu f32 {b}"), ips(f"{kind} ours wgpu f16 {b}")
    f, h = ips(f"{kind} peer {dev} fp32 {b}"), ips(f"{kind} peer {dev} bf16 {b}")
    fmt = lambda v: v if isinstance(v, str) else f"{v:.1f}"
    ratio = lambda a, c: "–" if isinstance(a, str) or isinstance(c, str) else f"{a / c:.2f}x"
    lines.append(f"| {kind} {b} | {fmt(o)} | {fmt(o16)} | {fmt(f)} | {fmt(h)} | {ratio(o, f)} | {ratio(o16, h)} |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
