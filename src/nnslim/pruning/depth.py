"""Depth pruning: a shallower student made by keeping some of the repeated blocks (e.g. a 3-layer
student of a 6-layer encoder by keeping every other layer), recovered by distillation with a layer map
(distill's hidden_weight / attention_weight match student block i to teacher block map[i])."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import NnslimError
from ..graph.layers import keep_blocks
from ..graph.layerwise import find_blocks
from ..recipe import StepConfig, register_method
from .structured import PLAN_ATTR


@dataclass(frozen=True)
class DropLayersConfig(StepConfig):
    """Keep some of the repeated blocks: `keep` (indices), or every `every`-th block counting from the last."""
    ranges = {"every": (1, 1 << 20)}
    keep: tuple[int, ...] | None = None
    every: int = 2  # with keep=None: blocks i with (n - 1 - i) % every == 0 (the last block always stays)


def kept_blocks(n: int, config: DropLayersConfig) -> list[int]:
    if config.keep is not None:
        return list(config.keep)
    return [i for i in range(n) if (n - 1 - i) % config.every == 0]


def drop_layers(model, config: DropLayersConfig, notes: list[str] | None = None):
    prefix, blocks = find_blocks(model)
    keep = kept_blocks(len(blocks), config)
    if len(keep) == len(blocks):
        raise NnslimError(f"drop-layers keeps all {len(blocks)} blocks of {prefix!r}; give keep= or every >= 2")
    keep_blocks(model, prefix, keep)
    object.__setattr__(model, PLAN_ATTR, getattr(model, PLAN_ATTR, []) + [{"module": prefix, "role": "blocks",
                                                                            "keep": keep}])
    if notes is not None:
        notes.append(f"drop-layers: kept blocks {keep} of {len(blocks)} in {prefix}")
    return model


@register_method("drop-layers", DropLayersConfig, "keep some repeated blocks (a shallower student, e.g. every other "
                 "layer); recover it with distill (layer-mapped hidden / attention KD)", verb="prune", stage="structure")
def _apply(model, config: DropLayersConfig, ctx):
    return drop_layers(model, config, ctx.notes)
