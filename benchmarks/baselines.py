"""BENCHMARKS.md table 1: fp32 / fp16 / bf16 (torch) and ONNX fp32 / fp16 in ONNX Runtime and OpenVINO,
for each testbed, all variants of a testbed timed interleaved in one run.

usage: python benchmarks/baselines.py [--testbeds digits-cnn minilm smollm2] [--repeats 20] [--out build/bench]
Prints one Markdown table per testbed (also written to OUT/<testbed>/report.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import nnslim  # noqa: E402
from nnslim.eval.compare import Variant, compare, variants_for  # noqa: E402
from nnslim.loading import resolve  # noqa: E402
from nnslim.io import StagedDir  # noqa: E402

METHODS = ("fp16", "bf16", "onnx", "onnx-fp16")


def run(testbed: str, out, repeats: int) -> str:
    base = resolve(testbed)
    variants = [Variant("fp32", base.model, "torch", base.source)]
    for method in METHODS:
        res = nnslim.compress(base.model, method, testbed=base.testbed, out=out / method, overwrite=True,
                              report=False)
        variants += variants_for(method, res.model, str(out / method))
    report = compare(base.testbed, variants, repeats=repeats, max_seconds=300)
    report.write(out)
    return report.to_markdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbeds", nargs="+", default=["digits-cnn", "minilm", "smollm2"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="build/bench")
    args = parser.parse_args()
    from pathlib import Path

    print(f"command: python benchmarks/baselines.py {' '.join(sys.argv[1:])}")
    for name in args.testbeds:
        t0 = time.time()
        with StagedDir(Path(args.out) / name, overwrite=True) as staged:
            print(run(name, staged.path, args.repeats))
            staged.commit()
        print(f"({name}: {time.time() - t0:.0f} s wall)\n", flush=True)


if __name__ == "__main__":
    main()
