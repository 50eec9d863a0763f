#!/usr/bin/env bash
# Issue 17, int4 at M = 1-8 in one device call: the CUDA GEMV's tests, the GEMV sweep on the three Llama-7B
# shapes (the CUDA GEMV of cuda_int4_gemv vs the Triton packed-bf16x2 one, tinygemm and bf16), then greedy decode
# of the 32-layer 7B-shaped model (batch 1, prompt 128, 256 tokens) with whatever the selector picks. From the
# repo root, through the device tool:   OUT=/tmp/gemv bash benchmarks/device_gpu_gemv.sh      (about 8 minutes)
# STEPS=tests,sweep1,sweepm,decode,batched,ab,profile,pdl,defaults,mmasweep,mmadecode,mmafull,mmart,mmagemm,remeasure picks the parts.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=${NNSLIM_CUDA_KERNELS:-1}  # the decode steps: the selector may pick the CUDA GEMV
OUT=${OUT:-build/device-gemv}
STEPS=${STEPS:-tests,sweep1,sweepm,decode}
mkdir -p "$OUT"
has() { [[ ",$STEPS," == *",$1,"* ]]; }  # STEPS names a part exactly (mmadecode is not decode)
nvidia-smi --query-gpu=name --format=csv,noheader
if has tests; then
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_cuda_gemv.py 2>&1 | tail -3
fi
if has sweep1; then
  timeout 240 python3 benchmarks/gpu_int4_gemv.py --m 1 --families cuda,x2 --json "$OUT/gpu_int4_gemv_cuda_m1.json" \
    | grep -v "^  "
fi
if has sweepm; then
  timeout 240 python3 benchmarks/gpu_int4_gemv.py --m 2,4,8 --families cuda --pdl on --stages 2,4 --json "$OUT/gpu_int4_gemv_cuda_m248.json" \
    | grep -v "^  "
fi
if has decode; then
  timeout 200 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --batch 1 --kv model --runs 1 \
    --new-tokens 256 --json "$OUT/gpu_decode_32layers_b1_cuda_gemv.json" 2>&1 | tail -8
fi
if has batched; then
  timeout 240 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 --batch 1,8,32 --kv model --runs 1 \
    --new-tokens 128 --json "$OUT/gpu_batched_decode_8layers_cuda_gemv.json" 2>&1 | tail -12
