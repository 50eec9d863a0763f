"""Run by benchmarks/optimum_check.sh inside a venv with Optimum (transformers < 4.58, which optimum-onnx
requires): load an nnslim ONNX-with-past artifact with Optimum's ORTModelForCausalLM and compare its greedy
tokens with transformers' generate on the source model (or print them, for a quantized artifact).

  python benchmarks/optimum_check.py ARTIFACT_DIR [SOURCE_HF_DIR]
"""
import sys

import numpy as np
import torch
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoModelForCausalLM

art = sys.argv[1]
m = ORTModelForCausalLM.from_pretrained(art, file_name="model.onnx", use_cache=True, use_io_binding=False)
ids = torch.as_tensor(np.random.default_rng(0).integers(0, 30000, (1, 7)))
got = m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)[0, 7:].tolist()
print(f"{art}: Optimum ORTModelForCausalLM (use_cache=True) greedy tokens {got}")
if len(sys.argv) > 2:
    ref = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
    want = ref.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    print(f"  transformers generate on the source: {want}; equal: {got == want}")
    sys.exit(0 if got == want else 1)
