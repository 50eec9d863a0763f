"""Where two OpenVINO models spend their time on this CPU, layer by layer (issue 16, BENCHMARKS 8d): e.g. nnslim's
int8 IR against NNCF's, to find the layers that make one slower.

  python benchmarks/ov_layer_profile.py A.onnx|A.xml B.onnx|B.xml [--batch 8] [--runs 50] [--top 15]

Compiles each model for the CPU with PERF_COUNT on (latency hint, the default threads), runs it on random inputs
of the model's shapes (dynamic dimensions: --batch, and 128 for others), and sums each executed layer's real time
over the runs. Prints the total per (layer type, exec type) for both, then the slowest layers of each. The
models' layer names differ, so layers are compared by type, not one to one.
"""
from __future__ import annotations

import argparse
import collections

import numpy as np


def profile(path: str, batch: int, runs: int):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY"})
    feed = {}
    for port in compiled.inputs:
        shape = [batch if i == 0 and d.is_dynamic else 128 if d.is_dynamic else d.get_length()
                 for i, d in enumerate(port.get_partial_shape())]
        dtype = port.get_element_type().to_dtype()
        feed[port.get_any_name()] = (np.random.default_rng(0).standard_normal(shape).astype(dtype)
                                     if np.issubdtype(dtype, np.floating) else np.ones(shape, dtype))
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer(feed)
    by_type, by_layer = collections.Counter(), collections.Counter()
    for _ in range(runs):
        request.infer(feed)
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            us = info.real_time.total_seconds() * 1e6 / runs
            by_type[(info.node_type, info.exec_type)] += us
            by_layer[(info.node_name, info.node_type, info.exec_type)] += us
    return by_type, by_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    (ta, la), (tb, lb) = (profile(p, args.batch, args.runs) for p in (args.a, args.b))
    print(f"per run, us (sum over the layers of that type; {args.runs} runs, batch {args.batch})\n")
    print(f"| layer type | exec type | A: {args.a} | B: {args.b} |\n|---|---|---|---|")
    for key in sorted(set(ta) | set(tb), key=lambda k: -(ta[k] + tb[k])):
        print(f"| {key[0]} | {key[1]} | {ta[key]:.0f} | {tb[key]:.0f} |")
    print(f"| total | | {sum(ta.values()):.0f} | {sum(tb.values()):.0f} |")
    for label, layers in (("A", la), ("B", lb)):
        print(f"\nslowest layers of {label}:\n| layer | type | exec type | us |\n|---|---|---|---|")
        for (name, kind, exec_type), us in layers.most_common(args.top):
            print(f"| {name[:60]} | {kind} | {exec_type} | {us:.0f} |")


if __name__ == "__main__":
    main()
