"""Run by benchmarks/optimum_check.sh inside a venv with Optimum (transformers < 4.58, which optimum-onnx
requires): load an nnslim artifact with Optimum -- ORTModelForCausalLM for a decoder's model.onnx (KV cache as
past/present inputs and outputs), ORTModelForSeq2SeqLM for an encoder-decoder's encoder_model.onnx /
decoder_model.onnx / decoder_with_past_model.onnx, optimum-intel's OVModelForCausalLM for openvino_model.xml and
OVModelForSeq2SeqLM for openvino_encoder_model.xml / openvino_decoder_model.xml / ..._with_past_model.xml --
and compare its greedy tokens with transformers' generate on the source model (or print them, for a quantized
artifact).

  python benchmarks/optimum_check.py ARTIFACT_DIR [SOURCE_HF_DIR [TOLERANCE]]
"""
import sys
from pathlib import Path

import numpy as np
import torch

art = Path(sys.argv[1])
seq2seq = (art / "encoder_model.onnx").is_file() or (art / "openvino_encoder_model.xml").is_file()
if (art / "openvino_encoder_model.xml").is_file():
    from optimum.intel import OVModelForSeq2SeqLM

    cls, m = "OVModelForSeq2SeqLM", OVModelForSeq2SeqLM.from_pretrained(str(art), use_cache=True)
elif (art / "openvino_model.xml").is_file():
    from optimum.intel import OVModelForCausalLM

    cls, m = "OVModelForCausalLM", OVModelForCausalLM.from_pretrained(str(art), use_cache=True)
elif seq2seq:
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    cls, m = "ORTModelForSeq2SeqLM", ORTModelForSeq2SeqLM.from_pretrained(str(art), use_cache=True,
                                                                           use_io_binding=False)
else:
    from optimum.onnxruntime import ORTModelForCausalLM

    cls, m = "ORTModelForCausalLM", ORTModelForCausalLM.from_pretrained(str(art), file_name="model.onnx",
                                                                         use_cache=True, use_io_binding=False)
ids = torch.as_tensor(np.random.default_rng(0).integers(1, 30000, (1, 7)))
skip = 0 if seq2seq else 7  # a decoder-only model's output starts with the prompt
args = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
            output_logits=True)
out = m.generate(ids, **args)
got, scores = out.sequences[0, skip:].tolist(), torch.stack(out.logits)
print(f"{art}: Optimum {cls} (use_cache=True) greedy tokens {got}")
if len(sys.argv) > 2:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    ref = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(sys.argv[2]).eval()
    ref_out = ref.generate(ids, **args)
    want = ref_out.sequences[0, skip:].tolist()
    ref_scores = torch.stack(ref_out.logits)
    err = float((scores - ref_scores).abs().max() / ref_scores.abs().max().clamp(min=1))
    print(f"  transformers generate on the source: {want}; tokens equal: {got == want}; every step's logits "
          f"(cached steps included): relative max difference {err:.2e}")
    if len(sys.argv) > 3:  # a quantized artifact: its own tolerance against the float model
        sys.exit(0 if err <= float(sys.argv[3]) else 1)
    sys.exit(0 if got == want and err <= 1e-4 else 1)
