"""Peak memory of a variant, measured in a fresh process: load it from disk, run one batch.

Reported as the peak resident set size of that process minus its size after importing the
libraries, i.e. weights + activations + runtime workspace of this variant alone.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    """Peak RSS of this process image (VmHWM). Unlike ru_maxrss it is not inherited from the parent
    that forked us, which would report the parent's size for every child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM not in /proc/self/status")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_command(module: str) -> list[str]:
    """argv running `module`'s _main in a child that imports nothing from the working directory.

    -I: isolated mode (no CWD or script dir on sys.path, PYTHON* variables and user site ignored);
    nnslim's own location is put on sys.path explicitly, so an uninstalled checkout works too.
    """
    root = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {root!r}); from {module} import _main; _main()"
    return [sys.executable, "-I", "-c", code]


def run_child(module: str, payload: bytes, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a measurement child: payload on stdin (no temp files), a neutral working dir (/), killed with us."""
    return subprocess.run(child_command(module), input=payload, capture_output=True, timeout=timeout,
                          env=env, cwd=os.path.abspath(os.sep), preexec_fn=_die_with_parent)


def peak_memory_bytes(source: str, backend: str, inputs: dict[str, np.ndarray],
                      timeout: float = 600) -> int | None:
    """Peak extra RSS to load `source` (artifact dir, .onnx, or 'testbed:NAME') and run `inputs`.

    Returns None where it cannot be measured (not Linux, or the child failed).
    """
    if not Path("/proc/self/statm").exists():
        return None
    if not source.startswith("testbed:"):
        source = str(Path(source).resolve())  # the child runs in another working directory
    buf = io.BytesIO()
    np.savez(buf, **inputs)
    header = json.dumps({"source": source, "backend": backend}).encode()
    env = dict(os.environ, NNSLIM_PROGRESS="0")
    try:
        proc = run_child("nnslim.eval.memory", header + b"\n" + buf.getvalue(), timeout, env)
    except subprocess.TimeoutExpired:
        return None
    for line in reversed(proc.stdout.decode(errors="replace").splitlines()):
        if line.startswith("PEAK_BYTES="):
            return int(line.split("=", 1)[1])
    return None


def _child(spec: dict, data: dict) -> None:
    import torch  # noqa: F401  (imported before the baseline reading, as every variant needs it)
    import transformers  # noqa: F401

    from ..loading import load_for_run

    baseline = _rss_bytes()
    runner = load_for_run(spec["source"], spec["backend"])
    runner(data)
    runner(data)
    peak = _hwm_bytes()
    print(f"PEAK_BYTES={max(peak - baseline, 0)}")


def _main() -> None:
    raw = sys.stdin.buffer.read()
    header, _, body = raw.partition(b"\n")
    _child(json.loads(header), dict(np.load(io.BytesIO(body))))
