#!/usr/bin/env bash
# The CUDA benchmarks in one short run, for a lent GPU machine (the device tool's `run`).
#
# That machine has python3 with torch, numpy, scipy, timm, tifffile, matplotlib and tqdm
# but no internet; what else napari-samtune's core needs travels as wheels in .whl/, which
# `bash scripts/gpu_wheels.sh` downloads here first (the tool's `carry: [".whl"]`). The
# package itself is imported from src/. Results go to $OUT (or ./gpu-results):
#
#   bash benchmarks/gpu_check.sh            # embeddings, then training
#   bash benchmarks/gpu_check.sh train      # only one of them: embedding | train
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/samtune-site .whl/*.whl
    export PYTHONPATH="/tmp/samtune-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
what="${1:-all}"
if [[ $what == all || $what == embedding ]]; then
    python3 benchmarks/bench_embedding.py --device cuda --repeats 3 2>&1 |
        tee "$out/bench_embedding_cuda.txt"
fi
if [[ $what == all || $what == train ]]; then
    python3 benchmarks/bench_train.py --device cuda --repeats 1 --steps 3 2>&1 |
        tee "$out/bench_train_cuda.txt"
fi
