"""ONNX Runtime's MatMulNBits compute precision (session option `session.qdq_matmulnbits_accuracy_level`, which
ORT applies when it fuses nnslim's weight-only DequantizeLinear -> MatMul): 4 (int8 activations, ORT's default)
vs 1 (fp32 activations), on nnslim's LLM ONNX artifacts, side by side in one run.

  python benchmarks/llm_cpu_deploy.py ...   (writes build/llm_cpu/<variant>/model.onnx)
  python benchmarks/ort_accuracy_level.py build/llm_cpu/int4-RTN-g64/model.onnx build/llm_cpu/int8-weight-only/model.onnx
      [--testbed smollm2] [--levels 4 1] [--rounds 3]

For each file and level: greedy decode tok/s (batch 1, prompt 64 + 32 new tokens, prefill excluded, median of
interleaved rounds), prefill ms (batch 1 x 128, median), perplexity on the testbed's held-out text
(the testbed's own evaluation, as the report computes it). Prints the CPU flags.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--testbed", default="smollm2")
    ap.add_argument("--levels", nargs="+", type=int, default=[4, 1])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from nnslim.io import machine_info
    from nnslim.loading import resolve
    from nnslim.runtime.onnx_llm import greedy_decode
    from nnslim.runtime.onnxruntime import OrtRunner

    info = machine_info()
    print(f"cpu: {info.get('cpu')}; flags: {info.get('cpu_flags')}", flush=True)
    base = resolve(args.testbed)
    tb = base.testbed
    prompt = tb.example_inputs(batch=1, seq=64)["input_ids"]
    prefill = tb.example_inputs(batch=1, seq=128)
    runners = {(p, lv): OrtRunner(p, config={"session.qdq_matmulnbits_accuracy_level": lv})
               for p in args.models for lv in args.levels}
    rates = {k: [] for k in runners}
    pre = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, r in runners.items():
            _, _, rate = greedy_decode(r.run_all, prompt, 32)
            rates[k].append(rate)
            t = time.perf_counter()
            r(prefill)
            pre[k].append((time.perf_counter() - t) * 1e3)
    metrics = {}
    for k, r in runners.items():
        metrics[k] = tb.evaluate(r)
    print("| file | accuracy level | decode tok/s | prefill ms (b1 x 128) | metrics |")
    print("|---|---|---|---|---|")
    for k in runners:
        m = ", ".join(f"{n} {v:.4f}" for n, v in metrics[k].items() if isinstance(v, float))
        print(f"| {k[0].parent.name} | {k[1]} | {statistics.median(rates[k]):.1f} | {statistics.median(pre[k]):.1f} | {m} |",
              flush=True)


if __name__ == "__main__":
    main()
