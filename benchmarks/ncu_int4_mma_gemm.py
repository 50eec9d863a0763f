"""One launch of the CUDA tensor-core int4 GEMM (cuda_int4_mma_gemm) for Nsight Compute (issue 17): why it runs
far below the tensor pipe's rate. On the device machine:
  ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis \
      -k regex:int4_mma_gemm python benchmarks/ncu_int4_mma_gemm.py [--m 128] [--config w,rt,nt,u,stages,split]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import int4_parts  # noqa: E402

import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--config", default="8,1,8,2,4,4", help="WARPS,RT,NT,U,STAGES,SPLIT")
    args = ap.parse_args()
    w, rt, nt, u, st, sp = (int(v) for v in args.config.split(","))
    cfg = dict(WARPS=w, RT=rt, NT=nt, U=u, STAGES=st, SPLIT=sp)
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    layer = WeightOnlyLinear.from_codes(*int4_parts(args.k, args.n)).cuda()
    x = torch.randn(args.m, args.k, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        layer._cuda_int4mmag(x, cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
