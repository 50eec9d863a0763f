"""Layer-wise calibration spread over several devices (issue 18): on CI two CPU "devices" run the very
code path of two GPUs (sample shards, merged statistics, layers dealt out, gathered and sent back) and
must give the one-device result up to float summation order; the 2-GPU run skips without 2 GPUs."""
import pytest
import torch
from torch import nn

from conftest import apply_step, llama_samples
from nnslim import NnslimError
from nnslim.context import resolve_devices
from nnslim.graph import spread
from nnslim.graph.layerwise import _to
from nnslim.pruning.sparsegpt import SparseGptConfig
from nnslim.pruning.wanda import WandaConfig
from nnslim.quant.weight_only.awq import Int4AwqConfig
from nnslim.quant.weight_only.gptq import Int4GptqConfig

TWO_CPUS = [torch.device("cpu"), torch.device("cpu")]


def _run(model, cfg, samples, monkeypatch, devices):
    import nnslim.pruning.oneshot as oneshot
    import nnslim.quant.weight_only.driver as driver

    for mod in (driver, oneshot):
        monkeypatch.setattr(mod, "resolve_devices", lambda name, gpus, d=devices: list(d))
    return apply_step(model, cfg, samples)


def _states(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith(("qweight", "scales", "weight", "zeros", "original", "mask"))}


@pytest.mark.parametrize("cfg", [Int4GptqConfig(group_size=32, device="cpu"),
                                 Int4AwqConfig(group_size=32, device="cpu", grid=5, fold=False),
                                 SparseGptConfig(sparsity=0.5, device="cpu"),
                                 WandaConfig(pattern="2:4", device="cpu")], ids=lambda c: c.method)
def test_two_devices_give_the_one_device_result(tiny_llama, monkeypatch, cfg):
    samples = llama_samples(9, 24)  # an odd count: the shards differ in size
    one, notes_one = _run(tiny_llama, cfg, samples, monkeypatch, TWO_CPUS[:1])
    two, notes_two = _run(tiny_llama, cfg, samples, monkeypatch, TWO_CPUS)
    a, b = _states(one), _states(two)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:  # a rounding tie or a clip-grid choice may go the other way after another summation order
        off = ~torch.isclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6)
        assert float(off.float().mean()) < 0.02, k
    ids = torch.cat([s["input_ids"] for s in samples[:3]])
    with torch.no_grad():
        ref = tiny_llama(input_ids=ids).logits
        err_one = float((one(input_ids=ids).logits - ref).norm() / ref.norm())
        err_two = float((two(input_ids=ids).logits - ref).norm() / ref.norm())
    assert abs(err_two - err_one) < 0.05 * err_one, (err_one, err_two)
    assert any("2 GPUs" in n for n in notes_two) and not any("GPUs" in n for n in notes_one)
    for m in two.modules():  # every layer came back to the model's device
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            assert t.device.type == "cpu"


def test_layers_fed_one_input_stay_on_one_device():
    mods = {n: nn.Linear(64, 64) for n in ("q", "k", "v", "o")}
    mods["down"] = nn.Linear(256, 64)
    shares = spread.deal_layers(mods, [["q", "k", "v"], ["o"], ["down"]], 2)
    assert sorted(sum(shares, [])) == sorted(mods)
    assert any(set(s) >= {"q", "k", "v"} for s in shares)
    assert all(shares)


def test_an_algorithm_without_merge_is_refused_up_front(tiny_llama):
    class Plain:
        def observe(self, name, module, x):
            raise AssertionError("no work may start")

        def finish(self, block, modules, prefix):
            raise AssertionError("no work may start")

    with pytest.raises(NnslimError, match="cannot be spread over several GPUs"):
        spread.calibrate_spread(tiny_llama, llama_samples(2), {"model.layers.0.mlp.up_proj"}, Plain, TWO_CPUS, "x",
                                  lambda block, mods: None)


