#!/usr/bin/env bash
# BENCHMARKS.md 7d: nnslim's artifacts load in Optimum: decoder LLMs' ONNX (with KV cache) in ORTModelForCausalLM,
# their OpenVINO IR in optimum-intel's OVModelForCausalLM, encoder-decoders' three graphs (T5, BART: fp32, static
# and dynamic int8, int4) in ORTModelForSeq2SeqLM, Whisper's (fp32, static and dynamic int8) in
# ORTModelForSpeechSeq2Seq, whose generate (cache included) is compared with transformers', and a masked LM's
# model.onnx (fp32, static / dynamic int8) in ORTModelForMaskedLM.
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
for kind in ("llama", "gpt2"):  # GPT-2's int4 (Conv1D) reaches the ecosystem this way
    nnslim.compress(str(w / "src" / kind), "examples/int4_onnx_llm.yaml", out=w / f"{kind}-int4", overwrite=True,
                    report=False)
nnslim.compress(str(w / "src" / "llama"), "openvino", out=w / "llama-ov", overwrite=True, report=False)
for kind in ("t5", "bart"):
    src = _build(kind, w / "src")
    for method in ("onnx", "int8", "int8-dynamic"):
        nnslim.compress(str(src), method, out=w / f"{kind}-{method}", overwrite=True, report=False)
    nnslim.compress(str(src), [{"method": "int4-rtn", "group_size": 32}, {"method": "onnx"}], out=w / f"{kind}-int4",
                    overwrite=True, report=False)
    nnslim.compress(str(src), "openvino", out=w / f"{kind}-ov", overwrite=True, report=False)
nnslim.compress(str(w / "src" / "llama"), [{"method": "int8-weight-only"}, {"method": "openvino"}],
                out=w / "llama-ov-int8", overwrite=True, report=False)
src = _build("whisper", w / "src")  # speech: Optimum's ORTModelForSpeechSeq2Seq
for method in ("onnx", "int8", "int8-dynamic"):
    nnslim.compress(str(src), method, out=w / f"whisper-{method}", overwrite=True, report=False)
src = _build("bert-mlm", w / "src")  # fill-mask: Optimum's ORTModelForMaskedLM
for method in ("onnx", "int8", "int8-dynamic"):
    nnslim.compress(str(src), method, out=w / f"bert-mlm-{method}", overwrite=True, report=False)
PY
if ! build/optimum-venv/bin/python -c "import optimum.onnxruntime, optimum.intel" 2>/dev/null; then
  python3 -m venv build/optimum-venv
  build/optimum-venv/bin/pip install -q torch==2.13.0 "transformers<4.58" "optimum-onnx[onnxruntime]" \
    "optimum-intel[openvino]"
fi
build/optimum-venv/bin/python -c "import transformers, optimum, onnxruntime; print('transformers', transformers.__version__, 'onnxruntime', onnxruntime.__version__)"
for kind in llama gpt2 qwen2; do
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/$kind" "$W/src/$kind" 2>&1 | grep -v -i warn
done
# OpenVINO's CPU plugin computes in bf16 where the CPU has AVX512_BF16 / AMX: a relative tolerance of 1e-2
build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/llama-ov" "$W/src/llama" 0.01 2>&1 | grep -v -i warn
for q in llama-int4 gpt2-int4 llama-ov-int8; do
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/$q" 2>&1 | grep -v -i warn
done
for kind in t5 bart; do
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/$kind-onnx" "$W/src/$kind" 2>&1 | grep -v -i "warn\|could not find"
  for q in int8:0.05 int8-dynamic:0.05 int4:0.15; do  # quantized: every step's logits within a relative tolerance
    build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/$kind-${q%%:*}" "$W/src/$kind" "${q#*:}" 2>&1 \
      | grep -v -i "warn\|could not find"
  done
done
for q in onnx:1e-4 int8:0.05 int8-dynamic:0.05; do  # Whisper: Optimum's generate (its forced tokens) vs transformers'
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/whisper-${q%%:*}" "$W/src/whisper" "${q#*:}" 2>&1 \
    | grep -v -i "warn\|could not find\|generation flags"
done
for q in onnx:1e-4 int8:0.1 int8-dynamic:0.1; do  # masked LM: the logits of every position vs transformers'
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/bert-mlm-${q%%:*}" "$W/src/bert-mlm" "${q#*:}" 2>&1 \
    | grep -v -i "warn"
done
# optimum-intel's OVModelForSeq2SeqLM on the encoder-decoder IRs: reported, not required (see BENCHMARKS.md 7d)
for kind in t5 bart; do
  build/optimum-venv/bin/python benchmarks/optimum_check.py "$W/$kind-ov" "$W/src/$kind" 2>&1 \
    | grep -v -i "warn\|could not find" | grep -E "Optimum|transformers generate|Error|Argument" | tail -3 || true
done
