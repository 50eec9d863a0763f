"""Where a fused decode step's time goes (issue 17): GPU time per kernel class of one StaticDecoder step.

  python benchmarks/gpu_decode_profile.py [--layers 8] [--variants int4] [--batch 1] [--steps 32] [--json FILE]

The Llama-7B-shaped model of gpu_llm.py (random bf16 weights; `int4` = RTN g128), StaticDecoder fused with its
CUDA-graph step, warmed up by a short generate; then `--steps` graph replays are profiled with torch.profiler
(CUPTI records the kernels a graph launches). Per step: the wall time (CUDA events around the replays), the
summed kernel time by class (int4 / bf16 linears, norm, rotary + cache write, attention, attention reduce,
SiLU gate, the rest) with kernel counts, and the gap (step time - summed kernel time: launch latency and ramp
between dependent kernels, which no kernel's own speed removes). With --eager the step runs without the graph.
The kernels launch without programmatic dependent launch (NNSLIM_PDL=0) unless --pdl: under PDL a kernel's time
includes its wait for the previous one, so the classes overlap and no longer add up to the step (BENCHMARKS 9l).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_llm import llama, machine, save_rows  # noqa: E402

import torch  # noqa: E402

CLASSES = [("argmax / embedding", r"argmax|index|embedding"), ("attention reduce", r"attention_reduce"),
           ("attention", r"attention"), ("norm", r"rmsnorm"), ("rotary + cache", r"rope"), ("silu gate", r"silu"),
           ("int4 linear", r"int4|tinygemm"), ("fp8 linear", r"fp8|scaled_mm|f8"),
           ("bf16 linear", r"gemm|gemv|cutlass|sm90|nvjet|ampere|xmma")]


def kernel_class(name: str) -> str:
    low = name.lower()
    for cls, pattern in CLASSES:
        if re.search(pattern, low):
            return cls
    return "other"


def profile_variant(name: str, args) -> dict:
    from nnslim import Int4RtnConfig, quantize
    from nnslim.runtime.decode import StaticDecoder

    model = llama(args.layers, "cuda")
    if name == "int4":
        model = quantize(model, Int4RtnConfig(group_size=128), inplace=True)
    elif name != "bf16":
        raise SystemExit(f"unknown variant {name}")
    prompt = torch.randint(0, model.config.vocab_size, (args.batch, 64), generator=torch.Generator().manual_seed(0))
    dec = StaticDecoder(model, max_len=64 + 16 + args.steps + 8, fused=True, batch=args.batch,
                        use_graph=not args.eager)
    dec.generate(prompt.cuda(), 16)
    token = torch.zeros(args.batch, dtype=torch.long, device="cuda")
    for i in range(3):
        dec.step(token, 80 + i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        start.record()
        for i in range(args.steps):
            dec.step(token, 83 + i)
        end.record()
        torch.cuda.synchronize()
    step_ms = start.elapsed_time(end) / args.steps
    per_class: dict[str, list] = {}
    kernels = 0.0
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", getattr(ev, "cuda_time_total", 0.0))
        if t <= 0 or ev.key.startswith(("cudaGraph", "Memcpy", "Memset")):
            continue
        cls = kernel_class(ev.key)
        ms, count = t / 1e3 / args.steps, ev.count / args.steps
        acc = per_class.setdefault(cls, [0.0, 0.0, []])
        acc[0] += ms
        acc[1] += count
        acc[2].append(ev.key[:60])
        kernels += ms
    row = {"variant": name, "batch": args.batch, "layers": args.layers, "graph": not args.eager,
           "step_ms": round(step_ms, 4), "kernels_ms": round(kernels, 4), "gap_ms": round(step_ms - kernels, 4),
           "classes": {c: {"ms": round(v[0], 4), "kernels_per_step": round(v[1], 2), "names": sorted(set(v[2]))[:4]}
                       for c, v in sorted(per_class.items(), key=lambda kv: -kv[1][0])}}
    if kernels == 0:
        row["note"] = "the profiler saw no kernel inside the graph replays: run again with --eager"
    del dec, model
    torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--variants", default="bf16,int4")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--eager", action="store_true", help="profile the step without its CUDA graph")
    ap.add_argument("--pdl", action="store_true", help="keep programmatic dependent launches (kernel times overlap)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not args.pdl:
        os.environ["NNSLIM_PDL"] = "0"
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    print(f"# decode step profile on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows = []
    for name in args.variants.split(","):
        row = profile_variant(name, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
