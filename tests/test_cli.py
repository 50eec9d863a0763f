"""Every bad input: one clear line on stderr, exit code 2, no traceback, the user's files untouched."""
import subprocess
import sys

import pytest
import torch

from conftest import files_digest


def nnslim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nnslim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def in_process(capfd, *args):
    """The same command through nnslim.cli.main in this process (what `python -m nnslim.cli` runs), as a
    CompletedProcess: ~3 s less per call than a fresh interpreter importing torch."""
    from nnslim.cli import main

    capfd.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out, err)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for n in needles:
        assert n in last, last


def test_lists():
    out = nnslim("testbeds")
    assert out.returncode == 0 and all(n in out.stdout for n in ("digits-cnn", "minilm", "smollm2"))
    out = nnslim("methods")
    assert out.returncode == 0 and all(n in out.stdout for n in ("fp16", "bf16", "onnx", "onnx-fp16"))
    for name in ("int4-rtn", "int4-gptq", "int4-awq", "int8-weight-only", "fp8", "int8-w8a8",
                 "prune-magnitude", "prune-2of4", "wanda", "sparsegpt", "lowrank"):
        assert name in out.stdout, name


def test_method_options_with_set(tmp_path, capfd):
    out = tmp_path / "o"
    assert_clean_error(in_process(capfd, "compress", "--model", "smollm2", "--method", "int4-rtn", "--set", "group_size",
                              "--out", str(out)), "--set 'group_size'", "KEY=VALUE")
    assert_clean_error(in_process(capfd, "compress", "--model", "smollm2", "--method", "int4-rtn", "--set", "bitz=4",
                              "--out", str(out)), "unknown key 'bitz'", "group_size")
    assert_clean_error(in_process(capfd, "compress", "--model", "smollm2", "--method", "int4-gptq", "--set", "group_size=100",
                              "--out", str(out)), "group_size=100 is not allowed")
    assert_clean_error(in_process(capfd, "compress", "--model", "smollm2", "--method", "int4-rtn", "--set", "group_size=128",
                              "--no-report", "--out", str(out)), "group_size=128 does not divide in_features=576")
    assert not out.exists()


