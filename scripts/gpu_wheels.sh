#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels that napari-samtune's core needs on the lent
# GPU machine beyond what its image has (see benchmarks/gpu_check.sh): pure-Python packages,
# for that machine's Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform any -d .whl \
    segment-anything==1.0 mobilesam-mirror==1.0.0 platformdirs==4.14.9
ls -l .whl
