"""BENCHMARKS.md section 5c: unstructured sparsity that shrinks files, and gradual pruning.

  python benchmarks/sparse_storage.py [--kd-seconds 120]

smollm2   every Linear in the decoder blocks pruned to 50% by magnitude; the artifact saved dense
          (fp32 safetensors) and with `sparse-storage` (bitmask + fp32 / fp16 / int8 nonzeros); file
          sizes and the held-out perplexity of the model loaded back from each file.
digits    80% unstructured sparsity: one-shot magnitude, one-shot + distillation, and gradual pruning
          (cubic schedule during distillation) with the same wall-clock budget; held-out accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import nnslim  # noqa: E402
from nnslim import MagnitudePruneConfig  # noqa: E402
from nnslim.pruning.gradual import GradualPruneConfig, prune_gradual  # noqa: E402
from nnslim.pruning.storage import SparseStorageConfig, mark  # noqa: E402
from nnslim.runtime import TorchRunner  # noqa: E402


def storage() -> None:
    tb = nnslim.get_testbed("smollm2")
    base = tb.load_model()
    pruned = nnslim.prune(base, MagnitudePruneConfig(sparsity=0.5))
    work = Path(tempfile.mkdtemp(prefix="nnslim-store-"))
    rows = [("dense fp32 (unpruned)", base, None), ("50% pruned, dense fp32", pruned, None)]
    rows += [(f"50% pruned, sparse {v}", mark(pruned, SparseStorageConfig(values=v)), v)
             for v in ("float32", "float16", "int8")]
    print("| artifact | model.safetensors MB | vs dense fp32 | perplexity after load |")
    print("|---|---|---|---|")
    ref = None
    for i, (name, model, _) in enumerate(rows):
        d = work / f"a{i}"
        nnslim.save(model, d, testbed=tb)
        mb = (d / "model.safetensors").stat().st_size / 1e6
        ref = ref or mb
        loaded = nnslim.load(d)
        ppl = tb.evaluate(TorchRunner(loaded))["perplexity"]
        print(f"| {name} | {mb:.1f} | {mb / ref:.3f}x | {ppl:.3f} |", flush=True)
        del loaded


def gradual(kd_seconds: float) -> None:
    tb = nnslim.get_testbed("digits-cnn")
    base = tb.load_model()
    data = tb.calibration(4096)
    acc = lambda m: tb.evaluate(TorchRunner(m))["accuracy"]  # noqa: E731
    print("| 80% unstructured (convs + Linears, classifier dense) | accuracy | seconds |")
    print("|---|---|---|")
    print(f"| dense fp32 | {acc(base):.4f} | - |")
    ignore = ("classifier.3",)
    t = time.perf_counter()
    one = nnslim.prune(base, MagnitudePruneConfig(sparsity=0.8, ignore=ignore))
    print(f"| one-shot magnitude (Linears only: MagnitudePruneConfig) | {acc(one):.4f} | {time.perf_counter() - t:.1f} |")
    cfg = dict(steps=3000, max_seconds=kd_seconds, lr=2e-3, batch_size=64)  # ~0.02-0.04 s per step here
    g0 = GradualPruneConfig(sparsity=0.8, begin=0.0, end=1e-6, every=1, ignore=ignore, **cfg)
    t = time.perf_counter()
    shot = prune_gradual(base, base, data, g0, "logits")
    print(f"| one-shot magnitude (convs + Linears) + distillation | {acc(shot):.4f} | {time.perf_counter() - t:.0f} |")
    steps = cfg["steps"]
    g = GradualPruneConfig(sparsity=0.8, begin=0.0, end=0.6, every=10, ignore=ignore, **cfg)
    t = time.perf_counter()
    grad = prune_gradual(base, base, data, g, "logits")
    zeros = sum(int((p == 0).sum()) for n, p in grad.named_parameters() if n.endswith("weight") and p.dim() > 1)
    total = sum(p.numel() for n, p in grad.named_parameters() if n.endswith("weight") and p.dim() > 1)
    print(f"| gradual (cubic schedule over {steps} distillation steps) | {acc(grad):.4f} | "
          f"{time.perf_counter() - t:.0f} |")
    print(f"\nweights that are zero in the gradual model (all conv/Linear weights): {zeros / total:.1%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kd-seconds", type=float, default=120.0)
    ap.add_argument("--only", choices=["storage", "gradual"], default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# sparse storage / gradual pruning, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs")
    if args.only in (None, "storage"):
        storage()
    if args.only in (None, "gradual"):
        gradual(args.kd_seconds)


if __name__ == "__main__":
    main()
