"""One launch of an int4 tensor-core GEMM for Nsight Compute (issue 17): why it runs below bf16. The CUDA GEMM
(cuda_int4_mma_gemm, --kernel cuda), the Triton MMA GEMM (triton_int4_mma, --kernel triton) or bf16 `F.linear`
(--kernel bf16, cuBLAS) for comparison. On the device machine:
  ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis \
      -k regex:int4_mma_gemm python benchmarks/ncu_int4_mma_gemm.py [--m 128] [--config w,rt,nt,u,stages,split]
  ncu ... -k regex:int4_gemm_mma python benchmarks/ncu_int4_mma_gemm.py --kernel triton --config 128x64x128k2w4s4
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
    ap.add_argument("--kernel", choices=["cuda", "triton", "bf16"], default="cuda")
    ap.add_argument("--config", default="8,1,8,2,4,4",
                    help="cuda: WARPS,RT,NT,U,STAGES,SPLIT; triton: BMxBNxBKkSPLITwWARPSsSTAGES "
                    "(gpu_int4_gemm.py's names)")
    args = ap.parse_args()
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    layer = WeightOnlyLinear.from_codes(*int4_parts(args.k, args.n)).cuda()
    x = torch.randn(args.m, args.k, device="cuda", dtype=torch.bfloat16)
    if args.kernel == "cuda":
        w, rt, nt, u, st, sp = (int(v) for v in args.config.split(","))
        cfg = dict(WARPS=w, RT=rt, NT=nt, U=u, STAGES=st, SPLIT=sp)
        call = lambda: layer._cuda_int4mmag(x, cfg)  # noqa: E731
    elif args.kernel == "triton":
        from gpu_int4_gemm import parse_mma

        try:
            cfg = parse_mma(args.config)[0]
        except ValueError as e:
            ap.error(f"--config: {e}")
        call = lambda: layer._triton_int4mma(x, cfg)  # noqa: E731
    else:
        wb = layer.dequantized_weight(torch.bfloat16)
        call = lambda: torch.nn.functional.linear(x, wb)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
