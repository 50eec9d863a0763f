"""Wanda (Sun et al. 2023): drop the smallest |W_ij| * ||X_j||_2 in each output row (or N:M), layer by
layer with calibration text; no weight update."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..recipe import register_method
from .oneshot import LayerwisePruneConfig, keep_mask, prune_oneshot


@dataclass(frozen=True)
class WandaConfig(LayerwisePruneConfig):
    """Wanda: |W| x input-norm scores, per output row; needs calibration text."""


class Wanda:
    """The per-block step: running sum of squares per input channel, then the masks."""

    def __init__(self, config: WandaConfig):
        self.config = config
        self.sq: dict[str, torch.Tensor] = {}

    def observe(self, name, module, x):
        x = x.reshape(-1, x.shape[-1]).float()
        self.sq[name] = self.sq.get(name, 0) + x.pow(2).sum(0)

    def merge(self, others: list["Wanda"]) -> None:
        for other in others:
            for n, sq in other.sq.items():
                self.sq[n] += sq.to(self.sq[n].device)

    def subset(self, names: list[str], device) -> "Wanda":
        part = Wanda(self.config)
        part.sq = {n: self.sq.pop(n).to(device) for n in names}
        return part

    def finish(self, block, modules, prefix):
        for n, m in modules.items():
            scores = m.weight.detach().abs().float() * self.sq.pop(n).sqrt()[None, :]
            m.weight.copy_((m.weight.detach().float() * keep_mask(scores, self.config, per_row=True)).to(m.weight.dtype))


@register_method("wanda", WandaConfig, "Wanda one-shot pruning (|W| x input norm), unstructured or N:M", verb="prune")
def _apply(model, config: WandaConfig, ctx):
    data = ctx.calibration(config.samples, seq_len=config.seq_len, what="Wanda")
    return prune_oneshot(model, config, data, inplace=True, notes=ctx.notes, algorithm=lambda: Wanda(config),
                         name="wanda")
