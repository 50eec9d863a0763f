"""Wall time and graph sizes of an encoder-decoder's ONNX export (Optimum's three graphs) from the CLI's
`onnx` method, on the small random T5 / BART of tests/hf_zoo.py (BENCHMARKS.md 7e).

  python benchmarks/seq2seq_export.py [--kinds t5,bart]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import nnslim  # noqa: E402
from hf_zoo import _build  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="t5,bart")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seq2seq-export-"))
    print("| model | compress onnx s | encoder MB | decoder MB | decoder with past MB | total MB |\n|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        src = _build(kind, root)
        start = time.perf_counter()
        res = nnslim.compress(str(src), "onnx", out=root / f"{kind}-onnx", report=False)
        seconds = time.perf_counter() - start
        mb = [(res.out / f).stat().st_size / 1e6 for f in
              ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")]
        print(f"| {kind} | {seconds:.1f} | " + " | ".join(f"{m:.1f}" for m in mb) + f" | {sum(mb):.1f} |", flush=True)


if __name__ == "__main__":
    main()
