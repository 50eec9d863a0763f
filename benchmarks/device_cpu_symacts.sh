#!/usr/bin/env bash
# BENCHMARKS.md 8b: nnslim's symmetric_activations=true vs false (and the post-hoc symmetric copy
# of ov_symmetric_acts.py) on the device machine's host CPU, MiniLM-shaped (random weights), interleaved A/B in
# OpenVINO and ONNX Runtime. Through the device tool, carrying .whl:
#   OUT=/tmp/symacts bash benchmarks/device_cpu_symacts.sh
set -euo pipefail
source benchmarks/device_setup.sh
OUT=${OUT:-build/device-symacts}
random_model BertModel .whl/minilm /tmp/minilm-shaped
python3 -m nnslim compress --model /tmp/minilm-shaped --method int8 --set symmetric_activations=false \
  --out "$OUT/default" --no-report --overwrite
python3 -m nnslim compress --model /tmp/minilm-shaped --method int8 --set symmetric_activations=true \
  --out "$OUT/symmetric" --no-report --overwrite
python3 benchmarks/ov_symmetric_acts.py "$OUT/default/model.onnx" --also "$OUT/symmetric/model.onnx" --also-ort \
  --batch 32 --rounds ${ROUNDS:-8}
