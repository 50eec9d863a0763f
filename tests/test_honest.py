"""What nnslim writes is what it reports: whole artifacts, no silent float or NaN results, every option
checked, the report measured on the artifact as written and reloaded."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from conftest import files_digest
from nnslim.errors import NnslimError
from zoo import TwoLayer
from nnslim.recipe import make_step
from nnslim.runtime import TorchRunner, make_runner


class TinyText(nn.Module):
    """Embedding + LayerNorm + Linears: the transformer preset quantizes its embedding table too."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, ids):
        return self.out(torch.relu(self.fc(self.norm(self.emb(ids))))).mean(1)


def _x():
    torch.manual_seed(0)
    return {"x": torch.randn(8, 16)}


def _cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "nnslim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


# 5. whole artifacts -------------------------------------------------------------------------------
def test_failed_overwrite_leaves_the_old_artifact_whole(tmp_path, monkeypatch):
    out = tmp_path / "a"
    nnslim.compress(TwoLayer(), "fp16", example_inputs=_x(), out=out, report=False)
    before = files_digest(out)

    import nnslim.artifact as artifact

    def broken(*a, **k):
        raise RuntimeError("killed half-way")
    monkeypatch.setattr(artifact, "save", broken)
    with pytest.raises(RuntimeError):
        nnslim.compress(TwoLayer(), "onnx", example_inputs=_x(), out=out, overwrite=True, report=False)
    assert files_digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no staging dir left beside it


def test_overwrite_replaces_the_whole_dir_and_sizes_count_only_its_files(tmp_path):
    out = tmp_path / "a"
    nnslim.compress(TwoLayer(), "onnx", example_inputs=_x(), out=out, report=False)
    res = nnslim.compress(TwoLayer(), "fp16", example_inputs=_x(), out=out, overwrite=True)
    assert not (out / "model.onnx").exists()  # nothing of the earlier run survives
    written = (out / "model.safetensors").stat().st_size
    assert res.report.variants[-1].size_bytes == written


