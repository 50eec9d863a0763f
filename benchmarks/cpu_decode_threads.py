"""Greedy decode tokens/s of a decoder LLM on this CPU by thread count: torch fp32 (StaticDecoder) and nnslim's
ONNX artifacts (fp32, int8 weight-only, int4 RTN) in ONNX Runtime (thread-pool spinning off, within a run
(nnslim's default) and always (ORT's)) and OpenVINO. Asks whether a runtime's per-token cost at batch 1 is its
thread pool rather than its arithmetic (BENCHMARKS.md 8c: on a 16-core Xeon the ONNX runtimes decoded slower than torch fp32).

  python benchmarks/cpu_decode_threads.py [--testbed smollm2] [--threads 1,2,4,8,0] [--out build/decode_threads]

Thread count 0 is the runtime's default (every core). Batch 1, prompt 64 + 32 new tokens, prefill excluded;
each cell is the median of --rounds decodes after one warm-up. Prints the CPU flags it saw.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnslim  # noqa: E402
from nnslim import Int4RtnConfig, Int8WeightOnlyConfig  # noqa: E402
from nnslim.io import machine_info  # noqa: E402
from nnslim.loading import resolve  # noqa: E402
from nnslim.runtime.base import TorchRunner  # noqa: E402
from nnslim.runtime.onnx_methods import OnnxConfig  # noqa: E402
from nnslim.runtime.onnxruntime import SPINNING, OrtRunner  # noqa: E402
from nnslim.runtime.openvino import OpenVinoRunner  # noqa: E402


def rate(runner, prompt: np.ndarray, new_tokens: int, rounds: int) -> tuple[float, list[int]]:
    tokens, _ = runner.decode(prompt, new_tokens)  # warm-up
    rates = [runner.decode(prompt, new_tokens)[1] for _ in range(rounds)]
    return statistics.median(rates), tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbed", default="smollm2")
    ap.add_argument("--threads", default="1,2,4,8,0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--spinning", default=",".join(SPINNING), help="ONNX Runtime thread-pool spinning modes")
    ap.add_argument("--openvino", type=int, default=1, help="0 leaves the OpenVINO rows out")
    ap.add_argument("--variants", default="fp32,int8,int4", help="fp32, int8 (weight-only), int4 (RTN g64); "
                    "or their full labels")
    ap.add_argument("--out", type=Path, default=Path("build/decode_threads"))
    args = ap.parse_args()
    info = machine_info()
    print(f"cpu: {info.get('cpu')}; flags: {info.get('cpu_flags')}", flush=True)
    threads = [int(t) for t in args.threads.split(",")]
    base = resolve(args.testbed)
    vocab = base.model.lm.config.vocab_size
    prompt = np.random.default_rng(0).integers(0, vocab, (1, 64), dtype=np.int64)
    recipes = {"fp32": [OnnxConfig()], "int8 weight-only": [Int8WeightOnlyConfig(), OnnxConfig()],
               "int4 RTN g64": [Int4RtnConfig(group_size=64), OnnxConfig()]}
    paths = {}
    short = {"int8": "int8 weight-only", "int4": "int4 RTN g64"}
    for label in (short.get(v, v) for v in args.variants.split(",")):
        if label not in recipes:
            ap.error(f"--variants: {label!r} is not one of fp32, int8, int4")
        recipe, done = recipes[label], args.out / label.replace(" ", "-") / "nnslim.json"
        if done.exists():  # built by an earlier run: reused
            paths[label] = nnslim.load(done.parent).path
            continue
        res = nnslim.compress(base.model, recipe, testbed=base.testbed, out=args.out / label.replace(" ", "-"),
                              overwrite=True, report=False)
        paths[label] = res.model.path
    rows = []
    default_threads = torch.get_num_threads()

    def record(variant, runtime, t, spin, runner):
        tok_s, tokens = rate(runner, prompt, args.new_tokens, args.rounds)
        rows.append({"variant": variant, "runtime": runtime, "threads": t or "all", "spinning": spin,
                     "tok_s": round(tok_s, 1), "tokens": tokens[:8]})
        print(f"{variant:18s} {runtime:12s} threads={t or 'all':>3} spin={spin or '-':10s} {tok_s:7.1f} tok/s", flush=True)

    for t in threads:
        torch.set_num_threads(t or default_threads)
        record("fp32", "torch", t, None, TorchRunner(base.model))
    torch.set_num_threads(default_threads)
    for label, path in paths.items():
        for t in threads:
            for spin in args.spinning.split(","):
                record(label, "onnxruntime", t, spin, OrtRunner(path, threads=t or None, spinning=spin))
            if args.openvino:
                record(label, "openvino", t, None, OpenVinoRunner(path, threads=t or None))
    ref = next(r["tok_s"] for r in rows if r["runtime"] == "torch" and r["threads"] == "all")
    print("\n| variant | runtime | threads | ORT spinning | decode tok/s | vs torch fp32 (all threads) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spin = r["spinning"] or "-"
        print(f"| {r['variant']} | {r['runtime']} | {r['threads']} | {spin} | {r['tok_s']} | {r['tok_s'] / ref:.2f}x |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_threads.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
