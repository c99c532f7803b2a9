#!/usr/bin/env bash
# The CUDA checks and benchmarks in one short run, for a lent GPU machine (the device tool's
# `run`).
#
# That machine has python3 with torch, numpy, scipy, timm, tifffile, matplotlib and tqdm
# but no internet; what else napari-samtune's core needs travels as wheels in .whl/, which
# `bash scripts/gpu_wheels.sh` downloads here first (the tool's `carry: [".whl"]`). The
# package itself is imported from src/. Each stage runs under its own time limit and writes
# its log to $OUT (or ./gpu-results), so a stage that fails or runs long costs only itself:
#
#   bash benchmarks/gpu_check.sh                  # train, embedding, checks, demo, large
#   bash benchmarks/gpu_check.sh train demo       # only these stages
#
# Without stage names it runs all but variants (about 15 minutes): on a short lease, name the
# stages still missing. The first lease (an H200, 15 minutes) measured the checks, part of
# the embedding rounds and most training steps, but no memory table (docs/gpu/), so the
# training stage now runs first, with more time.
#
# checks: benchmarks/cuda_checks.py (training in bf16/fp16/fp32, GPU -> CPU resume, nano's
# masks on the GPU vs the CPU, torchrun with NCCL); embedding: bench_embedding.py; train:
# bench_train.py on the 8/16/32 GB GPU presets (each child's peak memory printed as it ends,
# so a stage cut short still reports it); variants: encoder_variants.py (stock and fast
# encoder modules in fp32 and bf16, CUDA graphs, kernels per call); demo: `samtune demo` on the GPU; large:
# bench_train.py on the a100 preset's configurations (80 GB).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/samtune-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/samtune-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)" |
    tee -a "$out/gpu.txt"

stage() {  # stage NAME SECONDS COMMAND...: run one stage, its log in $out/NAME.txt
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds} s)"
    local start=$SECONDS
    timeout "$seconds" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$name.txt"
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(train embedding checks demo large)
for name in "${stages[@]}"; do
    case $name in
    checks) stage checks 150 python3 -m pytest benchmarks/cuda_checks.py -q -p no:cacheprovider \
        -W ignore::DeprecationWarning ;;
    embedding) stage embedding 170 python3 benchmarks/bench_embedding.py --device cuda --repeats 2 ;;
    train) stage train 330 python3 benchmarks/bench_train.py --device cuda --repeats 1 --steps 3 ;;
    variants) stage variants 75 python3 benchmarks/encoder_variants.py --device cuda ;;
    demo) stage demo 90 python3 -m napari_samtune.cli demo --out /tmp/samtune-demo ;;
    large) stage large 200 python3 benchmarks/bench_train.py --device cuda --repeats 1 --steps 3 \
        --only a100:vit_b a100:vit_h ;;
    *) echo "unknown stage $name: choose checks, embedding, train, variants, demo or large" >&2 ;;
    esac
done
