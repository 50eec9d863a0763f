"""BENCHMARKS.md: one-shot pruning of smollm2 at 50% unstructured and 2:4: magnitude vs Wanda vs SparseGPT.

  python benchmarks/llm_pruning.py [--samples 64] [--seq-len 512]

Held-out Python-docs perplexity (the testbed's 16 x 512 tokens); calibration from the calibration split.
Every Linear inside the decoder blocks is pruned; embeddings and lm_head stay dense.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from nnslim.io import machine_info  # noqa: E402
from nnslim import MagnitudePruneConfig, SparseGptConfig, WandaConfig, prune  # noqa: E402
from nnslim.runtime.base import TorchRunner  # noqa: E402
from nnslim.testbeds import get_testbed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    tb = get_testbed("smollm2")
    model = tb.load_model()
    calib = tb.calibration(args.samples, seq_len=args.seq_len)
    rows = [{"variant": "dense fp32", "pattern": "-", **tb.evaluate(TorchRunner(model)), "prune_s": 0.0}]
    print(json.dumps(rows[-1]), flush=True)
    for pattern in ("unstructured", "2:4"):
        for algo in ("magnitude", "wanda", "sparsegpt"):
            if algo == "magnitude":
                cfg = MagnitudePruneConfig(sparsity=0.5, pattern=pattern)
            else:
                cfg = {"wanda": WandaConfig, "sparsegpt": SparseGptConfig}[algo](
                    sparsity=0.5, pattern=pattern, device="cpu", samples=args.samples, seq_len=args.seq_len)
            t = time.perf_counter()
            p = prune(model, cfg, calibration=None if algo == "magnitude" else calib)
            dt = time.perf_counter() - t
            rows.append({"variant": algo, "pattern": "50% unstructured" if pattern == "unstructured" else "2:4",
                         **tb.evaluate(TorchRunner(p)), "prune_s": round(dt, 1)})
            print(json.dumps(rows[-1]), flush=True)
            del p
    print(f"\n# smollm2 one-shot pruning, {args.samples} x {args.seq_len} calibration tokens, "
          f"{time.strftime('%Y-%m-%d')}, {machine_info().get('cpu', '?')}")
    print("| method | sparsity | perplexity | vs dense | gen agreement | prune s |")
    print("|---|---|---|---|---|---|")
    base = rows[0]["perplexity"]
    for r in rows:
        print(f"| {r['variant']} | {r['pattern']} | {r['perplexity']:.2f} | {r['perplexity'] / base:.2f}x | "
              f"{r['gen_agreement']:.3f} | {r['prune_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
