"""Short fine-tuning of a compressed student against its teacher (knowledge distillation).

Loss = kd_loss(student output, teacher output) [KL at temperature T for logits, cosine for
embeddings, MSE otherwise] + hidden_weight * normalised MSE of matched intermediate outputs (same
module names in both models, e.g. each transformer block; layers whose shapes differ are skipped).
AdamW, linear warm-up then cosine decay, optional wall-clock budget; deterministic given the seed.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from ..batching import collate
from ..progress import progress
from ..recipe import StepConfig, register_method
from ..runtime.base import call_module
from .losses import hidden_loss, kd_loss, primary_output


@dataclass(frozen=True)
class DistillConfig(StepConfig):
    """Fine-tune the model against the recipe's input model (the teacher) on calibration data."""
    ranges = {"steps": (1, 1 << 30), "batch_size": (1, 1 << 20), "samples": (1, 1 << 30), "lr": (1e-12, 10.0),
              "weight_decay": (0, 10.0), "temperature": (1e-6, 1000.0), "hidden_weight": (0, 1e6),
              "max_seconds": (1e-3, 1e7), "warmup": (0.0, 0.999999)}
    steps: int = 300
    max_seconds: float | None = None  # stop early when this wall-clock budget is spent
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of steps
    batch_size: int = 32
    samples: int = 4096  # calibration samples drawn from the testbed
    loss: Literal["auto", "kl", "cosine", "mse"] = "auto"  # auto: from the model's output kind
    temperature: float = 2.0
    hidden_weight: float = 0.0
    hidden_layers: str | None = None  # regex of module names; None: the repeated blocks, if any
    hidden_loss: Literal["mse", "cosine"] = "mse"  # mse (variance-normalised) | cosine (per position, over the last dim)
    seed: int = 0



def _hidden_names(model: nn.Module, pattern: str | None) -> list[str]:
    if pattern is None:
        from ..graph.layerwise import find_blocks

        try:
            prefix, blocks = find_blocks(model)
        except NnslimError:
            return []
        return [f"{prefix}.{i}" for i in range(len(blocks))]
    return [n for n, _ in model.named_modules() if n and re.fullmatch(pattern, n)]


def _capture(model: nn.Module, names: list[str], store: list):
    def hook(mod, args, out):
        store.append(primary_output(out))
    return [model.get_submodule(n).register_forward_hook(hook) for n in names]


def distill(student: nn.Module, teacher: nn.Module, data: list[dict], config: DistillConfig | None = None,
            output_kind: str = "tensor", inplace: bool = False, notes: list[str] | None = None,
            step_hook: Callable[[int, nn.Module], None] | None = None, desc: str = "distill") -> nn.Module:
    """Fine-tune `student` to match `teacher` on `data` (dicts of arrays, called as model(**batch)).
    step_hook(step, student) runs after every optimizer step (e.g. gradual pruning re-applies masks)."""
    config = config or DistillConfig()
    notes = notes if notes is not None else []
    if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
        raise NnslimError("distill needs torch student and teacher models")
    data = list(data)
    if not data:
        raise NnslimError("distill needs training data: a non-empty list of input dicts")
    kind = config.loss if config.loss != "auto" else \
        {"logits": "kl", "embedding": "cosine"}.get(output_kind, "mse")
    student = student if inplace else copy.deepcopy(student)
    teacher.eval()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    names = _hidden_names(teacher, config.hidden_layers) if config.hidden_weight > 0 else []
    names = [n for n in names if n in dict(student.named_modules())]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(config.warmup * config.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, config.steps - warm))))))
    s_feats, t_feats = [], []
    handles = _capture(student, names, s_feats) + _capture(teacher, names, t_feats)
    order: list[int] = []
    losses = []
    start = time.perf_counter()
    student.train()
    try:
        for step in progress(range(config.steps), desc=f"{desc} ({kind})", total=config.steps):
            if len(order) < config.batch_size:
                order.extend(rng.permutation(len(data)).tolist())
            idx, order = order[:config.batch_size], order[config.batch_size:]
            batch = collate([data[i] for i in idx])
            mask = batch.get("attention_mask")
            s_feats.clear()
            t_feats.clear()
            with torch.no_grad():
                t_out = primary_output(call_module(teacher, batch))
            s_out = primary_output(call_module(student, batch))
            loss = kd_loss(s_out, t_out, kind, config.temperature, mask)
            if names:
                loss = loss + config.hidden_weight * hidden_loss(s_feats, t_feats, config.hidden_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step_hook is not None:
                with torch.no_grad():
                    step_hook(step + 1, student)
            losses.append(loss.item())
            if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                break
    finally:
        for h in handles:
            h.remove()
        student.eval()
    took = time.perf_counter() - start
    head, tail = np.mean(losses[:10]), np.mean(losses[-10:])
    notes.append(f"{desc}: {len(losses)} steps of batch {config.batch_size} in {took:.0f} s ({kind} loss"
                 f"{' + hidden' if names else ''}), loss {head:.4f} -> {tail:.4f}")
    return student


def _apply(model, config: DistillConfig, ctx):
    teacher = getattr(ctx, "teacher", None)
    if teacher is None or not isinstance(teacher, nn.Module):
        raise NnslimError("distill needs the recipe's input torch model as teacher; run it inside a recipe "
                          "(e.g. prune-structured then distill) or call nnslim.distill(student, teacher, data)")
    data = ctx.calibration(config.samples, what="distill")
    return distill(model, teacher, data, config, ctx.output_kind, inplace=True, notes=ctx.notes)


register_method("distill", DistillConfig, "knowledge-distillation fine-tuning from the uncompressed model "
                "(logit KL / embedding cosine + optional hidden-state loss) on calibration data",
                verb="distill")(_apply)
