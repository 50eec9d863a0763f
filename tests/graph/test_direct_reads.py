"""Linears whose weight the model reads itself (F.linear(x, self.proj.weight), an nn.MultiheadAttention that cannot be
split) are kept by the methods that replace layers, with a note; torch's own transformer layers are quantized whole
(their attention split into called Linears, graph/attention.py); a step whose model outputs NaN/Inf stops the run."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import nnslim
from nnslim import NnslimError
from nnslim.graph.scope import direct_reads, find_direct_reads


class Encoder(nn.Module):
    """A model built from torch's own transformer layers (fused fast path in eval, MHA reads out_proj.weight)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 64)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2)
        self.out = nn.Linear(64, 5)

    def forward(self, ids):
        return self.out(self.enc(self.emb(ids)).mean(1))


class Functional(nn.Module):
    """Calls `a` as a layer but reads `proj`'s weight itself; `head` shares the embedding's table (tied)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.a = nn.Linear(32, 32)
        self.proj = nn.Linear(32, 32)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.a(self.emb(ids))
        h = F.linear(torch.relu(h), self.proj.weight.t(), self.proj.bias)
        return self.head(h)


def _ids(n=6, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"ids": torch.randint(0, vocab, (4, 10), generator=g)} for _ in range(n)]


def test_watch_finds_a_weight_read_outside_its_layer_and_not_a_tied_table():
    torch.manual_seed(0)
    model = Functional().eval()
    found = find_direct_reads(model, lambda: model(**_ids(1)[0]))
    assert list(found) == ["proj"] and "Functional" in found["proj"]
    assert set(direct_reads(model)) == {"proj"}  # the mark stays on the module (it survives copies)
    assert direct_reads(Encoder()).keys() == {"enc.layers.0.self_attn.out_proj", "enc.layers.1.self_attn.out_proj"}


@pytest.mark.parametrize("config", [nnslim.Int4RtnConfig(group_size=32), nnslim.Int8WeightOnlyConfig(),
                                    nnslim.Int8W8A8Config()])
def test_torch_transformer_layers_quantize_and_reload(tmp_path, config):
    torch.manual_seed(0)
    model = Encoder().eval()
    data = _ids(vocab=100)
    with torch.no_grad():
        ref = model(**data[0])
    res = nnslim.compress(model, {"steps": [{"method": nnslim.recipe.method_of(config).name, **config.to_dict()}]},
                          calibration=data, out=tmp_path / "q", report=False)
    assert any("2 nn.MultiheadAttention block(s) run as q/k/v/out Linears" in n for n in res.notes)
    q = res.model
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "linear1"):
        assert type(q.enc.layers[0].get_submodule(name)) is not nn.Linear, name  # attention and FFN quantized
    with torch.no_grad():
        y = q(**data[0])
        y2 = nnslim.load(tmp_path / "q", model=Encoder())(**data[0])
    assert torch.isfinite(y).all()
    assert F.cosine_similarity(y.flatten(), ref.flatten(), 0) > 0.98
    torch.testing.assert_close(y2, y)


def test_a_functional_read_keeps_the_layer_in_every_replacing_method(tmp_path):
    torch.manual_seed(0)
    model = Functional().eval()
    data = _ids()
    with torch.no_grad():
        ref = model(**data[0])
    for step in ({"method": "int8-weight-only"}, {"method": "lowrank", "rank_ratio": 0.25}):
        res = nnslim.compress(model, {"steps": [step]}, calibration=data, out=tmp_path / step["method"],
                              report=False)
        assert type(res.model.proj) is nn.Linear and type(res.model.a) is not nn.Linear
        assert any("(proj)" in n and "read directly by Functional" in n for n in res.notes)
        with torch.no_grad():
            assert torch.isfinite(res.model(**data[0])).all()
    pruned = nnslim.prune(model, nnslim.MagnitudePruneConfig(sparsity=0.5), calibration=data)
    assert (pruned.proj.weight == 0).float().mean() >= 0.49  # a mask keeps the weight readable: pruned as usual
    assert ref.shape == (4, 10, 50)


def test_lowrank_layer_under_torch_encoder_fast_path(tmp_path):
    torch.manual_seed(0)
    model = Encoder().eval()
    data = _ids(vocab=100)
    q = nnslim.compress(model, {"steps": [{"method": "lowrank", "rank_ratio": 0.9}]}, calibration=data,
                        out=tmp_path / "l", report=False).model
    with torch.no_grad():
        assert q(**data[0]).shape == (4, 5)


class Overflows(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 4)
        with torch.no_grad():
            self.lin.weight.fill_(2000.0)

    def forward(self, x):
        return self.lin(x)


def test_a_step_whose_output_is_not_finite_stops_the_run(tmp_path):
    data = [{"x": torch.ones(2, 64)}]  # 64 x 2000 = 128000: beyond float16's 65504
    with pytest.raises(NnslimError, match=r"after recipe step 0 \('fp16'\): the model's output .*NaN or Inf"):
        nnslim.compress(Overflows(), "fp16", calibration=data, out=tmp_path / "o", report=False)
    assert not (tmp_path / "o").exists()


class MaskedScores(nn.Module):
    """Scores with -inf where masked, as retrieval / span models return: not finite before any step."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        y = self.lin(x)
        return y.masked_fill(torch.arange(8) >= 6, float("-inf"))


def test_outputs_not_finite_in_the_input_model_are_not_a_step_failure(tmp_path):
    data = [{"x": torch.randn(2, 16)} for _ in range(3)]
    res = nnslim.compress(MaskedScores(), "int8-weight-only", calibration=data, out=tmp_path / "m", report=False)
    assert res.out is not None
