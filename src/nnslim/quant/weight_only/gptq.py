"""GPTQ (Frantar et al. 2022): quantize a Linear's weight column by column, spreading each column's
rounding error over the not-yet-quantized columns through the inverse Hessian of the layer inputs
(the OBS sweep in graph/hessian.py, shared with SparseGPT).

Dampening adds `damp` * mean(diag H) to the diagonal; act-order quantizes columns by decreasing
diag(H); blocked lazy updates of `block_size` columns. With act-order the group scales are fixed up
front from the original weight ("static groups"), so the stored format stays the plain grouped one
(no column permutation to carry).
"""
from __future__ import annotations

import torch

from ...graph.hessian import HessianAccumulator, dead_columns, inverse_factor, obs_sweep
from .formats import WeightSpec, group_qparams

__all__ = ["HessianAccumulator", "gptq_quantize"]


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: WeightSpec, group: int, damp: float = 0.01,
                  act_order: bool = True, block_size: int = 128, layer: str = "", inplace: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [N, K] int32, scale [N, G], zero [N, G]) for weight w [N, K] given Hessian h [K, K]
    (h is used as scratch space when inplace=True)."""
    w = w.detach().float().clone()
    n, k = w.shape
    h = h if inplace else h.clone()
    dead_columns(h, w)
    scale, zero = group_qparams(w, spec, group)  # static groups, from the (dead-zeroed) original weight
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h.index_select(0, perm).index_select(1, perm)
    else:
        perm = torch.arange(k, device=w.device)
    hinv = inverse_factor(h, damp, f"{layer} (GPTQ)")
    gidx = perm // group  # group of each permuted column
    codes = torch.zeros(n, k, dtype=torch.int32, device=w.device)
    qmax = spec.qmax

    def quantize_column(j, col, _w1, _h1):
        s, z = scale[:, gidx[j]], zero[:, gidx[j]].float()
        q = torch.clamp(torch.round(col / s) + z, 0, qmax)
        codes[:, j] = q.to(torch.int32)
        return (q - z) * s

    obs_sweep(w, hinv, block_size, quantize_column)
    return codes[:, torch.argsort(perm)], scale, zero