@pytest.mark.parametrize("verb", ["testbeds", "methods", "evaluate", "benchmark", "compress", "demo"])
def test_help(verb):
    out = nnslim(verb, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_bad_inputs(tmp_path, capfd):
    """The first error through a real process (exit code 2), the rest through the same main() in-process."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "broken.onnx").write_bytes(b"this is not protobuf")
    (user / "weights.safetensors").write_bytes(b"\x00" * 16)
    (user / "r.yaml").write_text("steps:\n  - method: fp16\n    alpha: 0.5\n")
    (user / "t.yaml").write_text("steps:\n  - method: onnx\n    opset: seventeen\n")
    (user / "order.yaml").write_text("steps:\n  - method: onnx\n  - method: fp16\n")
    graph = user / "user.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),), str(graph), input_names=["x"], dynamo=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    before = files_digest(tmp_path)

    assert_clean_error(nnslim("evaluate", "--model", "resnet9000"), "resnet9000", "digits-cnn")
    assert_clean_error(in_process(capfd, "evaluate", "--model", str(user / "missing.onnx")), "missing.onnx")
    assert_clean_error(in_process(capfd, "evaluate", "--model", str(user / "broken.onnx")), "not a valid ONNX model")
    assert_clean_error(in_process(capfd, "evaluate", "--model", str(user / "weights.safetensors")), "bare weights file")
    assert_clean_error(in_process(capfd, "evaluate", "--model", "digits-cnn", "--testbed", "imagenet"),
                       "testbed='imagenet'", "allowed")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--method", "int3", "--out",
                              str(tmp_path / "o1")), "method='int3'", "allowed")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--recipe", str(user / "r.yaml"), "--out",
                              str(tmp_path / "o2")), "unknown key 'alpha'")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--recipe", str(user / "t.yaml"), "--out",
                              str(tmp_path / "o3")), "opset='seventeen'", "expected int")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--recipe", str(user / "nope.yaml"), "--out",
                              str(tmp_path / "o4")), "nope.yaml", "not found")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--method", "fp16", "--out", str(full)),
                       "not empty", "--overwrite")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--recipe", str(user / "order.yaml"),
                              "--out", str(tmp_path / "o5"), "--no-report"), "needs a torch model")
    assert_clean_error(in_process(capfd, "compress", "--model", str(graph), "--method", "int8", "--out",
                                  str(tmp_path / "o6")), "input model is an ONNX graph", "nnslim evaluate")
    assert_clean_error(in_process(capfd, "benchmark", "--model", "digits-cnn", "--batch", "zero"), "--batch")
    assert_clean_error(in_process(capfd, "benchmark", "--model", "digits-cnn", "--backend", "tensorrt"), "--backend")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--method", "int8", "--target", "tensorrt",
                              "--out", str(tmp_path / "o7")), "--target", "onnxruntime", "openvino")
    assert_clean_error(in_process(capfd, "benchmark", "--model", "digits-cnn", "--backend", "openvino"),
                       "--backend='openvino'", "torch")
    assert_clean_error(in_process(capfd, "compress", "--model", "digits-cnn", "--out", str(tmp_path / "o6")),
                       "--method", "--recipe")
    assert files_digest(tmp_path) == before  # nothing of the user's changed, no output left behind


def test_refuses_to_write_over_its_input(tmp_path):
    out = tmp_path / "a"
    assert nnslim("compress", "--model", "digits-cnn", "--method", "onnx", "--out", str(out),
                  "--no-report").returncode == 0
    before = files_digest(out)
    proc = nnslim("compress", "--model", str(out / "model.onnx"), "--method", "onnx", "--out", str(out),
                  "--overwrite", "--no-report")
    assert_clean_error(proc, "never overwrites its input")
    assert files_digest(out) == before


def test_compress_onnx_then_evaluate_reproduces_accuracy(tmp_path, digits):
    import json

    from nnslim.runtime import TorchRunner

    tb, model = digits
    fp32 = tb.evaluate(TorchRunner(model))["accuracy"]
    out = tmp_path / "x"
    proc = nnslim("compress", "--model", "digits-cnn", "--method", "onnx", "--out", str(out), "--repeats", "3")
    assert proc.returncode == 0, proc.stderr
    assert {"model.onnx", "nnslim.json", "report.json", "report.md", "plot.png"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "nnslim.json").read_text())
    assert meta["recipe"]["steps"][0]["method"] == "onnx" and meta["seed"] == 0 and "torch" in meta["versions"]
    report = json.loads((out / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names[0] == "original float32" and names[1].startswith("onnx") and len(names) == 3
    assert all(v["peak_mem_bytes"] and v["peak_mem_bytes"] > 0 for v in report["variants"])
    for backend in ("onnxruntime", "openvino"):
        proc = nnslim("evaluate", "--model", str(out / "model.onnx"), "--backend", backend, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["metrics"]["accuracy"] == pytest.approx(fp32, abs=1e-9)


def test_recipe_that_cannot_compose_is_one_line_naming_both_steps(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - method: int8\n  - method: prune-magnitude\n")
    proc = nnslim("compress", "--model", "digits-cnn", "--recipe", str(recipe), "--out", str(tmp_path / "o"))
    assert_clean_error(proc, "step 1 ('prune-magnitude')", "step 0 ('int8')", "put 'prune-magnitude' before 'int8'")
    assert not (tmp_path / "o").exists()


def test_a_runtime_that_cannot_be_imported_is_one_line(tmp_path, capfd, monkeypatch):
    """--target / --backend naming a runtime that is not installed: exit 2, one line naming it and the way out."""
    out = tmp_path / "onnx"
    assert in_process(capfd, "compress", "--model", "digits-cnn", "--method", "onnx", "--out", str(out),
                      "--no-report").returncode == 0
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an uninstalled package looks like to import
    assert_clean_error(in_process(capfd, "evaluate", "--model", str(out / "model.onnx"), "--target", "openvino"),
                       "--backend='openvino'", "pip install openvino", "--backend onnxruntime")


def test_demo_measures_both_onnx_runtimes(tmp_path, capfd):
    """`nnslim demo` on the small CNN: the fp32 torch row, then the fp32 and int8 ONNX artifacts measured in ONNX
    Runtime and in OpenVINO (which one runs int8 faster depends on the CPU), each against fp32 in its own runtime;
    --backend keeps one runtime, a wrong one exits 2."""
    import json

    out = tmp_path / "demo"
    proc = in_process(capfd, "demo", "--testbed", "digits-cnn", "--repeats", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {v["name"]: v for v in json.loads((out / "report.json").read_text())["variants"]}
    assert list(rows)[0] == "fp32 (torch)"
    for rt in ("onnxruntime", "openvino"):
        assert rows[f"original as fp32 onnx ({rt})"]["backend"] == rt
        int8 = rows[f"int8 onnx ({rt})"]
        assert int8["backend"] == rt and int8["latency_ms"] > 0
        assert int8["size_bytes"] < 0.35 * rows["fp32 (torch)"]["size_bytes"]
    assert (out / "int8").is_dir() and (out / "onnx").is_dir() and "int8 onnx (openvino)" in proc.stdout
    one = tmp_path / "one"
    assert in_process(capfd, "demo", "--testbed", "digits-cnn", "--repeats", "2", "--backend", "openvino",
                      "--out", str(one)).returncode == 0
    names = [v["name"] for v in json.loads((one / "report.json").read_text())["variants"]]
    assert names == ["fp32 (torch)", "original as fp32 onnx", "int8 onnx"]
    assert_clean_error(in_process(capfd, "demo", "--backend", "tensorrt", "--out", str(tmp_path / "x")), "--backend")
