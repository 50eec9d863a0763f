from pathlib import Path

import numpy as np
import pytest

import nnslim
from nnslim.errors import NnslimError
from nnslim.runtime import TorchRunner, make_runner


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_digits_onnx_matches_torch_on_other_batch(tmp_path, digits, backend):
    tb, model = digits
    onnx_model = nnslim.compress("digits-cnn", "onnx", out=tmp_path, report=False).model
    x = tb.example_inputs(batch=13)
    np.testing.assert_allclose(make_runner(onnx_model, backend)(x), TorchRunner(model)(x), atol=1e-4)


def test_onnx_fp16_keeps_fp32_io_and_accuracy(tmp_path, digits):
    tb, _ = digits
    res = nnslim.compress("digits-cnn", "onnx-fp16", out=tmp_path, report=False)
    import onnx

    proto = onnx.load(str(res.model.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert res.model.size_bytes < 0.6 * 1.24e6
    for backend in ("onnxruntime", "openvino"):
        assert tb.evaluate(make_runner(res.model, backend))["accuracy"] >= 0.97


@pytest.mark.slow
def test_minilm_export_matches_torch_at_another_sequence_length(tmp_path, minilm):
    tb, model = minilm
    res = nnslim.compress(model, "onnx", testbed=tb, out=tmp_path, report=False)
    x = tb.example_inputs(batch=3, seq=57)  # export example was batch 2, seq 16
    ref = TorchRunner(model)(x)
    for backend in ("onnxruntime", "openvino"):
        np.testing.assert_allclose(make_runner(res.model, backend)(x), ref, atol=1e-5)
    assert any("relative max error" in n for n in res.notes)


def test_fallback_exporter_is_kept_only_when_it_matches_torch_at_another_shape(tmp_path):
    """torch.export fails on data-dependent control flow; the TorchScript exporter then bakes the example's
    length into this graph, which the check at another length catches: a clear error, no file."""
    import pytest
    import torch

    from nnslim.errors import NnslimError
    from nnslim.runtime.onnx_export import export_onnx

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2 + torch.arange(int(x.shape[1]), dtype=x.dtype)
            return x

    x = np.abs(np.random.default_rng(0).standard_normal((2, 6))).astype(np.float32)
    with pytest.raises(NnslimError, match="ONNX export of DataDependent failed") as failed:
        export_onnx(DataDependent(), {"x": x}, tmp_path / "m.onnx", {"x": {0: "batch", 1: "seq"}})
    assert not (tmp_path / "m.onnx").exists()
    # one line naming torch.export's cause (its summary), not its generic "step 1/3 ... next steps" opening
    message = str(failed.value)
    assert "\n" not in message and "Next steps" not in message and "data-dependent" in message, message


def test_parts_of_one_model_skip_torch_export_once_a_part_needed_the_fallback(tmp_path, monkeypatch):
    """Within one model's parts (an encoder-decoder's three graphs), a part that torch.export cannot export
    makes the later parts try the TorchScript exporter first (still checked at another shape); outside such a
    block every export tries torch.export first."""
    import torch

    from nnslim.runtime import onnx_export
    from nnslim.runtime.onnx_export import export_onnx, one_exporter_for_all_parts

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(k["dynamo"]) or real(*a, **k))
    x = np.abs(np.random.default_rng(0).standard_normal((2, 6))).astype(np.float32)
    axes = {"x": {0: "batch", 1: "seq"}}
    with one_exporter_for_all_parts():
        export_onnx(DataDependent(), {"x": x}, tmp_path / "a.onnx", axes)
        assert calls == [True, False]  # torch.export failed, the fallback matched torch at another shape
        export_onnx(DataDependent(), {"x": x}, tmp_path / "b.onnx", axes)
        assert calls == [True, False, False]
    export_onnx(DataDependent(), {"x": x}, tmp_path / "c.onnx", axes)
    assert calls == [True, False, False, True, False]
    assert onnx_export._SHARED_CHOICE.get() is None
    got = make_runner(tmp_path / "b.onnx")({"x": x[:1, :4]})
    np.testing.assert_allclose(got, x[:1, :4] * 2, rtol=1e-6)


def test_onnx_runtime_threads_spin_within_a_run_only(digits, tmp_path):
    """Worker threads spin between the ops of a run (ONNX Runtime's default) and stop when it returns."""
    from nnslim.runtime.onnxruntime import OrtRunner

    tb, model = digits
    path = nnslim.compress(model, "onnx", testbed=tb, out=tmp_path / "x", report=False).model.path
    entries = {}
    for mode in ("off", "within-run", "always"):
        opts = OrtRunner(path, spinning=mode).session.get_session_options()
        entries[mode] = tuple(opts.get_session_config_entry(k)
                              for k in ("session.intra_op.allow_spinning", "session.force_spinning_stop"))
    assert entries == {"off": ("0", "0"), "within-run": ("1", "1"), "always": ("1", "0")}
    default = OrtRunner(path).session.get_session_options()
    assert default.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(ValueError, match="spinning='fast'"):
        OrtRunner(path, spinning="fast")


def test_a_weight_stored_with_its_transpose_is_stored_once(tmp_path):
    """A tied table and head (Gather on W, MatMul on W^T, as the TorchScript exporter writes them): the file
    keeps W once and a Transpose node; ONNX Runtime gives the same outputs; square and unrelated weights stay."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from nnslim.runtime.onnx_export import share_transposed_initializers_in_file

    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 3)).astype(np.float32)  # [vocab, hidden]
    sq, other = (rng.standard_normal(s).astype(np.float32) for s in ((3, 3), (3, 7)))
    inits = [numpy_helper.from_array(w, "table"), numpy_helper.from_array(np.ascontiguousarray(w.T), "head"),
             numpy_helper.from_array(sq, "square"), numpy_helper.from_array(other, "unrelated")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("MatMul", ["emb", "square"], ["h"]),
             helper.make_node("MatMul", ["h", "head"], ["logits"]),
             helper.make_node("MatMul", ["h", "unrelated"], ["other"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logits", "other")],
                              initializer=inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    ids = {"ids": np.array([1, 5])}
    before = make_runner(path).run_all(ids)
    assert share_transposed_initializers_in_file(path) == ["head"]
    proto = onnx.load(str(path))
    assert sorted(i.name for i in proto.graph.initializer) == ["square", "table", "unrelated"]
    after = make_runner(path).run_all(ids)
    for name in ("logits", "other"):
        np.testing.assert_array_equal(before[name], after[name])
    assert share_transposed_initializers_in_file(path) == []  # nothing left to share


def test_onnx_fp16_of_an_encoder_decoder_with_past_is_refused_up_front(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_zoo import _build

    src = _build("t5", tmp_path / "zoo")
    with pytest.raises(NnslimError, match="onnx-fp16 of an encoder-decoder with past=true"):
        nnslim.compress(str(src), "onnx-fp16", out=tmp_path / "o", report=False)
    assert not (tmp_path / "o").exists()


def test_export_cache_reuses_an_identical_export_only(tmp_path, monkeypatch):
    """NNSLIM_EXPORT_CACHE: the same module, inputs and options export once (the second call copies the stored
    files, which run as the first); another weight, input shape, class source or a fallback (TorchScript)
    export is not reused."""
    import torch

    from nnslim.runtime import export_cache
    from nnslim.runtime.onnx_export import export_onnx

    monkeypatch.setenv(export_cache.ENV, str(tmp_path / "cache"))
    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(k["dynamo"]) or real(*a, **k))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    x = {"x": np.ones((2, 8), np.float32)}
    axes = {"x": {0: "batch"}}
    export_onnx(model, x, tmp_path / "a" / "m.onnx", axes)
    export_onnx(model, x, tmp_path / "b" / "m.onnx", axes)
    assert calls == [True]
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()
    got = make_runner(tmp_path / "b" / "m.onnx")({"x": np.ones((3, 8), np.float32)})
    np.testing.assert_allclose(got, model(torch.ones(3, 8)).detach().numpy(), rtol=1e-6)
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0
    export_onnx(model, x, tmp_path / "c" / "m.onnx", axes)  # another weight
    export_onnx(model, {"x": np.ones((2, 8), np.float32) * 2}, tmp_path / "d" / "m.onnx", axes)  # other values
    assert calls == [True, True, True]

    class Twice(torch.nn.Module):  # same weights and structure as a Linear, another forward
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.lin(x) * 2

    a = Twice()
    fingerprints = {export_cache.fingerprint(a, ("m.onnx", ["x"], [torch.ones(2, 8)], axes, 18, ["output"]))}

    class Thrice(Twice):
        def forward(self, x):
            return self.lin(x) * 3

    b = Thrice()
    b.load_state_dict(a.state_dict())
    fingerprints.add(export_cache.fingerprint(b, ("m.onnx", ["x"], [torch.ones(2, 8)], axes, 18, ["output"])))
    assert len(fingerprints) == 2

    class Config:  # as a transformers config: where it was loaded from is not part of the key, its values are
        def __init__(self, **kw):
            self.kw = kw

        def to_dict(self):
            return dict(self.kw)

    keys = set()
    for cfg in (Config(_name_or_path="/a", hidden=8), Config(_name_or_path="/b", hidden=8), Config(hidden=9)):
        a.config = cfg
        keys.add(export_cache.fingerprint(a, ("m.onnx", ["x"], [torch.ones(2, 8)], axes, 18, ["output"])))
    assert len(keys) == 2
    monkeypatch.delenv(export_cache.ENV)
    assert export_cache.entry(model, ("m.onnx", ["x"], [torch.ones(2, 8)], axes, 18, ["output"])) is None


def test_export_cache_keeps_no_fallback_export(tmp_path, monkeypatch):
    import torch

    from nnslim.runtime import export_cache
    from nnslim.runtime.onnx_export import export_onnx

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    monkeypatch.setenv(export_cache.ENV, str(tmp_path / "cache"))
    x = {"x": np.ones((2, 6), np.float32)}
    export_onnx(DataDependent(), x, tmp_path / "a.onnx", {"x": {0: "batch", 1: "seq"}})  # the TorchScript fallback
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_export_cache_folder_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    import torch

    from nnslim.runtime import export_cache
    from nnslim.runtime.onnx_export import export_onnx

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(export_cache.ENV, str(blocker / "cache"))
    with pytest.raises(NnslimError, match="NNSLIM_EXPORT_CACHE=.*cannot create or write"):
        export_onnx(torch.nn.Linear(4, 2), {"x": np.ones((2, 4), np.float32)}, tmp_path / "m.onnx")
    assert blocker.read_text() == "not a folder" and not (tmp_path / "m.onnx").exists()


def test_a_pool_larger_than_its_input_exports_as_a_global_pool_openvino_converts(tmp_path):
    """transformers' EfficientNet pools with AvgPool2d(kernel=hidden_dim, ceil_mode=True), a global mean in torch and
    ONNX Runtime that OpenVINO refused to convert (kernel larger than its input): written as GlobalAveragePool."""
    import onnx
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.pool = torch.nn.AvgPool2d(64, ceil_mode=True)
            self.local = torch.nn.AvgPool2d(2)  # an ordinary pool stays as it is

        def forward(self, x):
            y = self.conv(x)
            return self.pool(y).flatten(1) + self.local(y).mean((2, 3))

    torch.manual_seed(0)
    model = Pooled().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = TorchRunner(model)({"x": x})
    res = nnslim.compress(model, "onnx", example_inputs={"x": x}, out=tmp_path / "o", report=False)
    ops = [n.op_type for n in onnx.load(str(res.model.path)).graph.node]
    assert "GlobalAveragePool" in ops and ops.count("AveragePool") == 1
    for backend in ("onnxruntime", "openvino"):
        np.testing.assert_allclose(make_runner(res.model, backend)({"x": x}), want, rtol=1e-4, atol=1e-5)


def test_hf_model_object_exports_without_its_cache(tmp_path, capsys):
    """A transformers model passed as an nn.Module (not a folder) returns a KV cache object torch.export cannot
    return: its graph is exported without it; the caller's config is left as it was."""
    import json

    import onnx
    import torch
    import transformers as tf

    import nnslim

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=200)
    model = tf.LlamaForCausalLM(cfg).eval()
    data = [{"input_ids": torch.randint(0, 200, (1, 12))} for _ in range(4)]
    res = nnslim.compress(model, "int8-dynamic", calibration=data, out=tmp_path / "q", repeats=2, memory=False)
    graph = onnx.load(str(tmp_path / "q" / "model.onnx")).graph
    assert [o.name for o in graph.output][:1] and not any("present" in o.name for o in graph.output)
    assert model.config.use_cache is True
    # int4 weight-only of the object: a compressed-tensors checkpoint transformers loads as it is, and nnslim
    # loads into an instance of the class
    rtn = nnslim.compress(model, {"steps": [{"method": "int4-rtn", "group_size": 32}]}, calibration=data,
                          out=tmp_path / "w", report=False)
    assert json.loads((tmp_path / "w" / "nnslim.json").read_text())["format"] == "compressed-tensors"
    ids = data[0]["input_ids"]
    with torch.no_grad():
        ours = nnslim.load(tmp_path / "w", model=tf.LlamaForCausalLM(cfg).eval())(ids).logits
        theirs = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "w")).eval()(ids).logits
        torch.testing.assert_close(ours, rtn.model(ids).logits)
    assert torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), 0) > 0.999
    asym = nnslim.compress(model, {"steps": [{"method": "int4-rtn", "group_size": 32, "symmetric": False}]},
                           calibration=data, out=tmp_path / "a", report=False)
    assert asym.out is not None and "compressed-tensors cannot hold it: layer" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "nnslim.json").read_text())["format"] == "torch"  # nnslim's layout
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1,
                                                   num_heads=4, vocab_size=200, decoder_start_token_id=0)).eval()
    pairs = [{"input_ids": torch.randint(1, 200, (1, 9)), "decoder_input_ids": torch.randint(1, 200, (1, 5))}]
    with pytest.raises(NnslimError, match="ONNX export of T5ForConditionalGeneration failed: .*give the folder"):
        nnslim.compress(t5, "int8-dynamic", calibration=pairs, out=tmp_path / "t5", report=False)
    fid = [v for v in res.report.variants if v.name.startswith("int8-dynamic")][0].metrics
    assert fid["output_cos_mean"] > 0.99


