"""One-shot pruning of Linear layers: the configs every one-shot method shares and the one driver.

Magnitude pruning (magnitude.py) masks every target directly. A calibrated method (Wanda, SparseGPT:
one file each) hands the driver a BlockAlgorithm that it runs layer by layer with calibration text
(graph/layerwise.py). The result is an ordinary model with zeros in the pruned weights (same shapes),
or SemiSparseLinear layers with pack_2of4.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
from torch import nn

from ..context import resolve_devices
from ..errors import NnslimError
from ..graph.layerwise import BlockAlgorithm, calibrate_layerwise, check_layerwise_samples, split_by_blocks
from ..graph.scope import select_linears
from ..graph.streaming import each_layer, source_of
from ..recipe import StepConfig
from .masks import attach_mask, layer_mask, nm_mask, parse_pattern, row_mask


@dataclass(frozen=True)
class PruneConfig(StepConfig):
    """What every one-shot pruning method reads: how much, in which pattern, of which Linears."""
    ranges = {"sparsity": (0.0, 0.999999)}
    scope: ClassVar[str] = "layer"
    sparsity: float = 0.5  # fraction removed (unstructured); N:M fixes it at 1 - N/M
    pattern: str = "unstructured"  # unstructured | N:M (e.g. 2:4)
    ignore: tuple[str, ...] = ()
    prune_head: bool = False
    pack_2of4: bool = False  # 2:4 only: Linears become SemiSparseLinear (cuSPARSELt/CUTLASS kernels on CUDA)

    def __post_init__(self):
        parse_pattern(self.pattern)
        if self.pack_2of4 and self.nm != (2, 4):
            raise NnslimError(f"pack_2of4=True needs pattern='2:4', got pattern={self.pattern!r}")

    @property
    def nm(self):
        return parse_pattern(self.pattern)


@dataclass(frozen=True)
class LayerwisePruneConfig(PruneConfig):
    """One-shot pruning chosen from calibration text, layer by layer."""
    ranges = {**PruneConfig.ranges, "samples": (1, 100_000), "seq_len": (16, 1 << 20), "gpus": (0, 1024)}
    samples: int = 128
    seq_len: int = 512
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: int = 1  # GPUs the layer-wise calibration is spread over (0: all present); see graph/spread.py


def keep_mask(scores: torch.Tensor, config: PruneConfig, per_row: bool = False) -> torch.Tensor:
    """Keep mask of one layer from its scores: N:M, or the config's sparsity per row / per layer."""
    if config.nm is not None:
        return nm_mask(scores, *config.nm)
    return row_mask(scores, config.sparsity) if per_row else layer_mask(scores, config.sparsity)


def prune_targets(model: nn.Module, config: PruneConfig, notes: list[str]) -> dict[str, nn.Linear]:
    """The layers to prune; with an N:M pattern, a layer whose in_features M does not divide stays dense (noted),
    as the sparse kernels would skip it; none left is an error."""
    layers = select_linears(model, config.ignore, config.prune_head, "prune")
    if config.nm is not None:
        odd = [n for n, m in layers.items() if m.in_features % config.nm[1]]
        if odd and len(odd) == len(layers):
            raise NnslimError(f"pattern {config.pattern} needs in_features divisible by {config.nm[1]}; no layer has "
                              f"that (e.g. {odd[0]}: {layers[odd[0]].in_features})")
        if odd:
            notes.append(f"pattern {config.pattern}: {len(odd)} of {len(layers)} layers stay dense (in_features not "
                         f"divisible by {config.nm[1]}): {', '.join(odd[:5])}" + (" ..." if len(odd) > 5 else ""))
        layers = {n: m for n, m in layers.items() if n not in odd}
    return layers