def test_overwrite_never_replaces_files_nnslim_did_not_write(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(NnslimError, match="'notes.txt' was not written by nnslim"):
        nnslim.compress(TwoLayer(), "fp16", example_inputs=_x(), out=out, overwrite=True, report=False)
    nnslim.compress(TwoLayer(), "fp16", example_inputs=_x(), out=tmp_path / "b", report=False)
    (tmp_path / "b" / "model.onnx.data").write_bytes(b"stale")
    with pytest.raises(NnslimError, match="model.onnx.data"):
        nnslim.compress(TwoLayer(), "onnx", example_inputs=_x(), out=tmp_path / "b", overwrite=True, report=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "nnslim.cli", "compress", "--model", "digits-cnn", "--method",
                             "int8", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".t.nnslim-tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert list(tmp_path.iterdir()) == []  # neither a half artifact nor a staging dir


def test_sigterm_swallowed_by_library_code_still_stops_the_run(tmp_path, monkeypatch):
    """A bare `except:` in some library between the signal and nnslim must not let the run commit."""
    from nnslim import errors
    from nnslim.io import StagedDir
    from nnslim.progress import progress

    monkeypatch.setattr(errors, "_terminated", False)
    staged = StagedDir(tmp_path / "t", overwrite=False)
    (staged.path / "model.onnx").write_bytes(b"half")
    try:
        errors.request_termination()
    except BaseException:  # what the library does
        pass
    with pytest.raises(errors.Terminated):
        next(iter(progress(range(3), desc="x")))
    with pytest.raises(errors.Terminated):
        with staged:
            staged.commit()
    assert list(tmp_path.iterdir()) == []


# 6. NaN / Inf --------------------------------------------------------------------------------------
def test_non_finite_options_are_refused():
    for spec in ({"method": "distill", "lr": float("inf")}, {"method": "distill", "lr": float("nan")},
                 {"method": "onnx", "tolerance": float("nan")}, {"method": "int8", "max_drop": float("inf")}):
        with pytest.raises(NnslimError, match="finite"):
            make_step(spec)
    proc = _cli("compress", "--model", "digits-cnn", "--method", "distill", "--set", "lr=1e400", "--out",
                "/nonexistent-never-written")
    assert proc.returncode == 2 and "finite" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_weights_and_nan_data_are_refused(tmp_path):
    model = TwoLayer()
    with torch.no_grad():
        model.a.weight[0, 0] = float("nan")
    with pytest.raises(NnslimError, match="'a.weight' holds NaN"):
        nnslim.compress(model, "fp16", example_inputs=_x(), out=tmp_path / "n", report=False)
    assert not (tmp_path / "n").exists()
    with pytest.raises(NnslimError, match="NaN"):
        nnslim.quantize(model, nnslim.Int8DynamicConfig())
    bad = [{"x": torch.full((1, 16), float("nan"))}] * 4
    with pytest.raises(NnslimError, match=r"calibration\[0\]\['x'\] holds NaN"):
        nnslim.quantize(TwoLayer(), nnslim.Int8Config(), calibration=bad, example_inputs=_x())


def test_report_json_stays_valid_with_nan_metrics(tmp_path):
    from nnslim.eval.report import Report, VariantResult

    rows = [VariantResult("a", "torch", "torch", "float32", 10, 1, {"m": float("nan")}),
            VariantResult("b", "torch", "torch", "float32", 5, 1, {"m": 1.0})]
    Report("t", "m", True, 1, None, rows).write(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())  # strict JSON: NaN would not parse back
    assert data["variants"][0]["metrics"]["m"] is None


# 7. dynamic int8 of 2-D inputs (Gemm) ---------------------------------------------------------------
def test_dynamic_int8_rewrites_every_linear_exported_as_gemm(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    x = {"input": torch.randn(16, 64)}
    res = nnslim.compress(model, nnslim.Int8DynamicConfig(), example_inputs=x, out=tmp_path / "dyn", report=False)
    ops = [n.op_type for n in onnx.load(str(res.model.path)).graph.node]
    assert ops.count("MatMulInteger") == 3 and "Gemm" not in ops and "MatMul" not in ops
    assert any("3/3 layers as int8" in n for n in res.notes)
    from nnslim.eval.compare import param_count

    # the params column counts weights and biases, not the scales / zero points stored beside them
    assert param_count(res.model) == param_count(model)
    q = nnslim.quantize(model, nnslim.Int8DynamicConfig())
    np.testing.assert_allclose(make_runner(res.model, "onnxruntime")(x), TorchRunner(q)(x), atol=2e-2, rtol=0)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_onnx_parameter_count_is_the_models(tmp_path, method):
    """Static int8 QDQ (per-channel scales, zero points) and int4 blocked weights (MatMulNBits or DequantizeLinear
    with group scales): the ONNX artifact has as many parameters as the float model, as the report says."""
    from nnslim.eval.compare import param_count

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    x = {"input": torch.randn(16, 64)}
    steps = ([nnslim.Int8Config(samples=16), "onnx"] if method == "int8"
             else [make_step({"method": "int4-rtn", "group_size": 32, "quantize_head": True}), "onnx"])
    res = nnslim.compress(model, steps, calibration=[x], example_inputs=x, out=tmp_path / method, report=False)
    assert param_count(res.model) == param_count(model)


def test_int8_export_that_misses_a_layer_is_an_error(tmp_path):
    from nnslim.runtime.qdq import export_quantized_onnx

    q = nnslim.quantize(TwoLayer(), nnslim.Int8DynamicConfig())
    float_of_a = q.a.unwrapped

    def mismatched():  # the traced float layer no longer matches its codes: it would be left float
        m = float_of_a()
        with torch.no_grad():
            m.weight.add_(1.0)
        return m

    q.a.unwrapped = mismatched
    with pytest.raises(NnslimError, match="1/2 quantized layers"):
        export_quantized_onnx(q, {"x": np.random.rand(2, 16).astype(np.float32)}, tmp_path / "m.onnx")


# 8. SmoothQuant-ed models work outside no_grad ------------------------------------------------------
def test_smoothquant_int8_model_runs_with_autograd():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100)).eval()
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(0, 100, (1, 12), generator=g),
              "attention_mask": torch.ones(1, 12, dtype=torch.long)} for _ in range(8)]
    q = nnslim.quantize(bert, nnslim.Int8Config(samples=8), calibration=calib)
    assert any(isinstance(m.input_scale, torch.Tensor) for m in q.modules() if hasattr(m, "input_scale"))
    out = q(**calib[0]).last_hidden_state  # a normal forward, grad enabled
    out.sum().backward()


