"""Batch latency of ONNX artifacts in ONNX Runtime by thread-pool spinning mode (off / within a run, nnslim's
default / always, ONNX Runtime's default), interleaved in one run: does letting the threads spin between the
ops of a run cost anything outside token-by-token decode, and do the threads stop once a run returns
(BENCHMARKS.md 8e)?

  python benchmarks/ort_spinning.py [--testbed minilm] [--batch 8] [--seq 128] [--rounds 12] MODEL.onnx ...

e.g. after `make demo`: python benchmarks/ort_spinning.py build/demo/onnx/model.onnx build/demo/int8/model.onnx
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nnslim.io import machine_info  # noqa: E402
from nnslim.runtime.onnxruntime import SPINNING, OrtRunner  # noqa: E402
from nnslim.testbeds import get_testbed  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--testbed", default="minilm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    info = machine_info()
    print(f"cpu: {info.get('cpu')}; flags: {info.get('cpu_flags')}", flush=True)
    x = get_testbed(args.testbed).example_inputs(batch=args.batch, seq=args.seq)
    runners = {(path, mode): OrtRunner(path, spinning=mode) for path in args.models for mode in SPINNING}
    for runner in runners.values():  # warm-up
        for _ in range(3):
            runner(x)
    times: dict[tuple, list[float]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, runner in runners.items():
            start = time.perf_counter()
            runner(x)
            times[key].append(time.perf_counter() - start)
    idle = {}
    for key, runner in runners.items():  # CPU the process uses in the second after a run returned
        runner(x)
        start = time.process_time()
        time.sleep(1.0)
        idle[key] = time.process_time() - start
    print(f"\n| model | spinning | ms (median of {args.rounds}, batch {args.batch} x {args.seq}) "
          "| CPU s in the 1 s after a run |\n|---|---|---|---|")
    for (path, mode), t in times.items():
        print(f"| {path} | {mode} | {1000 * statistics.median(t):.1f} | {idle[(path, mode)]:.3f} |")


if __name__ == "__main__":
    main()
