"""Split-K decode attention at long context: launch configurations per cache format (issue 17).

  python benchmarks/gpu_decode_attention.py [--lengths 4224,16512] [--formats bf16,int8,fp8] [--grid all|split|dot]
                                           [--json FILE]

One decode step's attention of a Llama-7B-shaped layer (32 heads of 128, batch 1, the query at the last
position) over a static cache of L positions in bf16 and as int8 / fp8 e4m3 codes with one fp32 scale per
(head, position), through nnslim's kernel (runtime/kernels/triton_decode.decode_attention) for every launch
configuration of the grid below: the split kernel (one query row, CUDA-core products) and the tensor-core one
(DOT: the query heads of a kv head as rows of tl.dot), the split kernel's int8 also with its codes read as 32-bit
words (WORDS); each checked against the default configuration's output, timed as a
CUDA graph (do_bench median) and set beside its memory floor (the cache bytes read at the GPU's datasheet
bandwidth). The
configurations kept in triton_decode.ATTENTION_CONFIG are the ones that won here.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import graph_time, hbm_bytes_per_s, machine, save_rows  # noqa: E402

import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="4224,16512")
    ap.add_argument("--formats", default="bf16,int8,fp8")
    ap.add_argument("--grid", default="all", choices=["all", "split", "dot"])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--rep-ms", type=int, default=60)
    ap.add_argument("--split-blocks", default="32,64,128", help="positions per iteration of the split kernel")
    ap.add_argument("--split-warps", default="4", help="warps per program of the split kernel")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.split_blocks = [int(v) for v in args.split_blocks.split(",")]
    args.split_warps = [int(v) for v in args.split_warps.split(",")]
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    from nnslim.runtime.kernels import triton_decode as K

    print(f"# decode attention sweep on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    torch.manual_seed(0)
    h, d = args.heads, 128
    split = [dict(BLOCK_L=bl, PROGRAMS=p, EARLY_V=e, num_warps=w)
             for bl, p, e, w in itertools.product(args.split_blocks, (1024, 2048, 4096), (False, True), args.split_warps)]
    dot = [dict(BLOCK_L=bl, PROGRAMS=p, EARLY_V=False, num_warps=w, num_stages=st, DOT=True)
           for bl, p, w, st in itertools.product((64, 128, 256), (1024, 4096), (4, 8), (2, 3))]
    grid = {"all": split + dot, "split": split, "dot": dot}[args.grid]
    rows = []
    for length in [int(v) for v in args.lengths.split(",")]:
        q = torch.randn(1, h, 1, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(1, h, length, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        pos = torch.tensor([length - 1], device="cuda")
        caches = {"bf16": (k, v, None, None)}
        for fmt, dtype, qmax in (("int8", torch.int8, 127.0), ("fp8", torch.float8_e4m3fn, 448.0)):
            ks, vs = k.float().abs().amax(-1) / qmax, v.float().abs().amax(-1) / qmax
            kq, vq = k.float() / ks[..., None], v.float() / vs[..., None]
            if dtype == torch.int8:
                kq, vq = kq.round(), vq.round()
            caches[fmt] = (kq.to(dtype), vq.to(dtype), ks, vs)
        for fmt in args.formats.split(","):
            kc, vc, a, b = caches[fmt]
            nbytes = 2 * kc.numel() * kc.element_size() + (0 if a is None else 2 * a.numel() * 4)
            floor_us = nbytes / hbm_bytes_per_s() * 1e6
            call = lambda c: K.decode_attention(q, kc, vc, pos, d ** -0.5, k_scale=a, v_scale=b, config=c)  # noqa: E731
            ref = call(dict(K.ATTENTION_CONFIG[K.cache_format(kc)], DOT=False)).float()  # fp32 probabilities
            times, errs = {}, {}
            configs = [dict(c, WORDS=w) for c in grid
                       for w in ((False, True) if fmt == "int8" and not c.get("DOT") else (False,))]
            configs.append(dict(K.ATTENTION_CONFIG[K.cache_format(kc)], default=True))
            names = {}
            for c in configs:
                key = ("default" if c.pop("default", False) else
                       f"{'D' if c.get('DOT') else ''}L{c['BLOCK_L']}p{c['PROGRAMS']}{'e' if c['EARLY_V'] else ''}"
                       f"{'w' if c.get('WORDS') else ''}" + (f"n{c['num_warps']}s{c['num_stages']}" if c.get('DOT') else
                                                     (f"n{c['num_warps']}" if c['num_warps'] != 4 else '')))
                names[key] = c
                try:
                    err = float((call(c).float() - ref).norm() / ref.norm())
                except Exception as e:  # noqa: BLE001  (out of shared memory, ...)
                    print(f"  {fmt} {key} failed: {str(e).splitlines()[0][:100]}", flush=True)
                    continue
                errs[key] = err
                if err > 1e-2:  # the tensor-core kernel rounds the probabilities to bf16 (~4e-3 relative)
                    print(f"  {fmt} {key}: rel err {err:.1e}", flush=True)
                    continue
                times[key] = graph_time(lambda c=c: call(c), 1, args.rep_ms) * 1e3
            best = min(times, key=times.get)
            row = {"length": length, "cache": fmt, "MB": round(nbytes / 1e6, 1), "floor_us": round(floor_us, 1),
                   "default_us": round(times.get("default", float("nan")), 1), "best": best,
                   "best_config": names[best], "best_us": round(times[best], 1), "best_rel_err": f"{errs[best]:.1e}",
                   "best_floor_over_measured": round(floor_us / times[best], 3),
                   "best_split_us": round(min([t for kk, t in times.items() if kk[0] == "L"] or [float("nan")]), 1),
                   "best_dot_us": round(min([t for kk, t in times.items() if kk[0] == "D"] or [float("nan")]), 1),
                   "top": {kk: round(t, 1) for kk, t in sorted(times.items(), key=lambda kv: kv[1])[:6]}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
