"""GPTQ (Frantar et al. 2022): quantize a Linear's weight column by column, spreading each column's
rounding error over the not-yet-quantized columns through the inverse Hessian of the layer inputs
(the OBS sweep in graph/hessian.py, shared with SparseGPT).

Dampening adds `damp` * mean(diag H) to the diagonal; act-order quantizes columns by decreasing
diag(H); blocked lazy updates of `block_size` columns. With act-order the group scales are fixed up
front from the original weight ("static groups"), so the stored format stays the plain grouped one
(no column permutation to carry).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...graph.hessian import (HessianAccumulator, HessianObserver, dead_columns, inverse_factor, obs_sweep,
                              permute_rows_, permute_symmetric)
from ...graph.modules import replace_module
from ...recipe import register_method
from .driver import CalibratedConfig, calibrating, quantize_weight_only
from .formats import WeightSpec, group_qparams
from .modules import WeightOnlyLinear

__all__ = ["HessianAccumulator", "Int4GptqConfig", "gptq_quantize", "Gptq"]


@dataclass(frozen=True)
class Int4GptqConfig(CalibratedConfig):
    """int4 weights by GPTQ (layer-wise, Hessian-based error compensation)."""
    ranges = {**CalibratedConfig.ranges, "damp": (1e-9, 1.0), "block_size": (1, 1 << 16)}
    damp: float = 0.01  # fraction of mean diag(H) added to the diagonal
    act_order: bool = True
    block_size: int = 128  # lazy-update block


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: WeightSpec, group: int, damp: float = 0.01,
                  act_order: bool = True, block_size: int = 128, layer: str = "", inplace: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [N, K] uint8, scale [N, G], zero [N, G]) for weight w [N, K] given Hessian h [K, K]
    (h is used as scratch space when inplace=True). Codes are bytes (bits <= 8), not int32: for a 7B
    down_proj that is 43 MB instead of 172 MB, twice (the sweep's and the unpermuted copy)."""
    n, k = w.shape
    h = h if inplace else h.clone()
    dead = dead_columns(h)
    scale, zero = _static_groups(w, dead, spec, group)  # from the (dead-zeroed) original weight
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        h = permute_symmetric(h, perm)
    else:
        perm = torch.arange(k, device=w.device)
    h = [h]  # handed to inverse_factor as its only reference, so that it can free h (a [K, K] copy) early
    hinv = inverse_factor(h.pop(), damp, f"{layer} (GPTQ)")
    wt = torch.empty(k, n, dtype=torch.float32, device=w.device).copy_(w.detach().t())  # row j = column j of w
    wt[dead] = 0.0
    if act_order:
        permute_rows_(wt, perm)
    gidx = (perm // group).tolist()  # group of each permuted column
    scale_t, zero_t = scale.t().contiguous(), zero.t().float().contiguous()  # [G, N]: rows, not columns
    codes_t = torch.empty(k, n, dtype=torch.uint8, device=w.device)
    qmax = spec.qmax

    def quantize_column(j, col, _w1, _h1):
        s, z = scale_t[gidx[j]], zero_t[gidx[j]]
        q = torch.clamp(torch.round(col / s) + z, 0, qmax)
        codes_t[j] = q
        return (q - z) * s

    obs_sweep(wt, hinv, block_size, quantize_column)
    del wt, hinv
    return codes_t.t()[:, torch.argsort(perm)], scale, zero


def _static_groups(w: torch.Tensor, dead: torch.Tensor, spec: WeightSpec, group: int, rows: int = 1024):
    """group_qparams of w (float, dead inputs zeroed), a chunk of rows at a time (no float copy of w)."""
    parts = []
    for r in range(0, w.shape[0], rows):
        chunk = w[r:r + rows].detach().to(torch.float32, copy=True)
        chunk[:, dead] = 0.0
        parts.append(group_qparams(chunk, spec, group))
    return torch.cat([s for s, _ in parts]), torch.cat([z for _, z in parts])


class Gptq(HessianObserver):
    """The per-block step: each target's Hessian, then GPTQ into a packed layer."""

    def __init__(self, config: Int4GptqConfig, spec: WeightSpec):
        super().__init__()
        self.config, self.spec = config, spec

    def finish(self, block, modules, prefix):
        c = self.config
        for n in sorted(modules, key=lambda n: modules[n].in_features):  # the largest Hessian alone
            m = modules.pop(n)  # (the float layer is freed once replaced)
            codes, scale, zero = gptq_quantize(m.weight, self.take(n), self.spec, self.spec.group_for(m.in_features),
                                               c.damp, c.act_order, c.block_size, f"{prefix}.{n}" if prefix else n, inplace=True)
            replace_module(block, n, calibrating(WeightOnlyLinear.from_codes(m, codes, scale, zero, self.spec)))


@register_method("int4-gptq", Int4GptqConfig, "int4 weight-only by GPTQ, layer by layer with calibration text",
                 verb="quantize", frozen=True)
def _apply(model, config: Int4GptqConfig, ctx):
    data = ctx.calibration(config.samples, seq_len=config.seq_len, what="GPTQ")
    return quantize_weight_only(model, config, data, inplace=True, notes=ctx.notes,
                                algorithm=lambda spec: Gptq(config, spec), name="gptq", exports_later="export" in ctx.later_stages)
