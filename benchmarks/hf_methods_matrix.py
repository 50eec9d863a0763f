"""Every compression method on Hugging Face architectures built from configs: does each run end to end from the
CLI (exit 0, or a clear one-line error with exit 2)? The fast calibrated settings (8 samples of 64 tokens) check
that the code paths run, not quality; benchmarks/hf_ecosystem.py checks the artifacts in their loaders.

  python benchmarks/hf_methods_matrix.py [--kinds more|KIND,...] [--methods M,...] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hf_ecosystem import MORE, TASKS, _build, cli  # its header puts src/ and tests/ on the path, offline env

FAST = ["--set", "samples=8", "--set", "seq_len=64"]
METHODS = {
    "int4-gptq": ["--method", "int4-gptq", *FAST, "--set", "group_size=32"],
    "int4-awq": ["--method", "int4-awq", *FAST, "--set", "group_size=32"],
    "int8-dynamic": ["--method", "int8-dynamic"],
    "int8-weight-only": ["--method", "int8-weight-only"],
    "int8-w8a8": ["--method", "int8-w8a8", "--set", "samples=8"],
    "wanda": ["--method", "wanda", *FAST],
    "sparsegpt": ["--method", "sparsegpt", *FAST],
    "prune-2of4": ["--method", "prune-2of4"],
    "lowrank": ["--method", "lowrank", "--set", "rank_ratio=0.5"],
    "fp16": ["--method", "fp16"],
    "onnx-fp16": ["--method", "onnx-fp16"],
    "openvino": ["--method", "openvino"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="more", help=f"'more' ({','.join(MORE)}), 'tests' ({','.join(TASKS)}) or "
                                                    "a comma-separated list")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    ap.add_argument("--out", default=None, help="work dir (default: a temp dir)")
    args = ap.parse_args()
    kinds = {"more": list(MORE), "tests": list(TASKS)}.get(args.kinds, args.kinds.split(","))
    methods = args.methods.split(",")
    bad = sorted(set(methods) - set(METHODS)) + sorted(set(kinds) - set(MORE) - set(TASKS))
    if bad:
        ap.error(f"{', '.join(bad)} not allowed; allowed methods: {', '.join(METHODS)}; kinds: "
                 f"{', '.join([*TASKS, *MORE])}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nnslim-methods-"))
    print(f"command: python benchmarks/hf_methods_matrix.py --kinds {args.kinds} --methods {args.methods}; "
          f"date {time.strftime('%Y-%m-%d %H:%M')}\n\n| model | " + " | ".join(methods) + " |\n|---|" +
          "---|" * len(methods), flush=True)
    failed = 0
    for kind in kinds:
        src = _build(kind, out / "zoo")
        cells = []
        for method in methods:
            t0 = time.perf_counter()
            try:
                code = cli(["compress", "--model", str(src), *METHODS[method], "--out", str(out / f"{kind}-{method}"),
                            "--overwrite", "--no-report"])
            except Exception as e:  # noqa: BLE001 - a crash is what this matrix looks for
                code = f"crash: {type(e).__name__}"
            failed += code != 0
            cells.append(f"{code} ({time.perf_counter() - t0:.0f} s)")
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{failed} of {len(kinds) * len(methods)} runs did not exit 0 (exit 2: a clear error; crash: a bug)")


if __name__ == "__main__":
    main()
