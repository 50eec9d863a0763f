"""fp8 W8A8 linears at every M on Llama-7B shapes: nnslim's Triton fp8 GEMM (y.T = W x.T, split-K) vs
torch._scaled_mm (cuBLAS), activation quantization included, each a ratio vs bf16 F.linear in the same run
(issue 17: >= 1.2x at M = 1..128, >= 1.8x at M = 2048).

  python benchmarks/gpu_fp8_gemm.py [--m 1,16,...] [--shapes 0,1,2] [--json FILE]

Timing as benchmarks/gpu_llm.py (a CUDA graph of R layer copies whose weights exceed L2, do_bench median).
Every variant runs the layer as it runs in a model: per-token fp8 quantization of x (one Triton kernel),
then the GEMM; "gemm only" rows time the GEMM on x already quantized, as the fused decoder feeds the
layers after an RMSNorm. Each variant is checked against the quantize-dequantize reference first.
Each tile runs twice: "T" rows on x quantized per token by the row quantizer first, "Q" rows with the GEMM
quantizing x itself per row and BLOCK_K slice as it loads it (QUANT_X: no separate kernel).
The configurations in triton_w8a8.FP8_SWAP_CONFIGS are the ones that won here.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import _copies, graph_time, machine, rel_err, save_rows, shapes_of  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


def swap_grid(m: int) -> list[dict]:
    """Weight-as-A tiles: the x side (BLOCK_M) no wider than M needs, split-K while the grid is small."""
    bms = [bm for bm in (16, 32, 64, 128) if bm <= max(16, m) and bm * 4 >= min(m, 256)]
    out = []
    for bm, bn, bk, sk in itertools.product(bms, (64, 128), (128, 256), (1, 2, 4, 8)):
        if m > 128 and sk > 2:
            continue
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=4,
                        num_stages=3 if bm * bk >= 128 * 128 else 4))
    return out


def cname(c: dict) -> str:
    return f"T{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}k{c['SPLIT_K']}w{c['num_warps']}s{c['num_stages']}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1,4,16,32,64,128,256,2048")
    ap.add_argument("--rep-ms", type=int, default=40)
    ap.add_argument("--shapes", default="all", help="indices into gpu_llm.SHAPES")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    from nnslim.quant.w8a8 import W8A8Linear
    from nnslim.runtime.kernels import triton_w8a8

    print(f"# fp8 W8A8 GEMM sweep on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    torch.manual_seed(0)
    rows = []
    for k, n in shapes_of(args.shapes):
        lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda")
        r8, r16 = _copies(k * n), _copies(k * n * 2)
        mods = [W8A8Linear.from_linear(lin, "fp8", fast_accum=True).cuda() for _ in range(r8)]
        ws = [lin.weight.detach().clone() for _ in range(r16)]
        for m in [int(v) for v in args.m.split(",")]:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            base = graph_time(lambda: [F.linear(x, w) for w in ws], r16, args.rep_ms)
            ref = mods[0]._reference(x)
            exact = F.linear(x.float(), mods[0].qweight.float() * mods[0].wscale[:, None])  # x unquantized
            ref_exact = rel_err(ref, exact)  # the per-token quantization's own error
            xq, sx = triton_w8a8.quantize_rows(x, "fp8")
            quant = lambda: triton_w8a8.quantize_rows(x, "fp8")  # noqa: E731
            pre = lambda: (xq, sx)  # noqa: E731
            t, errs = {}, {}
            for name in ("scaled_mm", "scaled_mm-fastacc"):
                t[name] = graph_time(lambda nm=name: [md._candidates(x)[nm]() for md in mods], r8, args.rep_ms)
                errs[name] = rel_err(mods[0]._candidates(x)[name](), ref)
            grid = swap_grid(m) if m <= triton_w8a8.FP8_SWAP_MAX_M else []
            for c in grid:
                if not triton_w8a8.fp8_fits(k, c):
                    continue
                for prefix, xin in (("T", quant), ("Q", x)):  # x quantized first / quantized inside the GEMM
                    name = prefix + cname(c)[1:]
                    try:
                        y = mods[0]._triton_fp8(xin, None, x.dtype, c)
                        # T: the per-token reference's numbers; Q quantizes x per slice instead: no less accurate
                        err = rel_err(y, ref) if prefix == "T" else rel_err(y, exact)
                        if err > (2e-2 if prefix == "T" else ref_exact * 1.25 + 2e-3):
                            print(f"  {name} M={m}: rel err {err:.2e}", flush=True)
                            continue
                        errs[name] = err
                        run = lambda c=c, xin=xin: [md._triton_fp8(xin, None, x.dtype, c) for md in mods]  # noqa: E731
                        t[name] = graph_time(run, r8, args.rep_ms)
                    except Exception as e:  # noqa: BLE001  (out of shared memory, ...)
                        print(f"  {name} failed: {str(e).splitlines()[0][:120]}", flush=True)
            t["act_quant"] = graph_time(quant, 1, args.rep_ms)
            tri = {kk: v for kk, v in t.items() if kk.startswith("T")}
            fused = {kk: v for kk, v in t.items() if kk.startswith("Q")}
            best_t = min(tri, key=tri.get) if tri else None
            best_q = min(fused, key=fused.get) if fused else None
            best_s = min(("scaled_mm", "scaled_mm-fastacc"), key=t.get)
            gemm_only = {best_s: graph_time(lambda: [torch._scaled_mm(
                xq, md.qweight.t(), scale_a=sx[:, None], scale_b=md.wscale[None, :], out_dtype=torch.bfloat16,
                use_fast_accum=best_s.endswith("fastacc")) for md in mods], r8, args.rep_ms)}
            if best_t:
                c = next(c for c in grid if cname(c) == best_t)
                gemm_only[best_t] = graph_time(lambda: [md._triton_fp8(pre, None, x.dtype, c) for md in mods], r8,
                                               args.rep_ms)
            row = {"K": k, "N": n, "M": m, "bf16_ms": round(base, 4), "act_quant_us": round(t["act_quant"] * 1e3, 2),
                   "scaled_mm_x": round(base / t["scaled_mm"], 3),
                   "scaled_mm_fastacc_x": round(base / t["scaled_mm-fastacc"], 3),
                   "best_triton": best_t, "triton_x": round(base / tri[best_t], 3) if best_t else None,
                   "triton_err": round(errs[best_t], 5) if best_t else None,
                   "scaled_mm_err": round(errs["scaled_mm-fastacc"], 5),
                   "best_fused": best_q, "fused_x": round(base / fused[best_q], 3) if best_q else None,
                   "fused_err_vs_unquantized_x": round(errs[best_q], 5) if best_q else None,
                   "per_token_err_vs_unquantized_x": round(ref_exact, 5),
                   "best_x": round(base / min(t[best_s], tri.get(best_t, 1e9), fused.get(best_q, 1e9)), 3),
                   "gemm_only_x": {kk: round(base / v, 3) for kk, v in gemm_only.items()},
                   "top": {kk: round(base / v, 3) for kk, v in sorted(tri.items(), key=lambda kv: kv[1])[:5]},
                   "top_fused": {kk: round(base / v, 3) for kk, v in sorted(fused.items(), key=lambda kv: kv[1])[:5]}}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del mods, ws
        torch.cuda.empty_cache()
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
