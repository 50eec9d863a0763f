"""nn.MultiheadAttention split into called q/k/v/out Linears computes what torch's module does (every call form),
so every Linear method reaches attention; float blocks are saved as nn.MultiheadAttention again, quantized ones
stay split and reload into the user's class."""
import json

import pytest
import torch
from torch import nn

import nnslim
from nnslim.graph.attention import SplitMultiheadAttention, join_attention, split_attention


def _mha(batch_first=True, bias=True, kdim=None, vdim=None, **kw):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(32, 4, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases non-zero
    return m


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias,kdim", [(True, None), (False, None), (True, 24)])
def test_split_computes_what_multihead_attention_does(batch_first, bias, kdim):
    mha = _mha(batch_first, bias, kdim, kdim)
    split = SplitMultiheadAttention.from_mha(mha).eval()
    g = torch.Generator().manual_seed(1)
    n, length, source = 3, 5, 7
    shape = (lambda t: (n, t)) if batch_first else (lambda t: (t, n))
    q = torch.randn(*shape(length), 32, generator=g)
    k = torch.randn(*shape(source), kdim or 32, generator=g)
    v = torch.randn(*shape(source), kdim or 32, generator=g)
    pad = torch.zeros(n, source, dtype=torch.bool)
    pad[0, 5:] = True
    causal = torch.ones(length, source, dtype=torch.bool).triu(1)
    calls = [{}, {"need_weights": False}, {"key_padding_mask": pad}, {"attn_mask": causal, "need_weights": False},
             {"attn_mask": torch.randn(length, source, generator=g)},
             {"attn_mask": torch.randn(n * 4, length, source, generator=g), "average_attn_weights": False},
             {"key_padding_mask": pad.float() * -5.0, "attn_mask": causal},
             {"attn_mask": causal, "is_causal": True, "need_weights": False}]
    with torch.no_grad():
        for kwargs in calls:
            a, wa = mha(q, k, v, **kwargs)
            b, wb = split(q, k, v, **kwargs)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=str(kwargs))
            assert (wa is None) == (wb is None)
            if wa is not None:
                torch.testing.assert_close(wb, wa, atol=1e-5, rtol=1e-4)
        if batch_first:  # unbatched inputs
            a, _ = mha(q[0], k[0], v[0])
            b, _ = split(q[0], k[0], v[0])
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    back = split.to_mha().eval()
    with torch.no_grad():
        torch.testing.assert_close(back(q, k, v)[0], mha(q, k, v)[0])


def test_blocks_that_cannot_split_stay_whole():
    model = nn.Sequential(nn.Linear(32, 32))
    model.add_module("att", _mha(add_bias_kv=True))
    model.add_module("att2", _mha())
    assert split_attention(model) == ["att2"]
    assert isinstance(model.att, nn.MultiheadAttention) and isinstance(model.att2, SplitMultiheadAttention)
    assert join_attention(model) == [] and isinstance(model.att2, nn.MultiheadAttention)


class Encoder(nn.Module):
    def __init__(self, norm_first=False):
        super().__init__()
        self.emb = nn.Embedding(100, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2)  # (packs padded batches as nested tensors in eval when it can)
        self.out = nn.Linear(64, 5)

    def forward(self, ids, mask=None):
        return self.out(self.enc(self.emb(ids), src_key_padding_mask=mask).mean(1))


def _data(n=6):
    g = torch.Generator().manual_seed(0)
    return [{"ids": torch.randint(0, 100, (4, 10), generator=g)} for _ in range(n)]


def test_quantized_attention_reloads_into_the_users_class(tmp_path):
    torch.manual_seed(0)
    model = Encoder().eval()
    data = _data()
    res = nnslim.compress(model, {"steps": [{"method": "int8-weight-only"}]}, calibration=data, out=tmp_path / "q",
                          report=False)
    meta = json.loads((tmp_path / "q" / "nnslim.json").read_text())
    assert meta["split_attention"] == ["enc.layers.0.self_attn", "enc.layers.1.self_attn"]
    assert sum(".self_attn." in n for n in meta["quantized_layers"]) == 8
    loaded = nnslim.load(tmp_path / "q", model=Encoder())
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 8:] = True
    with torch.no_grad():
        for kw in ({}, {"mask": mask}):
            torch.testing.assert_close(loaded(data[0]["ids"], **kw), res.model(data[0]["ids"], **kw))
        # against the float model without a mask: with one, torch's nested path zero-fills the padded positions
        # that the mean then averages, where the split model computes them as torch's unfused path does
        got, ref = loaded(data[0]["ids"]), model(data[0]["ids"])
        assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), 0) > 0.999
    assert isinstance(model.enc.layers[0].self_attn, nn.MultiheadAttention)  # the caller's model untouched


