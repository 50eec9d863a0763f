"""Run by benchmarks/optimum_check.sh inside a venv with Optimum (transformers < 4.58, which optimum-onnx
requires): load an nnslim artifact with Optimum -- ORTModelForCausalLM for a decoder's model.onnx (KV cache as
past/present inputs and outputs), ORTModelForSeq2SeqLM for an encoder-decoder's encoder_model.onnx /
decoder_model.onnx / decoder_with_past_model.onnx (ORTModelForSpeechSeq2Seq when the encoder takes
input_features: Whisper), optimum-intel's OVModelForCausalLM for openvino_model.xml and
OVModelForSeq2SeqLM for openvino_encoder_model.xml / openvino_decoder_model.xml / ..._with_past_model.xml --
and compare its greedy tokens with transformers' generate on the source model (or print them, for a quantized
artifact). A masked-LM's model.onnx loads in ORTModelForMaskedLM, its logits compared with transformers'.

  python benchmarks/optimum_check.py ARTIFACT_DIR [SOURCE_HF_DIR [TOLERANCE]]
"""
import sys
from pathlib import Path

import numpy as np
import torch

art = Path(sys.argv[1])
if any(a.endswith("ForMaskedLM") for a in __import__("json").loads((art / "config.json").read_text())["architectures"]):
    from optimum.onnxruntime import ORTModelForMaskedLM
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(art))
    enc = tok([f"Compressed models must stay {tok.mask_token}.", f"A second {tok.mask_token} about weights."],
              padding=True, return_tensors="pt")
    got = ORTModelForMaskedLM.from_pretrained(str(art), use_io_binding=False)(**enc).logits
    ref = AutoModelForMaskedLM.from_pretrained(sys.argv[2]).eval()(**enc).logits.detach()
    rel = float((got - ref).abs().max() / ref.abs().max())
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    print(f"ORTModelForMaskedLM {art.name}: logits max rel diff {rel:.2e} vs transformers, top-1 at every position "
          f"{'equal' if torch.equal(got.argmax(-1), ref.argmax(-1)) else 'differ'}: {'PASS' if rel < tol else 'FAIL'}")
    sys.exit(0 if rel < tol else 1)
seq2seq = (art / "encoder_model.onnx").is_file() or (art / "openvino_encoder_model.xml").is_file()
if (art / "openvino_encoder_model.xml").is_file():
    from optimum.intel import OVModelForSeq2SeqLM

    cls, m = "OVModelForSeq2SeqLM", OVModelForSeq2SeqLM.from_pretrained(str(art), use_cache=True)
elif (art / "openvino_model.xml").is_file():
    from optimum.intel import OVModelForCausalLM

    cls, m = "OVModelForCausalLM", OVModelForCausalLM.from_pretrained(str(art), use_cache=True)
elif seq2seq and "input_features" in [i.name for i in __import__("onnx").load(
        str(art / "encoder_model.onnx"), load_external_data=False).graph.input]:
    from optimum.onnxruntime import ORTModelForSpeechSeq2Seq

    cls, m = "ORTModelForSpeechSeq2Seq", ORTModelForSpeechSeq2Seq.from_pretrained(str(art), use_cache=True,
                                                                                   use_io_binding=False)
elif seq2seq:
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    cls, m = "ORTModelForSeq2SeqLM", ORTModelForSeq2SeqLM.from_pretrained(str(art), use_cache=True,
                                                                           use_io_binding=False)
else:
    from optimum.onnxruntime import ORTModelForCausalLM

    cls, m = "ORTModelForCausalLM", ORTModelForCausalLM.from_pretrained(str(art), file_name="model.onnx",
                                                                         use_cache=True, use_io_binding=False)
speech = cls == "ORTModelForSpeechSeq2Seq"
if speech:  # Whisper's log-mel features of a tone glide with noise, over the model's window
    from transformers import WhisperFeatureExtractor

    cfg = m.config
    fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
    fe.nb_max_frames = 2 * cfg.max_source_positions
    fe.n_samples = fe.nb_max_frames * fe.hop_length
    t = np.arange(fe.n_samples) / fe.sampling_rate
    audio = 0.3 * np.sin(2 * np.pi * (150 + 100 * t) * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    ids = torch.as_tensor(fe(audio.astype(np.float32), sampling_rate=fe.sampling_rate, padding="max_length",
                             return_tensors="np")["input_features"])
else:
    ids = torch.as_tensor(np.random.default_rng(0).integers(1, 30000, (1, 7)))
skip = 0 if seq2seq else 7  # a decoder-only model's output starts with the prompt
args = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
            **({"output_scores": True} if speech else {"output_logits": True}))  # Whisper's generate: scores
out = m.generate(ids, **args)
got, scores = out.sequences[0, skip:].tolist(), torch.stack(out.scores if speech else out.logits)
print(f"{art}: Optimum {cls} (use_cache=True) greedy tokens {got}")
if len(sys.argv) > 2:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq

    auto = AutoModelForSpeechSeq2Seq if speech else AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    ref = auto.from_pretrained(sys.argv[2]).eval()
    ref_out = ref.generate(ids, **args)
    want = ref_out.sequences[0, skip:].tolist()
    ref_scores = torch.stack(ref_out.scores if speech else ref_out.logits)
    finite = torch.isfinite(ref_scores)  # Whisper's generate masks suppressed tokens with -inf in both
    scores, ref_scores = torch.where(finite, scores, 0), torch.where(finite, ref_scores, 0)
    err = float((scores - ref_scores).abs().max() / ref_scores.abs().max().clamp(min=1))
    print(f"  transformers generate on the source: {want}; tokens equal: {got == want}; every step's logits "
          f"(cached steps included): relative max difference {err:.2e}")
    if len(sys.argv) > 3:  # a quantized artifact: its own tolerance against the float model
        sys.exit(0 if err <= float(sys.argv[3]) else 1)
    sys.exit(0 if got == want and err <= 1e-4 else 1)
