"""AWQ's 1/s folded into what produces each Linear's input (the default): normalizations read by the group's
Linears alone, the up / value projections feeding down_proj / o_proj; elsewhere s = 1. The folded model computes
what the float one does (8-bit codes: quantization error aside), keeps no input scale and is a plain checkpoint."""
from __future__ import annotations

import copy

import torch
from torch import nn

from nnslim import Int4AwqConfig, quantize
from nnslim.quant.weight_only.awq import fold_into_norm

from conftest import llama_samples  # noqa: E402


def _err(model, ref, ids):
    with torch.no_grad():
        out, want = model(input_ids=ids).logits, ref(input_ids=ids).logits
    return float((out - want).norm() / want.norm())


def test_folded_awq_keeps_the_function_and_no_input_scale(tiny_llama):
    tiny_llama = copy.deepcopy(tiny_llama)
    with torch.no_grad():  # channels of very different sizes (as trained LLMs have): the scale search picks s != 1
        for layer in tiny_llama.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.mul_(torch.logspace(-1, 1, norm.weight.numel())[torch.randperm(norm.weight.numel())])
    cfg = dict(group_size=32, device="cpu", grid=5, bits=8)  # 8-bit codes: a wrong fold would show, rounding not
    folded = quantize(tiny_llama, Int4AwqConfig(**cfg), calibration=llama_samples(6))
    unfolded = quantize(tiny_llama, Int4AwqConfig(**cfg, fold=False), calibration=llama_samples(6))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    err, err_unfolded = _err(folded, tiny_llama, ids), _err(unfolded, tiny_llama, ids)
    assert err < 2e-2 and err < 1.5 * err_unfolded, (err, err_unfolded)
    assert all(getattr(m, "input_scale", None) is None for m in folded.modules())
    layer, orig = folded.model.layers[0], tiny_llama.model.layers[0]
    assert not torch.equal(layer.input_layernorm.weight, orig.input_layernorm.weight)  # q / k / v: folded
    assert not torch.equal(layer.post_attention_layernorm.weight, orig.post_attention_layernorm.weight)  # gate / up
    assert torch.equal(folded.model.norm.weight, tiny_llama.model.norm.weight)  # the final norm feeds the head
    # grouped-query attention: a value channel reaches two o_proj inputs, so o_proj keeps s = 1 (no fold into v)
    assert layer.self_attn.v_proj.out_features != layer.self_attn.o_proj.in_features


def test_post_norm_output_read_by_the_residual_is_not_folded():
    """BERT: the attention block's LayerNorm output feeds the FFN and the residual add; folding 1/s into it would
    change the residual: left alone, the model still computes what it did."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=256)).eval()
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(2))
    calib = [{"input_ids": torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i))}
             for i in range(6)]
    folded = quantize(bert, Int4AwqConfig(group_size=32, device="cpu", grid=5, bits=8), calibration=calib)
    norm = folded.encoder.layer[0].attention.output.LayerNorm
    assert torch.equal(norm.weight, bert.encoder.layer[0].attention.output.LayerNorm.weight)
    with torch.no_grad():
        a, b = folded(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state
    assert float((a - b).norm() / b.norm()) < 5e-3


def test_fold_into_norm_finds_the_one_plus_weight_form():
    class PlusOneRMSNorm(nn.Module):  # Gemma's: (1 + weight) * x / rms(x)
        def __init__(self, k):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(k) * 0.1)

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    norm, s = PlusOneRMSNorm(16), torch.rand(16) + 0.5
    x = torch.randn(3, 16)
    want = norm(x) / s
    before = copy.deepcopy(norm)
    assert fold_into_norm(norm, s) and torch.allclose(norm(x), want, atol=1e-5)
    assert fold_into_norm(nn.LayerNorm(16), s)
    assert not fold_into_norm(before, torch.ones(8))  # another width

    class Gate(nn.Module):  # its output does not scale with its weight: refused and left as it was
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(16))

        def forward(self, x):
            return x * torch.sigmoid(self.weight)

    gate = Gate()
    kept = gate.weight.detach().clone()
    assert not fold_into_norm(gate, s) and torch.equal(gate.weight, kept)


def test_folded_awq_is_refused_over_several_gpus_before_any_work():
    import pytest

    from nnslim.errors import NnslimError
    from nnslim.graph.spread import check_spreadable
    from nnslim.quant.weight_only.awq import Awq
    from nnslim.quant.weight_only.formats import WeightSpec

    spec = WeightSpec(4, 32, True)
    with pytest.raises(NnslimError, match="fold: false"):
        check_spreadable(lambda: Awq(Int4AwqConfig(), spec), "awq")
    check_spreadable(lambda: Awq(Int4AwqConfig(fold=False), spec), "awq")


def test_folded_awq_gives_the_same_bits_whatever_order_the_targets_come_in(tiny_llama, monkeypatch):
    """The targets of a block come from a set (its order changes between processes); the folds make AWQ's layers
    depend on each other, so the block's own order is used."""
    from nnslim.graph import layerwise

    cfg = Int4AwqConfig(group_size=32, device="cpu", grid=5)
    first = quantize(tiny_llama, cfg, calibration=llama_samples(6)).state_dict()
    mine = layerwise.block_targets
    monkeypatch.setattr(layerwise, "block_targets", lambda *a: dict(reversed(list(mine(*a).items()))))
    again = quantize(tiny_llama, cfg, calibration=llama_samples(6)).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_folded_awq_composes_with_onnx_export(tmp_path):
    """With nothing left on the layers' inputs, AWQ's result is an ONNX graph too (an unfolded input scale was
    refused there); the folded norms travel into it: the graph computes what the float model does (8-bit codes)."""
    import json

    import numpy as np

    import nnslim
    from hf_zoo import _build
    from nnslim.runtime import make_runner

    src = _build("llama", tmp_path)
    steps = [{"method": "int4-awq", "bits": 8, "group_size": 32, "samples": 8, "seq_len": 64}, {"method": "onnx"}]
    res = nnslim.compress(str(src), {"steps": steps}, out=tmp_path / "q", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "onnx"
    ids = np.random.default_rng(0).integers(0, 30522, (1, 12)).astype(np.int64)
    float_out = np.asarray(make_runner(nnslim.load(str(src)))({"input_ids": ids}))
    onnx_out = np.asarray(make_runner(nnslim.load(res.out))({"input_ids": ids}))
    cos = float((float_out * onnx_out).sum() / np.linalg.norm(float_out) / np.linalg.norm(onnx_out))
    assert cos > 0.999, cos