fi
if has ab; then  # the 8-layer decode at batch 1 without and with the CUDA GEMV offered to the selector,
  # and with the selector timing candidates from HBM (cold) instead of L2
  for envs in "NNSLIM_CUDA_KERNELS=0" "NNSLIM_CUDA_KERNELS=1" "NNSLIM_CUDA_KERNELS=0 NNSLIM_SELECT_TIMING=cold" \
              "NNSLIM_CUDA_KERNELS=1 NNSLIM_SELECT_TIMING=cold"; do
    echo "## $envs"
    tag=${envs//=/_}
    env $envs timeout 150 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 --batch 1 --kv model --runs 3 \
      --new-tokens 128 --json "$OUT/gpu_decode_8layers_b1_${tag// /_}.json" 2>&1 | grep '"variant"'
  done
fi
if has pdl; then  # issue 17: the Triton decode kernels launched as programmatic dependents (PDL),
  # with the selector's warm and cold timing; then the 32-layer model and the profile with the better pair
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_decode.py tests/runtime/test_cuda_gemv.py \
    2>&1 | tail -2
  for envs in "NNSLIM_PDL=0 NNSLIM_SELECT_TIMING=warm" "NNSLIM_PDL=1 NNSLIM_SELECT_TIMING=warm" \
              "NNSLIM_PDL=0 NNSLIM_SELECT_TIMING=cold" "NNSLIM_PDL=1 NNSLIM_SELECT_TIMING=cold"; do
    echo "## $envs"
    tag=${envs//=/_}
    env NNSLIM_CUDA_KERNELS=0 $envs timeout 100 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 \
      --batch 1 --kv model --runs 3 --new-tokens 128 --json "$OUT/gpu_decode_8layers_b1_${tag// /_}.json" 2>&1 \
      | grep '"variant"'
  done
  echo "## 32 layers, ${PDL_ENVS:=NNSLIM_PDL=1 NNSLIM_SELECT_TIMING=cold}"
  env NNSLIM_CUDA_KERNELS=0 $PDL_ENVS timeout 200 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 \
    --batch 1 --kv model --runs 1 --new-tokens 256 --json "$OUT/gpu_decode_32layers_b1_pdl.json" 2>&1 | grep '"variant"'
  env NNSLIM_CUDA_KERNELS=0 $PDL_ENVS timeout 100 python3 benchmarks/gpu_decode_profile.py --layers 8 --variants int4 \
    --batch 1 --pdl --json "$OUT/gpu_decode_profile_8layers_b1_pdl.json"
fi
if has defaults; then  # issue 17: the defaults (PDL, cold selector timing) against the earlier ones
  # (NNSLIM_PDL=0 NNSLIM_SELECT_TIMING=warm) at batch 1, 8, 32; the CUDA GEMV offered; the int8 cache at 16k
  timeout 200 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/runtime/test_decode.py \
    tests/runtime/test_cuda_gemv.py 2>&1 | grep -v "^\s*$" | tail -25
  for envs in "NNSLIM_CUDA_KERNELS=0" "NNSLIM_CUDA_KERNELS=0 NNSLIM_PDL=0 NNSLIM_SELECT_TIMING=warm"; do
    echo "## $envs"
    tag=${envs//=/_}
    env $envs timeout 150 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 --batch 1,8,32 --kv model \
      --runs 1 --new-tokens 128 --json "$OUT/gpu_batched_8layers_${tag// /_}.json" 2>&1 | grep '"variant"'
  done
  echo "## NNSLIM_CUDA_KERNELS=1"
  env NNSLIM_CUDA_KERNELS=1 timeout 100 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 --batch 1 \
    --kv model --runs 3 --new-tokens 128 --json "$OUT/gpu_decode_8layers_b1_cuda_gemv_pdl.json" 2>&1 | grep '"variant"'
  echo "## 32 layers, prompt 16384, int8 cache"
  env NNSLIM_CUDA_KERNELS=0 timeout 200 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --batch 1 \
    --prompt 16384 --kv model,int8 --runs 1 --new-tokens 256 --json "$OUT/gpu_kv_32layers_16k_pdl.json" 2>&1 \
    | grep '"variant"'
fi
if has mmasweep; then  # issue 17: the tensor-core int4 GEMV (cuda_int4_mma_gemv): its tests, then its
  # launches against the packed GEMV (both PTX forms of 9l) / tinygemm / bf16 at M = 1 and 16
  timeout 240 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/runtime/test_cuda_mma_gemv.py 2>&1 \
    | grep -v "^\s*$" | tail -15
  timeout 200 python3 benchmarks/gpu_int4_gemv.py --m 1 --families cudamma,x2kept,x2andor --pdl off --rep-ms 30 \
    --json "$OUT/gpu_int4_gemv_mma_m1.json" | grep -v "^  "
  timeout 100 python3 benchmarks/gpu_int4_gemv.py --m 16 --families cudamma --pdl off --rep-ms 30 \
    --json "$OUT/gpu_int4_gemv_mma_m16.json" | grep -v "^  "
fi
if has mmadecode; then  # the 8-layer decode at batch 1 / 8 / 32 without and with the tensor-core GEMV
  # offered to the selector (one process per row)
  for envs in "NNSLIM_CUDA_MMA_GEMV=0" "NNSLIM_CUDA_MMA_GEMV=1"; do
    echo "## $envs"
    env NNSLIM_CUDA_KERNELS=0 $envs timeout 150 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 \
      --batch 1,8,32 --kv model --runs 2 --new-tokens 128 --json "$OUT/gpu_decode_8layers_mma_${envs//=/_}.json" 2>&1 \
      | grep '"variant"'
  done
fi
if has mmafull; then  # the runtime GPU tests with the tensor-core GEMV offered, then the 32-layer
  # decode at batch 1 with the defaults
  timeout 300 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/runtime/test_decode.py \
    tests/runtime/test_kernels.py tests/runtime/test_cuda_gemv.py tests/runtime/test_cuda_mma_gemv.py 2>&1 \
    | grep -v "^\s*$" | tail -15
  env NNSLIM_CUDA_KERNELS=0 timeout 200 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --batch 1 \
    --kv model --runs 1 --new-tokens 256 --json "$OUT/gpu_decode_32layers_b1_mma.json" 2>&1 | grep '"variant"'
fi
if has mmart; then  # the tensor-core GEMV with fp16 activations and RT 16-row tiles per warp: its GPU tests
  # (both dtypes), M = 1 against the packed GEMV / tinygemm, M = 8-32 with RT 1 and 2, then the 8-layer decode
  timeout 240 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/runtime/test_cuda_mma_gemv.py 2>&1 \
    | grep -v "^\s*$" | tail -15
  timeout 150 python3 benchmarks/gpu_int4_gemv.py --m 1 --families cudamma,x2kept --pdl off --rep-ms 30 \
    --json "$OUT/gpu_int4_gemv_mma_m1.json" | grep -v "^  "
  timeout 200 python3 benchmarks/gpu_int4_gemv.py --m 8,16,32 --families cudamma --pdl off --mma-rt 1,2 --rep-ms 20 \
    --json "$OUT/gpu_int4_gemv_mma_rt_m8_32.json" | grep -v "^  "
  env NNSLIM_CUDA_KERNELS=0 timeout 150 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 \
    --batch 1,8,32 --kv model --runs 2 --new-tokens 128 --json "$OUT/gpu_decode_8layers_mma.json" 2>&1 \
    | grep '"variant"'
fi
if has mmagemm; then  # the CUDA tensor-core GEMM on the GEMV's layout (cuda_int4_mma_gemm): its GPU tests, then
  # its launches against bf16, the Triton MMA GEMM's kept launches and dequant + cuBLAS at M = 16-2048
  timeout 240 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/runtime/test_cuda_mma_gemm.py 2>&1 \
    | grep -v "^\s*$" | tail -15
  timeout ${GEMM_SWEEP_S:-300} python3 benchmarks/gpu_int4_gemm.py --family cuda --m ${GEMM_MS:-16,64,128,256,2048} \
    --rep-ms 20 --json "$OUT/gpu_int4_cuda_gemm_sweep.json" | grep -v "^  "
fi
if has remeasure; then  # 9m / 9n's headline numbers on another GPU (the H200) in one call: the tensor-core GEMV's
  # tests (RM_TESTS=0 skips them), M = 1 and 16 against the packed GEMV / tinygemm, decode at 8 layers (batch 1 / 8 /
  # 32) and 32 layers
  [[ ${RM_TESTS:-1} == 0 ]] || timeout 200 python3 -m pytest -q -rf --tb=short -p no:cacheprovider \
    tests/runtime/test_cuda_mma_gemv.py 2>&1 | grep -v "^\s*$" | tail -8
  timeout 150 python3 benchmarks/gpu_int4_gemv.py --m 1,16 --families cudamma,x2kept --pdl off --rep-ms 20 \
    --json "$OUT/gpu_int4_gemv_mma_m1_m16.json" | grep -v "^  "
  env NNSLIM_CUDA_KERNELS=0 timeout 120 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 \
    --batch 1,8,32 --kv model --runs 1 --new-tokens 128 --json "$OUT/gpu_decode_8layers_mma.json" 2>&1 | grep '"variant"'
  env NNSLIM_CUDA_KERNELS=0 timeout 150 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --batch 1 \
    --kv model --runs 1 --new-tokens 256 --json "$OUT/gpu_decode_32layers_b1_mma.json" 2>&1 | grep '"variant"'
fi
if has profile; then  # GPU time per kernel class of one decode step, and the gaps between kernels
  timeout 200 python3 benchmarks/gpu_decode_profile.py --layers 8 --variants bf16,int4 --batch 1 \
    --json "$OUT/gpu_decode_profile_8layers_b1.json"
fi
