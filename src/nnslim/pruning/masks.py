"""Sparsity patterns: which weights to drop given a score per weight (higher = keep)."""
from __future__ import annotations

import re

import torch

from ..errors import NnslimError


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for unstructured, (n, m) for "n:m" (keep n of every m consecutive inputs)."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise NnslimError(f"pattern={pattern!r} is not allowed; allowed: unstructured or N:M with 0 < N < M "
                          "(e.g. 2:4)")
    return int(match.group(1)), int(match.group(2))


def check_nm(in_features: int, nm: tuple[int, int], layer: str) -> None:
    if in_features % nm[1]:
        raise NnslimError(f"pattern {nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}; layer {layer} has "
                          f"{in_features}")


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask [N, K]: the n highest-scoring of every m consecutive input columns, per row."""
    rows, k = scores.shape
    groups = scores.reshape(rows, k // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(rows, k)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask dropping the `sparsity` fraction of lowest scores in each row (Wanda's per-output group)."""
    k = scores.shape[1]
    drop = int(round(k * sparsity))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        keep.scatter_(1, scores.topk(drop, dim=1, largest=False).indices, False)
    return keep


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask dropping the `sparsity` fraction of lowest scores of the whole layer."""
    drop = int(round(scores.numel() * sparsity))
    if not drop:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = scores.flatten().kthvalue(drop).values
    return scores > threshold


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, nm: tuple[int, int] | None = None,
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep masks by |w|: N:M per group, or unstructured per layer / with one global threshold."""
    if nm is not None:
        return {n: nm_mask(w.detach().abs().float().reshape(w.shape[0], -1), *nm).reshape(w.shape)
                for n, w in weights.items()}
    if scope == "global":
        allw = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
        drop = int(round(allw.numel() * sparsity))
        threshold = allw.kthvalue(drop).values if drop else torch.tensor(-1.0)
        return {n: w.detach().abs() > threshold.to(w.device) for n, w in weights.items()}
    return {n: layer_mask(w.detach().abs().float(), sparsity) for n, w in weights.items()}


class WeightMask(torch.nn.Module):
    """Parametrization weight -> weight * mask (a fixed 0/1 buffer): registered on a layer's weight, it
    keeps the pruned weights at zero through any later training step; the artifact gets the folded
    weight (graph.modules.strip_parametrizations)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def attach_mask(module: torch.nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Keep `module.<name>` masked from now on (a second call replaces the mask)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:
            if isinstance(p, WeightMask):
                p.mask = mask.detach().to(torch.bool).to(p.mask.device)
                return
    parametrize.register_parametrization(module, name, WeightMask(mask.to(getattr(module, name).device)))
