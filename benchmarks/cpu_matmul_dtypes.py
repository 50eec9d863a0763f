"""One GEMM of a 7B-shaped MLP layer in fp32 and bf16 on this CPU (why bf16 calibration is slow here).

  python benchmarks/cpu_matmul_dtypes.py [--threads 2]

x [2048, 4096] @ W.T [4096, 11008] (2048 calibration tokens through gate_proj), one warm-up, then one timed call
per dtype; prints seconds and GFLOPS with the CPU's flags. CPUs without native bf16 (no avx512_bf16 / amx_bf16)
run bf16 GEMMs far below fp32.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from nnslim.io import cpu_flags

    torch.set_num_threads(args.threads)
    print(f"flags: {' '.join(f for f in cpu_flags() if 'avx' in f or 'amx' in f or 'vnni' in f)}; "
          f"threads {args.threads}")
    x, w = torch.randn(2048, 4096), torch.randn(11008, 4096)
    for dt in (torch.float32, torch.bfloat16):
        a, b = x.to(dt), w.to(dt)
        torch.nn.functional.linear(a, b)
        t = time.perf_counter()
        torch.nn.functional.linear(a, b)
        e = time.perf_counter() - t
        print(f"{str(dt)[6:]}: {e:.2f} s, {2 * 2048 * 4096 * 11008 / e / 1e9:.0f} GFLOPS")


if __name__ == "__main__":
    main()
