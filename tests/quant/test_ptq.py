import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from nnslim.errors import NnslimError
from nnslim.quant.modules import QuantWrapper
from nnslim.quant.ptq import Int8Config, Int8DynamicConfig, quantize_int8
from nnslim.runtime import TorchRunner, make_runner


class ZooNet(nn.Module):
    """Residual, depthwise, squeeze-excite and concat skip in one CNN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                nn.Sigmoid())
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        a = self.stem(x)
        b = self.dw(a)
        b = b * self.se(b)
        c = torch.relu(self.res(b) + a)
        cat = torch.cat([c, b], dim=1)
        return self.head(cat.mean((2, 3)))


def _zoo():
    torch.manual_seed(0)
    model = ZooNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    x = {"x": torch.randn(4, 3, 16, 16)}
    calib = [{"x": torch.randn(1, 3, 16, 16)} for _ in range(16)]
    return model, x, calib


@pytest.mark.parametrize("calibrator", ["minmax", "percentile", "entropy", "mse"])
def test_unseen_cnn_quantizes_exports_and_matches(tmp_path, calibrator):
    model, x, calib = _zoo()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nnslim.compress(model, Int8Config(calibrator=calibrator, samples=16), example_inputs=x,
                          calibration=calib, out=tmp_path / "q", report=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller untouched
    ref = TorchRunner(model)(x)
    for backend in ("onnxruntime", "openvino"):
        out = make_runner(res.model, backend)(x)
        cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() > 0.98, (backend, cos)
    assert any("int8 ONNX: 6/6 layers" in n for n in res.notes), res.notes
    import onnx

    ops = {n.op_type for n in onnx.load(str(res.model.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_onnx_int8_matches_torch_simulation(digits):
    tb, model = digits
    q = quantize_int8(model, Int8Config(reduce_range=True), tb.calibration(100), tb.example_inputs(1))
    assert sum(isinstance(m, QuantWrapper) for m in q.modules()) == 6
    from nnslim.runtime.qdq import export_quantized_onnx
    import tempfile

    onnx_model, notes = export_quantized_onnx(q, tb.export_example(), tempfile.mkdtemp() + "/m.onnx",
                                              tb.dynamic_axes)
    import onnx

    graph = onnx.load(str(onnx_model.path)).graph
    int32_inits = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT32}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    producers = {o: n for n in graph.node for o in n.output}
    for conv in convs:  # int32 bias through DequantizeLinear: what lets the runtimes fuse int8 convolutions
        bias_dq = producers[conv.input[2]]
        assert bias_dq.op_type == "DequantizeLinear" and bias_dq.input[0] in int32_inits
    x = tb.example_inputs(batch=32)
    sim = TorchRunner(q)(x)
    for backend in ("onnxruntime", "openvino"):
        got = make_runner(onnx_model, backend)(x)
        assert (got.argmax(-1) == sim.argmax(-1)).mean() >= 0.97
        assert np.abs(got - sim).max() < 0.1 * np.abs(sim).max()


def test_digits_int8_accuracy_and_size(tmp_path, digits):
    tb, model = digits
    fp32 = tb.evaluate(TorchRunner(model))["accuracy"]
    res = nnslim.compress("digits-cnn", "int8", out=tmp_path / "d", report=False)
    for backend in ("onnxruntime", "openvino"):
        assert tb.evaluate(make_runner(res.model, backend))["accuracy"] >= fp32 - 0.005
    assert res.model.size_bytes < 0.3 * 1.24e6
    reloaded = nnslim.load(tmp_path / "d")
    x = tb.example_inputs(batch=9)
    np.testing.assert_array_equal(make_runner(reloaded)(x), make_runner(res.model)(x))


def test_dynamic_int8_linear_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 8)).eval()
    x = {"input": torch.randn(16, 64)}
    res = nnslim.compress(model, Int8DynamicConfig(), example_inputs=x, out=tmp_path / "dyn", report=False)
    ref = TorchRunner(model)(x)
    got = make_runner(res.model, "onnxruntime")(x)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_accuracy_control_keeps_sensitive_layers_float(tmp_path):
    res = nnslim.compress("digits-cnn", Int8Config(max_drop=0.0, calibrator="entropy"), out=tmp_path / "ac",
                          report=False)
    note = next(n for n in res.notes if n.startswith("accuracy control"))
    assert "(met)" in note
    assert any(n.startswith("sensitivity") for n in res.notes)


def test_bad_int8_inputs(digits):
    tb, model = digits
    ex = tb.example_inputs(1)
    with pytest.raises(NnslimError, match="calibration is empty"):
        quantize_int8(model, Int8Config(), [], ex)
    with pytest.raises(NnslimError, match=r"calibration\[0\]\['x'\] has shape \(8, 8\); expected rank 4"):
        quantize_int8(model, Int8Config(), [{"x": np.zeros((8, 8), np.float32)}], ex)
    with pytest.raises(NnslimError, match=r"calibration\[0\] has keys \['y'\]"):
        quantize_int8(model, Int8Config(), [{"y": np.zeros((1, 1, 8, 8), np.float32)}], ex)
    with pytest.raises(NnslimError, match=r"calibration\[0\] is a list"):
        quantize_int8(model, Int8Config(), [[1, 2]], ex)
    with pytest.raises(NnslimError, match="ignore entry 'features.99' matches no layer"):
        quantize_int8(model, Int8Config(ignore=("features.99",)), tb.calibration(4), ex)
    with pytest.raises(NnslimError, match="not a valid regex"):
        quantize_int8(model, Int8Config(ignore=("re:(",)), tb.calibration(4), ex)
    for kwargs, match in [({"calibrator": "kl"}, "calibrator='kl'"), ({"smoothquant": 1.5}, "smoothquant=1.5"),
                          ({"samples": 0}, "samples=0"), ({"preset": "llm"}, "preset='llm'"),
                          ({"reduce_range": "yes"}, "reduce_range='yes'")]:
        with pytest.raises(NnslimError, match=match):
            Int8Config(**kwargs)


def test_ignore_scope_by_name_regex_and_type(digits):
    tb, model = digits
    cal, ex = tb.calibration(8), tb.example_inputs(1)
    count = lambda q: sum(isinstance(m, QuantWrapper) for m in q.modules())
    assert count(quantize_int8(model, Int8Config(ignore=("classifier.3",)), cal, ex)) == 5
    assert count(quantize_int8(model, Int8Config(ignore=("re:^features",)), cal, ex)) == 2
    assert count(quantize_int8(model, Int8Config(ignore=("type:Linear",)), cal, ex)) == 4
    # a glob matches the whole name, as ModelOpt's wildcards do
    assert count(quantize_int8(model, Int8Config(ignore=("classifier*",)), cal, ex)) == 4
    with pytest.raises(NnslimError, match=r"ignore entry '\*lm_head\*' matches no layer of the model; layers look "
                                          r"like: features\.0"):
        quantize_int8(model, Int8Config(ignore=("*lm_head*",)), cal, ex)


@pytest.mark.slow
def test_minilm_int8_fidelity(minilm):
    tb, model = minilm
    q = quantize_int8(model, Int8Config(samples=100), tb.calibration(100), tb.example_inputs(1, 8))
    m = tb.evaluate(TorchRunner(q))
    assert m["cos_mean"] > 0.99 and m["cos_min"] > 0.97


def test_public_quantize_and_export(tmp_path):
    model, x, calib = _zoo()
    q = nnslim.quantize(model, nnslim.Int8Config(samples=8), calibration=calib)
    assert any(isinstance(m, QuantWrapper) for m in q.modules())
    assert not any(isinstance(m, QuantWrapper) for m in model.modules())
    onnx_model = nnslim.export_onnx(q, x, tmp_path / "q.onnx")
    got = make_runner(onnx_model)(x)
    sim = TorchRunner(q)(x)
    assert np.abs(got - sim).max() < 0.1 * np.abs(sim).max() + 1e-3
    with pytest.raises(NnslimError, match="config of type list is not allowed"):
        nnslim.quantize(model, ["int8"])


def test_accuracy_control_sensitivity_table_in_report(tmp_path):
    import json

    res = nnslim.compress("digits-cnn", Int8Config(max_drop=0.0, calibrator="entropy", samples=64),
                          out=tmp_path / "r", repeats=2, memory=False)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    (title, rows), = data["tables"].items()
    assert "sensitivity" in title and len(rows) == 6 and {"layer", "gain", "kept float"} == set(rows[0])
    assert "| layer | gain | kept float |" in (tmp_path / "r" / "report.md").read_text()
    assert res.report.variants[-1].metrics["accuracy"] >= res.report.variants[0].metrics["accuracy"] - 0.002


def test_transformer_encoder_layers_quantize():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False),
                          nn.Linear(32, 4)).eval()
    calib = [{"input": torch.randn(1, 10, 32)} for _ in range(16)]
    q = nnslim.quantize(model, Int8Config(samples=16, preset="transformer"), calibration=calib)
    x = {"input": torch.randn(3, 12, 32)}
    ref, got = TorchRunner(model)(x), TorchRunner(q)(x)
    assert sum(isinstance(m, QuantWrapper) for m in q.modules()) >= 4
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.95


def test_saving_simulated_int8_torch_model_is_a_clear_error(tmp_path):
    model, _, calib = _zoo()
    q = nnslim.quantize(model, Int8Config(samples=4), calibration=calib)
    with pytest.raises(NnslimError, match="export_onnx"):
        nnslim.save(q, tmp_path / "q")
    assert not (tmp_path / "q" / "model.safetensors").exists()


def test_calibration_shape_the_model_rejects_is_named(digits):
    tb, model = digits
    bad = [{"x": np.zeros((1, 1, 4, 4), np.float32)}]
    with pytest.raises(NnslimError, match=r"failed on calibration input of shapes \{'x': \(1, 1, 4, 4\)\}"):
        quantize_int8(model, Int8Config(samples=1), bad, tb.example_inputs(1))


def test_bias_correction_adds_the_mean_weight_error_shift():
    """correct_biases adds E[(W - W_q) x'] to each bias, x' the input the float weight sees (divided by a
    SmoothQuant scale where there is one): checked against the per-token product for a Linear with and without
    an input scale (where only the inputs' sum is kept) and a Conv2d, including a layer created without bias."""
    from nnslim.quant.ptq import correct_biases
    from nnslim.quant.quantizers import WeightQuantizer

    torch.manual_seed(0)
    lin, lin2, conv = nn.Linear(6, 5), nn.Linear(5, 3, bias=False), nn.Conv2d(2, 4, 3, padding=1)
    scale = torch.rand(6) + 0.5
    wrapped = {"lin": QuantWrapper(lin, WeightQuantizer(lin.weight, 4, True), input_scale=scale),
               "lin2": QuantWrapper(lin2, WeightQuantizer(lin2.weight, 4, True)),
               "conv": QuantWrapper(conv, WeightQuantizer(conv.weight, 4, True))}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.lin2, self.conv = wrapped["lin"], wrapped["lin2"], wrapped["conv"]

        def forward(self, x, image):
            return self.lin2(self.lin(x)).sum() + self.conv(image).sum()

    data = [{"x": torch.randn(3, 7, 6), "image": torch.randn(2, 2, 5, 5)} for _ in range(4)]
    seen = {n: [] for n in wrapped}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen[n].append(a[0].detach().clone()))
             for n, m in wrapped.items()]
    net = Net()
    with torch.no_grad():
        for d in data:
            net(**d)
    for h in hooks:
        h.remove()
    dw = {n: (m.float_module.weight - m.dequantized_weight()).detach() for n, m in wrapped.items()}
    xs = torch.cat([x.reshape(-1, 6) for x in seen["lin"]]) / scale
    expect = {"lin": lin.bias.detach() + (xs @ dw["lin"].T).mean(0),
              "lin2": (torch.cat([x.reshape(-1, 5) for x in seen["lin2"]]) @ dw["lin2"].T).mean(0),
              "conv": conv.bias.detach() + torch.cat([nn.functional.conv2d(x, dw["conv"], padding=1)
                                                      .permute(0, 2, 3, 1).reshape(-1, 4) for x in seen["conv"]]).mean(0)}
    assert correct_biases(net, data) == 3
    for n, m in wrapped.items():
        torch.testing.assert_close(m.float_module.bias.detach(), expect[n], rtol=1e-5, atol=1e-6)