class _Pair:  # a plain output container: torch.export takes neither it nor a dataclass without registration
    pass


def _output_models():
    import dataclasses

    import torch
    from torch import nn

    @dataclasses.dataclass
    class Out:
        hidden: torch.Tensor
        logits: torch.Tensor

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 5)

    class DataclassOut(Base):
        def forward(self, x):
            h = torch.relu(self.a(x))
            return Out(h, self.b(h))

    class DictLogitsSecond(Base):
        def forward(self, x):
            h = torch.relu(self.a(x))
            return {"hidden": h, "logits": self.b(h)}

    return DataclassOut, DictLogitsSecond


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_a_dataclass_or_dict_output_is_measured_and_exported_by_its_logits(tmp_path, which, method):
    """The main output of a dict / dataclass is its logits (as for HF outputs) in torch, in the exported graph
    (its first output, the others after it by name) and in the report's fidelity."""
    import onnx
    import torch

    torch.manual_seed(0)
    model = _output_models()[which]().eval()
    calib = [torch.randn(8, 16) for _ in range(4)]
    res = nnslim.compress(model, method, calibration=calib, example_inputs=calib[0], out=tmp_path / "a", repeats=2,
                          memory=False)
    names = [o.name for o in onnx.load(str(res.model.path), load_external_data=False).graph.output]
    assert names == ["logits", "hidden"]
    x = {"x": np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)}
    got = make_runner(res.model, "onnxruntime")(x)
    ref = TorchRunner(model)(x)
    assert got.shape == (3, 5) and ref.shape == (3, 5)
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.99
    assert res.report.variants[-1].metrics["output_cos_min"] > 0.99


