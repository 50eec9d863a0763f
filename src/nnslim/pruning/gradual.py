"""Gradual magnitude pruning during distillation fine-tuning (Zhu & Gupta 2017, cubic schedule).

Sparsity rises from 0 at `begin` to `sparsity` at `end` (fractions of the training steps) as
s(t) = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3): fast early, when the network can recover, slow near
the end. Every `every` steps the masks are recomputed by |w| (per layer or global); after every
optimizer step the masks are re-applied, so pruned weights stay zero whatever the optimizer's state.
At the end the masks are folded in: an ordinary model with zeros (nnslim.save with sparse storage, or
the `sparse-storage` step, turns them into a smaller file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..distillation.trainer import DistillConfig, distill
from ..errors import NnslimError
from ..graph.scope import matches, select_linears
from ..recipe import register_method
from .masks import attach_mask, magnitude_masks, parse_pattern


@dataclass(frozen=True)
class GradualPruneConfig(DistillConfig):
    """Magnitude pruning raised on a cubic schedule while distilling from the unpruned model."""
    ranges = {**DistillConfig.ranges, "sparsity": (0.0, 0.999999), "every": (1, 1 << 30), "begin": (0.0, 1.0),
              "end": (0.0, 1.0)}
    sparsity: float = 0.5
    pattern: str = "unstructured"  # or N:M (then applied whole at `begin`: an N:M mask has one sparsity)
    scope: Literal["layer", "global"] = "layer"
    begin: float = 0.0
    end: float = 0.7
    every: int = 10
    ignore: tuple[str, ...] = ()
    prune_head: bool = False
    convs: bool = True  # also prune Conv weights

    def __post_init__(self):
        super().__post_init__()
        parse_pattern(self.pattern)
        if not 0.0 <= self.begin < self.end <= 1.0:
            raise NnslimError(f"begin={self.begin}, end={self.end} are not allowed; allowed: 0 <= begin < end <= 1")


def cubic_sparsity(step: int, total: int, config: GradualPruneConfig) -> float:
    t0, t1 = config.begin * total, max(config.end * total, config.begin * total + 1)
    if step < t0:
        return 0.0
    if step >= t1:
        return config.sparsity
    return config.sparsity * (1 - (1 - (step - t0) / (t1 - t0)) ** 3)


def prunable_weights(model: nn.Module, config: GradualPruneConfig) -> dict[str, nn.Parameter]:
    out = {f"{n}.weight": m.weight for n, m in select_linears(model, config.ignore, config.prune_head,
                                                             "prune").items()}
    if config.convs:
        for n, m in model.named_modules():
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1 and \
                    not any(matches(p, n, m) for p in config.ignore):
                out[f"{n}.weight"] = m.weight
    return out


class _Masker:
    def __init__(self, weights: dict[str, nn.Parameter], config: GradualPruneConfig, total: int):
        self.weights, self.config, self.total = weights, config, total
        self.nm = parse_pattern(config.pattern)
        self.masks: dict[str, torch.Tensor] = {}
        self.current = 0.0

    def __call__(self, step: int, model: nn.Module) -> None:
        target = self.config.sparsity if self.nm else cubic_sparsity(step, self.total, self.config)
        due = step % self.config.every == 0 or step >= self.config.end * self.total
        if target > self.current and (due or not self.masks):
            self.masks = magnitude_masks(dict(self.weights), target, self.nm, self.config.scope)
            self.current = target
        for n, w in self.weights.items():
            if n in self.masks:
                w.mul_(self.masks[n].to(w.dtype))


def prune_gradual(model: nn.Module, teacher: nn.Module, data: list[dict], config: GradualPruneConfig,
                  output_kind: str = "tensor", notes: list[str] | None = None) -> nn.Module:
    """A copy of `model` pruned gradually to config.sparsity while distilling from `teacher`."""
    import copy

    notes = notes if notes is not None else []
    student = copy.deepcopy(model)
    weights = prunable_weights(student, config)
    nm = parse_pattern(config.pattern)
    odd = [n for n, w in weights.items() if nm and (w[0].numel() % nm[1])]
    if odd:  # as one-shot N:M pruning: such a layer stays dense, said
        notes.append(f"pattern {config.pattern}: {len(odd)} of {len(weights)} layers stay dense (inputs per output not "
                     f"divisible by {nm[1]}): {', '.join(odd[:5])}" + (" ..." if len(odd) > 5 else ""))
        weights = {n: w for n, w in weights.items() if n not in odd}
    if not weights:
        raise NnslimError("gradual pruning found no Linear/Conv weights to prune (check `ignore`"
                          + (f" and pattern={config.pattern!r}" if odd else "") + ")")
    masker = _Masker(weights, config, config.steps)
    student = distill(student, teacher, data, config, output_kind, inplace=True, notes=notes, step_hook=masker,
                      desc=f"gradual pruning to {config.sparsity:.0%}")
    with torch.no_grad():
        masker(config.steps + 10 ** 9, student)  # the final sparsity even if the time budget cut training short
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    notes.append(f"gradual pruning: {len(weights)} layers, {zeros / total:.1%} of their weights are zero")
    for key in weights:  # the final masks stay on the weights through any later training
        layer = student.get_submodule(key[: -len(".weight")])
        attach_mask(layer, layer.weight.detach() != 0)
    return student


def _apply(model, config: GradualPruneConfig, ctx):
    teacher = ctx.teacher
    if not isinstance(teacher, nn.Module):
        raise NnslimError("prune-gradual distils from the recipe's input torch model; none is available")
    data = ctx.calibration(config.samples, what="prune-gradual")
    return prune_gradual(model, teacher, data, config, ctx.output_kind, ctx.notes)


register_method("prune-gradual", GradualPruneConfig,
                "gradual magnitude pruning on a cubic schedule during distillation fine-tuning", stage="sparsity",
                trains=True)(_apply)