def test_minmax_ranges_come_from_the_smoothquant_pass(monkeypatch):
    """With SmoothQuant and the minmax calibrator, the activation ranges are taken from the per-channel
    (min, max) SmoothQuant's pass already saw: the same numbers as a pass over the smoothed inputs, and one
    pass over the calibration data fewer; a histogram calibrator still runs its own passes."""
    from nnslim.quant import calibration, ptq
    from nnslim.quant.smoothquant import smoothing_scales

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(16, 3)).eval()
    data = [{"input": torch.randn(2, 6, 16) * (1 + 4 * (torch.arange(16) == 3))} for _ in range(5)]
    layers = ptq.target_layers(model, Int8Config(), "transformer")
    ranges = {}
    smooth = smoothing_scales(model, layers, data, 0.85, ranges)
    assert smooth and set(smooth) <= set(ranges)
    passes = []
    real = calibration.run_with_hooks
    monkeypatch.setattr(ptq, "run_with_hooks", lambda *a, **k: passes.append(k.get("desc")) or real(*a, **k))
    full = ptq.calibrate_activations(model, layers, data, "minmax", 99.99, smooth)
    assert passes == ["calibrate ranges"]
    reused = ptq.calibrate_activations(model, layers, data, "minmax", 99.99, smooth, channel_ranges=ranges)
    assert reused == full and passes == ["calibrate ranges"]
    ptq.calibrate_activations(model, layers, data, "percentile", 99.99, smooth, channel_ranges=ranges)
    assert passes[1:] == ["calibrate ranges", "calibrate histograms"]


