"""GPTQ / SparseGPT's inverse Hessian factor on the CPU: torch's cholesky -> cholesky_inverse -> cholesky
(what runs off the CPU) against nnslim's in-place LAPACK path (issue 19; BENCHMARKS.md 10b).

  python benchmarks/inverse_factor_cpu.py [--sizes 4096 11008]

For each K: a random SPD fp32 Hessian, the median of 3 timings of each path, their maximum relative
difference and each path's extra peak memory in K x K units (VmHWM reset via /proc/self/clear_refs). One JSON line.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _rss(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 11008])
    args = ap.parse_args()
    import torch

    from nnslim.graph.hessian import inverse_factor

    def reference(h):
        chol = torch.linalg.cholesky(h)
        del h
        inv = torch.cholesky_inverse(chol)
        del chol
        return torch.linalg.cholesky(inv, upper=True)

    inverse_factor(torch.eye(8), 0.01)  # imports
    rows = []
    for k in args.sizes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2 * k, k, generator=g)
        h0 = x.t() @ x / k
        del x
        h0.diagonal().add_(0.01 * torch.diag(h0).mean())
        row = {"K": k, "threads": torch.get_num_threads()}
        out = {}
        for name, fn in [("torch_s", lambda h: reference(h)), ("in_place_s", lambda h: inverse_factor(h, 0.0))]:
            times, extra = [], 0.0
            for rep in range(3):
                box = [h0.clone()]
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                before = _rss("VmRSS")
                t = time.perf_counter()
                out[name] = fn(box.pop())
                times.append(time.perf_counter() - t)
                extra = max(extra, (_rss("VmHWM") - before) / (4 * k * k))
                if rep < 2:
                    del out[name]
            row[name] = round(statistics.median(times), 2)
            row[name.replace("_s", "_extra_KxK")] = round(extra, 2)
        row["max_rel_diff"] = float((out["torch_s"] - out["in_place_s"]).abs().max() / out["torch_s"].abs().max())
        rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