def test_structured_pruning_keeps_what_reaches_a_dataclass_output():
    """A dataclass output was invisible to the tracer: the output layer's classes were pruned (5 -> fewer) and the
    report then failed on mismatched shapes. Its tensors are outputs like a tuple's."""
    import torch

    from nnslim.graph.trace import trace

    model = _output_models()[0]().eval()
    t = trace(model, {"x": torch.randn(2, 16)}, lambda m: isinstance(m, torch.nn.Linear))
    assert len(t.outputs) == 2

    class Opaque(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(16, 4)

        def forward(self, x):
            out = _Pair()
            out.y = self.a(x)
            return out

    with pytest.raises(NnslimError, match="holds no tensor nnslim can find"):
        trace(Opaque(), {"x": torch.randn(2, 16)}, lambda m: isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("form", ["2d", "offsets", "last_offset"])
def test_embedding_bag_rewrite_matches_torch(mode, form):
    import torch

    from nnslim.runtime.export_forms import ExportEmbeddingBag

    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(50, 8, mode=mode, padding_idx=3, include_last_offset=form == "last_offset")
    ids = torch.randint(0, 50, (4, 6))
    ids[1, :2] = 3
    ids[2, :] = 3  # a bag of padding only
    weights = torch.rand(4, 6) if mode == "sum" else None
    if form == "2d":
        args = (ids, None, weights)
    else:
        offsets = torch.tensor([0, 6, 6, 10, 24])  # an empty bag, and the last bag to the end
        offsets = offsets if form == "last_offset" else offsets[:-1]
        args = (ids.reshape(-1), offsets, None if weights is None else weights.reshape(-1))
    torch.testing.assert_close(ExportEmbeddingBag(bag)(*args), bag(*args))


@pytest.mark.parametrize("method", ["onnx", "int8", "int8-dynamic"])
def test_a_model_with_an_embedding_bag_exports_and_runs_in_both_runtimes(tmp_path, method):
    """torch.export's translation of nn.EmbeddingBag was rejected by onnx's checker (unsorted Loop nodes) and
    by OpenVINO: it exports as gather + reduce; the user's model keeps its EmbeddingBag."""
    import torch
    from torch import nn

    class Bags(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = nn.EmbeddingBag(1000, 32, mode="mean")
            self.fc = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))

        def forward(self, ids):
            return self.fc(self.e(ids))

    torch.manual_seed(0)
    model = Bags().eval()
    calib = [torch.randint(0, 1000, (8, 6)) for _ in range(4)]
    res = nnslim.compress(model, method, calibration=calib, example_inputs=calib[0], out=tmp_path / "a",
                          repeats=2, memory=False)
    assert type(model.e) is nn.EmbeddingBag
    x = {"ids": np.random.default_rng(1).integers(0, 1000, (5, 6))}  # another batch
    ref = TorchRunner(model)(x)
    for backend in ("onnxruntime", "openvino"):
        got = make_runner(res.model, backend)(x)
        np.testing.assert_allclose(got, ref, atol=1e-5 if method == "onnx" else 0.05)


def test_a_runtime_that_cannot_run_the_graph_is_left_out_of_the_report_with_its_reason(tmp_path):
    """A circular-padded convolution exports as a wrap-mode Pad, which OpenVINO does not support: compress stopped
    with OpenVINO's traceback. The report measures the runtimes that run it and says why the other is missing; the
    artifact records the runtime that ran it."""
    import json

    import torch
    from torch import nn

    class Circular(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    calib = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    res = nnslim.compress(Circular().eval(), "onnx", calibration=calib, example_inputs=calib[0], out=tmp_path / "a",
                          repeats=2, memory=False)
    names = [v.name for v in res.report.variants]
    assert "onnx (onnxruntime)" in names and "onnx (openvino)" not in names
    assert any("onnx (openvino): not measured: openvino cannot run this graph (Unsupported padding mode" in n
               for n in res.report.notes)
    meta = json.loads((tmp_path / "a" / "nnslim.json").read_text())
    assert meta["runtime"]["name"] == "onnxruntime"


def test_check_names_a_graph_that_fails_at_another_shape(tmp_path):
    """A graph that only runs at the export example's shape (a Python loop over the sequence unrolled by the
    exporter) fails the check at another shape with one line, not ONNX Runtime's traceback."""
    import pytest
    import torch

    from nnslim.errors import NnslimError
    from nnslim.runtime.base import OnnxModel
    from nnslim.runtime.onnx_export import export_onnx
    from nnslim.runtime.onnx_methods import check_against_torch

    class Scan(torch.nn.Module):
        def forward(self, x):
            state, out = torch.zeros_like(x[:, 0]), []
            for i in range(x.shape[1]):  # unrolled at the example's length
                state = 0.5 * state + x[:, i]
                out.append(state)
            return torch.stack(out, 1)

    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    export_onnx(Scan(), {"x": x}, tmp_path / "m.onnx", {"x": {0: "batch"}})
    other = {"x": np.random.default_rng(1).standard_normal((2, 7)).astype(np.float32)}
    with pytest.raises(NnslimError, match="fails in ONNX Runtime on input shapes") as failed:
        check_against_torch(Scan(), OnnxModel(tmp_path / "m.onnx"), other, 1e-3)
    assert "\n" not in str(failed.value)
    # declared dynamic, the sequence axis is fixed by torch.export with only a warning: an export error that says so
    with pytest.raises(NnslimError, match=r"fixed input 'x' axis 1 \(seq\) to 5"):
        export_onnx(Scan(), {"x": x}, tmp_path / "s.onnx", {"x": {0: "batch", 1: "seq"}})
    assert not (tmp_path / "s.onnx").exists()


def test_failed_torch_export_keeps_its_graph_dump_out_of_the_terminal(tmp_path, capfd):
    """On data-dependent code torch.export prints the whole partial graph to stderr before raising: that goes to
    a log file the one-line error names, not to the user's terminal."""
    import pytest
    import torch

    from nnslim.errors import NnslimError
    from nnslim.runtime.onnx_export import export_onnx

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            n = int((x > 0).sum())  # a size read from the data
            return x.reshape(-1)[:n].view(n, 1) if n < x.shape[1] else x

    x = np.abs(np.random.default_rng(0).standard_normal((2, 6))).astype(np.float32) - 0.5
    capfd.readouterr()
    with pytest.raises(NnslimError, match="ONNX export of DataDependent failed") as failed:
        export_onnx(DataDependent(), {"x": x}, tmp_path / "m.onnx", {"x": {0: "batch", 1: "seq"}})
    err = capfd.readouterr().err
    assert "def forward(self" not in err and "\n" not in str(failed.value)
    log = str(failed.value).split("torch's full output: ")[1].split(")")[0]
    assert "def forward" in Path(log).read_text()
    Path(log).unlink()