def test_dynamic_int8_of_a_model_without_linears_says_why():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(nnslim.NnslimError, match="int8-dynamic quantizes nn.Linear layers only .* use int8"):
        nnslim.quantize(conv, Int8DynamicConfig(), calibration=[torch.randn(1, 3, 8, 8)])


def test_mean_pooled_head_runs_the_same_in_both_runtimes(tmp_path):
    """ReduceMean(keepdims=0) -> SmoothQuant's per-channel Div -> QuantizeLinear: OpenVINO computed it wrongly
    (output cosine 0.93 where ONNX Runtime gave 0.9999); the exported graph keeps the reduced axis and squeezes it."""
    import onnx

    torch.manual_seed(0)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2,
                                             enable_nested_tensor=False)
            self.out = nn.Linear(64, 5)

        def forward(self, ids):
            return self.out(self.enc(self.emb(ids)).mean(1))

    data = [{"ids": torch.randint(0, 100, (8, 12))} for _ in range(8)]
    res = nnslim.compress(Pooled().eval(), {"steps": [{"method": "int8", "matmuls": False}]}, calibration=data,
                          out=tmp_path / "q", report=False)
    graph = onnx.load(str(tmp_path / "q" / "model.onnx")).graph
    for node in graph.node:
        if node.op_type == "ReduceMean":
            assert [a.i for a in node.attribute if a.name == "keepdims"] == [1]
    feed = {"ids": data[0]["ids"].numpy()}
    a, b = (np.asarray(make_runner(res.model, rt)(feed)).ravel() for rt in ("onnxruntime", "openvino"))
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_nothing_left_to_quantize_says_what_kept_each_layer():
    """SqueezeBERT: its encoder is Conv1d, its only Linears the pooler and classifier the transformer preset keeps in
    float: int8-dynamic said "no Linear/Conv layer left (check `ignore`)", which named neither."""
    import transformers as tf

    from nnslim import NnslimError

    cfg = tf.SqueezeBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                               vocab_size=50, embedding_size=32, num_labels=2)
    model = tf.SqueezeBertForSequenceClassification(cfg).eval()
    inp = {"input_ids": torch.randint(1, 50, (2, 8))}
    with pytest.raises(NnslimError, match=r"no nn.Linear layer left to quantize in SqueezeBertForSequenceClassification: "
                                          r"2 outside `ignore` \(2 kept in float as the transformer preset's head / "
                                          r"pooler\); int8-dynamic quantizes nn.Linear only and its 6 convolution"):
        nnslim.quantize(model, "int8-dynamic", calibration=[inp], example_inputs=inp)
    assert nnslim.quantize(model, "int8", calibration=[inp], example_inputs=inp) is not model  # static takes the convs