# 9. accuracy control in its limit case --------------------------------------------------------------
def test_accuracy_control_with_every_layer_reverted_still_writes(tmp_path):
    g = torch.Generator().manual_seed(0)
    calib = [{"ids": torch.randint(0, 50, (1, 10), generator=g)} for _ in range(16)]
    torch.manual_seed(0)
    res = nnslim.compress(TinyText(), nnslim.Int8Config(max_drop=0.0, samples=16), example_inputs=calib[0],
                          calibration=calib, out=tmp_path / "ac", repeats=2, memory=False)
    note = next(n for n in res.notes if n.startswith("accuracy control"))
    assert "(met)" in note
    assert (tmp_path / "ac" / "nnslim.json").exists()


# 10. every report row measured on the artifact as written and reloaded ---------------------------
def test_sparse_storage_report_describes_the_written_artifact(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))
    x = {"input": torch.randn(8, 256)}
    res = nnslim.compress(model, [make_step({"method": "prune-magnitude", "sparsity": 0.8}),
                                  make_step({"method": "sparse-storage"})],
                          example_inputs=x, out=tmp_path / "s", repeats=2, memory=False)
    row = res.report.variants[-1]
    written = (tmp_path / "s" / "model.safetensors").stat().st_size
    assert row.size_bytes == written < 0.5 * res.report.variants[0].size_bytes
    reloaded = nnslim.load(tmp_path / "s", model=nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)))
    from nnslim.eval.metrics import output_fidelity

    expected = output_fidelity(TorchRunner(model)(x), TorchRunner(reloaded)(x))
    assert row.metrics["output_cos_mean"] == pytest.approx(expected["output_cos_mean"], abs=1e-6)
    assert row.metrics["output_cos_mean"] < 1.0  # the int8 values saved, not the fp32 ones in memory


