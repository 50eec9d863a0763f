#!/usr/bin/env bash
# Issue 17, int4 at M = 128-2048 in one device call: the Triton MMA GEMM's kept launches against other launches
# (TILES; by default BLOCK_N = 256 with four warpgroups sharing one x tile, and two 8-warp split-K tiles: BENCHMARKS.md
# 9o), then Nsight Compute on kept launches and on bf16 cuBLAS at M = 128 and 2048 (4096x4096). From the repo root,
# through the device tool:
#   OUT=/tmp/tiles bash benchmarks/device_int4_gemm_tiles.sh          (about 5 minutes)
# STEPS=sweep,ncu picks the parts; TILES overrides the launches tried beside the kept ones (a list, or the preset
# occupancy below); M the rows (128,256,2048). Two more steps: `tests` runs the MMA GEMM's GPU tests
# (tests/runtime/test_kernels.py -k mma, fp16 included); `f16` compares this tree's fp16 GEMM with another version's
# at F16_SRC (`git archive BRANCH src tests | tar -x -C DIR`; 9p: packed f16x2 against fp32 dequantization) - that
# version's tests, then both trees' kept launches on fp16 activations (--dtype fp16). `gluon`: the warp-specialized
# Gluon GEMM's GPU tests, then its sweep beside the kept Triton launches at M (gpu_int4_gemm.py --family gluon).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
OUT=${OUT:-build/device-tiles}
STEPS=${STEPS:-sweep,ncu}
tiles=128x256x128k4w16s3,128x256x64k8w16s4,128x256x64k4w16s4,128x128x64k4w8s4,128x128x128k2w8s4
tiles+=,128x256x64k1w16s4,128x256x128k1w16s3,128x256x64k1w16s3  # the default: 9o's run
occupancy=128x64x128k4w4s2,128x64x128k8w4s2,64x64x128k2w4s3,128x64x64k8w4s3  # 2-4 blocks / SM (9p)
case ${TILES:-} in
  "") TILES=$tiles ;;
  occupancy) TILES=$occupancy ;;
esac
mkdir -p "$OUT"
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name --format=csv,noheader
if has tests; then
  timeout ${TESTS_S:-200} python3 -m pytest -q -x tests/runtime/test_kernels.py -k mma 2>&1 | tee "$OUT/mma_tests.log" | tail -5
fi
if has f16; then
  [[ -d ${F16_SRC:-}/src ]] || { echo "f16: F16_SRC=${F16_SRC:-} has no src/"; exit 2; }
  PYTHONPATH=$F16_SRC/src:$F16_SRC/tests timeout ${TESTS_S:-200} python3 -m pytest -q -x \
    "$F16_SRC/tests/runtime/test_kernels.py" -k mma 2>&1 | tail -5
  for tree in "$PWD" "$F16_SRC"; do
    echo "## fp16 activations, nnslim from $tree"
    PYTHONPATH=$tree/src:$PWD/tests timeout ${F16_S:-120} python3 benchmarks/gpu_int4_gemm.py --family mma \
      --dtype fp16 --m ${F16_M:-128,2048} --shapes ${F16_SHAPES:-all} --rep-ms 20 --mma-configs kept \
      --json "$OUT/gpu_int4_mma_fp16_$(basename "$tree").json" | grep -v "^  "
  done
fi
if has gluon; then
  timeout ${TESTS_S:-200} python3 -m pytest -q -x tests/runtime/test_gluon_gemm.py 2>&1 | tee "$OUT/gluon_tests.log" | tail -5
  timeout ${SWEEP_S:-300} python3 benchmarks/gpu_int4_gemm.py --family gluon --m ${M:-128,256,2048} --rep-ms 20 \
    --json "$OUT/gpu_int4_gluon.json" | grep -v "^  "
fi
if has sweep; then
  timeout ${SWEEP_S:-300} python3 benchmarks/gpu_int4_gemm.py --family mma --m ${M:-128,256,2048} --rep-ms 20 \
    --mma-configs "kept,$TILES" --json "$OUT/gpu_int4_mma_tiles.json" | grep -v "^  "
fi
if has ncu; then
  NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
  prof() {  # kernel regex, then the script's arguments
    local rx=$1; shift
    echo "## ncu $*"
    timeout 90 "$NCU" --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
      -k "regex:$rx" --launch-skip 2 --launch-count 1 python3 benchmarks/ncu_int4_mma_gemm.py "$@" 2>&1 \
      | grep -v "^==PROF==" 
  }
  {
    prof int4_gemm_mma --kernel triton --m 128 --config 128x64x128k2w4s4
    prof int4_gemm_mma --kernel triton --m 128 --config 128x128x128k4w8s4
    prof "nvjet|gemm|xmma|cutlass" --kernel bf16 --m 128
    prof int4_gemm_mma --kernel triton --m 2048 --config 256x128x64k1w8s4
    prof "nvjet|gemm|xmma|cutlass" --kernel bf16 --m 2048
  } > "$OUT/ncu_int4_mma_triton.txt"
  keys="^## |Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy"
  grep -E "$keys|Registers Per|Issue Slots Busy|Executed Ipc A" "$OUT/ncu_int4_mma_triton.txt"
fi
