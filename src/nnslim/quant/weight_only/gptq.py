"""GPTQ (Frantar et al. 2022): quantize a Linear's weight column by column, spreading each column's
rounding error over the not-yet-quantized columns through the inverse Hessian of the layer inputs.

Hessian H = 2/n sum x x^T from calibration inputs; dampening adds `damp` * mean(diag H) to the
diagonal; act-order quantizes columns by decreasing diag(H); blocked lazy updates of `block_size`
columns. With act-order the group scales are fixed up front from the original weight ("static
groups"), so the stored format stays the plain grouped one (no column permutation to carry).
"""
from __future__ import annotations

import torch

from ...errors import NnslimError
from .formats import WeightSpec, group_qparams


class HessianAccumulator:
    """Running 2/n sum x x^T of a Linear's inputs (fp32, on the inputs' device)."""

    def __init__(self, in_features: int, device):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        self.h.mul_(self.n / (self.n + m))
        self.n += m
        self.h.addmm_(x.t(), x, alpha=2.0 / self.n)  # no [K, K] temporary


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: WeightSpec, group: int, damp: float = 0.01,
                  act_order: bool = True, block_size: int = 128, layer: str = "", inplace: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [N, K] int32, scale [N, G], zero [N, G]) for weight w [N, K] given Hessian h [K, K]
    (h is used as scratch space when inplace=True)."""
    w = w.detach().float().clone()
    n, k = w.shape
    h = h if inplace else h.clone()  # peak memory matters for 11008-wide layers: few [K, K] copies
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale, zero = group_qparams(w, spec, group)  # static groups, from the (dead-zeroed) original weight
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h.index_select(0, perm).index_select(1, perm)
    else:
        perm = torch.arange(k, device=w.device)
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    try:
        chol = torch.linalg.cholesky(h)
        del h
        inv = torch.cholesky_inverse(chol)
        del chol
        hinv = torch.linalg.cholesky(inv, upper=True)
        del inv
    except torch.linalg.LinAlgError:
        raise NnslimError(f"GPTQ: the Hessian of layer {layer or '?'} is not positive definite even with "
                          f"damp={damp}; raise damp (e.g. 0.1) or give more calibration samples") from None
    gidx = (perm // group)  # group of each permuted column
    s_col = scale[:, gidx]  # [N, K] in permuted order
    z_col = zero[:, gidx].float()
    codes = torch.zeros(n, k, dtype=torch.int32, device=w.device)
    qmax = spec.qmax
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            s, z = s_col[:, i1 + i], z_col[:, i1 + i]
            q = torch.clamp(torch.round(col / s) + z, 0, qmax)
            codes[:, i1 + i] = q.to(torch.int32)
            err = (col - (q - z) * s) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    return codes[:, inv], scale, zero
