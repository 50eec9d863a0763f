"""Run nnslim's int4 GEMVs once per launch configuration on Llama-7B shapes, for Nsight Compute to profile
(issue 17):   ncu --clock-control none --section SpeedOfLight --section WarpStateStats
                  --section MemoryWorkloadAnalysis -k regex:int4_gemv python benchmarks/ncu_int4_gemv.py
Each layer is called three times (the last launch is the one to read: caches warm as in a decode loop)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import int4_layer_copies  # noqa: E402

import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="K x N, comma separated")
    ap.add_argument("--configs", default="R2m1s2,R2m1s8", help="CUDA GEMV configs (R rows, m MT, s STAGES)")
    ap.add_argument("--m", type=int, default=1)
    args = ap.parse_args()
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        _, mods, _, _ = int4_layer_copies(k, n)
        x = torch.randn(args.m, k, dtype=torch.bfloat16, device="cuda")
        for name in args.configs.split(","):
            r, rest = name[1:].split("m")
            mt, st = rest.split("s")
            cfg = dict(R=int(r), MT=int(mt), STAGES=int(st.replace("pdl", "")), PDL=st.endswith("pdl"))
            for i in range(3):
                mods[i % len(mods)]._cuda_int4(x, cfg)
        torch.cuda.synchronize()
        print(shape, "done", flush=True)
        del mods
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
