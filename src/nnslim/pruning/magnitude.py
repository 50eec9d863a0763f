"""Magnitude pruning: drop the smallest |W| per layer, with one global threshold, or N:M (2:4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..recipe import register_method
from .masks import magnitude_masks
from .oneshot import PruneConfig, prune_oneshot


@dataclass(frozen=True)
class MagnitudePruneConfig(PruneConfig):
    """Unstructured (or N:M) magnitude pruning."""
    scope: Literal["layer", "global"] = "layer"  # global: one threshold across all target layers


@dataclass(frozen=True)
class TwoFourPruneConfig(PruneConfig):
    """2:4 semi-structured magnitude pruning."""
    sparsity: ClassVar[float] = 0.5
    pattern: ClassVar[str] = "2:4"


def magnitude_prune(model, config: PruneConfig, inplace: bool = False, notes=None):
    """A copy of `model` (or the model itself if inplace) with the smallest weights zeroed."""
    return prune_oneshot(model, config, inplace=inplace, notes=notes, masks=lambda targets: magnitude_masks(
        {n: m.weight for n, m in targets.items()}, config.sparsity, config.nm, config.scope))


def _apply(model, config: PruneConfig, ctx):
    return magnitude_prune(model, config, inplace=True, notes=ctx.notes)


register_method("prune-magnitude", MagnitudePruneConfig, "unstructured magnitude pruning (per layer or global)",
                verb="prune")(_apply)
register_method("prune-2of4", TwoFourPruneConfig, "2:4 semi-structured magnitude pruning", verb="prune")(_apply)
