#!/usr/bin/env bash
# BENCHMARKS.md 7d: nnslim's decoder ONNX artifacts (with KV cache) load in Optimum's ORTModelForCausalLM.
# optimum-onnx requires transformers < 4.58, so Optimum runs in its own venv (build/optimum-venv); the
# artifacts are made by nnslim in the project venv (.venv) from small HF models built from configs.
#   bash benchmarks/optimum_check.sh
set -euo pipefail
W=build/optimum-check
mkdir -p "$W"
.venv/bin/python - "$W" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from hf_zoo import _build
import nnslim
w = Path(sys.argv[1])
for kind in ("llama", "gpt2", "qwen2"):
    src = _build(kind, w / "src")
    nnslim.compress(str(src), "onnx", out=w / kind, overwrite=True, report=False)
nnslim.compress(str(w / "src" / "llama"), "examples/int4_onnx_llm.yaml", out=w / "llama-int4", overwrite=True,
                report=False)
PY
if [ ! -x build/optimum-venv/bin/python ]; then
  python3 -m venv build/optimum-venv
  build/optimum-venv/bin/pip install -q torch==2.13.0 "transformers<4.58" "optimum-onnx[onnxruntime]"
fi
build/optimum-venv/bin/python -c "import transformers, optimum, onnxruntime; print('transformers', transformers.__version__, 'onnxruntime', onnxruntime.__version__)"
for kind in llama gpt2 qwen2; do
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/$kind" "$W/src/$kind" 2>&1 | grep -v -i warn
done
build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/llama-int4" 2>&1 | grep -v -i warn
