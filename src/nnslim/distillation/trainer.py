"""Training a compressed student against its teacher (knowledge distillation): the one training loop
of nnslim. It trains *through* whatever compression state the student holds (fake-quantizers and
their learnable scales, pruning masks, learned movement scores) and keeps it.

Loss = KD(student output, teacher output) [KL at temperature T for logits (x T^2), cosine for
embeddings, MSE otherwise]
     + label_weight * cross-entropy with the hard labels (samples with a `labels` entry)
     + hidden_weight * hidden-state loss and attention_weight * attention-map KL (features.py: a layer
       map when the depths differ, learned projections when the widths differ).
AdamW, linear warm-up then cosine decay; deterministic given the seed. Modules of the student that
define training_step(step, total) / finish_training() (schedules, e.g. movement pruning) are called
every step / at the end. Checkpoints (safetensors + JSON) every `checkpoint_every` steps; a run resumes
from its latest checkpoint with the same result. Under torchrun the same loop runs data-parallel (DDP).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..batching import collate
from ..errors import NnslimError
from ..graph.modules import PackedLinear
from ..progress import progress, stage
from ..recipe import StepConfig, register_method
from ..runtime.base import by_name, call_module, first_tensor
from . import checkpoint as ckpt
from . import distributed
from .features import FeatureMatcher
from .losses import kd_loss


@dataclass(frozen=True)
class DistillConfig(StepConfig):
    """Train the model against the recipe's input model (the teacher) on calibration/training data."""
    ranges = {"steps": (1, 1 << 30), "batch_size": (1, 1 << 20), "samples": (1, 1 << 30), "lr": (1e-12, 10.0),
              "weight_decay": (0, 10.0), "temperature": (1e-6, 1000.0), "hidden_weight": (0, 1e6),
              "attention_weight": (0, 1e6), "label_weight": (0, 1e6), "max_seconds": (1e-3, 1e7),
              "warmup": (0.0, 0.999999), "checkpoint_every": (1, 1 << 30)}
    steps: int = 300
    max_seconds: float | None = None  # stop early when this wall-clock budget is spent
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of steps
    batch_size: int = 32  # the global batch (split between processes under torchrun)
    samples: int = 4096  # training samples (the calibration split of a testbed, or the user's data)
    loss: Literal["auto", "kl", "cosine", "mse"] = "auto"  # auto: from the model's output kind
    temperature: float = 2.0
    label_weight: float | None = None  # hard-label cross-entropy weight; None: 0.5 where samples have labels
    hidden_weight: float = 0.0
    hidden_layers: str | None = None  # regex of module names; None: the repeated blocks, if any
    hidden_loss: Literal["mse", "cosine"] = "mse"  # mse (variance-normalised) | cosine (per position)
    layer_map: tuple[int, ...] | None = None  # teacher block for each student block; None: spread evenly
    attention_weight: float = 0.0  # attention-map KL (head-averaged) on the mapped blocks
    checkpoint_dir: str | None = None  # safetensors checkpoints here; a later run resumes from the latest
    checkpoint_every: int = 100
    device: Literal["auto", "cpu", "cuda"] = "cpu"  # auto: CUDA when present
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # process group under torchrun (auto: nccl with CUDA)
    seed: int = 0


LABELS = "labels"


def _split_labels(batch: dict, student: nn.Module) -> tuple[dict, torch.Tensor | None]:
    """Hard labels travel in the samples as `labels` unless the model's forward takes them itself."""
    if LABELS in batch and not by_name(student, batch):
        batch = dict(batch)
        return batch, batch.pop(LABELS)
    return batch, None


