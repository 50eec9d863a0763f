"""Compression state survives every later step into the artifact; steps that cannot compose are refused
before any work, naming both steps."""
import numpy as np
import onnx
import pytest
import torch

import nnslim
from nnslim import NnslimError
from nnslim.recipe import as_recipe
from zoo import TwoLayer


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 16, generator=g) for _ in range(n)]


def _example():
    return {"x": torch.randn(4, 16)}


def _steps(*specs):
    return as_recipe([s if isinstance(s, dict) else {"method": s} for s in specs])


def test_int8_then_distill_deploys_real_int8(tmp_path):
    model = TwoLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nnslim.compress(model, _steps("int8", {"method": "distill", "steps": 30, "lr": 1e-2}), calibration=_data(),
                          example_inputs=_example(), out=tmp_path / "o", report=False)
    assert any("int8 ONNX: 2/2 layers as int8" in n for n in res.notes)
    proto = onnx.load(str(tmp_path / "o" / "model.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") >= 4 and ops.count("QuantizeLinear") >= 2
    int8 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("weight_q")]
    assert len(int8) == 2  # both weights stored as int8 codes
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])


def test_distill_trains_through_the_quantizers():
    q = nnslim.quantize(TwoLayer(), nnslim.Int8Config(), calibration=_data())
    w0 = q.a.float_module.weight.detach().clone()
    trained = nnslim.distill(q, TwoLayer(), data=_data(), config=nnslim.DistillConfig(steps=20, lr=1e-2))
    assert not torch.equal(trained.a.float_module.weight, w0)  # training moved the float weight
    x = torch.randn(3, 16)
    w = trained.a.float_module.weight
    s = trained.a.weight_quantizer.current_scale(w)
    codes = torch.round(w / s[:, None])
    torch.testing.assert_close(trained.a.dequantized_weight(), codes * s[:, None])  # still on the int grid
    assert trained(x).shape == (3, 4)


def test_prune_then_distill_keeps_the_zeros(tmp_path):
    res = nnslim.compress(TwoLayer(), _steps({"method": "prune-magnitude", "sparsity": 0.7},
                                             {"method": "distill", "steps": 30, "lr": 1e-2}),
                          calibration=_data(), example_inputs=_example(), out=tmp_path / "p", report=False)
    loaded = nnslim.load(tmp_path / "p", model=TwoLayer())
    for lin in (loaded.a, loaded.b):
        assert abs(float((lin.weight == 0).float().mean()) - 0.7) < 0.01


@pytest.mark.parametrize("steps,both", [
    (("int8", "prune-magnitude"), ("step 1 ('prune-magnitude')", "step 0 ('int8')")),
    (("int8", "prune-structured"), ("step 1 ('prune-structured')", "step 0 ('int8')")),
    (("int8", "qat"), ("step 1 ('qat')", "step 0 ('int8')")),
    (("onnx", "distill"), ("step 1 ('distill')", "step 0, 'onnx'")),
    (("sparse-storage", "distill"), ("step 1 ('distill')", "step 0 ('sparse-storage')")),
    (("int8-weight-only", "distill"), ("step 1 ('distill')", "step 0 ('int8-weight-only')", "packed codes")),
    (("int4-rtn", "prune-gradual"), ("step 1 ('prune-gradual')", "step 0 ('int4-rtn')")),
    (("int8-w8a8", "distill"), ("step 1 ('distill')", "'qat'")),
])
def test_steps_that_cannot_compose_are_refused_before_any_work(tmp_path, steps, both):
    with pytest.raises(NnslimError) as err:
        nnslim.compress(TwoLayer(), _steps(*steps), calibration=_data(), example_inputs=_example(),
                        out=tmp_path / "x", report=False)
    for part in both:
        assert part in str(err.value)
    assert not (tmp_path / "x").exists()


def test_learned_scores_need_a_training_step(tmp_path):
    with pytest.raises(NnslimError, match="prune-movement.*add a training step"):
        nnslim.compress(TwoLayer(), _steps("prune-movement"), calibration=_data(), example_inputs=_example(),
                        report=False)


def test_one_pipeline_for_verbs_and_recipes(tmp_path):
    """nnslim.quantize is a one-step recipe: the same model as compress's step, bit for bit (both deployed
    as int8 ONNX and run in the same runtime: a float simulation may round a tie the other way)."""
    data, model = _data(), TwoLayer()
    a = nnslim.quantize(model, nnslim.Int8Config(), calibration=data)
    res = nnslim.compress(model, nnslim.Int8Config(), calibration=data, example_inputs=_example(), report=False)
    x = {"x": np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)}
    from nnslim.runtime import make_runner

    ref = make_runner(nnslim.export_onnx(a, _example(), tmp_path / "a.onnx"), "onnxruntime")(x)
    got = make_runner(res.model, "onnxruntime")(x)
    assert np.array_equal(ref, got)


def test_onnx_step_after_quantization_writes_qdq(tmp_path):
    res = nnslim.compress(TwoLayer(), _steps("qat", {"method": "distill", "steps": 5}, "onnx"), calibration=_data(),
                          example_inputs=_example(), out=tmp_path / "q", report=False)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any("onnx check vs torch" in n for n in res.notes)
    with pytest.raises(NnslimError, match="onnx-fp16 cannot follow an integer quantization step"):
        nnslim.compress(TwoLayer(), _steps("int8", "onnx-fp16"), calibration=_data(), example_inputs=_example(),
                        report=False)


def test_distill_refuses_a_model_with_packed_layers():
    q = nnslim.quantize(TwoLayer(), nnslim.Int8WeightOnlyConfig(), calibration=_data())
    with pytest.raises(NnslimError, match=r"2 layer\(s\) hold packed quantized codes .*\(a, WeightOnlyLinear\)"):
        nnslim.distill(q, TwoLayer(), data=_data(), config=nnslim.DistillConfig(steps=3))


@pytest.mark.parametrize("method", ["int8", "int8-dynamic", "onnx", "prune-structured", "distill"])
def test_a_bfloat16_model_with_bfloat16_inputs(tmp_path, method):
    """bfloat16 tensors have no numpy dtype: the report's inputs, batching and calibration failed on them
    ("Got unsupported ScalarType BFloat16"), and ONNX graphs came out in bfloat16, which ONNX Runtime cannot run
    on a CPU. ONNX results are float32 graphs (int8 ones compute in float32 anyway)."""
    import torch
    from torch import nn

    import nnslim

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 4)).to(torch.bfloat16)
    calib = [torch.randn(8, 32, dtype=torch.bfloat16) for _ in range(4)]
    res = nnslim.compress(model, method, calibration=calib, example_inputs=calib[0], out=tmp_path / "a",
                          repeats=2, memory=False)
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.98
    assert model[0].weight.dtype == torch.bfloat16
