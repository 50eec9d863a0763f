#!/usr/bin/env bash
# BENCHMARKS.md 8d: int8 on a CNN where compute dominates (issue 16: ">= 2x fp32 on a VNNI CPU, >= NNCF on any
# CPU"): a ResNet-18-shaped transformers ResNetForImageClassification (random weights, built from a config; its
# inputs are the image testbed's default digits scaled to 160 x 160, batch 8), through benchmarks/int8_cpu.py: fp32 in
# ONNX Runtime / OpenVINO, nnslim int8, ONNX Runtime's quantizer, NNCF, side by side in one run.
#   bash benchmarks/cnn_int8.sh                 # here (the dev machine's .venv)
#   bash benchmarks/cnn_int8.sh device          # on the device machine's host CPU (carry .whl: device_setup.sh)
set -euo pipefail
if [ "${1:-}" = "device" ]; then
  source benchmarks/device_setup.sh  # CPU facts, carried wheels, PYTHONPATH
  PY=python3
else
  PY=.venv/bin/python
  lscpu | grep -E "^(Model name|CPU\(s\)|Flags)" | sed -E 's/^Flags:\s+/Flags: /'
fi
DIR=${DIR:-/tmp/resnet18-shaped}
$PY - "$DIR" <<'PY'
import json, sys
import torch, transformers as tf
torch.manual_seed(0)
config = tf.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                         layer_type="basic", num_labels=10)
config.image_size = 160  # read by the image testbed (default data scaled to it)
model = tf.ResNetForImageClassification(config).eval()
model.save_pretrained(sys.argv[1])
with open(f"{sys.argv[1]}/preprocessor_config.json", "w") as f:
    json.dump({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}, f)
print(f"built {sys.argv[1]}: ResNet-18-shaped, {sum(p.numel() for p in model.parameters())} params, random weights")
PY
$PY benchmarks/int8_cpu.py --testbeds "$DIR" --repeats ${REPEATS:-10} --out "${OUT:-build/cnn-int8}" 2>&1 \
  | grep -v -E "Loading weights|it/s\]"
