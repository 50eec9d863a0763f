"""The per-token activation quantizer of W8A8 linears (triton_w8a8.quantize_rows) on its own: every launch
(rows per program x warps) at M rows of K = 4096 / 11008, in microseconds and GB/s (bf16 read + codes written).
At M = 2048 it took 15 us of the fp8 linear's 66 (4096x4096, H100, 2026-12-07): the rest of the way to 1.8x bf16.

  python benchmarks/gpu_rowquant.py [--m 1,16,128,512,2048,8192] [--k 4096,11008] [--fmt fp8] [--json FILE]
                                    [--linear-m 2048,8192]

--linear-m: then the whole fp8 linear (x quantized, then torch._scaled_mm with fast accumulation, as W8A8Linear
runs it at these M) on the three Llama-7B shapes, with the default launch and with this run's fastest launch for
that (M, K), each a ratio vs bf16 F.linear in the same process (weights in R copies exceeding L2).

Timing: a CUDA graph of R calls on R copies of x (R copies exceed L2 at large M, as a layer's input that another
kernel just wrote partly is), do_bench median, per call; "default" is the launch `row_launch` picks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import SHAPES, _copies, graph_time, machine, save_rows  # noqa: E402

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1,16,128,512,2048,8192")
    ap.add_argument("--k", default="4096,11008")
    ap.add_argument("--fmt", default="fp8", choices=["fp8", "int8"])
    ap.add_argument("--rep-ms", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--linear-m", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    from nnslim.quant.w8a8 import quantize_rows_torch
    from nnslim.runtime.kernels import triton_w8a8

    print(f"# row quantizer ({args.fmt}) on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows = []
    for k in [int(v) for v in args.k.split(",")]:
        for m in [int(v) for v in args.m.split(",")]:
            r = max(4, _copies(m * k * 2))
            xs = [torch.randn(m, k, dtype=torch.bfloat16, device="cuda") * 3 for _ in range(r)]
            qr, sr = quantize_rows_torch(xs[0], args.fmt)
            times = {}
            block = triton_w8a8.triton.next_power_of_2(k)
            launches = [(None, None)] + [(rp, w) for rp in (1, 2, 4, 8) for w in (2, 4, 8, 16)
                                         if rp <= max(1, m) and rp * block // (32 * w) <= 128]  # <= 128 per thread
            for rp, w in launches:
                name = "default" if rp is None else f"r{rp}w{w}"
                try:
                    q, s = triton_w8a8.quantize_rows(xs[0], args.fmt, rows=rp, warps=w)
                    ok = torch.allclose(s, sr, rtol=1e-6) and float((q.float() - qr.float()).abs().max()) <= (
                        1.0 if args.fmt == "int8" else 32.0)
                    if not ok:
                        print(f"  {name} M={m} K={k}: differs from the torch reference", flush=True)
                        continue
                    times[name] = graph_time(lambda rp=rp, w=w: [triton_w8a8.quantize_rows(x, args.fmt, rows=rp,
                                                                                            warps=w) for x in xs],
                                             r, args.rep_ms) * 1e3
                except Exception as e:  # noqa: BLE001  (out of registers / shared memory)
                    print(f"  {name} M={m} K={k} failed: {str(e).splitlines()[0][:120]}", flush=True)
            best = min((v, n) for n, v in times.items())
            gbs = lambda us: round(m * k * 3 / (us * 1e-6) / 1e9, 1)  # noqa: E731
            row = {"K": k, "M": m, "default_us": round(times["default"], 2), "default_GB_s": gbs(times["default"]),
                   "best": best[1], "best_us": round(best[0], 2), "best_GB_s": gbs(best[0]),
                   "default_over_best": round(times["default"] / best[0], 3),
                   "top": {n: round(v, 2) for n, v in sorted(times.items(), key=lambda kv: kv[1])[:6]}}
            print(row, flush=True)
            rows.append(row)
            del xs
    best = {(r["M"], r["K"]): r["best"] for r in rows}
    for m in [int(v) for v in args.linear_m.split(",") if v]:
        for k, n in SHAPES:
            if (m, k) in best:
                rows.append(_linear(m, k, n, best[(m, k)], args.rep_ms))
                print(rows[-1], flush=True)
    save_rows(args.json, rows)


def _linear(m: int, k: int, n: int, best: str, rep_ms: int) -> dict:
    """bf16 vs the fp8 linear (row quantizer + torch._scaled_mm, fast accumulation) with two launches."""
    from nnslim.quant.w8a8 import W8A8Linear
    from nnslim.runtime.kernels import triton_w8a8

    lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda")
    r = _copies(k * n)
    mods = [W8A8Linear.from_linear(lin, "fp8", fast_accum=True).cuda() for _ in range(r)]
    ws = [lin.weight.detach().clone() for _ in range(_copies(k * n * 2))]
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    base = graph_time(lambda: [F.linear(x, w) for w in ws], len(ws), rep_ms)

    def layers(rows, warps):  # each layer quantizes its own input, as in a model
        out = []
        for md in mods:
            q, s = triton_w8a8.quantize_rows(x, "fp8", rows=rows, warps=warps)
            out.append(torch._scaled_mm(q, md.qweight.t(), scale_a=s[:, None], scale_b=md.wscale[None, :],
                                        out_dtype=x.dtype, use_fast_accum=True))
        return out

    launch = (None, None) if best == "default" else (int(best[1:].split("w")[0]), int(best.split("w")[1]))
    t_default = graph_time(lambda: layers(None, None), r, rep_ms)
    t_best = graph_time(lambda: layers(*launch), r, rep_ms)
    return {"M": m, "K": k, "N": n, "bf16_ms": round(base, 4), "fp8_default_launch_x": round(base / t_default, 3),
            "best_launch": best, "fp8_best_launch_x": round(base / t_best, 3)}


if __name__ == "__main__":
    main()
