#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine: the system libraries napari
# needs for a (virtual) display, a virtual environment in .venv, a matching
# torch/torchvision pair, and napari-samtune with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh virtual environment takes about 6.3 GB (torch's CUDA build and its libraries, which
# also run on the CPU): say so before installing, not halfway through with pip's "No space left".
NEED_GB=${SAMTUNE_SETUP_NEED_GB:-7}
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
    echo "setup: $((free_kb / 1024 / 1024)) GB free on the disk of $PWD, and the virtual" \
      "environment .venv needs about ${NEED_GB} GB (torch and its libraries). Free some space" \
      "(old clones' .venv folders, /tmp/pytest-of-$(id -un), ~/.cache/pip) and run" \
      "bash scripts/setup.sh again." >&2
    exit 1
  fi
fi

APT_PACKAGES=(xvfb libgl1-mesa-dri libegl1 libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: please install these system packages for napari: ${missing[*]}" >&2
  else
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "setup: done. Run the tests with: .venv/bin/python -m pytest"
