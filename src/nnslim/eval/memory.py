"""Peak memory of a variant, measured in a fresh process: load it from disk, run one batch.

Reported as the peak resident set size of that process minus its size after importing the
libraries, i.e. weights + activations + runtime workspace of this variant alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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


def peak_memory_bytes(source: str, backend: str, inputs: dict[str, np.ndarray],
                      timeout: float = 600) -> int | None:
    """Peak extra RSS to load `source` (artifact dir, .onnx, or 'testbed:NAME') and run `inputs`.

    Returns None where it cannot be measured (not Linux, or the child failed).
    """
    if not Path("/proc/self/statm").exists():
        return None
    with tempfile.TemporaryDirectory(prefix="nnslim-mem-") as tmp:
        npz = os.path.join(tmp, "inputs.npz")
        np.savez(npz, **inputs)
        spec = json.dumps({"source": source, "backend": backend, "inputs": npz})
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""), NNSLIM_PROGRESS="0")
        env = {k: v for k, v in env.items() if v != ""}
        try:
            proc = subprocess.run([sys.executable, "-m", "nnslim.eval.memory", spec], capture_output=True,
                                  text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return None
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("PEAK_BYTES="):
                return int(line.split("=", 1)[1])
        return None


def _child(spec: dict) -> None:
    import torch  # noqa: F401  (imported before the baseline reading, as every variant needs it)
    import transformers  # noqa: F401

    from ..api import load_for_run

    baseline = _rss_bytes()
    data = dict(np.load(spec["inputs"]))
    runner = load_for_run(spec["source"], spec["backend"])
    runner(data)
    runner(data)
    peak = _hwm_bytes()
    print(f"PEAK_BYTES={max(peak - baseline, 0)}")


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
