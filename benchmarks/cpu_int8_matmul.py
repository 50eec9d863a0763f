"""An int8 W8A8 linear on this CPU: each candidate of nnslim's W8A8Linear (torch._int_mm on per-token codes, the
dequantize-then-matmul reference) against the fp32 F.linear, at SmolLM2's layer shapes and 1-128 rows.

  python benchmarks/cpu_int8_matmul.py [--threads 2] [--m 1,8,64,128] [--reps 50]

Each line: M, K x N, ms per call (median of 5 rounds of `reps` calls) of fp32 F.linear and of each candidate, the
candidate's ratio vs fp32 and its relative error vs the reference. Prints the CPU's int8 / bf16 flags and whether
torch._int_mm passed nnslim's exactness probe (it is only offered where it does).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = [(576, 576), (576, 1536), (1536, 576)]  # SmolLM2-135M: q/o, gate/up, down (K, N)


def ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t) / reps * 1e3)
    return statistics.median(rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", default="1,8,64,128")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    from nnslim.io import cpu_flags, machine_info
    from nnslim.quant.w8a8 import W8A8Linear, cpu_int_mm_exact

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flags = [f for f in cpu_flags() if any(t in f for t in ("avx512f", "vnni", "amx", "bf16", "avx2"))]
    print(f"# {machine_info()}; flags {' '.join(flags)}; threads {args.threads}; torch {torch.__version__}; "
          f"torch._int_mm exact here: {cpu_int_mm_exact()}")
    print("| M | K x N | fp32 ms | candidate | ms | vs fp32 | rel err vs reference |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for k, n in SHAPES:
            lin = nn.Linear(k, n, bias=False)
            q = W8A8Linear.from_linear(lin, "int8")
            for m in (int(v) for v in args.m.split(",")):
                x = torch.randn(m, k)
                base = ms(lambda: lin(x), args.reps)
                cands = q._candidates(x)
                ref = cands["dequant"]()
                for name, fn in cands.items():
                    t = ms(fn, args.reps)
                    err = float((fn() - ref).norm() / ref.norm())
                    print(f"| {m} | {k}x{n} | {base:.4f} | {name} | {t:.4f} | {base / t:.2f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
