"""Instructions per loop iteration of the packed-bf16x2 int4 GEMV (runtime/kernels/triton_int4_gemv.py), compiled
for sm_90 here with Triton's bundled ptxas and read with its cuobjdump (no GPU needed), for each offered launch
configuration: the SASS op counts of the hottest loop, words (8 codes) per thread per iteration and instructions
per code; the PTX as nnslim writes it (mask and magic in one LOP3) and in its earlier form (an AND and an OR).
BENCHMARKS.md 9l.

  python benchmarks/sass_int4_gemv.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_int4_gemm import loop_ops  # noqa: E402

from nnslim.runtime.kernels import triton_int4_gemv as g  # noqa: E402
from nnslim.runtime.kernels.triton_int4 import kmajor_tile  # noqa: E402

SIG = {"x_ptr": "*i32", "wq_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*bf16", "y_ptr": "*bf16", "ws_ptr": "*fp32",
       "cnt_ptr": "*i32", "N": "i32", "stride_xm": "i32", "stride_ym": "i32"}


def main() -> None:
    for merged in (False, True):
        print("mask and magic in one LOP3" if merged else "mask and magic as an AND and an OR (before 2026-12-06)")
        for i, cfg in enumerate(g.X2_CONFIGS):
            report(i, cfg, g._asm(merged))


def report(i: int, cfg: dict, asm: str) -> None:
    k = 4096 if cfg["SPLIT_K"] == 1 else 11008  # several iterations per program either way
    ng, gw = kmajor_tile(k, 128, cfg["BLOCK_K"])
    consts = dict(K=k, GROUP=128, HAS_ZERO=False, NEG_BASE=g.NEG_BASE, ASM=asm, BLOCK_N=cfg["BLOCK_N"],
                  NG=ng, GW=gw, SPLIT_K=cfg["SPLIT_K"], PREFETCH=cfg["PREFETCH"], PDL=False)
    src = ASTSource(fn=g._int4_gemv_x2_kernel, signature={**SIG, **{n: "constexpr" for n in consts}},
                    constexprs=consts, attrs={(j,): [["tt.divisibility", 16]] for j in range(len(SIG))})
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=cfg["num_warps"]))
    ops, _ = loop_ops(kern.asm["cubin"])
    words = cfg["BLOCK_N"] * cfg["BLOCK_K"] / 8 / (32 * cfg["num_warps"])
    total = sum(ops.values())
    print(f"config {i} BLOCK_N={cfg['BLOCK_N']} BLOCK_K={cfg['BLOCK_K']} SPLIT_K={cfg['SPLIT_K']} "
          f"prefetch={cfg['PREFETCH']}: {total} instructions per iteration, {words:g} words per thread, "
          f"{total / words / 8:.2f} per code; {dict(ops.most_common(8))}")


if __name__ == "__main__":
    main()