def prune_oneshot(model: nn.Module, config: PruneConfig, calibration=None, inplace: bool = False,
                  notes: list[str] | None = None, algorithm: Callable[[], BlockAlgorithm] | None = None,
                  masks: Callable[[dict[str, nn.Linear]], dict[str, torch.Tensor]] | None = None,
                  name: str = "magnitude") -> nn.Module:
    """A copy of `model` (or the model itself if inplace) with pruned Linear weights: by `masks(targets)`
    (keep masks computed from the weights alone) or layer by layer by `algorithm()`.

    A model streamed from its shards (nnslim.load(..., stream=True)) is pruned one layer (magnitude) or one
    decoder block (calibrated methods) at a time; its zeros are the result (no mask parametrizations: a
    streamed model is not trained further)."""
    if not isinstance(model, nn.Module):
        raise NnslimError(f"pruning needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    source = source_of(model)
    if source is not None and config.pack_2of4:
        raise NnslimError("pack_2of4=True is not available for a streamed model yet; prune it streamed, save it, "
                          "and load the pruned model whole to pack it")
    targets = prune_targets(model, config, notes)
    count = _Count(attach=source is None and not config.pack_2of4)  # a streamed model is not trained further
    if algorithm is None:
        if source is not None and getattr(config, "scope", "layer") == "global":
            raise NnslimError("scope='global' ranks every weight of the model at once; a streamed model is pruned "
                              "one layer at a time: use scope='layer' or load the model whole")
        keep = masks(targets) if source is None else None  # (global scope: every layer's weights at once)
        with torch.no_grad():
            for n, m in each_layer(model, targets):  # (streamed: read from the shards one at a time)
                mask = keep[n] if keep is not None else masks({n: m})[n]
                m.weight.mul_(mask.to(m.weight.dtype))
                count.add([m], mask)
    else:
        device = resolve_devices(config.device, config.gpus)
        samples = list(calibration) if calibration is not None else []
        check_layerwise_samples(samples, name)
        inside, outside = split_by_blocks(model, targets)
        del targets
        idle: list[str] = []

        def unseen(block, mods):  # layers no calibration token reached: by magnitude
            for n, m in mods.items():
                mask = keep_mask(m.weight.detach().abs().float(), config)
                m.weight.mul_(mask.to(m.weight.dtype))
                count.add([m], mask)
            idle.extend(mods)

        used = calibrate_layerwise(model, samples, inside, lambda: _Counted(algorithm(), count), device,
                                   f"{name} {config.pattern}", unseen, notes)
        if idle:
            notes.append(f"{len(idle)} layers received no calibration input and were pruned by magnitude: "
                         f"{', '.join(idle[:5])}")
        if len(used) > 1:
            notes.append(f"{name}: each block's calibration spread over {len(used)} GPUs")
        if outside:  # a classifier's dense layers, a pooler: by magnitude, as GPTQ falls back to RTN there
            with torch.no_grad():
                for n, m in each_layer(model, outside):
                    mask = keep_mask(m.weight.detach().abs().float(), config)
                    m.weight.mul_(mask.to(m.weight.dtype))
                    count.add([m], mask)
            notes.append(f"{len(outside)} linear layers outside the repeated blocks pruned by magnitude: "
                         f"{', '.join(sorted(outside)[:5])}")
        targets = [*inside, *outside]
    if source is not None:  # the float rest (norms, embeddings, head) in memory, or all on disk with offload
        source.settle(model)
    notes.append(f"{name} {config.pattern} pruning: {len(targets)} layers, {count.zeros / max(count.total, 1):.1%} of "
                 "their weights are zero")
    if config.pack_2of4:
        from .sparse24 import semi_sparse

        semi_sparse(model, notes)
    return model


class _Count:
    """Zeros and weights of the pruned layers, counted as each is finished; with attach, each gets its mask
    (any later training keeps the pruned weights at zero)."""

    def __init__(self, attach: bool):
        self.attach, self.zeros, self.total = attach, 0, 0
        self.lock = threading.Lock()  # (spread calibration finishes layers on several devices at once)

    def add(self, layers, mask: torch.Tensor | None = None) -> None:
        """`mask`: the keep mask of a single layer (default: its nonzero weights)."""
        with self.lock:
            for m in layers:
                self.zeros += int((m.weight == 0).sum())
                self.total += m.weight.numel()
                if self.attach:
                    attach_mask(m, mask if mask is not None else m.weight.detach() != 0)


class _Counted:
    """A calibrated method's BlockAlgorithm whose finished layers are counted (and masked)."""

    def __init__(self, inner: BlockAlgorithm, count: _Count):
        self.inner, self.count = inner, count

    def observe(self, name, module, x) -> None:
        self.inner.observe(name, module, x)

    def merge(self, others: list["_Counted"]) -> None:
        self.inner.merge([o.inner for o in others])

    def subset(self, names: list[str], device) -> "_Counted":
        return _Counted(self.inner.subset(names, device), self.count)

    def finish(self, block, modules, prefix) -> None:
        self.inner.finish(block, modules, prefix)
        self.count.add(modules.values())
