"""Gradual pruning (cubic schedule during distillation) and sparse storage on disk."""
import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from nnslim import NnslimError
from nnslim.pruning.gradual import GradualPruneConfig, cubic_sparsity, prune_gradual
from nnslim.pruning.storage import SparseStorageConfig, decode, encode, mark


def test_cubic_schedule():
    cfg = GradualPruneConfig(sparsity=0.8, begin=0.1, end=0.5)
    s = [cubic_sparsity(t, 100, cfg) for t in range(101)]
    assert s[0] == s[9] == 0 and s[50] == s[100] == 0.8
    assert all(b >= a for a, b in zip(s, s[1:]))
    assert s[20] - s[10] > s[50] - s[40]  # fast early, slow late
    with pytest.raises(NnslimError, match="begin=0.6, end=0.5"):
        GradualPruneConfig(begin=0.6, end=0.5)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4)).eval()


def test_gradual_reaches_the_target_and_beats_one_shot():
    teacher = _mlp()
    rng = np.random.default_rng(0)
    data = [{"input": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(512)]
    x = torch.as_tensor(np.concatenate([d["input"] for d in data[:128]]))
    notes = []
    cfg = GradualPruneConfig(sparsity=0.8, steps=200, lr=2e-3, batch_size=32, every=5, ignore=("4",))
    g = prune_gradual(teacher, teacher, data, cfg, notes=notes)
    for i in (0, 2):
        assert abs(float((g[i].weight == 0).float().mean()) - 0.8) < 0.01
    assert float((g[4].weight == 0).float().mean()) == 0  # ignored layers stay dense
    one = nnslim.prune(teacher, nnslim.MagnitudePruneConfig(sparsity=0.8, ignore=("4",)))
    with torch.no_grad():
        err_g, err_1 = (float((m(x) - teacher(x)).pow(2).mean()) for m in (g, one))
    assert err_g < err_1 and "80.0% of their weights are zero" in notes[-1]


def test_gradual_two_four_keeps_a_layer_four_does_not_divide_dense():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 8)).eval()
    data = [{"input": torch.randn(1, 32).numpy()} for _ in range(16)]
    notes = []
    g = prune_gradual(teacher, teacher, data, GradualPruneConfig(pattern="2:4", steps=4, batch_size=8), notes=notes)
    assert float((g[0].weight == 0).float().mean()) == 0.5 and int((g[2].weight == 0).sum()) == 0
    assert any("pattern 2:4: 1 of 2 layers stay dense (inputs per output not divisible by 4): 2.weight" in n
               for n in notes), notes


@pytest.mark.parametrize("values", ["int8", "float16", "float32"])
def test_sparse_storage_roundtrip_and_size(tmp_path, values):
    m = _mlp()
    p = nnslim.prune(m, nnslim.MagnitudePruneConfig(sparsity=0.5))
    nnslim.save(p, tmp_path / "dense")
    nnslim.save(mark(p, SparseStorageConfig(values=values)), tmp_path / "sparse")
    dense_size = (tmp_path / "dense" / "model.safetensors").stat().st_size
    sparse_size = (tmp_path / "sparse" / "model.safetensors").stat().st_size
    assert sparse_size < dense_size * {"int8": 0.25, "float16": 0.4, "float32": 0.7}[values]
    loaded = nnslim.load(tmp_path / "sparse", model=_mlp())
    x = torch.randn(4, 32)
    tol = 0 if values == "float32" else 2e-2
    torch.testing.assert_close(loaded(x), p(x), rtol=tol, atol=tol)
    assert torch.equal(loaded[0].weight == 0, p[0].weight == 0)  # the zeros stay exactly zero


def test_storage_keeps_tied_weights_and_rejects_damage():
    tensors, info = encode({"w": torch.zeros(64, 128)}, SparseStorageConfig())
    del tensors["w::values"]
    with pytest.raises(NnslimError, match="'w' is damaged"):
        decode(tensors, info)
    with pytest.raises(NnslimError, match="values='int4'"):
        SparseStorageConfig(values="int4")