def test_pruned_attention_is_saved_as_multihead_attention(tmp_path):
    torch.manual_seed(0)
    model = Encoder(norm_first=True).eval()
    res = nnslim.compress(model, {"steps": [{"method": "prune-magnitude", "sparsity": 0.5}]}, calibration=_data(),
                          out=tmp_path / "p", report=False)
    meta = json.loads((tmp_path / "p" / "nnslim.json").read_text())
    assert "split_attention" not in meta
    loaded = nnslim.load(tmp_path / "p", model=Encoder(norm_first=True))
    attn = loaded.enc.layers[0].self_attn
    assert isinstance(attn, nn.MultiheadAttention)
    assert (attn.in_proj_weight == 0).float().mean() > 0.45  # q/k/v were reached by the masks
    with torch.no_grad():
        torch.testing.assert_close(loaded(_data()[0]["ids"]), res.model(_data()[0]["ids"]))


def test_int8_onnx_quantizes_the_attention_projections(tmp_path):
    torch.manual_seed(0)
    res = nnslim.compress(Encoder().eval(), {"steps": [{"method": "int8-dynamic"}]}, calibration=_data(),
                          out=tmp_path / "o", report=False)
    assert any("int8 ONNX: 14/14 layers as int8" in n for n in res.notes), res.notes  # 13 Linears + the table
    import onnx

    names = {i.name for i in onnx.load(str(tmp_path / "o" / "model.onnx")).graph.initializer
             if i.data_type == onnx.TensorProto.INT8}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert any(f"self_attn.{proj}" in n for n in names), proj


def test_movement_pruning_removes_heads_of_torch_attention(tmp_path):
    """JPQD-style movement pruning scores nn.MultiheadAttention's heads once it runs as split projections; the
    pruned blocks stay split in the artifact and reload into the user's class; int8 of the result deploys."""
    torch.manual_seed(0)
    model = Encoder().eval()
    data = _data(16)
    steps = [{"method": "prune-movement", "sparsity": 0.5, "head_sparsity": 0.5}, {"method": "distill", "steps": 20}]
    res = nnslim.compress(model, {"steps": steps}, calibration=data, out=tmp_path / "m", report=False)
    meta = json.loads((tmp_path / "m" / "nnslim.json").read_text())
    assert meta["split_attention"] == ["enc.layers.0.self_attn", "enc.layers.1.self_attn"]
    attn = res.model.enc.layers[0].self_attn
    assert isinstance(attn, SplitMultiheadAttention) and attn.q_proj.out_features == 32  # 2 of 4 heads left
    loaded = nnslim.load(tmp_path / "m", model=Encoder())
    with torch.no_grad():
        torch.testing.assert_close(loaded(data[0]["ids"]), res.model(data[0]["ids"]))
    q = nnslim.compress(model, {"steps": steps + [{"method": "int8-dynamic"}]}, calibration=data,
                        out=tmp_path / "q", report=False)
    assert any("int8 ONNX: 14/14" in n for n in q.notes), q.notes


def test_binary_layers_under_torch_encoder_layers(tmp_path):
    """BinaryLayer exposes a meta weight view: torch's encoder fast-path checks read `linear1.weight`."""
    torch.manual_seed(0)
    res = nnslim.compress(Encoder().eval(), {"steps": [{"method": "binary"}, {"method": "distill", "steps": 3}]},
                          calibration=_data(), out=tmp_path / "b", report=False)
    loaded = nnslim.load(tmp_path / "b", model=Encoder())
    with torch.no_grad():
        torch.testing.assert_close(loaded(_data()[0]["ids"]), res.model(_data()[0]["ids"]))


class Seq2Seq(nn.Module):
    """nn.Transformer: self- and cross-attention (query from the decoder, keys / values from the encoder)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.tr = nn.Transformer(32, 4, 1, 1, 64, batch_first=True)
        self.head = nn.Linear(32, 100)

    def forward(self, src, tgt):
        return self.head(self.tr(self.emb(src), self.emb(tgt)))


def test_movement_pruning_of_nn_transformer_with_cross_attention(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = [{"src": torch.randint(0, 100, (2, 7), generator=g), "tgt": torch.randint(0, 100, (2, 5), generator=g)}
            for _ in range(6)]
    steps = [{"method": "prune-movement", "sparsity": 0.5, "head_sparsity": 0.5}, {"method": "distill", "steps": 5}]
    res = nnslim.compress(Seq2Seq().eval(), {"steps": steps}, calibration=data, out=tmp_path / "m", report=False)
    assert any("removed whole neurons/heads" in n for n in res.notes)
    loaded = nnslim.load(tmp_path / "m", model=Seq2Seq())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**data[0]), res.model(**data[0]))


def test_structurally_pruned_torch_encoder_runs_with_a_padding_mask(tmp_path):
    """nn.TransformerEncoder chose its nested-tensor path when built (for nn.MultiheadAttention layers): pruned
    attention blocks turn it off, in the pruned model and in the one loaded from the artifact."""
    torch.manual_seed(0)
    data = _data()
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 7:] = True
    res = nnslim.compress(Encoder().eval(), {"steps": [{"method": "prune-structured", "ratio": 0.3, "head_ratio": 0.25}]},
                          calibration=data, out=tmp_path / "s", report=False)
    loaded = nnslim.load(tmp_path / "s", model=Encoder())
    with torch.no_grad():
        torch.testing.assert_close(loaded(data[0]["ids"], mask), res.model(data[0]["ids"], mask))