def test_gpus_option_errors():
    with pytest.raises(NnslimError, match="gpus=2 needs CUDA GPUs"):
        resolve_devices("cpu", 2)
    if not torch.cuda.is_available():
        with pytest.raises(NnslimError, match="gpus=0 needs CUDA GPUs"):
            resolve_devices("auto", 0)
    else:
        with pytest.raises(NnslimError, match="allowed: 0"):
            resolve_devices("cuda", torch.cuda.device_count() + 1)
    assert resolve_devices("cpu", 1) == [torch.device("cpu")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        with pytest.raises(NnslimError, match="gpus=2 under torchrun"):
            resolve_devices("cuda", 2)
    with pytest.raises(NnslimError, match="gpus"):
        Int4GptqConfig(gpus=-1)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs (runs on the device machine's nvidia-h200-x2)")
def test_gptq_on_two_gpus_matches_one(tiny_llama):
    samples = llama_samples(8, 32)
    one, _ = apply_step(tiny_llama, Int4GptqConfig(group_size=32, device="cuda"), samples)
    two, notes = apply_step(tiny_llama, Int4GptqConfig(group_size=32, device="cuda", gpus=2), samples)
    assert any("2 GPUs" in n for n in notes)
    ids = torch.cat([s["input_ids"] for s in samples[:3]])
    with torch.no_grad():
        ref = one(input_ids=ids).logits
        assert float((two(input_ids=ids).logits - ref).norm() / ref.norm()) < 1e-2


def test_gpus_are_checked_before_any_step_runs(tiny_llama):
    from nnslim.pipeline import check_recipe
    from nnslim.pruning.magnitude import MagnitudePruneConfig
    from nnslim.recipe import Recipe

    gpus = torch.cuda.device_count() + 1 if torch.cuda.is_available() else 2  # more than this machine has
    with pytest.raises(NnslimError, match=rf"recipe step 1 \('int4-gptq'\): gpus={gpus} "):
        check_recipe(Recipe((MagnitudePruneConfig(sparsity=0.3), Int4GptqConfig(gpus=gpus))), tiny_llama)


def test_fewer_samples_than_devices(tiny_llama, monkeypatch):
    samples = [{"input_ids": torch.randint(0, 256, (1, 160), generator=torch.Generator().manual_seed(0))}]
    cfg = Int4GptqConfig(group_size=32, device="cpu")
    one, _ = _run(tiny_llama, cfg, samples, monkeypatch, TWO_CPUS[:1])
    three, notes = _run(tiny_llama, cfg, samples, monkeypatch, TWO_CPUS + TWO_CPUS[:1])
    assert not any("GPUs" in n for n in notes)  # one sample: one device did the work, and the note says so
    for k, v in one.state_dict().items():
        assert torch.equal(v, three.state_dict()[k]), k


def test_shared_keyword_tensors_stay_shared_on_every_device():
    mask = torch.ones(1, 8)
    kwargs = [{"attention_mask": mask, "position_embeddings": (mask, mask)}, {"attention_mask": mask}]
    moved = _to(kwargs, torch.device("meta"))  # (a real move: .to makes new tensors)
    assert moved[0]["attention_mask"].is_meta
    assert moved[0]["attention_mask"] is moved[1]["attention_mask"] is moved[0]["position_embeddings"][1]


def test_recipe_of_two_spread_steps_equals_one_device(tiny_llama, monkeypatch):
    """Compose: Wanda 2:4 then GPTQ, both spread over two devices, give the one-device recipe's model (the
    masks the first step attached survive the second step the same way)."""
    from pathlib import Path

    import nnslim.pruning.oneshot as oneshot
    import nnslim.quant.weight_only.driver as driver
    from nnslim.context import Context
    from nnslim.pipeline import run_steps
    from nnslim.recipe import Recipe

    recipe = Recipe((WandaConfig(pattern="2:4", device="cpu"), Int4GptqConfig(group_size=32, device="cpu")))
    samples = llama_samples(6, 24)
    results = []
    for devices in (TWO_CPUS[:1], TWO_CPUS):
        for mod in (driver, oneshot):
            monkeypatch.setattr(mod, "resolve_devices", lambda name, gpus, d=devices: list(d))
        results.append(run_steps(tiny_llama, recipe, Context(workdir=Path("."), user_calibration=samples)))
    one, two = (dict(r.named_buffers()) for r in results)
    codes = [k for k in one if k.endswith("qweight")]
    assert len(codes) == 14
    for k in codes:
        assert float((one[k] != two[k]).float().mean()) < 0.02, k
