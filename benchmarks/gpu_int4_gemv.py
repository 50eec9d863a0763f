"""int4 GEMV at small M on Llama-7B linear shapes: every nnslim GEMV vs bf16 and tinygemm (issue 17).

  python benchmarks/gpu_int4_gemv.py [--m 1,2,4] [--json FILE]

For each shape (K x N) and M: bf16 F.linear, torch's tinygemm, and every launch configuration of
nnslim's GEMVs (the CUDA ones of cuda_int4_gemv and cuda_int4_mma_gemv, the packed-bf16x2 one of triton_int4_gemv over the grids
below, the K-major and the permuted-layout ones of triton_int4), each timed like benchmarks/gpu_llm.py (a CUDA graph of R layer
copies whose weights exceed L2, do_bench median) and checked first against the fp32 reference
(dequantized weight, fp32 matmul); the relative error of each kernel family is printed with it.
The configurations kept in cuda_int4_gemv.CONFIGS and triton_int4_gemv.X2_CONFIGS are the ones that won here.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import graph_time, int4_cases, machine, rel_err, save_rows, shapes_of  # noqa: E402

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402


def x2_grid() -> list[dict]:
    """The 14 best tiles of a first sweep over BLOCK_N 16-128 x BLOCK_K 256-1024 x split 1-8 (2026-12-03,
    M=1 and 4), each with and without prefetching the next weight tile."""
    tiles = [(32, 256, 8), (64, 256, 8), (64, 512, 8), (16, 512, 4), (32, 512, 4), (16, 1024, 1), (16, 512, 1),
             (128, 256, 4), (64, 512, 2), (64, 256, 4), (32, 256, 4), (16, 256, 4), (128, 512, 8), (32, 512, 1)]
    return [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, X2=True, PREFETCH=pf)
            for (bn, bk, sk), pf in itertools.product(tiles, (False, True))]


def cuda_grid(m: int, pdl: str = "both", stages: str = "2,4,8") -> list[dict]:
    """The CUDA GEMV's launches: rows per warp x rows of x per warp (<= M's bucket) x copy stages x programmatic
    dependent launch or not (each layer copy of the timed graph then overlaps the previous one's tail)."""
    from nnslim.runtime.kernels import cuda_int4_gemv

    mts = [mt for mt in (1, 2, 4, 8) if mt <= max(1, 1 << (m - 1).bit_length())]
    pdls = {"both": (False, True), "on": (True,), "off": (False,)}[pdl]
    sts = [int(v) for v in stages.split(",")]
    return [dict(R=r, MT=mt, STAGES=st, PDL=p) for r, mt, st, p in itertools.product((1, 2, 4), mts, sts, pdls)
            if r * mt <= 8 and m <= cuda_int4_gemv.MAX_M and cuda_int4_gemv.fits(dict(R=r, STAGES=st))]


def mma_grid(pdl: str = "both", rts: str = "1") -> list[dict]:
    """The tensor-core GEMV's launches: warps splitting K per 16-row tile x tiles per block x chunks per load
    batch x 16-row tiles per warp (x programmatic dependent launch or not)."""
    pdls = {"both": (False, True), "on": (True,), "off": (False,)}[pdl]
    return [dict(KW=kw, TPB=tpb, U=u, PDL=p, RT=rt) for kw, tpb, u, p, rt in
            itertools.product((2, 4, 8, 16), (1, 2, 4), (2, 4), pdls, [int(v) for v in rts.split(",")])
            if kw * tpb <= 16]


def _key(c: dict) -> str:
    if "KW" in c:
        return f"kw{c['KW']}t{c['TPB']}u{c['U']}" + (f"r{c['RT']}" if c.get("RT", 1) > 1 else "") + ("pdl" if c.get("PDL") else "")
    if "R" in c:
        return f"R{c['R']}m{c['MT']}s{c['STAGES']}" + ("pdl" if c.get("PDL") else "")
    return (f"{c['BLOCK_N']}x{c.get('BLOCK_K', c.get('UNROLL'))}k{c['SPLIT_K']}w{c['num_warps']}"
            + ("p" if c.get("PREFETCH") else "") + ("-andor" if c.get("ANDOR") else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1,2,4")
    ap.add_argument("--rep-ms", type=int, default=40)
    ap.add_argument("--shapes", default="all", help="all, or indices into SHAPES (e.g. 0,2)")
    ap.add_argument("--families", default="cuda,x2,kmajor,perm", help="also cudamma (the tensor-core GEMV), x2kept,x2andor (an A/B of 9l)")
    ap.add_argument("--pdl", default="both", choices=["both", "on", "off"], help="CUDA GEMV launches")
    ap.add_argument("--stages", default="2,4,8", help="CUDA GEMV copy stages")
    ap.add_argument("--mma-rt", default="1", help="tensor-core GEMV: 16-row tiles per warp to try (e.g. 1,2)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    from nnslim.runtime.kernels import triton_int4, triton_int4_gemv

    print(f"# int4 GEMV sweep on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    torch.manual_seed(0)
    rows = []
    ms = [int(v) for v in args.m.split(",")]
    for k, n, m, x, mods, r4, base in int4_cases(shapes_of(args.shapes), ms, args.rep_ms):
        ref = F.linear(x.float(), mods[0].dequantized_weight(torch.float32))
        fams = {"cuda": (cuda_grid(m, args.pdl, args.stages), lambda md, c: md._cuda_int4(x, c)),
                "x2": (x2_grid(), lambda md, c: md._triton_int4x(x, c)),
                "cudamma": (mma_grid(args.pdl, args.mma_rt), lambda md, c: md._cuda_int4mma(x, c)),
                # A/B of one PTX change on the kept launches: mask and magic in one LOP3 (x2kept) or written
                # as an AND and an OR (x2andor, the form before 2026-12-06)
                "x2kept": (triton_int4_gemv.X2_CONFIGS, lambda md, c: md._triton_int4x(x, c)),
                "x2andor": ([dict(c, ASM=triton_int4_gemv._asm(merged=False), ANDOR=True)
                             for c in triton_int4_gemv.X2_CONFIGS], lambda md, c: md._triton_int4x(x, c)),
                "kmajor": (triton_int4.KMAJOR_CONFIGS, lambda md, c: md._triton_int4k(x, c)),
                "perm": (triton_int4.PERM_CONFIGS, lambda md, c: md._triton_int4p(x, c))}
        row = {"K": k, "N": n, "M": m, "bf16_ms": round(base, 4),
               "tinygemm_x": round(base / graph_time(lambda: [md._tinygemm(x) for md in mods], r4, args.rep_ms), 3),
               "tinygemm_err": round(rel_err(mods[0]._tinygemm(x), ref), 5)}
        for fam, (configs, call) in fams.items():
            if fam not in args.families.split(","):
                continue
            times, errs, failed = {}, [], 0
            for c in configs:
                key = _key(c)
                try:
                    y = call(mods[0], c)
                    err = rel_err(y, ref)
                    if not torch.equal(y, call(mods[0], c)) or err > 1e-2:
                        print(f"  {fam} {key} M={m}: rel err {err:.2e} (or not repeatable)", flush=True)
                        failed += 1
                        continue
                    errs.append(err)
                    times[key] = graph_time(lambda c=c: [call(md, c) for md in mods], r4, args.rep_ms)
                except (ValueError, RuntimeError) as e:
                    print(f"  {fam} {key} failed: {str(e).splitlines()[0][:100]}", flush=True)
                    failed += 1
            if failed:  # in the row too: the device scripts drop the indented lines above
                row[f"{fam}_failed"] = f"{failed} of {len(configs)} launches wrong or not run"
            if times:
                best = min(times, key=times.get)
                row[f"{fam}_best"], row[f"{fam}_x"] = best, round(base / times[best], 3)
                row[f"{fam}_err_max"] = round(max(errs), 5)
                row[f"{fam}_top"] = {kk: round(base / v, 3) for kk, v in sorted(times.items(), key=lambda kv: kv[1])[:6]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
