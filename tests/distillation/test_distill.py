"""Knowledge distillation: losses, batching, recovery, recipes that compose prune -> distill -> int8."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from nnslim import DistillConfig, Int8Config, NnslimError, StructuredPruneConfig
from nnslim.batching import collate
from nnslim.distillation.losses import kd_loss


def test_collate_pads_ragged_sequences():
    b = collate([{"ids": np.array([[1, 2, 3]]), "m": np.array([[1, 1, 1]])}, {"ids": np.array([[4]]), "m": np.array([[1]])}])
    assert b["ids"].tolist() == [[1, 2, 3], [4, 0, 0]] and b["m"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_losses_are_zero_at_the_teacher_and_mask_padding():
    t = torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for kind in ("kl", "cosine", "mse"):
        assert float(kd_loss(t, t, kind, 2.0, mask)) == pytest.approx(0, abs=1e-6)
    s = t.clone()
    s[0, 3:] += 100  # padded positions do not count
    assert float(kd_loss(s, t, "mse", mask=mask)) == pytest.approx(0, abs=1e-6)
    assert float(kd_loss(s, t, "mse")) > 1


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def test_distill_recovers_a_damaged_student_deterministically():
    teacher = _mlp()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.add_(0.3 * torch.randn_like(student[0].weight))
    data = [{"input": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)} for i in range(256)]
    x = torch.as_tensor(np.concatenate([d["input"] for d in data[:64]]))
    err0 = float((student(x) - teacher(x)).detach().pow(2).mean())
    cfg = DistillConfig(steps=150, lr=3e-3, batch_size=32)
    a = nnslim.distill(student, teacher, data, cfg)
    b = nnslim.distill(student, teacher, data, cfg)
    assert float((a(x) - teacher(x)).detach().pow(2).mean()) < 0.3 * err0
    torch.testing.assert_close(a(x), b(x))
    assert not torch.equal(a[0].weight, student[0].weight)  # the student passed in is untouched
    with pytest.raises(NnslimError, match="data"):
        nnslim.distill(student, teacher, [], cfg)
    with pytest.raises(NnslimError, match="loss='ce'"):
        DistillConfig(loss="ce")


def test_recipe_prune_distill_int8(digits, tmp_path):
    tb, model = digits
    recipe = [StructuredPruneConfig(ratio=0.5), DistillConfig(steps=60, lr=2e-3, batch_size=64),
              Int8Config(samples=64)]
    res = nnslim.compress(model, recipe, testbed=tb, out=tmp_path / "q", report=False)
    acc = nnslim.evaluate(tmp_path / "q" / "model.onnx", testbed=tb)["metrics"]["accuracy"]
    assert acc > 0.95
    assert any("distill:" in n for n in res.notes) and any("structured pruning" in n for n in res.notes)
    # a torch artifact of a structurally pruned model loads back from its recorded plan
    res2 = nnslim.compress(model, recipe[:2], testbed=tb, out=tmp_path / "t", report=False)
    loaded = nnslim.load(tmp_path / "t")
    x = torch.as_tensor(tb.example_inputs(batch=8)["x"])
    torch.testing.assert_close(loaded(x), res2.model(x))
    assert loaded.features[0].out_channels == 16


def test_distill_method_needs_a_teacher():
    from nnslim.distillation.trainer import _apply
    from nnslim.context import Context

    with pytest.raises(NnslimError, match="teacher"):
        _apply(_mlp(), DistillConfig(), Context(workdir="."))


def test_a_float16_model_trains_in_float32_and_stays_float16():
    """qat + distill of a float16 model: AdamW's updates on float16 weights turned them into NaN / Inf within 8 steps
    and the recipe stopped. Training runs on float32 copies of the float16 tensors (both models), each tensor goes
    back to its own dtype after, with a note."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4)).eval().half()
    data = [{"input": torch.randn(8, 16).half()} for _ in range(8)]
    res = nnslim.compress(teacher, ["qat", {"method": "distill", "steps": 8, "batch_size": 8}], calibration=data,
                          report=False)
    assert any("trained in float32" in n for n in res.notes)
    assert all(p.dtype == torch.float16 for p in teacher.parameters())  # the caller's model untouched
    from nnslim.runtime import make_runner

    runner = make_runner(res.model)
    assert np.isfinite(runner({runner.input_names[0]: data[0]["input"].float().numpy()})).all()
    student = nnslim.distill(teacher, teacher, data, DistillConfig(steps=4, batch_size=8))
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in student.parameters())


def test_a_failed_distillation_leaves_the_callers_teacher_as_it_was(monkeypatch):
    """The teacher is the caller's model: its float16 tensors (made float32 for training) come back also when
    training stops on an error."""
    from nnslim.distillation import trainer

    teacher = nn.Sequential(nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 4)).eval().half()
    data = [{"input": torch.randn(8, 16).half()} for _ in range(4)]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer, "_loss", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.distill(copy.deepcopy(teacher), teacher, data, DistillConfig(steps=2, batch_size=4))
    assert all(p.dtype == torch.float16 for p in teacher.parameters())
