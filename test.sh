#!/usr/bin/env bash
# The test command of dino-rs (README): installs what the tests need on a fresh Debian machine
# (idempotent: every install is skipped when already done), then runs every test.
#   ./test.sh            all tests (native + wasm build + browser)
#   ./test.sh native     only the cargo tests
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

if [ "$what" = native ]; then exit 0; fi
