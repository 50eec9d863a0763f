"""Second-order layer-wise primitives shared by GPTQ (quantization) and SparseGPT (pruning).

Both minimise || X W^T - X W'^T || one column of W at a time (Optimal Brain Surgeon): a column is
replaced (rounded, or zeroed), and its error is spread over the columns not yet processed through the
upper Cholesky factor of the inverse Hessian H = 2/n X^T X, with lazy updates in blocks of columns.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import NnslimError


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


def dead_columns(h: torch.Tensor, w: torch.Tensor) -> None:
    """Inputs that were always zero: give them unit curvature and zero weight (in place)."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0


def inverse_factor(h: torch.Tensor, damp: float, layer: str = "") -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; consumes h (used as scratch)."""
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    try:
        chol = torch.linalg.cholesky(h)
        del h
        inv = torch.cholesky_inverse(chol)
        del chol
        return torch.linalg.cholesky(inv, upper=True)
    except torch.linalg.LinAlgError:
        raise NnslimError(f"the Hessian of layer {layer or '?'} is not positive definite even with damp={damp}; "
                          "raise damp (e.g. 0.1) or give more calibration samples") from None


def obs_sweep(w: torch.Tensor, hinv: torch.Tensor, block_size: int,
              column: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Process the columns of w [N, K] (float, changed in place) left to right.

    column(j, col, w_block, hinv_block) returns the replacement of column j (global index); w_block
    is the current block [N, B] (columns from the block start, already error-updated) and hinv_block
    its [B, B] inverse-Hessian factor, so a method may decide per block (e.g. SparseGPT's masks).
    Returns w with every column replaced.
    """
    k = w.shape[1]
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            new = column(i1 + i, col, w1, hinv1)
            err = (col - new) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            w1[:, i] = new
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def refit_weight(w: torch.Tensor, h_kk: torch.Tensor, c_k: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Least-squares weight for reduced inputs X_k that best reproduces X W^T:
    W_k'^T = (X_k^T X_k + ridge)^-1 X_k^T X W^T, from h_kk = X_k^T X_k and c_k = X_k^T X (any common scale).
    With X_k a column subset of X this is W_k^T + H_kk^-1 H_kr W_r^T. Returns [out, k]."""
    h = h_kk.float().clone()
    h.diagonal().add_(damp * h.diagonal().mean().clamp(min=1e-12))
    return torch.linalg.solve(h, c_k.float() @ w.detach().float().t()).t().to(w.dtype)


class HessianObserver:
    """The observe() of a layer-wise algorithm that needs each target's input Hessian (GPTQ, SparseGPT)."""

    def __init__(self):
        self.hessians: dict[str, HessianAccumulator] = {}

    def observe(self, name: str, module, x: torch.Tensor) -> None:
        self.hessians.setdefault(name, HessianAccumulator(module.in_features, x.device)).add(x)

    def take(self, name: str) -> torch.Tensor:
        """The Hessian of `name`, handed over (the accumulator is dropped to free its memory)."""
        return self.hessians.pop(name).h
