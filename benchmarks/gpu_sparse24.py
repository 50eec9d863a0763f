"""2:4 semi-structured linear vs dense bf16 on the GPU (issue 6; run on the device machine).

  python benchmarks/gpu_sparse24.py [--m 512,1024,2048,4096,8192] [--json FILE]
  python benchmarks/gpu_sparse24.py --render FILE

Llama-7B linear shapes, a 2:4 magnitude-pruned bf16 weight. For each M: bf16 F.linear on the dense
weight, nnslim's SemiSparseLinear cuSPARSELt path (weight compressed once, algorithm searched once
per shape and M bucket) and torch's CUTLASS path where torch allows it. Two timings per variant:
  graph  replays of a CUDA graph (no host overhead: how a serving loop with graphs runs), do_bench median
  eager  20 back-to-back calls between CUDA events, host overhead included (plain PyTorch)
Every figure is a ratio against bf16 timed the same way in the same run; outputs are checked
against the dense matmul (relative error).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]


def eager_time(fn, calls: int = 20, reps: int = 15) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def bench(ms: list[int]) -> list[dict]:
    from gpu_llm import graph_time, rel_err

    from nnslim.pruning.masks import nm_mask
    from nnslim.pruning.sparse24 import SemiSparseLinear

    rows = []
    torch.manual_seed(0)
    for k, n in SHAPES:
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            lin.weight.mul_(nm_mask(lin.weight.abs().float(), 2, 4).to(lin.weight.dtype))
        sp = SemiSparseLinear.from_linear(lin)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, lin.weight)
            row = {"K": k, "N": n, "M": m}
            variants = {"bf16": lambda: F.linear(x, lin.weight), "cusparselt": lambda: sp._cusparselt(x),
                        "cutlass": lambda: sp._cutlass(x)}
            for name, fn in variants.items():
                try:
                    row[f"{name}_err"] = round(rel_err(fn(), ref), 6)
                    row[f"{name}_graph_ms"] = round(graph_time(fn, 1), 4)
                    row[f"{name}_eager_ms"] = round(eager_time(fn), 4)
                except Exception as e:  # noqa: BLE001 - torch refuses a backend on this GPU: report it
                    row[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            for name in ("cusparselt", "cutlass"):
                for how in ("graph", "eager"):
                    if f"{name}_{how}_ms" in row:
                        row[f"{name}_{how}_x"] = round(row[f"bf16_{how}_ms"] / row[f"{name}_{how}_ms"], 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def render(path: str) -> None:
    d = json.loads(Path(path).read_text())
    print(f"2:4 linear on {d['machine']}, {d['date']}")
    print("| K x N | M | bf16 ms (graph) | cuSPARSELt vs bf16, graph | cuSPARSELt vs bf16, eager | CUTLASS | rel. err |")
    print("|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        cut = f"{r['cutlass_graph_x']:.2f}x" if "cutlass_graph_x" in r else "refused"
        print(f"| {r['K']}x{r['N']} | {r['M']} | {r['bf16_graph_ms']:.4f} | {r.get('cusparselt_graph_x', 0):.2f}x | "
              f"{r.get('cusparselt_eager_x', 0):.2f}x | {cut} | {r.get('cusparselt_err', '-')} |")
    errs = {r["cutlass_error"] for r in d["rows"] if "cutlass_error" in r}
    for e in errs:
        print(f"\nCUTLASS: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="512,1024,2048,4096,8192")
    ap.add_argument("--json", default=None)
    ap.add_argument("--render", default=None, help="print the Markdown table of a saved run")
    args = ap.parse_args()
    if args.render:
        return render(args.render)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    p = torch.cuda.get_device_properties(0)
    machine = f"{p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}"
    print(f"# 2:4 linear on {machine}", flush=True)
    rows = bench([int(m) for m in args.m.split(",")])
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
