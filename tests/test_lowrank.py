import pytest
import torch
from torch import nn

from nnslim import NnslimError, artifact
from nnslim.lowrank.svd import LowRankConfig, LowRankLinear, lowrank
from nnslim.testbeds import ModuleTestbed


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():  # a nearly rank-8 first layer
        m[0].weight.copy_(torch.randn(48, 8) @ torch.randn(8, 64) + 0.01 * torch.randn(48, 64))
    return m


def test_energy_rank_and_exactness(tmp_path):
    m = _model()
    x = torch.randn(5, 64)
    notes = []
    lr = lowrank(m, LowRankConfig(energy=0.999), notes=notes)
    assert isinstance(lr[0], LowRankLinear) and lr[0].rank <= 10
    assert isinstance(m[0], nn.Linear)  # caller untouched
    assert "factored" in notes[0]
    full = lowrank(m, LowRankConfig(rank=48))  # full rank: no saving, layer kept
    assert isinstance(full[0], nn.Linear)
    r = lowrank(m, LowRankConfig(rank_ratio=0.25))
    assert r[0].rank == 12
    y, y_lr = m(x), lr(x)
    assert float((y - y_lr).norm() / y.norm()) < 0.05
    artifact.save(lr, tmp_path, testbed=ModuleTestbed(m, {"x": x}))
    back = artifact.load(tmp_path, model=_model())
    assert torch.equal(back(x), lr(x))


def test_bad_lowrank_options():
    with pytest.raises(NnslimError, match="exactly one of rank .an int., rank_ratio .0-1 of min.in, out.. or energy"):
        LowRankConfig()
    with pytest.raises(NnslimError, match="exactly one"):
        LowRankConfig(rank=4, energy=0.9)
    with pytest.raises(NnslimError, match="energy=1.5 is not allowed"):
        LowRankConfig(energy=1.5)
    with pytest.raises(NnslimError, match="no nn.Linear"):
        lowrank(nn.Sequential(nn.ReLU()), LowRankConfig(rank=2))
