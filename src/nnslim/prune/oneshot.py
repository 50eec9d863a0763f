"""One-shot pruning of Linear layers: magnitude, Wanda (Sun et al. 2023) and SparseGPT (Frantar &
Alistarh 2023), unstructured or N:M (2:4), layer by layer with calibration text for Wanda/SparseGPT.

magnitude  drop the smallest |W| (per layer, or `scope: global` across all target layers)
wanda      drop the smallest |W_ij| * ||X_j||_2 in each output row
sparsegpt  OBS sweep (graph/hessian.py, shared with GPTQ): choose the mask per block of columns by
           w^2 / [H^-1]_jj^2 and spread each pruned weight's error over the remaining columns
The result is an ordinary model with zeros in the pruned weights (same shapes).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import NnslimError
from ..graph.hessian import HessianAccumulator, dead_columns, inverse_factor, obs_sweep
from ..graph.layerwise import block_targets, feed_block, find_blocks, run_layerwise
from ..graph.scope import select_linears
from ..recipe import StepConfig, register_method
from .masks import check_nm, layer_mask, magnitude_masks, nm_mask, parse_pattern, row_mask

ALGORITHMS = ("magnitude", "wanda", "sparsegpt")
CALIBRATION_OPTIONS = ("samples", "seq_len", "damp", "block_size", "device")  # what magnitude pruning never reads


@dataclass(frozen=True)
class PruneConfig(StepConfig):
    """Zero out a fraction of every Linear's weights."""
    sparsity: float = 0.5  # fraction removed (unstructured); N:M fixes it at 1 - N/M
    pattern: str = "unstructured"  # unstructured | N:M (e.g. 2:4)
    algorithm: str = "magnitude"  # magnitude | wanda | sparsegpt
    scope: str = "layer"  # magnitude only: layer | global
    ignore: tuple[str, ...] = ()
    prune_head: bool = False
    samples: int = 128
    seq_len: int = 512
    damp: float = 0.01
    block_size: int = 128
    device: str = "auto"
    pack_2of4: bool = False  # 2:4 only: Linears become SemiSparseLinear (cuSPARSELt/CUTLASS kernels on CUDA)

    def __post_init__(self):
        if self.pack_2of4 and self.nm != (2, 4):
            raise NnslimError(f"pack_2of4=True needs pattern='2:4', got pattern={self.pattern!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise NnslimError(f"sparsity={self.sparsity} is not allowed; allowed: 0 <= sparsity < 1")
        parse_pattern(self.pattern)
        if self.algorithm not in ALGORITHMS:
            raise NnslimError(f"algorithm={self.algorithm!r} is not allowed; allowed: {', '.join(ALGORITHMS)}")
        if self.scope not in ("layer", "global"):
            raise NnslimError(f"scope={self.scope!r} is not allowed; allowed: layer, global")
        if self.scope == "global" and self.algorithm != "magnitude":
            raise NnslimError("scope='global' is for algorithm='magnitude' only")
        if not 1 <= self.samples <= 100_000 or self.seq_len < 16 or not 0 < self.damp < 1:
            raise NnslimError("samples must be 1..100000, seq_len >= 16 and 0 < damp < 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise NnslimError(f"device={self.device!r} is not allowed; allowed: auto, cpu, cuda")

    @property
    def nm(self):
        return parse_pattern(self.pattern)


@dataclass(frozen=True)
class MagnitudePruneConfig(PruneConfig):
    """Unstructured magnitude pruning."""
    fixed = ("algorithm", *CALIBRATION_OPTIONS)


@dataclass(frozen=True)
class TwoFourPruneConfig(PruneConfig):
    """2:4 semi-structured magnitude pruning."""
    fixed = ("pattern", "sparsity", "algorithm", "scope", *CALIBRATION_OPTIONS)
    pattern: str = "2:4"


@dataclass(frozen=True)
class WandaConfig(PruneConfig):
    """Wanda: |W| x input-norm scores, per output row; needs calibration text."""
    fixed = ("algorithm", "scope", "damp", "block_size")
    algorithm: str = "wanda"


@dataclass(frozen=True)
class SparseGptConfig(PruneConfig):
    """SparseGPT: Hessian-based mask choice and weight reconstruction; needs calibration text."""
    fixed = ("algorithm", "scope")
    algorithm: str = "sparsegpt"


def _mask(scores: torch.Tensor, config: PruneConfig) -> torch.Tensor:
    nm = config.nm
    if nm is not None:
        return nm_mask(scores, *nm)
    return row_mask(scores, config.sparsity) if config.algorithm == "wanda" else layer_mask(scores, config.sparsity)


def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, config: PruneConfig, layer: str = "") -> torch.Tensor:
    """The pruned (and reconstructed) weight; h is consumed."""
    w = w.detach().float().clone()
    dead_columns(h, w)
    hinv = inverse_factor(h, config.damp, f"{layer} (SparseGPT)")
    nm = config.nm
    state = {"mask": None, "start": -1}

    def prune_column(j, col, w1, h1):
        i = j % config.block_size
        d = torch.diag(h1)
        if nm is None and i == 0:  # unstructured: choose this block's mask from the updated weights
            state["mask"] = layer_mask((w1 ** 2) / d[None, :] ** 2, config.sparsity)
        elif nm is not None and i % nm[1] == 0:
            state["mask"] = nm_mask((w1[:, i:i + nm[1]] ** 2) / d[None, i:i + nm[1]] ** 2, *nm)
            state["start"] = i
        keep = state["mask"][:, i] if nm is None else state["mask"][:, i - state["start"]]
        return col * keep

    if nm is not None and config.block_size % nm[1]:
        raise NnslimError(f"block_size={config.block_size} must be a multiple of M={nm[1]} for N:M SparseGPT")
    return obs_sweep(w, hinv, config.block_size, prune_column)


def _targets(model: nn.Module, config: PruneConfig) -> dict[str, nn.Linear]:
    layers = select_linears(model, config.ignore, config.prune_head, "prune")
    if config.nm is not None:
        for n, m in layers.items():
            check_nm(m.in_features, config.nm, n)
    return layers


def _block_process(config: PruneConfig, names: set[str]):
    def process(index, name, block, inputs, kwargs):
        mods = block_targets(block, name, names)
        stats: dict[str, object] = {}

        def on_input(n, mod, x):
            x = x.reshape(-1, x.shape[-1]).float()
            if config.algorithm == "sparsegpt":
                stats.setdefault(n, HessianAccumulator(mod.in_features, x.device)).add(x)
            else:  # wanda: running sum of squares per input channel
                stats[n] = stats.get(n, 0) + x.pow(2).sum(0)

        feed_block(block, mods, inputs, kwargs, on_input)
        with torch.no_grad():
            for n, m in mods.items():
                if config.algorithm == "sparsegpt":
                    new = sparsegpt_prune(m.weight, stats.pop(n).h, config, f"{name}.{n}")
                else:
                    scores = m.weight.detach().abs().float() * stats.pop(n).sqrt()[None, :]
                    new = m.weight.detach().float() * _mask(scores, config)
                m.weight.copy_(new.to(m.weight.dtype))
    return process


def prune_oneshot(model: nn.Module, config: PruneConfig, calibration=None, inplace: bool = False,
                  notes: list[str] | None = None) -> nn.Module:
    """A copy of `model` (or the model itself if inplace) with pruned Linear weights."""
    from ..quant.weight_only.methods import _calibration_device, _check_samples

    if not isinstance(model, nn.Module):
        raise NnslimError(f"pruning needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    targets = _targets(model, config)
    if config.algorithm == "magnitude":
        masks = magnitude_masks({n: m.weight for n, m in targets.items()}, config.sparsity, config.nm, config.scope)
        with torch.no_grad():
            for n, m in targets.items():
                m.weight.mul_(masks[n].to(m.weight.dtype))
    else:
        samples = list(calibration) if calibration is not None else []
        _check_samples(samples)
        prefix, _ = find_blocks(model)
        inside = {n for n in targets if n.startswith(prefix + ".")}
        if len(inside) != len(targets):
            raise NnslimError(f"{config.algorithm} prunes layers inside the repeated blocks ({prefix}); "
                              f"put these in `ignore` or use magnitude: {sorted(set(targets) - inside)[:5]}")
        del targets
        run_layerwise(model, samples, _block_process(config, inside), _calibration_device(config),
                      desc=f"{config.algorithm} {config.pattern}")
        targets = {n: model.get_submodule(n) for n in inside}
    zeros = sum(int((m.weight == 0).sum()) for m in targets.values())
    total = sum(m.weight.numel() for m in targets.values())
    notes.append(f"{config.algorithm} {config.pattern} pruning: {len(targets)} layers, "
                 f"{zeros / total:.1%} of their weights are zero")
    if config.pack_2of4:
        from .sparse24 import semi_sparse

        semi_sparse(model, notes)
    return model


def _apply(model, config: PruneConfig, ctx):
    from ..quant.weight_only.methods import calibration_for

    data = None if config.algorithm == "magnitude" else calibration_for(config, ctx)
    return prune_oneshot(model, config, data, notes=ctx.notes)


for _name, _cls, _desc in [
        ("prune-magnitude", MagnitudePruneConfig, "unstructured magnitude pruning (per layer or global)"),
        ("prune-2of4", TwoFourPruneConfig, "2:4 semi-structured magnitude pruning"),
        ("wanda", WandaConfig, "Wanda one-shot pruning (|W| x input norm), unstructured or N:M"),
        ("sparsegpt", SparseGptConfig, "SparseGPT one-shot pruning with weight reconstruction, unstructured or N:M")]:
    register_method(_name, _cls, _desc)(_apply)
