#!/usr/bin/env bash
# Issue 17, diagnosis of the slow eager prefill (BENCHMARKS 9s) and the fp8 decoder's self-check (one device call):
# gpu_prefill_profile.py (host issue time vs GPU time, cProfile, kernels chosen; one int4 linear per candidate),
# then the fused fp8 decoder's GPU test. From the repo root, through the device tool:
#   OUT=$OUT bash benchmarks/device_issue17d.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17d}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=${PTAIL:-150} run 300 python3 benchmarks/gpu_prefill_profile.py --layers 2 --rows 128,512
TAIL=25 run 200 python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_decode.py -k fp8
