"""Encoder-decoders (T5, BART) built from configs: compressed, reloaded, deployed as Optimum's seq2seq ONNX layout
with a KV cache whose steps match transformers'; the seq2seq metric."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import nnslim
from nnslim.runtime.onnx_seq2seq import FILES as SEQ2SEQ_FILES

from hf_zoo import _build  # noqa: E402


pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfzoo")
    return {kind: _build(kind, root) for kind in ("t5", "bart")}


def test_encoder_decoder_compresses_and_reloads(zoo, tmp_path, capfd):
    """T5 (encoder-decoder, tied embeddings): int4 in nnslim's layout (said why), fp16 and structurally pruned as
    transformers checkpoints with transformers' logits; each reloads and is measured against the fp32 model on
    its own greedy output."""
    from transformers import AutoModelForSeq2SeqLM

    from nnslim.cli import main
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    t5 = str(zoo["t5"])
    assert main(["compress", "--model", t5, "--method", "int4-rtn", "--set", "group_size=32", "--out",
                 str(tmp_path / "q"), "--no-report"]) == 0
    assert "cannot load a quantized T5ForConditionalGeneration (its weight init" in capfd.readouterr().err
    assert json.loads((tmp_path / "q" / "nnslim.json").read_text())["format"] == "torch"
    q = nnslim.load(tmp_path / "q")
    wo = next(m for m in q.modules() if isinstance(m, WeightOnlyLinear))
    assert wo.weight.is_meta and wo.weight.shape == (wo.out_features, wo.in_features)  # what T5 reads of it
    shared = q.model.shared.weight
    assert q.model.encoder.embed_tokens.weight is shared and q.model.lm_head.weight is shared  # re-tied
    few = _few_sentences(tmp_path)
    metrics = nnslim.evaluate(str(tmp_path / "q"), testbed=t5, eval_data=few)["metrics"]
    assert metrics["top1_agreement"] > 0.8 and metrics["logits_cos_mean"] < 1 - 1e-6  # int4 changed the outputs
    assert metrics["perplexity_of_fp32_output"] > 1

    res = nnslim.compress(t5, {"steps": [{"method": "fp16"}]}, out=tmp_path / "h", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "hf"
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(res.out)).eval()
    ids, dec = torch.randint(1, 30522, (2, 12)), torch.randint(1, 30522, (2, 5))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits
        mine = nnslim.load(res.out)(ids, torch.ones_like(ids), dec)
    torch.testing.assert_close(theirs.float(), mine.float())

    res = nnslim.compress(t5, {"steps": [{"method": "prune-structured", "ratio": 0.5}]}, out=tmp_path / "p",
                          report=False)
    n0 = sum(p.numel() for p in nnslim.load(tmp_path / "h").parameters())  # fp16: every parameter of the original
    pruned = nnslim.load(res.out)
    assert sum(p.numel() for p in pruned.parameters()) < n0
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "hf"  # config.json: T5's d_ff rewritten
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(res.out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits,
                                   pruned(ids, torch.ones_like(ids), dec))
    assert "top1_agreement" in nnslim.evaluate(str(res.out), testbed=t5, eval_data=few)["metrics"]



def test_encoder_decoder_deploys_as_optimums_onnx_layout(zoo, tmp_path):
    """T5 as ONNX and static int8 (with int8 attention products, what `auto` picks on a VNNI CPU): Optimum's
    encoder / decoder / decoder-with-past graphs, measured against the fp32 model, every cached step checked."""
    from nnslim.cli import main

    t5 = str(zoo["t5"])
    # torch.export fails on T5 with dynamic shapes: the TorchScript exporter's graphs, checked at other shapes
    res = nnslim.compress(t5, {"steps": [{"method": "onnx"}]}, out=tmp_path / "x", report=False)
    meta = json.loads((res.out / "nnslim.json").read_text())
    assert meta["format"] == "onnx" and set(SEQ2SEQ_FILES) <= set(meta["files"]) and "config.json" in meta["files"]
    assert any("decoder step with past" in n for n in res.notes)
    # the two decoders' weights are written once, in one external data file both graphs refer to
    from nnslim.io import onnx_external_files

    assert any("common weights" in n and "stored once" in n for n in res.notes)
    assert meta["files"].count("decoder_model.onnx_data") == 1
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        assert onnx_external_files(res.out / name) == ["decoder_model.onnx_data"]
    few = _few_sentences(tmp_path)
    assert nnslim.evaluate(str(res.out), testbed=t5, eval_data=few)["metrics"]["top1_agreement"] == pytest.approx(1.0)
    _cached_steps_match_transformers(res.out, t5, tolerance=1e-4)

    assert main(["compress", "--model", t5, "--method", "int8", "--set", "samples=32", "--set", "matmuls=true",
                 "--out", str(tmp_path / "i8"), "--no-report"]) == 0
    notes = json.loads((tmp_path / "i8" / "nnslim.json").read_text())["notes"]
    for name in SEQ2SEQ_FILES:  # every graph: its layers as int8; attention products as int8 in the encoder only
        assert any(n.startswith(f"{name}: int8 ONNX:") for n in notes)
        int8_products = any(n.startswith(f"{name}: attention matmuls:") and "MatMuls as int8" in n for n in notes)
        assert int8_products == (name == "encoder_model.onnx")
    assert nnslim.evaluate(str(tmp_path / "i8"), testbed=t5, eval_data=few)["metrics"]["top1_agreement"] > 0.95
    # random ids are far from the calibration text (activations clip): the cache is checked against the graphs
    _cached_steps_match_transformers(tmp_path / "i8", t5, tolerance=1e-3, against_itself=True)


def test_bart_int8_dynamic_and_openvino_deploy_as_optimums_layout(zoo, tmp_path):
    """BART: learned position embeddings (an nn.Embedding subclass called with the past length) stay float;
    its token embeddings and linears are int8; the cache steps match transformers."""
    bart = str(zoo["bart"])
    res = nnslim.compress(bart, "int8-dynamic", out=tmp_path / "d", report=False)
    assert any("decoder_with_past_model.onnx: int8 ONNX:" in n for n in res.notes)
    few = _few_sentences(tmp_path)
    assert nnslim.evaluate(str(res.out), testbed=bart, eval_data=few)["metrics"]["top1_agreement"] > 0.95
    _cached_steps_match_transformers(res.out, bart, tolerance=0.05)
    # as OpenVINO IRs: the three graphs under optimum-intel's names, run by OpenVINO
    res = nnslim.compress(bart, "openvino", out=tmp_path / "ov", report=False)
    meta = json.loads((res.out / "nnslim.json").read_text())
    assert meta["format"] == "openvino" and meta["file"] == "openvino_encoder_model.xml"
    assert {"openvino_decoder_model.bin", "openvino_decoder_with_past_model.xml"} <= set(meta["files"])
    assert not list(res.out.glob("*.onnx"))
    assert nnslim.evaluate(str(res.out), testbed=bart, eval_data=few)["metrics"]["top1_agreement"] == pytest.approx(1.0)


def _few_sentences(tmp_path: Path, n: int = 12) -> str:
    """A short eval text file: each seq2seq evaluation generates the fp32 reference for every sentence."""
    path = tmp_path / "few.txt"
    path.write_text("\n".join(f"Sentence {i} is about making trained models smaller and faster." for i in range(n)))
    return str(path)


def _cached_steps_match_transformers(artifact_dir, hf_dir: str, tolerance: float, steps: int = 4,
                                     against_itself: bool = False) -> None:
    """Run the three graphs as Optimum does (the first decoder on two tokens, then one token at a time through
    the decoder with past, the cross-attention keys/values kept from the first): every step's logits match
    transformers' model on the whole target (or, against_itself, the artifact's own run of the first decoder on
    the whole target: the cache alone), a padded encoder input included."""
    from transformers import AutoModelForSeq2SeqLM

    from nnslim.runtime import make_runner

    runner = make_runner(nnslim.load(artifact_dir))
    enc, first, with_past = runner.parts
    gen = torch.Generator().manual_seed(0)
    ids, tgt = torch.randint(1, 30000, (2, 9), generator=gen), torch.randint(1, 30000, (2, steps + 2), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    if against_itself:
        ref = runner({"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "decoder_input_ids": tgt.numpy()})
    else:
        with torch.no_grad():
            ref = AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval()(input_ids=ids, attention_mask=mask,
                                                                        decoder_input_ids=tgt).logits.numpy()
    mask_np = mask.numpy()
    states = enc.run_all({"input_ids": ids.numpy(), "attention_mask": mask_np})["last_hidden_state"]
    out = first.run_all({"encoder_attention_mask": mask_np, "input_ids": tgt[:, :2].numpy(),
                         "encoder_hidden_states": states})
    as_past = (lambda o, part: {k.replace("present.", "past_key_values."): v for k, v in o.items() if part in k})
    cross, got = as_past(out, ".encoder."), [out["logits"]]
    for t in range(2, steps + 2):
        out = with_past.run_all({"encoder_attention_mask": mask_np, "input_ids": tgt[:, t:t + 1].numpy(),
                                 **as_past(out, ".decoder."), **cross})
        got.append(out["logits"])
    got = np.concatenate(got, axis=1)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() / max(1.0, np.abs(ref).max()) <= tolerance


def test_seq2seq_metric_stops_at_the_fp32_outputs_end():
    """Positions after the fp32 output's first end-of-sequence token are not scored."""
    import numpy as np

    from nnslim.testbeds.seq2seq import until_eos

    gen = np.array([[7, 5, 9, 9], [7, 8, 9, 4]])  # 4 generated tokens (after the start token)
    assert until_eos(gen, 5).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert until_eos(gen, [4, 5]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and until_eos(gen, None).sum() == 8
