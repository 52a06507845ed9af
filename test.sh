#!/usr/bin/env bash
# The test command of dino-rs (README): installs what the tests need on a fresh Debian machine
# (idempotent: every install is skipped when already done), then runs every test.
#   ./test.sh            everything: the cargo tests (model, weights, trainer, CLI; cpu and wgpu
#                        backends), the benchmark smoke run, the wasm build and the browser tests
#   ./test.sh native     the cargo tests and the benchmark smoke run only
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-all}"

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# Mesa's software Vulkan (lavapipe): the wgpu backend runs its real code path without a GPU.
apt_install mesa-vulkan-drivers libvulkan1

echo "== cargo tests (native: flex CPU backend and wgpu) =="
cargo test --workspace --exclude dino-web 2>&1

# Our side of every benchmark in bench/ at tiny sizes (no torch), so that they cannot rot.
echo "== benchmark smoke run (bench/run.py --quick --ours_only) =="
apt_install python3 dataset-fashion-mnist
python3 bench/run.py --quick --ours_only --out "$(mktemp -d)"

if [ "$what" = native ]; then exit 0; fi

echo "== web: trunk build (offline) and browser tests in Debian's headless Chromium =="
apt_install chromium
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# Tools at the versions Trunk.toml names; installed once (cargo install only when missing).
command -v trunk >/dev/null || cargo install trunk --version 0.21.14 --locked
wb_version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if ! wasm-bindgen --version 2>/dev/null | grep -q "$wb_version"; then
  cargo install wasm-bindgen-cli --version "$wb_version"   # not --locked: see README
fi
(cd web && npm install --no-audit --no-fund)                # binaryen 132 (wasm-opt), playwright-core
export PATH="$PWD/web/node_modules/.bin:$PATH"
trunk build --release
shots=web/screenshots
native=$(mktemp -d)
# The native numbers the page must reproduce: attention (last block and block 1), the PCA and
# the similarity views of the same picture at the page's default size.
dino_native() {
  cargo run -q -p dino-trainer -- "$1" --image tests/images/astronaut.jpg \
    --pretrained_weights web/assets/dino-default.safetensors --image_size 112 --device cpu "${@:2}"
}
dino_native attention --output_dir "$native"
dino_native attention --layer 1 --output_dir "$native/layer1"
dino_native pca --output_dir "$native"
dino_native similarity --query 10 12 --output_dir "$native"
# A DINOv2 model with registers, exported for the page, and its native numbers at 28 x 14 px.
mkdir -p "$native/v2"
cargo run -q -p dino-trainer -- export --pretrained_weights tests/fixtures/v2reg4_official.pth --dtype f32 \
  --output "$native/v2/v2reg4.safetensors"
for view in attention pca; do
  cargo run -q -p dino-trainer -- "$view" --image tests/images/astronaut.jpg --pretrained_weights \
    "$native/v2/v2reg4.safetensors" --image_size 392 --device cpu --output_dir "$native/v2"
done
node web/tests/browser.mjs dist "$native/attention.npy" "$shots"
