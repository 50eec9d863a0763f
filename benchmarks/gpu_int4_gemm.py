"""Sweep of nnslim's int4 tensor-core GEMM launch configurations on Llama-7B linear shapes (issue 17).

  python benchmarks/gpu_int4_gemm.py [--m 16,32,...] [--json FILE] [--family tc|mma|cuda]

For each shape (K x N) and M: bf16 F.linear, torch's tinygemm, the one-kernel dequantize + cuBLAS path
and every tensor-core configuration of the grid below (both operand orders), each timed like
benchmarks/gpu_llm.py (a CUDA graph of R layer copies whose weights exceed L2, do_bench median), each
checked against the dequantize-then-matmul reference first. Prints one JSON row per (shape, M) with
the best configuration and the top five: the configurations kept in triton_int4.TC_CONFIGS are the
ones that won here.
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


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def grid() -> list[dict]:
    """Small M (memory-bound): weight-as-A tiles, deep K tiles, split-K for more bytes in flight; large M:
    the tiles that won a wider first sweep (2026-12-03), with more warps / stages."""
    out = []
    for bm, bn, bk, sk in itertools.product((16, 32, 64, 128), (64, 128), (128, 256), (1, 2, 4, 8)):
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_N=8, SWAP=True, SPLIT_K=sk, num_warps=4,
                        num_stages=3 if bk == 256 else 4))
    for bm, bn, bk, w, st in [(256, 64, 64, 4, 3), (256, 64, 64, 8, 3), (256, 64, 64, 4, 4), (256, 64, 128, 8, 3),
                              (128, 128, 64, 4, 3), (128, 128, 64, 8, 4), (128, 64, 128, 4, 3), (256, 128, 64, 8, 3)]:
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_N=8, SWAP=True, SPLIT_K=1, num_warps=w, num_stages=st))
    return out


def mma_grid(m: int) -> list[dict]:
    """triton_int4_mma configurations for one M (weight-as-A tiles; split-K while the grid is small)."""
    out = []
    if m <= 64:
        for bm, bn, sk in itertools.product((16, 32, 64), (64, 128), (1, 2, 4, 8)):
            if bm <= max(16, m):
                out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, SPLIT_K=sk, num_warps=bn // 16, num_stages=4))
    elif m <= 512:
        for bm, bn, bk, sk, w in itertools.product((64, 128, 256), (64, 128), (64, 128), (1, 2, 4), (4, 8)):
            if bm <= m and w == bn // 16:  # one warp per 16 weight rows (4 warps on 128 rows need ~3x the PRMTs)
                out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w,
                                num_stages=3 if bm * bk >= 256 * 128 else 4))
    else:
        for bm, bn, bk, w, st in itertools.product((128, 256), (64, 128), (64, 128), (4, 8), (3, 4)):
            if w == bn // 16 and not (bm == 256 and bk == 128 and st == 4):
                out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, num_warps=w, num_stages=st))
    return out


def mma_name(c: dict) -> str:
    """P: packed dequantization, F: fp32 dequantization, A: packed with split-K through fp32 atomics."""
    kind = "A" if c.get("ATOMIC") else "P" if c.get("PACKED", True) else "F"
    return (f"{kind}{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}k{c['SPLIT_K']}"
            f"w{c['num_warps']}s{c['num_stages']}")


def parse_mma(names: str) -> list[dict]:
    """`--mma-configs`: launches named as mma_name() prints them without the kind letter, e.g. 128x256x128k2w16s3;
    `kept` adds triton_int4_mma.MMA_CONFIGS."""
    import re

    from nnslim.runtime.kernels import triton_int4_mma

    out = []
    for v in names.split(","):
        if v == "kept":
            out += [dict(c) for c in triton_int4_mma.MMA_CONFIGS]
            continue
        hit = re.fullmatch(r"(\d+)x(\d+)x(\d+)k(\d+)w(\d+)s(\d+)", v)
        if hit is None:
            raise ValueError(f"{v!r} is not BMxBNxBKkSPLITwWARPSsSTAGES (e.g. 128x256x128k2w16s3) or kept")
        bm, bn, bk, sk, w, st = map(int, hit.groups())
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w, num_stages=st))
    return out


def sweep_mma(args) -> None:
    """The permuted-layout kernel (triton_int4_mma) against bf16, dequant + cuBLAS and the kept
    configurations of the canonical-layout kernel, at each M; the best packed configurations are re-timed
    with fp32 dequantization (PACKED=False) to show what the packed arithmetic is worth."""
    from nnslim.runtime.kernels import triton_int4, triton_int4_mma

    print(f"# int4 MMA-layout GEMM sweep ({args.dtype}) on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}",
          flush=True)
    torch.manual_seed(0)
    rows = []
    ms = [int(v) for v in args.m.split(",")]
    for k, n, m, x, mods, r4, base in int4_cases(shapes_of(args.shapes), ms, args.rep_ms, DTYPES[args.dtype]):
        ref = F.linear(x, mods[0].dequantized_weight(x.dtype))
        t = {"dequant+cublas": graph_time(lambda: [F.linear(x, md._triton_dequant(x.dtype)) for md in mods], r4,
                                          args.rep_ms)}
        errs = {}
        bucket = max(16, 1 << (m - 1).bit_length())
        chosen = parse_mma(args.mma_configs) if args.mma_configs else None
        cands = [] if chosen else [
            ("old:" + name(c), c, lambda c: [md._triton_int4tc(x, c) for md in mods], mods[0]._triton_int4tc)
            for c in triton_int4.TC_CONFIGS if c["BLOCK_M"] <= bucket and (m < 512 or c["SPLIT_K"] == 1)]
        cands += [("mma:" + mma_name(c), c, lambda c: [md._triton_int4mma(x, c) for md in mods],
                   mods[0]._triton_int4mma) for c in (chosen or mma_grid(m))
                  if not chosen or triton_int4_mma.tile_offered(c, m, bucket)]  # as the selector offers them
        for label, c, run, one in cands:
            try:
                err = rel_err(one(x, c), ref)
                if err > 1e-2:
                    print(f"  {label} M={m}: rel err {err:.2e}", flush=True)
                    continue
                errs[label] = err
                t[label] = graph_time(lambda c=c, run=run: run(c), r4, args.rep_ms)
            except Exception as e:  # noqa: BLE001  (out of shared memory, ...)
                print(f"  {label} failed: {str(e).splitlines()[0][:120]}", flush=True)
        new = {kk: v for kk, v in t.items() if kk.startswith("mma:")}
        old = {kk: v for kk, v in t.items() if kk.startswith("old:")}
        split_best = [kk for kk in sorted(new, key=new.get) if "k1w" not in kk][:3]
        twins = [] if chosen else ([(kk, {"PACKED": False}) for kk in sorted(new, key=new.get)[:3]]  # fp32 dequant
                                   + [(kk, {"ATOMIC": True}) for kk in split_best])  # atomics + memset + cast
        for kk, change in twins:
            c = {**next(c for lab, c, _, _ in cands if lab == kk), **change}
            try:
                t["mma:" + mma_name(c)] = graph_time(lambda c=c: [md._triton_int4mma(x, c) for md in mods], r4,
                                                     args.rep_ms)
            except Exception as e:  # noqa: BLE001
                print(f"  {mma_name(c)} failed: {str(e).splitlines()[0][:120]}", flush=True)
        bn_, bo = min(new, key=new.get), min(old, key=old.get) if old else None
        row = {"K": k, "N": n, "M": m, "dtype": args.dtype, "dense_ms": round(base, 4), "best_mma": bn_,
               "mma_x": round(base / new[bn_], 3),
               "mma_err": round(errs[bn_], 5), "best_old": bo, "old_x": round(base / old[bo], 3) if bo else None,
               "dequant_cublas_x": round(base / t["dequant+cublas"], 3),
               "fp32_dequant_twins_x": {kk: round(base / v, 3) for kk, v in t.items() if kk.startswith("mma:F")},
               "split_twins_x": {kk: [round(base / new[kk], 3), round(base / t[kk.replace("mma:P", "mma:A")], 3)]
                                 for kk in split_best if kk.replace("mma:P", "mma:A") in t},
               "top": {kk: round(base / v, 3)
                       for kk, v in sorted(new.items(), key=lambda kv: kv[1])[:None if chosen else 5]}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    save_rows(args.json, rows)


def cuda_grid(m: int, group: int = 128) -> list[dict]:
    """cuda_int4_mma_gemm launches for one M: warps x 16-row tiles per warp x n8 tiles of x x split-K (4 stages
    of 2 chunks; 2 tiles per warp with 16 n8 tiles left out: they spilled in the first version and need all 255
    registers in the staged one)."""
    from nnslim.runtime.kernels import cuda_int4_mma_gemm as cg

    out = [dict(WARPS=w, RT=rt, NT=nt, U=2, STAGES=4, SPLIT=sp, PDL=False)
           for w, rt, nt, sp in itertools.product((4, 8), (1, 2), (4, 8, 16), (1, 2, 4)) if not (rt == 2 and nt == 16)]
    return [c for c in out if cg.fits(c, group, m) and (c["SPLIT"] == 1 or m <= 512)]


def cuda_name(c: dict) -> str:
    return f"w{c['WARPS']}r{c['RT']}n{c['NT']}u{c['U']}s{c['STAGES']}k{c['SPLIT']}"


def sweep_cuda(args) -> None:
    """The CUDA tensor-core GEMM on the GEMV's layout (cuda_int4_mma_gemm) against bf16, the Triton MMA GEMM's
    kept launches (triton_int4_mma.MMA_CONFIGS, what the selector has today) and dequant + cuBLAS, at each M."""
    sweep_against_triton(args, "cuda", "CUDA tensor-core GEMM", cuda_grid, cuda_name,
                         lambda md: md._cuda_int4mmag, lambda md, x, c: md._cuda_int4mmag(x, c))


def sweep_gluon(args) -> None:
    """The warp-specialized Gluon GEMM (gluon_int4_gemm, experimental) against the same baselines as sweep_cuda."""
    from nnslim.runtime.kernels import gluon_int4_gemm as gg

    sweep_against_triton(args, "gluon", "int4 Gluon warp-specialized GEMM",
                         lambda m: [c for c in gg.WS_CONFIGS if c["BM"] <= max(64, 1 << (m - 1).bit_length())],
                         lambda c: f"n{c['BN']}m{c['BM']}k{c['BK']}s{c['STAGES']}w{c['num_warps']}",
                         lambda md: md._gluon_int4ws, lambda md, x, c: md._gluon_int4ws(x, c))


def sweep_against_triton(args, family: str, title: str, grid_of, name_of, one_of, call) -> None:
    """A kernel family's launches (grid_of(m), named by name_of, run by call(layer, x, config)) against bf16, the
    Triton MMA GEMM's kept launches and dequant + cuBLAS, at each M: one JSON row per (shape, M)."""
    from nnslim.runtime.kernels import triton_int4_mma

    print(f"# {title} sweep on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    torch.manual_seed(0)
    rows = []
    for k, n, m, x, mods, r4, base in int4_cases(shapes_of(args.shapes), [int(v) for v in args.m.split(",")],
                                                 args.rep_ms):
        ref = F.linear(x.float(), mods[0].dequantized_weight(torch.float32))
        bucket = max(16, 1 << (m - 1).bit_length())
        t = {"dequant+cublas": graph_time(lambda: [F.linear(x, md._triton_dequant(x.dtype)) for md in mods], r4,
                                          args.rep_ms)}
        cands = [("triton:" + mma_name(c), c, mods[0]._triton_int4mma, lambda md, c: md._triton_int4mma(x, c))
                 for c in triton_int4_mma.MMA_CONFIGS if triton_int4_mma.tile_offered(c, m, bucket)]
        cands += [(f"{family}:" + name_of(c), c, one_of(mods[0]), lambda md, c: call(md, x, c)) for c in grid_of(m)]
        errs, failed = {}, 0
        for label, c, one, run in cands:
            try:
                y = one(x, c)
                err = rel_err(y, ref)
                if err > 1e-2 or (not label.startswith("triton:") and not torch.equal(y, one(x, c))):
                    print(f"  {label} M={m}: rel err {err:.2e} (or not repeatable)", flush=True)
                    failed += 1
                    continue
                errs[label] = err
                t[label] = graph_time(lambda c=c, run=run: [run(md, c) for md in mods], r4, args.rep_ms)
            except Exception as e:  # noqa: BLE001  (out of shared memory, ...)
                print(f"  {label} failed: {str(e).splitlines()[0][:120]}", flush=True)
                failed += 1
        fam = {kk: v for kk, v in t.items() if kk.startswith(family + ":")}
        tr = {kk: v for kk, v in t.items() if kk.startswith("triton:")}
        bc, bt = (min(fam, key=fam.get) if fam else None), (min(tr, key=tr.get) if tr else None)
        row = {"K": k, "N": n, "M": m, "bf16_ms": round(base, 4),
               f"best_{family}": bc, f"{family}_x": round(base / fam[bc], 3) if bc else None,
               f"{family}_err": round(errs[bc], 5) if bc else None,
               "best_triton": bt, "triton_x": round(base / tr[bt], 3) if bt else None,
               "dequant_cublas_x": round(base / t["dequant+cublas"], 3),
               f"top_{family}": {kk: round(base / v, 3) for kk, v in sorted(fam.items(), key=lambda kv: kv[1])}}
        if failed:  # in the row too: the device scripts drop the indented lines above
            row["failed"] = f"{failed} of {len(cands)} launches wrong or not run"
        print(json.dumps(row), flush=True)
        rows.append(row)
    save_rows(args.json, rows)


DEQUANT_TILES = [(64, 64, 4), (64, 128, 4), (128, 128, 8), (32, 128, 4), (16, 256, 4), (128, 64, 4)]


def name(c: dict) -> str:
    return (f"{'S' if c['SWAP'] else 'N'}{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}k{c['SPLIT_K']}"
            f"w{c['num_warps']}s{c['num_stages']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="16,32,64,128,256,512,2048")
    ap.add_argument("--rep-ms", type=int, default=60)
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default="all", help="indices into SHAPES (0: 4096x4096, 1: 4096x11008, 2: 11008x4096)")
    ap.add_argument("--mma-configs", default=None, help="--family mma: time only these launches (parse_mma) and the "
                    "bf16 / dequant + cuBLAS baselines, no twins")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                    help="--family mma: the activations' dtype (fp16 models dequantize in f16x2 or fp32; the ratio "
                    "is against F.linear in that dtype)")
    ap.add_argument("--family", choices=["tc", "mma", "cuda", "gluon"], default="tc",
                    help="tc: the canonical-layout kernel's grid; mma: the permuted-layout kernel (triton_int4_mma); "
                    "cuda: the CUDA tensor-core GEMM on the GEMV's layout (cuda_int4_mma_gemm); gluon: the "
                    "warp-specialized Gluon GEMM (gluon_int4_gemm, experimental)")
    args = ap.parse_args()
    if args.mma_configs and args.family != "mma":
        ap.error(f"--mma-configs: only with --family mma (got --family {args.family})")
    if args.dtype != "bf16" and args.family != "mma":
        ap.error(f"--dtype {args.dtype}: only with --family mma (got --family {args.family})")
    try:
        if args.mma_configs:
            parse_mma(args.mma_configs)  # a bad name is refused before any GPU work
    except ValueError as e:
        ap.error(f"--mma-configs: {e}")
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    if args.family == "mma":
        return sweep_mma(args)
    if args.family == "cuda":
        return sweep_cuda(args)
    if args.family == "gluon":
        return sweep_gluon(args)
    from nnslim.runtime.kernels import triton_int4

    dq_rows = []
    print(f"# int4 GEMM sweep on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    torch.manual_seed(0)
    rows, configs = [], grid()
    ms = [int(v) for v in args.m.split(",")]
    for k, n, m, x, mods, r4, base in int4_cases(shapes_of(args.shapes), ms, args.rep_ms):
        ref = F.linear(x, mods[0].dequantized_weight(torch.bfloat16))
        times = {"tinygemm": graph_time(lambda: [md._tinygemm(x) for md in mods], r4, args.rep_ms),
                 "dequant+cublas": graph_time(lambda: [F.linear(x, md._triton_dequant(x.dtype)) for md in mods], r4,
                                              args.rep_ms)}
        if m == max(ms):  # the dequantizer's cost does not depend on M
            dq = {}
            for bn, bk, nw in DEQUANT_TILES:
                dq[f"{bn}x{bk}w{nw}"] = graph_time(lambda bn=bn, bk=bk, nw=nw: [triton_int4.int4_dequantize(
                    md.qweight, md.scales, None, md.group, x.dtype, bk, bn, nw) for md in mods], r4, args.rep_ms)
            gb = (k * n * 2 + k * n // 2) / 1e9
            dq_rows.append({"K": k, "N": n, **{t: f"{v * 1e3:.1f} us, {gb / v:.2f} TB/s" for t, v in dq.items()}})
            print(json.dumps(dq_rows[-1]), flush=True)
        for c in configs:
            if c["BLOCK_M"] > max(16, 2 * m) or c["BLOCK_M"] < m // 32 or (m >= 512 and c["SPLIT_K"] > 1):
                continue
            try:
                err = rel_err(mods[0]._triton_int4tc(x, c), ref)
                if err > 1e-2:
                    print(f"  {name(c)} M={m}: rel err {err:.2e}", flush=True)
                    continue
                times[name(c)] = graph_time(lambda c=c: [md._triton_int4tc(x, c) for md in mods], r4, args.rep_ms)
            except Exception as e:  # noqa: BLE001  (out of shared memory, ...)
                print(f"  {name(c)} failed: {str(e).splitlines()[0][:100]}", flush=True)
        tc = {kk: v for kk, v in times.items() if kk[0] in "SN"}
        best_tc = min(tc, key=tc.get)
        row = {"K": k, "N": n, "M": m, "bf16_ms": round(base, 4),
               "best_tc": best_tc, "best_tc_x": round(base / tc[best_tc], 3),
               "dequant_cublas_x": round(base / times["dequant+cublas"], 3),
               "tinygemm_x": round(base / times["tinygemm"], 3),
               "top": {kk: round(base / v, 3) for kk, v in sorted(tc.items(), key=lambda kv: kv[1])[:5]}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows, "dequant": dq_rows}, indent=1))


if __name__ == "__main__":
    main()
