"""SparseGPT (Frantar & Alistarh 2023): the OBS sweep of graph/hessian.py (shared with GPTQ) chooses the
mask per block of columns by w^2 / [H^-1]_jj^2 and spreads each pruned weight's error over the
remaining columns; unstructured or N:M, layer by layer with calibration text."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import NnslimError
from ..graph.hessian import HessianObserver, dead_columns, inverse_factor, obs_sweep
from ..recipe import register_method
from .masks import layer_mask, nm_mask
from .oneshot import LayerwisePruneConfig, prune_oneshot


@dataclass(frozen=True)
class SparseGptConfig(LayerwisePruneConfig):
    """SparseGPT: Hessian-based mask choice and weight reconstruction; needs calibration text."""
    ranges = {**LayerwisePruneConfig.ranges, "damp": (1e-9, 1.0), "block_size": (1, 1 << 16)}
    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self):
        super().__post_init__()
        nm = self.nm
        if nm is not None and self.block_size % nm[1]:
            raise NnslimError(f"block_size={self.block_size} must be a multiple of M={nm[1]} for N:M SparseGPT")


def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, config: SparseGptConfig, layer: str = "") -> torch.Tensor:
    """The pruned (and reconstructed) weight; h is consumed."""
    n, k = w.shape
    wt = torch.empty(k, n, dtype=torch.float32, device=w.device).copy_(w.detach().t())  # row j = column j of w
    dead_columns(h, wt.t())
    h = [h]  # handed to inverse_factor as its only reference, so that it can free h early
    hinv = inverse_factor(h.pop(), config.damp, f"{layer} (SparseGPT)")
    nm = config.nm
    state = {"mask": None, "start": -1}

    def prune_column(j, col, w1, h1):  # w1: the block [B, N], row i = column j
        i = j % config.block_size
        d = torch.diag(h1)
        if nm is None and i == 0:  # unstructured: choose this block's mask from the updated weights
            state["mask"] = layer_mask((w1 ** 2) / d[:, None] ** 2, config.sparsity)
        elif nm is not None and i % nm[1] == 0:
            state["mask"] = nm_mask(((w1[i:i + nm[1]] ** 2) / d[i:i + nm[1], None] ** 2).t(), *nm).t()
            state["start"] = i
        return col * state["mask"][i if nm is None else i - state["start"]]

    return obs_sweep(wt, hinv, config.block_size, prune_column).t()


class SparseGpt(HessianObserver):
    def __init__(self, config: SparseGptConfig):
        super().__init__()
        self.config = config

    def finish(self, block, modules, prefix):
        for n, m in modules.items():
            m.weight.copy_(sparsegpt_prune(m.weight, self.take(n), self.config, f"{prefix}.{n}").to(m.weight.dtype))


@register_method("sparsegpt", SparseGptConfig,
                 "SparseGPT one-shot pruning with weight reconstruction, unstructured or N:M", verb="prune")
def _apply(model, config: SparseGptConfig, ctx):
    data = ctx.calibration(config.samples, seq_len=config.seq_len, what="SparseGPT")
    return prune_oneshot(model, config, data, inplace=True, notes=ctx.notes, algorithm=lambda: SparseGpt(config),
                         name="sparsegpt")
