"""Host time of one call of a quantized linear on this CPU: what a layer costs besides its arithmetic.

  python benchmarks/layer_call_overhead.py [--repeats 300]

An 8-layer stack of 256x256 linears, batch 1, one torch thread: float nn.Linear, int4 RTN (WeightOnlyLinear) and
int8 W8A8, each called --repeats times after 20 warm-up calls; prints microseconds per linear call. Compare two
commits by running it in each (nothing else running: the numbers are host overhead, a busy core distorts them).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402


def main() -> None:
    import nnslim

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    stack = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)]).eval()
    calib = [torch.randn(4, 256)]
    variants = {"float": stack, "int4-rtn": nnslim.quantize(stack, "int4-rtn", calibration=calib),
                "int8-w8a8": nnslim.quantize(stack, "int8-w8a8", calibration=calib)}
    x = torch.randn(1, 256)
    for name, model in variants.items():
        with torch.no_grad():
            for _ in range(20):
                model(x)
            start = time.perf_counter()
            for _ in range(args.repeats):
                model(x)
        per_call = (time.perf_counter() - start) / args.repeats / len(stack) * 1e6
        print(f"{name}: {per_call:.1f} us per linear call", flush=True)


if __name__ == "__main__":
    main()
