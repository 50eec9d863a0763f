"""The training loop: checkpoints and exact resume after a kill, data-parallel runs under torchrun that
match one process, hard labels, layer maps and projections."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nnslim
from nnslim import NnslimError
from nnslim.distillation.features import FeatureMatcher, layer_map
from zoo import SlowMLP, mlp_data

CHILD = str(Path(__file__).with_name("_train_child.py"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", NNSLIM_PROGRESS="0")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(out, ckpt, delay=0.0, steps=60):
    subprocess.run([sys.executable, CHILD, str(out), str(ckpt), str(delay), str(steps)], check=True, env=_env(),
                   capture_output=True, timeout=600)
    return load_file(str(out))


def test_killed_run_resumes_with_identical_result(tmp_path):
    reference = _run(tmp_path / "ref.safetensors", tmp_path / "ck-ref", steps=60)
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, CHILD, str(tmp_path / "x.safetensors"), str(ck), "0.05", "60"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ck / "step-00000020").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a crash between checkpoints: at most the steps since step 20 are lost
    proc.wait()
    assert (ck / "step-00000020").is_dir() and not (tmp_path / "x.safetensors").exists()
    resumed = _run(tmp_path / "y.safetensors", ck, steps=60)
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_resume_refuses_another_run(tmp_path):
    ck = tmp_path / "ck"
    cfg = nnslim.DistillConfig(steps=25, batch_size=16, checkpoint_dir=str(ck), checkpoint_every=10)
    nnslim.distill(SlowMLP(), SlowMLP(), data=mlp_data(), config=cfg)
    assert (ck / "step-00000020").is_dir()
    with pytest.raises(NnslimError, match="other training options"):
        nnslim.distill(SlowMLP(), SlowMLP(), data=mlp_data(), config=nnslim.DistillConfig(
            steps=25, batch_size=16, lr=1e-3, checkpoint_dir=str(ck), checkpoint_every=10))
    with pytest.raises(NnslimError, match="other training data"):
        nnslim.distill(SlowMLP(), SlowMLP(), data=mlp_data(128), config=cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out, ckpt, delay, steps, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            CHILD, str(out), str(ckpt), str(delay), str(steps)]


def test_two_gloo_processes_match_one_and_their_checkpoint_resumes_on_one(tmp_path):
    """Two gloo processes train the model one process trains (same global batches, gradients averaged over ranks:
    equal up to float summation order); and (issue 18) a checkpoint written by rank 0 of a 2-process run, killed
    between checkpoints, resumes in one process (another world size) to that same model."""
    one = _run(tmp_path / "one.safetensors", "-", steps=40)
    proc = subprocess.run(_torchrun(tmp_path / "two.safetensors", "-", "0", 40, _free_port()), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = load_file(str(tmp_path / "two.safetensors"))
    for k in one:
        rel = float((one[k] - two[k]).norm() / one[k].norm().clamp(min=1e-12))
        assert rel < 1e-4, (k, rel)
    ck = tmp_path / "ck"
    proc = subprocess.Popen(_torchrun(tmp_path / "x.safetensors", ck, "0.05", 40, _free_port()), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (ck / "step-00000020").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    assert (ck / "step-00000020").is_dir() and not (tmp_path / "x.safetensors").exists()
    resumed = _run(tmp_path / "y.safetensors", ck, steps=40)
    for k in one:
        rel = float((one[k] - resumed[k]).norm() / one[k].norm().clamp(min=1e-12))
        assert rel < 1e-4, (k, rel)


def test_distributed_setup_refusals(monkeypatch):
    from nnslim.distillation import distributed

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(NnslimError, match="WORLD_SIZE='two' is not an integer"):
        distributed.setup("auto")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if not torch.cuda.is_available():
        with pytest.raises(NnslimError, match="backend='nccl' needs CUDA GPUs"):
            distributed.setup("nccl")
    else:  # more processes on this node than GPUs
        monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
        with pytest.raises(NnslimError, match="--nproc_per_node must not exceed the GPUs present"):
            distributed.setup("nccl")


def test_hard_labels_layer_map_and_projections():
    assert layer_map(3, 6) == [1, 3, 5] and layer_map(2, 2) == [0, 1]
    with pytest.raises(NnslimError, match="layer_map"):
        layer_map(2, 4, (0, 7))

    class Deep(torch.nn.Module):
        def __init__(self, n, width):
            super().__init__()
            self.inp = torch.nn.Linear(8, width)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(n))
            self.out = torch.nn.Linear(width, 3)

        def forward(self, x):
            h = self.inp(x)
            for layer in self.layers:
                h = torch.relu(layer(h))
            return self.out(h)

    torch.manual_seed(0)
    teacher, student = Deep(4, 32), Deep(2, 16)
    matcher = FeatureMatcher(student, teacher, hidden=True, attention=False)
    x = torch.randn(4, 8)
    matcher.prepare(lambda: (teacher(x), student(x)))
    assert matcher.map == [1, 3] and set(matcher.proj) == {"0", "1"}  # widths 16 -> 32 need projections
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(1, 8, generator=g), "labels": torch.randint(0, 3, (1,), generator=g)} for _ in range(64)]
    notes = []
    from nnslim.distillation.trainer import distill

    distill(student, teacher, data, nnslim.DistillConfig(steps=5, batch_size=8, hidden_weight=1.0), "logits",
            notes=notes)
    assert "labels" in notes[-1] and "hidden" in notes[-1] and "2 projections" in notes[-1]


def test_cli_under_torchrun_writes_one_artifact(tmp_path):
    """`torchrun -m nnslim compress`: both ranks train, rank 0 alone writes the artifact."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 0\nsteps:\n  - {method: qat, bits: 8}\n  - {method: distill, steps: 6, batch_size: 32, "
                      "backend: gloo}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "nnslim", "compress", "--model", "digits-cnn", "--recipe", str(recipe), "--out", str(out),
           "--no-report"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1 and (out / "model.onnx").is_file() and (out / "nnslim.json").is_file()
    assert "on 2 process(es)" in (out / "nnslim.json").read_text()
