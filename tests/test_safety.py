"""Running nnslim is safe on untrusted inputs: no code from the working directory or a model folder,
bounded expansion of recipes and metadata, ONNX external data read only from the model's folder."""
import json
import os
import tempfile
import time

import numpy as np
import pytest
import torch

import nnslim
from nnslim.errors import NnslimError
from zoo import TwoLayer


def _onnx(tmp_path, external=False):
    import onnx

    from nnslim.runtime.onnx_export import export_onnx

    torch.manual_seed(0)
    m = export_onnx(TwoLayer(), {"x": np.random.rand(2, 16).astype(np.float32)}, tmp_path / "model.onnx")
    if external:
        proto = onnx.load(str(m.path))
        onnx.save(proto, str(m.path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=0)
    return m.path


def test_memory_child_imports_nothing_from_the_working_directory(tmp_path, monkeypatch):
    from nnslim.eval.memory import child_command, peak_memory_bytes

    path = _onnx(tmp_path)
    marker = tmp_path / "ran"
    trap = tmp_path / "cwd"
    trap.mkdir()
    for name in ("json", "numpy", "nnslim", "torch"):  # modules the child imports
        (trap / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('{name}')\n")
    monkeypatch.chdir(trap)
    private = tmp_path / "tmp"  # a temp folder of this test's own: other test workers use the shared one
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    peak = peak_memory_bytes(str(path), "onnxruntime", {"x": np.zeros((2, 16), np.float32)})
    assert not marker.exists(), marker.read_text()
    assert isinstance(peak, int) and peak > 0
    assert "-I" in child_command("nnslim.eval.memory")  # isolated mode: no CWD, no PYTHON* variables
    # inputs go over stdin: no temp files (a library's own dot-file, e.g. ".ses", is not nnslim's)
    assert not [p.name for p in private.iterdir() if p.name.startswith(("nnslim", "tmp"))]


def test_memory_child_dies_with_its_parent(tmp_path):
    import subprocess
    import sys

    # A parent that starts a child through run_child and is killed: the child must not outlive it.
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from nnslim.eval import memory\n"
        "memory.child_command = lambda module: [sys.executable, '-c', "
        "'import os, time; print(os.getpid(), flush=True); time.sleep(60)']\n"
        "memory.run_child('x', b'', 120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    child_pid = None
    while time.time() < deadline and child_pid is None:
        out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        child_pid = int(out[0]) if out else None
        time.sleep(0.2)
    assert child_pid is not None
    parent.kill()
    parent.wait()
    for _ in range(50):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, 9)
        pytest.fail("the measurement child outlived its parent")


def _tiny_bert_dir(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=30522)  # MiniLM's tokenizer is paired with it in one test
    d = tmp_path / "bert"
    BertModel(cfg).save_pretrained(str(d))
    return d


def test_hf_folder_code_is_refused_unless_trusted(tmp_path):
    d = _tiny_bert_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    with pytest.raises(NnslimError, match="auto_map.*--trust-remote-code"):
        nnslim.evaluate(str(d))
    assert not (tmp_path / "ran").exists()


def test_pickle_weights_are_refused(tmp_path):
    from safetensors.torch import load_file

    d = _tiny_bert_dir(tmp_path)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(NnslimError, match="pickle weights only"):
        nnslim.evaluate(str(d))


def test_artifact_cannot_redirect_loading(tmp_path):
    res = nnslim.compress(TwoLayer(), "fp16", example_inputs={"x": torch.randn(4, 16)}, out=tmp_path / "a",
                          report=False)
    meta_path = res.out / "nnslim.json"
    meta = json.loads(meta_path.read_text())
    for arch in ({"kind": "hf-encoder", "path": str(_tiny_bert_dir(tmp_path))},
                 {"kind": "hf-causal-lm", "path": "../.."}):
        meta["architecture"] = arch
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(NnslimError, match="architecture.path"):
            nnslim.load(res.out)
    meta["architecture"] = {"kind": "module"}
    meta["file"] = "../../etc/passwd"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(NnslimError, match="file=.* is not allowed"):
        nnslim.load(res.out, model=TwoLayer())


def test_yaml_aliases_cannot_blow_up(tmp_path):
    lines = ["a: &a [" + ", ".join(["xxxxxxxxxx"] * 9) + "]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{'' if i == 1 else i - 1}"] * 9) + "]")
    lines.append("steps: [{method: fp16, bogus: *a8}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 600
    start = time.time()
    with pytest.raises(NnslimError) as e:
        nnslim.recipe.load_recipe(path)
    assert time.time() - start < 5 and len(str(e.value)) < 500


def test_metadata_sizes_are_checked_before_allocating(tmp_path):
    res = nnslim.compress(TwoLayer(), "fp16", example_inputs={"x": torch.randn(4, 16)}, out=tmp_path / "a",
                          report=False)
    meta_path = res.out / "nnslim.json"
    meta = json.loads(meta_path.read_text())
    big = 2_000_000
    meta["quantized_layers"] = {"a": {"kind": "weight_only", "in_features": big, "out_features": big, "bits": 4,
                                      "group": 128, "symmetric": True, "bias": True}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(NnslimError, match="does not fit"):
        nnslim.load(res.out, model=TwoLayer())  # 2M x 2M int4 would be 2 TB: must fail from the header alone
    meta["quantized_layers"] = {"a": "nonsense"}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(NnslimError, match="does not fit"):
        nnslim.load(res.out, model=TwoLayer())


def test_sparse_storage_shapes_are_checked_before_allocating():
    from nnslim.pruning.storage import decode

    tensors = {"w::mask": torch.zeros(2, dtype=torch.uint8), "w::values": torch.zeros(0)}
    with pytest.raises(NnslimError, match="damaged"):
        decode(tensors, {"w": {"shape": [1_000_000, 1_000_000], "dtype": "float32", "values": "float32"}})


def test_onnx_external_data_resolves_beside_the_model(tmp_path, monkeypatch):
    from nnslim.io import check_onnx

    path = _onnx(tmp_path, external=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    check_onnx(path)  # valid: must not depend on the working directory
    assert nnslim.load(str(path)).size_bytes > (tmp_path / "model.onnx").stat().st_size


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    import onnx

    from nnslim.io import check_onnx

    path = _onnx(tmp_path, external=True)
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(proto, str(path))
    with pytest.raises(NnslimError, match="outside the model's folder"):
        check_onnx(path)


def test_hf_artifact_is_self_contained_and_its_config_is_bounded(tmp_path):
    import shutil

    from nnslim.testbeds.minilm import minilm_dir

    d = _tiny_bert_dir(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, d / name)
    nnslim.compress(str(d), "fp16", out=tmp_path / "a", report=False)
    moved = tmp_path / "moved"
    shutil.move(str(d), moved)  # the source folder is gone: the artifact loads on its own
    meta = json.loads((tmp_path / "a" / "nnslim.json").read_text())
    assert meta["architecture"]["path"] == "." and (tmp_path / "a" / "config.json").exists()
    assert next(nnslim.load(tmp_path / "a").parameters()).dtype == torch.float16
    with pytest.raises(NnslimError, match="--testbed DIR"):
        nnslim.evaluate(str(tmp_path / "a"))
    assert nnslim.evaluate(str(tmp_path / "a"), testbed=str(moved))["metrics"]["cos_mean"] > 0.999
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg.update(hidden_size=32_000, intermediate_size=64_000)
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NnslimError, match="does not belong to these weights"):
        nnslim.load(tmp_path / "a")  # checked on the meta device: nothing of that size is allocated


def test_safetensors_reader_reads_what_safetensors_wrote_and_refuses_truncation(tmp_path):
    """nnslim's plain-read safetensors reader (no mmap: loads hold the tensors once) gives the same tensors as
    the safetensors library for every dtype nnslim writes, and a truncated or corrupt file is a clear error."""
    import torch
    from safetensors.torch import save_file

    from nnslim.errors import NnslimError
    from nnslim.io import SafetensorsReader

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(4).to(torch.bfloat16), "c": torch.arange(7, dtype=torch.uint8),
               "d": torch.randint(-9, 9, (2, 2), dtype=torch.int32), "e": torch.zeros(0, 3),
               "f": torch.randn(6).to(torch.float8_e4m3fn)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    with SafetensorsReader(path) as f:
        assert sorted(f.keys()) == sorted(tensors)
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got.view(torch.uint8), v.view(torch.uint8))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(NnslimError, match="truncated"), SafetensorsReader(tmp_path / "cut.safetensors") as f:
        [f.get_tensor(k) for k in f.keys()]
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(NnslimError, match="not a valid safetensors file"):
        SafetensorsReader(tmp_path / "bad.safetensors")


def test_a_model_that_fails_on_its_inputs_is_refused_before_any_step_and_keeps_its_modes():
    """A model whose config is inconsistent (here a BatchNorm of the wrong width) fails on its first forward: one
    line naming the inputs and the model's own error, not a traceback from inside a method (BatchNorm folding)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU()).train()
    with pytest.raises(NnslimError, match=r"fails on an example input \(x \(1, 3, 8, 8\)\) before any step: "
                                          r"RuntimeError: running_mean should contain 8 elements not 16"):
        nnslim.quantize(model, nnslim.Int8Config(), example_inputs={"x": torch.randn(1, 3, 8, 8)}, inplace=True)
    assert all(m.training for m in model.modules())  # checked in eval mode, its modes restored