# 11. wrappers are transparent ------------------------------------------------------------------------
def test_int8_wrapped_layers_keep_their_attributes():
    class ReadsStride(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(4, 8, 3, stride=2)

        def forward(self, x):
            assert self.conv1.stride == (2,) and self.conv1.in_channels == 4  # Whisper-style attribute reads
            return self.conv1(x)

    g = torch.Generator().manual_seed(0)
    calib = [{"x": torch.randn(1, 4, 32, generator=g)} for _ in range(4)]
    q = nnslim.quantize(ReadsStride(), nnslim.Int8Config(samples=4), calibration=calib)
    assert q(calib[0]["x"]).shape == (1, 8, 15)


# 12. clear errors instead of tracebacks ------------------------------------------------------------
def test_bad_artifact_fields_are_clear_errors(tmp_path):
    res = nnslim.compress(TwoLayer(), "fp16", example_inputs=_x(), out=tmp_path / "a", report=False)
    meta_path = res.out / "nnslim.json"
    good = json.loads(meta_path.read_text())
    for change in ({"quantized_layers": "x"}, {"structured_plan": {"a": 1}}, {"structured_plan": [{"module": 3}]},
                   {"dtype": 7}, {"architecture": "x"}, {"architecture": {"kind": "testbed", "name": 5}},
                   {"file": None}):
        meta_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(NnslimError):
            nnslim.load(res.out, model=TwoLayer())
    meta_path.write_text("[1, 2]")
    with pytest.raises(NnslimError, match="JSON object"):
        nnslim.load(res.out)


def test_bad_hf_config_is_a_clear_error(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{oops")
    with pytest.raises(NnslimError, match="config.json.*not a valid JSON"):
        nnslim.evaluate(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "no-such-model", "architectures": ["X"]}))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(NnslimError, match="task of .* is not known.*--task"):
        nnslim.evaluate(str(d))


def test_cli_bad_out_seed_and_scalars(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    for args, needle in ((["--out", ""], "--out=''"), (["--out", str(afile / "sub")], "cannot be written"),
                         (["--out", str(tmp_path / "o"), "--seed", "-1"], "--seed"),
                         (["--out", str(tmp_path / "o"), "--seed", str(2**40)], "--seed")):
        proc = _cli("compress", "--model", "digits-cnn", "--method", "fp16", *args)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for scalar in (".", ".e5", "1__"):  # more of these in test_yaml_scalars_that_are_not_numbers
        proc = _cli("compress", "--model", "digits-cnn", "--method", "int8", "--set", f"samples={scalar}",
                    "--out", str(tmp_path / "o"))
        assert proc.returncode == 2 and "samples" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_recipe_seed_and_regex_checked_before_work():
    for seed in (-1, 2**40, 1.5, True):
        with pytest.raises(NnslimError, match="seed"):
            nnslim.recipe.parse_recipe({"seed": seed, "steps": [{"method": "fp16"}]})
    with pytest.raises(NnslimError, match="not a valid regex"):
        make_step({"method": "int8", "ignore": ["re:(unclosed"]})


def test_sequential_called_with_its_example_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(0)
    calib = [{"x": torch.randn(1, 16, generator=g)} for _ in range(4)]  # "x" is not Sequential's "input"
    q = nnslim.quantize(model, nnslim.Int8Config(samples=4), calibration=calib)
    assert TorchRunner(q)(calib[0]).shape == (1, 2)


def test_layerwise_methods_check_token_ids(tiny_llama):
    for bad, needle in (({"input_ids": torch.full((1, 64), 1000)}, "vocabulary"),
                        ({"input_ids": torch.rand(1, 64)}, "must be integers")):
        with pytest.raises(NnslimError, match=needle):
            nnslim.quantize(tiny_llama, nnslim.Int4GptqConfig(group_size=32), calibration=[bad] * 4)


def test_wrong_testbed_for_an_onnx_model(tmp_path):
    res = nnslim.compress(TwoLayer(), "onnx", example_inputs=_x(), out=tmp_path / "o", report=False)
    with pytest.raises(NnslimError, match="feeds inputs"):
        nnslim.evaluate(str(res.model.path), testbed="digits-cnn")


# 13. options accepted but ignored or misread ---------------------------------------------------------
def test_unused_or_fixed_options_are_errors():
    for spec in ({"method": "int4-rtn", "damp": 0.1}, {"method": "int4-rtn", "algorithm": "gptq"},
                 {"method": "int4-gptq", "grid": 5}, {"method": "prune-magnitude", "samples": 4},
                 {"method": "fp8", "format": "int8"}, {"method": "prune-2of4", "pattern": "1:4"}):
        with pytest.raises(NnslimError):
            make_step(spec)
    with pytest.raises(TypeError, match="format"):  # a config holds only the options its method reads
        nnslim.Fp8Config(format="int8")
    with pytest.raises(NnslimError, match="reduce_range"):
        make_step({"method": "int8-dynamic", "reduce_range": "nonsense"})
    for spec in ({"method": "int8", "samples": -1}, {"method": "distill", "samples": -1},
                 {"method": "prune-structured", "samples": 0}, {"method": "int4-gptq", "samples": -1},
                 {"method": "distill", "lr": 1e9}, {"method": "prune-gradual", "every": -3}):
        with pytest.raises(NnslimError):
            make_step(spec)


def test_set_method_cannot_override_method(tmp_path):
    proc = _cli("compress", "--model", "digits-cnn", "--method", "fp16", "--set", "method=int8", "--out",
                str(tmp_path / "o"))
    assert proc.returncode == 2 and "--method" in proc.stderr


def test_onnx_step_honours_tolerance_and_opset(tmp_path):
    import onnx

    with pytest.raises(NnslimError, match="tolerance=1e-12"):
        nnslim.compress(TwoLayer(), make_step({"method": "onnx", "tolerance": 1e-12}), example_inputs=_x(),
                        report=False)
    try:
        res = nnslim.compress(TwoLayer(), make_step({"method": "onnx", "opset": 17}), example_inputs=_x(),
                              out=tmp_path / "o", report=False)
    except NnslimError as e:  # refusing is honest too; labelling opset 18 as 17 is not
        assert "opset=17" in str(e)
    else:
        proto = onnx.load(str(res.model.path))
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_compress_backend_is_used():
    res = nnslim.compress(TwoLayer(), "onnx", example_inputs=_x(), backend="onnxruntime", repeats=2, memory=False)
    assert {v.backend for v in res.report.variants[1:]} == {"onnxruntime"}


# 14. a path never shadows a testbed silently -------------------------------------------------------
def test_path_named_like_a_testbed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits-cnn").mkdir()
    from nnslim.loading import resolve

    r = resolve("digits-cnn")
    assert r.source == "testbed:digits-cnn" and r.testbed.name == "digits-cnn"
    assert "./digits-cnn" in capsys.readouterr().err


# 15. no temp dirs or baseline copies left behind ----------------------------------------------------
def test_no_work_dirs_left_in_the_temp_folder(tmp_path, monkeypatch):
    private = tmp_path / "tmp"  # a temp folder of this test's own: other test workers use the shared one
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))

    def ours():
        return {n for n in os.listdir(private) if n.startswith("nnslim-")}
    before = ours()
    res = nnslim.compress(TwoLayer(), nnslim.Int8DynamicConfig(), example_inputs=_x(), out=tmp_path / "q",
                          repeats=2, memory=False)
    assert any(v.name.startswith("original as float32 onnx") for v in res.report.variants)
    assert ours() == before
    code = ("import torch, nnslim; m = torch.nn.Linear(4, 2); "
            "nnslim.compress(m, 'fp16', example_inputs={'x': torch.randn(2, 4)}, repeats=2, memory=False)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert ours() == before


# 16. what changes bits is recorded ------------------------------------------------------------------
def test_nnslim_json_records_what_changes_bits(tmp_path):
    nnslim.compress(TwoLayer(), "fp16", example_inputs=_x(), out=tmp_path / "d", report=False)
    det = json.loads((tmp_path / "d" / "nnslim.json").read_text())["determinism"]
    assert det["torch_threads"] == torch.get_num_threads() and "cpu_capability" in det


def test_threads_option_is_recorded(tmp_path):
    proc = _cli("compress", "--model", "digits-cnn", "--method", "fp16", "--threads", "1", "--no-report",
                "--out", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "t" / "nnslim.json").read_text())["determinism"]["torch_threads"] == 1


def test_onnx_result_without_out_or_report_is_usable():
    res = nnslim.compress(TwoLayer(), "onnx", example_inputs=_x(), report=False)
    assert res.model.path.is_file()
    assert make_runner(res.model, "onnxruntime")({"x": _x()["x"].numpy()}).shape == (8, 4)


@pytest.mark.parametrize("then", ["returns", "fails"])
def test_cli_exits_143_after_a_swallowed_sigterm(monkeypatch, capsys, then):
    """Whatever follows a SIGTERM that something caught (the run going on, or failing oddly after a
    half-done step), the CLI ends as terminated (143), not as success or a crash."""
    from nnslim import cli, errors

    monkeypatch.setattr(errors, "_terminated", False)

    def command(args):
        try:
            errors.request_termination()
        except BaseException:
            pass
        if then == "fails":
            raise RuntimeError("a module was half imported")

    monkeypatch.setitem(cli.COMMANDS, "methods", command)
    assert cli.main(["methods"]) == 143
    assert "terminated" in capsys.readouterr().err
