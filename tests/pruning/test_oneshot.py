import copy

import pytest
import torch
from torch import nn

from conftest import apply_step, llama_samples
from nnslim import MagnitudePruneConfig, NnslimError, SparseGptConfig, TwoFourPruneConfig, WandaConfig, prune
from nnslim.pruning.masks import layer_mask, nm_mask, row_mask
from nnslim.pruning.magnitude import magnitude_prune
from nnslim.recipe import make_step


def test_masks():
    s = torch.randn(8, 16).abs()
    keep = nm_mask(s, 2, 4)
    assert torch.all(keep.reshape(8, 4, 4).sum(-1) == 2)
    kept = s.reshape(8, 4, 4)[keep.reshape(8, 4, 4)].reshape(8, 4, 2)
    dropped = s.reshape(8, 4, 4)[~keep.reshape(8, 4, 4)].reshape(8, 4, 2)
    assert torch.all(kept.min(-1).values >= dropped.max(-1).values)
    assert torch.all((~row_mask(s, 0.25)).sum(1) == 4)
    assert int((~layer_mask(s, 0.5)).sum()) == 64


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n}


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsity_and_quality_order(tiny_llama, pattern):
    before = copy.deepcopy(tiny_llama.state_dict())
    samples = llama_samples(16)
    ids = torch.cat([s["input_ids"] for s in samples[:4]])
    ref = tiny_llama(input_ids=ids).logits
    errs = {}
    for cfg in [MagnitudePruneConfig(pattern=pattern), WandaConfig(pattern=pattern, device="cpu"),
                SparseGptConfig(pattern=pattern, device="cpu")]:
        p, notes = apply_step(tiny_llama, cfg, samples)
        for name, m in _linears(p).items():
            w = m.weight
            if pattern == "2:4":
                assert torch.all((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2), name
            else:
                assert abs(float((w == 0).float().mean()) - 0.5) < 0.02, name
        assert p.lm_head.weight.count_nonzero() == p.lm_head.weight.numel()  # head kept dense
        errs[cfg.method.replace("prune-", "")] = float((p(input_ids=ids).logits - ref).norm() / ref.norm())
        assert "pruning" in notes[-1]
    for k, v in tiny_llama.state_dict().items():
        assert torch.equal(v, before[k])
    assert errs["sparsegpt"] < errs["magnitude"]
    assert errs["wanda"] < 1.1 * errs["magnitude"]


def test_global_magnitude_and_api(tiny_llama):
    p = prune(tiny_llama, MagnitudePruneConfig(sparsity=0.3, scope="global"))
    ws = torch.cat([m.weight.flatten() for m in _linears(p).values()])
    assert abs(float((ws == 0).float().mean()) - 0.3) < 0.01
    p2 = prune(tiny_llama, TwoFourPruneConfig())
    assert all(torch.all((m.weight.reshape(m.weight.shape[0], -1, 4) == 0).sum(-1) >= 2)
               for m in _linears(p2).values())


def test_bad_prune_inputs(tiny_llama):
    with pytest.raises(NnslimError, match="sparsity=1.0 is not allowed"):
        MagnitudePruneConfig(sparsity=1.0)
    with pytest.raises(NnslimError, match="pattern='3:2' is not allowed"):
        MagnitudePruneConfig(pattern="3:2")
    with pytest.raises(NnslimError, match="pattern 2:3 needs in_features divisible by 3; no layer has that"):
        prune(tiny_llama, MagnitudePruneConfig(pattern="2:3"))
    notes = []  # a layer 4 does not divide stays dense, said in a note (Mamba's dt_proj: in_features = dt_rank)
    odd = magnitude_prune(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 8)), TwoFourPruneConfig(), notes=notes)
    assert (odd[0].weight == 0).float().mean() == 0.5 and (odd[2].weight == 0).sum() == 0
    assert any("pattern 2:4: 1 of 2 layers stay dense (in_features not divisible by 4): 2" in n for n in notes)
    with pytest.raises(NnslimError, match="no nn.Linear layer"):
        prune(nn.Sequential(nn.ReLU()), MagnitudePruneConfig())
    with pytest.raises(NnslimError, match="calibration is empty"):
        prune(tiny_llama, WandaConfig(), calibration=[])
    with pytest.raises(NnslimError, match="unknown key 'scope' for method 'wanda'"):
        make_step({"method": "wanda", "scope": "global"})  # a config holds only what its method reads
    with pytest.raises(NnslimError, match="config of type WandaConfig is not allowed for nnslim.quantize"):
        from nnslim import quantize
        quantize(tiny_llama, WandaConfig())
    with pytest.raises(NnslimError, match="config: missing key .method."):
        prune(tiny_llama, {"sparsity": 0.5})


def test_a_linear_tied_to_an_embedding_is_kept_and_the_artifact_loads(tmp_path, capsys):
    """A mask on a head whose weight is the embedding's untied them; the artifact then stored head.weight twice
    and did not load into the model's class. Tied Linears are kept unpruned, with a note."""
    import nnslim

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid = nn.Embedding(100, 32), nn.Linear(32, 32)
            self.out = nn.Linear(32, 100, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(torch.tanh(self.mid(self.emb(ids))))

    torch.manual_seed(0)
    model = Tied().eval()
    calib = [torch.randint(0, 100, (2, 8)) for _ in range(2)]
    res = nnslim.compress(model, "prune-magnitude", calibration=calib, example_inputs=calib[0], out=tmp_path / "a",
                          report=False)
    assert "kept unpruned (out)" in capsys.readouterr().err
    back = nnslim.load(tmp_path / "a", model=Tied())
    assert back.out.weight is back.emb.weight
    assert float((back.mid.weight == 0).float().mean()) >= 0.45
    torch.testing.assert_close(back(calib[0]), res.model(calib[0]))
