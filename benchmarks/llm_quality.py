"""BENCHMARKS.md: weight-only quantization accuracy on smollm2 (held-out Python-docs perplexity).

  python benchmarks/llm_quality.py [--samples 128] [--seq-len 512] [--group 64]

fp32 vs RTN / GPTQ / AWQ at int4 (grouped) and int8 per-channel, all on the same calibration split
and the same held-out tokens (the testbed's 16 x 512). SmolLM2's hidden size is 576, which group 128
does not divide; group 64 is the nearest that fits every layer (the script says so).
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
from nnslim import Int4AwqConfig, Int4GptqConfig, Int4RtnConfig, Int8WeightOnlyConfig, quantize  # noqa: E402
from nnslim.runtime.base import TorchRunner  # noqa: E402
from nnslim.testbeds import get_testbed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--methods", default="rtn,gptq,awq,int8")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    tb = get_testbed("smollm2")
    model = tb.load_model()
    calib = tb.calibration(args.samples, seq_len=args.seq_len)
    rows = [{"variant": "fp32", **tb.evaluate(TorchRunner(model)), "quant_s": 0.0}]
    print(json.dumps(rows[-1]), flush=True)
    g = args.group
    configs = {"rtn": Int4RtnConfig(group_size=g), "gptq": Int4GptqConfig(group_size=g, device="cpu"),
               "awq": Int4AwqConfig(group_size=g, device="cpu"),  # 1/s folded into norms / producers (default)
               "awq-unfolded": Int4AwqConfig(group_size=g, device="cpu", fold=False),  # 1/s applied by each layer
               "int8": Int8WeightOnlyConfig()}
    for name in args.methods.split(","):
        cfg = configs[name]
        t = time.perf_counter()
        q = quantize(model, cfg, calibration=calib)
        dt = time.perf_counter() - t
        label = "int8 per-channel RTN" if name == "int8" else f"int4 g{g} {name.upper().replace('-', ' ')}"
        rows.append({"variant": label, **tb.evaluate(TorchRunner(q)), "quant_s": round(dt, 1)})
        print(json.dumps(rows[-1]), flush=True)
        del q
    base = rows[0]["perplexity"]
    rtn = next((r["perplexity"] for r in rows if "RTN" in r["variant"] and "int4" in r["variant"]), None)
    print(f"\n# smollm2 weight-only quality, {args.samples} x {args.seq_len} calibration tokens, "
          f"{time.strftime('%Y-%m-%d')}, {machine_info().get('cpu', '?')}")
    print("| variant | perplexity | vs fp32 | share of RTN's increase recovered | gen agreement | quantize s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ppl = r["perplexity"]
        rec = "-"
        if rtn and "int4" in r["variant"] and "RTN" not in r["variant"]:
            rec = f"{(rtn - ppl) / (rtn - base):.0%}"
        print(f"| {r['variant']} | {ppl:.3f} | {ppl / base - 1:+.2%} | {rec} | {r['gen_agreement']:.3f} | {r['quant_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