def _param_groups(student: nn.Module, extra: list[nn.Parameter], config: DistillConfig) -> list[dict]:
    """AdamW groups: weights with decay; scales, clips and scores (tagged nnslim_lr) without decay, at their
    own learning-rate multiple."""
    groups: dict[tuple, list] = {}
    for p in list(student.parameters()) + extra:
        if not p.requires_grad:
            continue
        mult = getattr(p, "nnslim_lr", None)
        key = (1.0, config.weight_decay) if mult is None else (float(mult), 0.0)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": config.lr * m, "weight_decay": wd} for (m, wd), ps in groups.items()]


def _hooks(model: nn.Module, name: str) -> list[Callable]:
    return [getattr(m, name) for m in model.modules() if callable(getattr(m, name, None))]


def _loss_kind(config: DistillConfig, output_kind: str) -> str:
    return config.loss if config.loss != "auto" else {"logits": "kl", "embedding": "cosine"}.get(output_kind, "mse")


def distill(student: nn.Module, teacher: nn.Module, data: list[dict], config: DistillConfig | None = None,
            output_kind: str = "tensor", inplace: bool = False, notes: list[str] | None = None,
            step_hook: Callable[[int, nn.Module], None] | None = None, desc: str = "distill",
            run_id: str = "") -> nn.Module:
    """Train `student` to match `teacher` on `data` (dicts of arrays, called as model(**batch)).
    step_hook(step, student) runs after every optimizer step (e.g. gradual pruning re-applies masks).
    run_id names the run for checkpoints (a resume must come from the same run)."""
    config = config or DistillConfig()
    notes = notes if notes is not None else []
    if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
        raise NnslimError("distill needs torch student and teacher models")
    frozen = [n for n, m in student.named_modules() if isinstance(m, PackedLinear)]
    if frozen:
        kind = type(student.get_submodule(frozen[0])).__name__
        raise NnslimError(f"distill cannot train {type(student).__name__}: {len(frozen)} layer(s) hold packed "
                          f"quantized codes that training cannot update ({frozen[0]}, {kind}); distill before "
                          "quantizing, or quantize with QatConfig (trainable fake quantization)")
    if not any(p.requires_grad for p in student.parameters()):
        raise NnslimError(f"distill: {type(student).__name__} has no trainable parameter")
    data = list(data)
    if not data:
        raise NnslimError("distill needs training data: a non-empty list of input dicts")
    rank, world = distributed.setup(config.backend)
    if config.batch_size % world:
        raise NnslimError(f"batch_size={config.batch_size} must be a multiple of the {world} processes")
    student = student if inplace else copy.deepcopy(student)
    device = distributed.local_device() if world > 1 else _device(config.device)
    with _placed(student, teacher, device, notes, desc) as floats:
        kind = _loss_kind(config, output_kind)
        has_labels = any(LABELS in d for d in data[:64])
        label_weight = config.label_weight if config.label_weight is not None else (0.5 if has_labels else 0.0)
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        matcher = FeatureMatcher(student, teacher, config.hidden_weight > 0, config.attention_weight > 0,
                                 config.hidden_layers, config.layer_map, config.hidden_loss)
        probe = _to(collate(data[:16]), device, floats)
        probe_in = _split_labels(probe, student)[0]
        outputs = {}
        matcher.prepare(lambda: outputs.update(t=call_module(teacher, probe_in), s=call_module(student, probe_in)))
        variance = float(first_tensor(outputs["t"]).float().var())  # MSE scale, the same for every batch and rank
        matcher.to(device)
        trained = student
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            trained = DistributedDataParallel(student, find_unused_parameters=True)
        opt = torch.optim.AdamW(_param_groups(student, list(matcher.parameters()), config), lr=config.lr)
        warm = max(1, int(config.warmup * config.steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (
            1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, config.steps - warm))))))
        order: list[int] = []
        losses: list[float] = []
        first = 0
        ck_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        expected = ckpt.fingerprint(dataclasses.asdict(config), data, student, run_id) if ck_dir else None
        if ck_dir is not None and ckpt.latest(ck_dir) is not None:
            first, order, losses = _resume(ckpt.latest(ck_dir), expected, student, matcher, opt, sched, rng)
            notes.append(f"{desc}: resumed from {ckpt.latest(ck_dir).name}")
        hooks = _hooks(student, "training_step")
        start = time.perf_counter()
        student.train()
        bar = progress(range(first, config.steps), desc=f"{desc} ({kind})", total=config.steps - first)
        try:
            for step in bar:
                for hook in hooks:
                    hook(step, config.steps)
                if len(order) < config.batch_size:
                    order.extend(rng.permutation(len(data)).tolist())
                idx, order = order[:config.batch_size], order[config.batch_size:]
                share = config.batch_size // world
                batch, labels = _split_labels(_to(collate([data[i] for i in idx[rank * share:(rank + 1) * share]]),
                                                  device, floats), student)
                loss = _loss(trained, teacher, matcher, batch, labels, kind, config, label_weight, variance)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p in matcher.parameters():  # the projections live outside DDP: average their gradients here
                    if p.grad is not None:
                        distributed.average(p.grad, world)
                opt.step()
                sched.step()
                if step_hook is not None:
                    with torch.no_grad():
                        step_hook(step + 1, student)
                losses.append(float(distributed.average(loss.detach().clone(), world)))
                _show(bar, step, config.steps, losses, desc)
                if ck_dir is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                    if rank == 0:
                        _checkpoint(ck_dir, step + 1, student, matcher, opt, rng, order, losses, expected)
                    distributed.barrier(world)
                if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                    break
        finally:
            matcher.remove()
            student.eval()
        for hook in _hooks(student, "finish_training"):
            hook()
    took = time.perf_counter() - start
    w = max(1, min(10, len(losses) // 2))  # first and last steps' mean loss; the windows never overlap
    head, tail = np.mean(losses[:w]), np.mean(losses[-w:])
    parts = [kind] + (["labels"] if label_weight else []) + (["hidden"] if config.hidden_weight else []) + \
        (["attention"] if config.attention_weight else [])
    notes.append(f"{desc}: {len(losses)} steps of batch {config.batch_size} on {world} process(es) in {took:.0f} s "
                 f"({' + '.join(parts)} loss{'; ' + matcher.describe() if matcher.active else ''}), "
                 f"loss {head:.4f} -> {tail:.4f}")
    return student


def _device(name: str) -> torch.device:
    from ..context import resolve_device

    return resolve_device(name)


@contextmanager
def _placed(student: nn.Module, teacher: nn.Module, device: torch.device, notes: list[str], desc: str):
    """Both models on `device` for training, yielding the dtype floating inputs take (None: their own). float16
    weights cannot take AdamW's updates (they turned to NaN / Inf within a few steps): both models train and teach
    on float32 copies of their float16 tensors, as mixed precision keeps float32 master weights. On exit, also on an
    error, every tensor goes back to its dtype and each model back where it was (the teacher is the caller's)."""
    home, teacher_home = next(student.parameters()).device, next(teacher.parameters()).device
    half = (_upcast_half(student), _upcast_half(teacher))
    if any(half):
        notes.append(f"{desc}: trained in float32 (the model's float16 weights would overflow AdamW's updates), "
                     "then cast back to float16")
    try:
        student.to(device)
        teacher.to(device).eval()
        yield torch.float32 if any(half) else None
    finally:
        _restore_dtypes(student, half[0])
        _restore_dtypes(teacher, half[1])
        student.to(home)
        teacher.to(teacher_home)


def _to(batch: dict, device: torch.device, floats: torch.dtype | None = None) -> dict:
    """The batch on `device`; floating inputs as `floats` when given (a float16 model trained in float32)."""
    return {k: v.to(device, floats) if floats is not None and v.is_floating_point() else v.to(device)
            for k, v in batch.items()}


def _upcast_half(model: nn.Module) -> dict[str, torch.dtype]:
    """The float16 parameters and buffers of `model` as float32, in place (the same objects); returns every floating
    tensor's dtype by name, or {} when none was float16."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    if not any(t.dtype == torch.float16 for _, t in tensors):
        return {}
    was = {name: t.dtype for name, t in tensors if t.is_floating_point()}
    for _, t in tensors:
        if t.dtype == torch.float16:
            t.data = t.data.float()
    return was


def _restore_dtypes(model: nn.Module, was: dict[str, torch.dtype]) -> None:
    """Each tensor back to its dtype before training; a float32 tensor under a name training made (a mask or score
    folded into `weight` by movement pruning's end) came from a float16 one."""
    if not was:
        return
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        want = was.get(name, torch.float16 if t.dtype == torch.float32 else t.dtype)
        if t.is_floating_point() and t.dtype != want:
            t.data = t.data.to(want)


def _loss(student, teacher, matcher: FeatureMatcher, batch: dict, labels, kind: str, config: DistillConfig,
          label_weight: float, variance: float) -> torch.Tensor:
    mask = batch.get("attention_mask")
    matcher.clear()
    with torch.no_grad():
        t_out = first_tensor(call_module(teacher, batch))
    s_out = first_tensor(call_module(student, batch))
    loss = kd_loss(s_out, t_out, kind, config.temperature, mask, variance)
    if labels is not None and label_weight:
        loss = loss + label_weight * F.cross_entropy(s_out.float().reshape(-1, s_out.shape[-1]), labels.reshape(-1).long())
    if matcher.active and config.hidden_weight:
        loss = loss + config.hidden_weight * matcher.hidden_loss()
    if matcher.active and config.attention_weight:
        loss = loss + config.attention_weight * matcher.attention_loss(mask)
    return loss


def _show(bar, step: int, total: int, losses: list[float], desc: str) -> None:
    recent = float(np.mean(losses[-10:]))
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{recent:.4f}", refresh=False)
    if (step + 1) % max(1, total // 10) == 0:
        stage(f"{desc}: step {step + 1}/{total}, loss {recent:.4f}")


def _checkpoint(directory: Path, step: int, student, matcher, opt, rng, order, losses, fp) -> None:
    tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
    tensors.update({f"matcher.{k}": v for k, v in matcher.state_dict().items()})
    opt_tensors, opt_rest = ckpt.optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(student.parameters()).device
    if device.type == "cuda":  # dropout on the GPU draws from the device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {"step": step, "order": order, "losses": losses, "numpy_rng": rng.bit_generator.state,
            "optimizer": opt_rest, "fingerprint": fp}
    ckpt.save(directory, step, tensors, meta)


def _resume(path: Path, expected, student, matcher, opt, sched, rng) -> tuple[int, list[int], list[float]]:
    tensors, meta = ckpt.load(path, expected)
    student.load_state_dict({k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")})
    matcher.load_state_dict({k[len("matcher."):]: v for k, v in tensors.items() if k.startswith("matcher.")})
    ckpt.restore_optimizer(opt, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    device = next(student.parameters()).device
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    rng.bit_generator.state = meta["numpy_rng"]
    step = int(meta["step"])
    sched.last_epoch = step
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    return step, list(meta["order"]), list(meta["losses"])


def _apply(model, config: DistillConfig, ctx):
    teacher = getattr(ctx, "teacher", None)
    if teacher is None or not isinstance(teacher, nn.Module):
        raise NnslimError("distill needs the recipe's input torch model as teacher; run it inside a recipe "
                          "(e.g. prune-structured then distill) or call nnslim.distill(student, teacher, data)")
    data = ctx.training_data(config.samples, what="distill")
    return distill(model, teacher, data, config, ctx.output_kind, inplace=True, notes=ctx.notes, run_id=ctx.run_id)


register_method("distill", DistillConfig, "knowledge-distillation training from the uncompressed model (logit KD "
                "+ hard labels + hidden-state / attention KD); trains through quantizers, masks and scores",
                verb="distill")(_apply)
