"""BENCHMARKS.md: smollm2 batch-1 greedy decode tokens/s on this CPU, fp32 vs int8 / int4 weight-only.

  python benchmarks/llm_cpu_decode.py [--prompt 64] [--new-tokens 64] [--rounds 3]

Decode runs through nnslim's StaticDecoder (static KV cache); each quantized Linear uses the kernel
the selector measured fastest for its shape (torch's CPU int8 / int4 packed matmuls, or dequantize +
matmul). Variants are timed in interleaved rounds; the median rate is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from nnslim.io import machine_info  # noqa: E402
from nnslim import Int4RtnConfig, Int8WeightOnlyConfig, quantize  # noqa: E402
from nnslim.runtime.decode import StaticDecoder  # noqa: E402
from nnslim.runtime.kernels.select import kernel_table  # noqa: E402
from nnslim.testbeds import get_testbed  # noqa: E402


def weight_mb(model) -> float:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    tb = get_testbed("smollm2")
    lm = tb.load_model().lm
    prompt = torch.as_tensor(tb.example_inputs(1, args.prompt)["input_ids"])
    variants = {"fp32": lm,
                "int8 weight-only (per channel)": quantize(lm, Int8WeightOnlyConfig()),
                "int4 weight-only (RTN g64)": quantize(lm, Int4RtnConfig(group_size=64))}
    rates = {k: [] for k in variants}
    tokens = {}
    for name, model in variants.items():  # warm-up: kernel selection happens here
        tokens[name], _ = StaticDecoder(model, args.prompt + args.new_tokens).generate(prompt, 8)
    for _ in range(args.rounds):
        for name, model in variants.items():
            toks, rate = StaticDecoder(model, args.prompt + args.new_tokens).generate(prompt, args.new_tokens)
            rates[name].append(rate)
            tokens[name] = toks
    base = statistics.median(rates["fp32"])
    print(f"\n# smollm2 decode, batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}, {machine_info().get('cpu', '?')}")
    print("| variant | tokens/s | vs fp32 | weights MB | greedy tokens equal to fp32 |")
    print("|---|---|---|---|---|")
    for name, model in variants.items():
        r = statistics.median(rates[name])
        same = sum(a == b for a, b in zip(tokens[name], tokens["fp32"])) / len(tokens["fp32"])
        print(f"| {name} | {r:.1f} | {r / base:.2f}x | {weight_mb(model):.0f} | {same:.2f} |")
    print("\nkernels chosen (ms per call for each candidate):")
    for row in kernel_table():
        print(" ", row)


if __name__ == "__main__":
    main()