def test_smoothquant_of_a_tied_head_leaves_the_embedding_as_it_was():
    """Whisper's proj_out shares its weight with the token embedding: SmoothQuant scales the head's own copy
    (before: the embedding was scaled too, and the model's logits cosine fell to 0.92)."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.mix = nn.Linear(16, 16)
            self.norm = nn.LayerNorm(16)
            self.proj_out = nn.Linear(16, 50, bias=False)
            self.proj_out.weight = self.embed.weight
            with torch.no_grad():
                self.embed.weight[:, 3] *= 40  # an outlier channel for SmoothQuant to move

        def forward(self, ids):
            return self.proj_out(self.norm(self.mix(self.embed(ids))))

    torch.manual_seed(0)
    model = Tied().eval()
    cal = [{"ids": torch.randint(0, 50, (1, 12))} for _ in range(8)]
    before = model.embed.weight.detach().clone()
    notes = []
    q = quantize_int8(model, Int8Config(smoothquant=0.85, samples=8, bias_correction=False), cal, cal[0], notes=notes)
    assert torch.equal(q.embed.weight, before) and torch.equal(model.embed.weight, before)
    assert any("proj_out shares its weight" in n for n in notes)
    x = {"ids": torch.randint(0, 50, (4, 12))}
    ref, got = TorchRunner(model)(x), TorchRunner(q)(x)
    cos = (ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got))
    assert cos > 0.99
