"""Distillation losses: logit KL with temperature, embedding cosine, MSE; masked over padding."""
from __future__ import annotations

import torch
from torch.nn import functional as F

LOSSES = ("auto", "kl", "cosine", "mse")


def _rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[..., C] -> [rows, C], dropping padded positions when mask matches t's leading dims."""
    if mask is not None and t.dim() == mask.dim() + 1 and t.shape[:-1] == mask.shape:
        return t[mask.bool()]
    return t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t[None]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0,
            mask: torch.Tensor | None = None, variance: float | None = None) -> torch.Tensor:
    """variance: the teacher output variance MSE is normalised by (measured once, so the loss of a batch
    does not depend on which samples share it: data-parallel shards then average to the same gradient)."""
    s, t = _rows(student.float(), mask), _rows(teacher.float(), mask)
    if kind == "kl":
        tau = temperature
        return F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                        reduction="batchmean") * tau * tau
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    return F.mse_loss(s, t) / (t.var().clamp(min=1e-8) if variance is None else max(variance, 1e-8))
