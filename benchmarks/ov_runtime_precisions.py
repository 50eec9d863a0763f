"""Which layers OpenVINO's CPU plugin runs in which precision, for two models side by side (issue 16, BENCHMARKS 8d).

  python benchmarks/ov_runtime_precisions.py A.onnx|A.xml B.onnx|B.xml

Compiles each model for the CPU and counts the layers of its runtime graph (`get_runtime_model()`) by layer
type and runtime precision: e.g. whether a pooling runs in u8 or f32, which FakeQuantize stay in f32.
"""
from __future__ import annotations

import argparse
import collections


def precisions(path: str) -> collections.Counter:
    import openvino as ov

    core = ov.Core()
    runtime = core.compile_model(core.read_model(path), "CPU").get_runtime_model()
    counts = collections.Counter()
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        counts[(info["layerType"].astype(str), info["runtimePrecision"].astype(str))] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    a, b = precisions(args.a), precisions(args.b)
    print(f"| layer type | runtime precision | {args.a} | {args.b} |\n|---|---|---|---|")
    for key in sorted(set(a) | set(b)):
        print(f"| {key[0]} | {key[1]} | {a[key]} | {b[key]} |")


if __name__ == "__main__":
    main()
