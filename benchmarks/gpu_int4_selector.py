"""What nnslim's measured kernel selector picks for int4 g128 linears on the Llama-7B shapes, and its speed vs bf16.

  python benchmarks/gpu_int4_selector.py [--m 128,256,512,2048]

For each shape and M: a WeightOnlyLinear (symmetric int4, group 128, random weights) with kernel "auto" is called
once (the selector times its candidates and keeps the fastest), then captured in a CUDA graph and timed by triton's
do_bench (median, warm-up) beside F.linear with the bf16 weight, graphed the same way (weights in L2 when they fit:
a lower bound of both times, unlike benchmarks/gpu_int4_gemm.py's layer copies); prints the chosen kernel and the ratio, and checks the output against the
dequantized fp32 reference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]


def _graphed(fn):
    """fn captured in a CUDA graph (after the selector's choice): the kernel's time, not Python's."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def main():
    from triton.testing import do_bench

    from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
    from nnslim.quant.weight_only.modules import WeightOnlyLinear
    from nnslim.runtime.kernels import select

    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="128,256,512,2048")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# int4 selector on {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for k, n in SHAPES:
        lin = nn.Linear(k, n, bias=False)
        spec = WeightSpec(4, 128, True)
        scale, zero = group_qparams(lin.weight.detach(), spec, 128)
        layer = WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), scale, zero, spec), scale,
                                            zero, spec).to("cuda", torch.bfloat16)
        w = layer.dequantized_weight(torch.bfloat16)
        for m in [int(v) for v in args.m.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                y = layer(x)
                table = select.kernel_table()
                chosen = table[-1]["chosen"] if table else None
                ref = x.float() @ w.float().t()
                err = float((y.float() - ref).norm() / ref.norm())
                t_q = do_bench(_graphed(lambda: layer(x)), warmup=25, rep=100, return_mode="median")
                t_b = do_bench(_graphed(lambda: torch.nn.functional.linear(x, w)), warmup=25, rep=100,
                               return_mode="median")
            print(json.dumps({"K": k, "N": n, "M": m, "kernel": chosen, "bf16_ms": round(t_b, 4),
                              "int4_ms": round(t_q, 4), "x": round(t_b / t_q, 3), "rel_err": round(err, 5)}), flush=True)


if __name__ == "__main__":
    main()
