#!/usr/bin/env bash
# BENCHMARKS.md 8c: the SmolLM2 CPU deployment table (benchmarks/llm_cpu_deploy.py) on the device machine's
# host CPU (AVX512-VNNI / AMX). Run through the device tool from the repo root, carrying .whl (filled by
# `bash benchmarks/device_setup.sh prepare`):  bash benchmarks/device_cpu_llm.sh [threads]
# With `threads`: the decode thread sweep (benchmarks/cpu_decode_threads.py) instead of the deployment table.
# The model is SmolLM2-135M's own config with random weights (its weights cannot travel): tokens/s and
# latency ratios are the point; its perplexities are those of a random model.
set -euo pipefail
source benchmarks/device_setup.sh  # CPU facts, carried wheels, PYTHONPATH
OUT=${OUT:-build/device-llm}
random_model LlamaForCausalLM .whl/smollm2 /tmp/smollm2-shaped
if [ "${1:-}" = "threads" ]; then
  python3 -u benchmarks/cpu_decode_threads.py --testbed /tmp/smollm2-shaped --out "$OUT-threads" ${SWEEP_ARGS:-} 2>&1 \
    | grep -v -E "Loading weights|it/s\]|━"
  exit 0
fi
python3 benchmarks/llm_cpu_deploy.py --testbed /tmp/smollm2-shaped --gptq-samples 0 --repeats 3 --out "$OUT" 2>&1 \
  | grep -v -E "Loading weights|it/s\]|━"
