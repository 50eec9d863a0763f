"""Run by benchmarks/optimum_check.sh inside a venv with Optimum (transformers < 4.58, which optimum-onnx
requires): load an nnslim decoder artifact with Optimum -- ORTModelForCausalLM for model.onnx (KV cache as
past/present inputs and outputs), optimum-intel's OVModelForCausalLM for openvino_model.xml -- and compare its
greedy tokens with transformers' generate on the source model (or print them, for a quantized artifact).

  python benchmarks/optimum_check.py ARTIFACT_DIR [SOURCE_HF_DIR]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

art = Path(sys.argv[1])
if (art / "openvino_model.xml").is_file():
    from optimum.intel import OVModelForCausalLM

    cls, m = "OVModelForCausalLM", OVModelForCausalLM.from_pretrained(str(art), use_cache=True)
else:
    from optimum.onnxruntime import ORTModelForCausalLM

    cls, m = "ORTModelForCausalLM", ORTModelForCausalLM.from_pretrained(str(art), file_name="model.onnx",
                                                                         use_cache=True, use_io_binding=False)
ids = torch.as_tensor(np.random.default_rng(0).integers(0, 30000, (1, 7)))
got = m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)[0, 7:].tolist()
print(f"{art}: Optimum {cls} (use_cache=True) greedy tokens {got}")
if len(sys.argv) > 2:
    ref = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
    want = ref.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    print(f"  transformers generate on the source: {want}; equal: {got == want}")
    sys.exit(0 if got == want else 1)
