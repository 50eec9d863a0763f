"""KV-cache quantization quality on smollm2 (real weights, CPU): perplexity through the cache and greedy
agreement of int8 / fp8 caches with the model-dtype cache (issue 17).

  python benchmarks/kv_cache_quality.py [--contexts 512,2048] [--steps 256] [--new-tokens 128]

Perplexity: `StaticDecoder.score` teacher-forces the eval text: the first C tokens as one prompt (which
attends to its own fresh keys/values, as at serving time), then `steps` tokens one at a time, each
attending to the whole cache in the format under test: what the cache format changes. Agreement:
(1) teacher-forced: the share of those steps whose top-1 next token equals the model-dtype cache's;
(2) free-running: greedy continuation of `new-tokens` after the same C-token prompt, position by position
against the model-dtype cache, and the first divergence (after it the two texts differ anyway). Same weights, same decoder, only the cache format differs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nnslim.io import machine_info  # noqa: E402
from nnslim.runtime.decode import StaticDecoder  # noqa: E402
from nnslim.testbeds import get_testbed  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--formats", default="model,int8,fp8")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    tb = get_testbed("smollm2")
    lm = tb.load_model().lm
    contexts = [int(c) for c in args.contexts.split(",")]
    need = max(contexts) + args.steps + 1
    text = tb.tokenizer(tb.source.passage("eval"), return_tensors="pt")["input_ids"][0]
    if len(text) < need:  # the eval text repeated: perplexity then also measures recall from the cache
        text = text.repeat(-(-need // len(text)))
    ids = text[:need][None]
    rows = []
    for c in contexts:
        ref_tokens = None
        for fmt in args.formats.split(","):
            t0 = time.perf_counter()
            dec = StaticDecoder(lm, c + args.steps + 1, use_graph=False, fused=False, kv_cache=fmt)
            logits = dec.score(ids[:, : c + args.steps + 1], c)[0]
            nll = F.cross_entropy(logits, ids[0, c: c + args.steps + 1])
            gen = StaticDecoder(lm, c + args.new_tokens, use_graph=False, fused=False, kv_cache=fmt)
            tokens, _ = gen.generate(ids[:, :c], args.new_tokens)
            row = {"context": c, "kv_cache": fmt, "ppl": round(math.exp(float(nll)), 4),
                   "kv_cache_MB": round(dec.cache.nbytes() / 2**20, 1), "seconds": round(time.perf_counter() - t0, 1)}
            if ref_tokens is None:
                ref_tokens, ref_top1 = tokens, logits.argmax(-1)
            else:
                row["teacher_forced_top1_agreement"] = round(float((logits.argmax(-1) == ref_top1).float().mean()), 4)
                row["greedy_agreement"] = round(sum(a == b for a, b in zip(tokens, ref_tokens)) / len(tokens), 3)
                row["first_divergence"] = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    info = machine_info()
    print(f"\n# smollm2 KV cache formats, {time.strftime('%Y-%m-%d')}, {info.get('cpu', '?')}, "
          f"{torch.get_num_threads()} threads; {args.steps} teacher-forced steps after the context, "
          f"{args.new_tokens} greedy tokens")
    print("| context | KV cache | perplexity | top-1 agreement, teacher-forced | free-running greedy agreement | "
          "first divergence | cache MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['kv_cache']} | {r['ppl']} | {r.get('teacher_forced_top1_agreement', '-')} | "
              f"{r.get('greedy_agreement', '-')} | {r.get('first_divergence', '-')} | {r['kv_cache_MB']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
