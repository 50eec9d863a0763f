#!/usr/bin/env bash
# Issue 17, the quantized KV cache at long context in one device call: the decode-attention launch sweep at 16512
# positions (int8 codes and the bf16 cache, the split kernel with 128 / 256 positions per step and 4 / 8 warps, each
# format's current launch included), then decode of the 32-layer 7B-shaped model with int4 weights, a 16384-token
# prompt and 128 new tokens, bf16 vs int8 cache, each with the launch that won. From the repo root, through the
# device tool:   OUT=/tmp/kv bash benchmarks/device_gpu_kv.sh      (about 6 minutes)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests
OUT=${OUT:-build/device-kv}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 benchmarks/gpu_decode_attention.py --lengths 16512 --formats bf16,int8 --grid split \
  --split-blocks ${BLOCKS:-128,256} --split-warps ${WARPS:-4,8} --json "$OUT/gpu_decode_attention_split.json" | grep -v "^  "
timeout 300 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --prompt 16384 --batch 1 --kv model,int8 \
  --runs 1 --new-tokens 128 --attention "$OUT/gpu_decode_attention_split.json" \
  --json "$OUT/gpu_kv_long_context_split.json" 2>&1 | grep -v kernel_choices | tail -6
