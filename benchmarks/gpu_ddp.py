"""Issue 18 (multi-GPU) groundwork: QAT and KD of a Llama-style model through nnslim's training loop on
the GPU, under torchrun with DDP over NCCL; prints steps/s and peak GPU memory per process.

  torchrun --nproc_per_node N benchmarks/gpu_ddp.py [--layers 16] [--hidden 2048] [--steps 30] [--batch 8]
      [--checkpoint-dir DIR --checkpoint-every K] [--save FILE]

--save writes the trained student (rank 0, safetensors) and prints its held-out KL to the teacher;
--checkpoint-dir makes the run resumable: a run killed after a checkpoint and started again (with any
process count) continues from it (benchmarks/multi_gpu.sh checks that a 2-GPU checkpoint resumed on
1 GPU gives the uninterrupted 1-GPU model).

With N GPUs each process trains on batch/N sequences of every global batch (DDP averages the gradients),
so the loss curve matches one process. The student is a copy of the teacher with int8 QAT quantizers
(LSQ scales) or unquantized (--mode kd). Random weights and tokens: throughput, not accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

import nnslim  # noqa: E402
from nnslim.distillation import distributed  # noqa: E402


def llama(layers: int, hidden: int, device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64, num_hidden_layers=layers,
                      num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512),
                      vocab_size=32000, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).to(device).eval()


class Logits(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--mode", choices=["qat", "kd"], default="qat")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--save", default=None, help="the trained student's weights (safetensors, rank 0)")
    args = ap.parse_args()
    rank, world = distributed.setup("auto")
    gpu = torch.cuda.is_available()  # (without one: a CPU dry run over gloo, to check this script)
    device = distributed.local_device() if world > 1 else torch.device("cuda" if gpu else "cpu")
    teacher = Logits(llama(args.layers, args.hidden, device))
    params = sum(p.numel() for p in teacher.parameters())
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 32000, (1, args.seq), generator=g)} for _ in range(args.batch * 8)]
    student = teacher
    if args.mode == "qat":
        student = nnslim.quantize(teacher, nnslim.QatConfig(smoothquant=None, bias_correction=False, samples=8,
                                                            preset="transformer"), calibration=data[:8])
    sync()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    notes: list[str] = []
    from nnslim.distillation.trainer import DistillConfig, distill

    cfg = DistillConfig(steps=args.steps, batch_size=args.batch, lr=1e-5, loss="kl", backend="nccl" if gpu else "gloo",
                        device=device.type,
                        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every)
    start = time.perf_counter()
    trained = distill(student, teacher, data, cfg, "logits", inplace=args.mode == "qat", notes=notes)
    sync()
    took = time.perf_counter() - start
    if rank == 0:
        print(f"{args.mode}: {params / 1e9:.2f}B params, {world} process(es), global batch {args.batch} x {args.seq} "
              f"tokens: {args.steps / took:.3f} steps/s ({args.steps * args.batch * args.seq / took:,.0f} tokens/s), "
              f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30 if gpu else 0:.1f} GiB on rank 0", flush=True)
        print(notes[-1], flush=True)
        if args.save:
            from safetensors.torch import save_file

            held = torch.randint(0, 32000, (2, args.seq), generator=torch.Generator().manual_seed(1))
            held = held.to(next(trained.parameters()).device)
            teacher.to(held.device)
            with torch.no_grad():
                t, s = teacher(held).float(), trained(held).float()
                kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True,
                                                reduction="batchmean") / args.seq
            print(f"held-out KL(teacher || student) per token: {float(kl):.6g}", flush=True)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in trained.state_dict().items()}, args.save)


if __name__ == "__main__":
    os.environ.setdefault("NNSLIM_PROGRESS", "0")
    main()
