"""Issue 18: GPTQ of a 7B-shaped Llama with each block's work spread over the GPUs (graph/spread.py):
wall time and peak memory per GPU with 1 GPU and with N, in one process, and how far the two results
differ (they should agree up to float summation order).

  python benchmarks/gpu_gptq_spread.py --gpus 2 [--layers 8] [--hidden 4096] [--samples 128] [--seq 2048]

Random bf16 weights from a Llama-2-7B config (--layers of its 32 blocks: the time per block is the
figure; the whole model scales it by 32 / layers), random calibration tokens.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

import nnslim  # noqa: E402


def llama_7b_shaped(layers: int, hidden: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 256 * 256,
                      num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
                      vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


def run(model, samples, gpus: int) -> tuple[torch.nn.Module, float, list[float]]:
    for k in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(k)
    start = time.perf_counter()
    q = nnslim.quantize(model, nnslim.Int4GptqConfig(group_size=128, device="cuda", gpus=gpus), calibration=samples)
    took = time.perf_counter() - start
    peaks = [torch.cuda.max_memory_allocated(k) / 2**30 for k in range(gpus)]
    return q, took, peaks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args()
    if torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} but this machine has {torch.cuda.device_count()} GPU(s)")
    print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    model = llama_7b_shaped(args.layers, args.hidden)
    params = sum(p.numel() for p in model.model.layers.parameters())
    g = torch.Generator().manual_seed(1)
    samples = [{"input_ids": torch.randint(0, 32000, (1, args.seq), generator=g)} for _ in range(args.samples)]
    results = {}
    for gpus in (1, args.gpus):
        q, took, peaks = run(model, samples, gpus)
        results[gpus] = q
        print(f"GPTQ int4 g128, {args.layers} blocks of a 7B ({params / 1e9:.2f}B params), {args.samples} x {args.seq} "
              f"tokens, {gpus} GPU(s): {took:.1f} s ({took / args.layers:.2f} s per block; x32 blocks "
              f"{took / args.layers * 32 / 60:.1f} min), peak memory per GPU "
              f"{', '.join(f'{p:.1f}' for p in peaks)} GiB", flush=True)
    a, b = (dict(results[k].named_buffers()) for k in (1, args.gpus))
    codes = [n for n in a if n.endswith("qweight")]
    off = sum(int((a[n] != b[n]).sum()) for n in codes) / sum(a[n].numel() for n in codes)
    held = torch.randint(0, 32000, (2, 512), generator=torch.Generator().manual_seed(2))
    errs = {}
    with torch.no_grad():
        ref = logits(model, held)
        for k, q in results.items():
            errs[k] = float((logits(q, held) - ref).norm() / ref.norm())
    print(f"1 GPU vs {args.gpus}: {off:.2%} of the packed code bytes differ ({len(codes)} layers; codes depend on the "
          f"order of the Hessian sums); held-out "
          f"logits relative error vs bf16: {errs[1]:.4f} (1 GPU), {errs[args.gpus]:.4f} ({args.gpus} GPUs)", flush=True)


def logits(model, ids):
    model.to("cuda:0")
    out = model(input_ids=ids.to("cuda:0")).logits.float().cpu()
    model.to("cpu")
    return out

if __name__ == "__main__":
    os.environ.setdefault("NNSLIM_PROGRESS", "0")
    main()
