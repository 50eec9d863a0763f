"""SemiSparseLinear: 2:4 weights on sparse tensor-core kernels (CUDA), dense elsewhere."""
import pytest
import torch
from torch import nn

import nnslim
from nnslim import NnslimError
from conftest import apply_step
from nnslim import MagnitudePruneConfig, TwoFourPruneConfig, prune
from nnslim.pruning.sparse24 import SemiSparseLinear, is_2of4, semi_sparse


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def test_pack_2of4_cpu_equals_the_pruned_dense_model(tmp_path):
    m = _mlp()
    x = torch.randn(5, 128)
    dense = prune(m, TwoFourPruneConfig())
    packed, notes = apply_step(m, TwoFourPruneConfig(pack_2of4=True))
    assert isinstance(packed[0], SemiSparseLinear) and isinstance(packed[2], SemiSparseLinear)
    assert "kept dense" in notes[-1] and "'4'" in notes[-1]  # 64x10: too small for the kernels
    torch.testing.assert_close(packed(x), dense(x))
    nnslim.save(packed, tmp_path / "a")
    loaded = nnslim.load(tmp_path / "a", model=_mlp())
    assert isinstance(loaded[0], SemiSparseLinear)
    torch.testing.assert_close(loaded(x), packed(x))


def test_errors():
    with pytest.raises(NnslimError, match="not 2:4"):
        SemiSparseLinear.from_linear(nn.Linear(64, 32), "fc")
    with pytest.raises(NnslimError, match="pack_2of4=True needs pattern='2:4'"):
        MagnitudePruneConfig(pattern="unstructured", pack_2of4=True)
    assert semi_sparse(nn.Sequential(nn.Linear(64, 32))) is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 sparse tensor-core kernels need CUDA")
@pytest.mark.parametrize("m", [1, 37, 2048])
def test_cuda_kernels_match_dense(m):
    from nnslim.runtime.kernels.select import kernel_table

    torch.manual_seed(0)
    lin = nn.Linear(1024, 512).cuda().to(torch.bfloat16)
    pruned = prune(nn.Sequential(lin), TwoFourPruneConfig(pack_2of4=True))[0]
    assert is_2of4(pruned.weight)
    x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ pruned.weight.float().t() + pruned.bias.float()
    out = pruned(x).float()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    for name in ("cusparselt",):
        y = getattr(pruned, f"_{name}")(x).float()
        torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    assert kernel_table()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 sparse tensor-core kernels need CUDA")
def test_cuda_choice_follows_how_the_model_runs():
    from nnslim.runtime.kernels import select

    torch.manual_seed(0)
    lin = nn.Linear(4096, 4096, bias=False).cuda().to(torch.bfloat16)
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    chosen = {}
    for graphs in (False, True):
        select.reset()
        sp = prune(nn.Sequential(lin), TwoFourPruneConfig(pack_2of4=True))[0]
        sp.cuda_graphs = graphs
        sp(x)
        chosen[graphs] = [r["chosen"] for r in select.kernel_table()][0]
    # eager: ~1 ms of host time per cuSPARSELt call loses to dense; under graphs the sparse kernel wins
    assert chosen == {False: "dense", True: "cusparselt"}, select.kernel_table()
