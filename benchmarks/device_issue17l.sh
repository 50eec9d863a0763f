#!/usr/bin/env bash
# Issue 17, session 56 (not run yet: no device machine was lent after it was written): two trial forms of the Gluon int4 GEMM for M >= 256 (where int4 is still slower than bf16):
# the program's scales staged once into shared memory (SS: no K step waits on a global load before dequantizing) and
# a persistent grid (PERSIST: one program per SM walking the tiles, its store overlapping the next tile's loads).
# Their GPU tests first (every launch, kept and trial, against the dequantize-then-matmul reference: ragged M / N,
# fp16, asymmetric), then the sweep beside the kept launches and the Triton MMA GEMM. From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17l.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17l}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
# the trial launches live in a patch until a GPU has tested them (see its header); the device's copy of the tree
# is thrown away after the call
patch -p1 < "$(dirname "$0")/patches/gluon_int4_gemm_ss_persist.patch" || exit 1
TAIL=6 run 150 python3 -m pytest -q -p no:cacheprovider -rf tests/runtime/test_gluon_gemm.py
TAIL=14 run 330 python3 benchmarks/gpu_int4_gemm.py --family gluon --trials --m 128,256,512,2048 --rep-ms 20 \
  --json "$OUT/gpu_int4_gemm_gluon_trials.json"
TAIL=4 run 100 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_kernels.py tests/quant/test_weight_only.py \
  -k "mma_gemm_is_a_selector or wrong or gluon"
