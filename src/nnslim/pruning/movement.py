"""Movement pruning (Sanh et al. 2020), structured as JPQD does it: importance scores learned during
training from weight x gradient, a cubic sparsity schedule, and the result physically smaller.

`prune-movement` attaches the state; a later training step (`distill`, or the user's own loop on the
model nnslim.prune returns, then model.finish_training hooks) trains it:
- structured (default): one learned score per atom of every dependency-graph group (graph/dependency.py):
  whole FFN neurons, attention heads, conv channels. Every tensor of the group (e.g. an FFN neuron's row
  in the first Linear and its column in the second; a head's q/k/v rows and output columns) is masked
  by the same score, so the gradient of all of them moves it (dL/dS = sum over the group of dL/dW' * W).
- block (e.g. [32, 32]): also a score per weight block inside each Linear; those zeros stay as masks
  (sparse storage), they do not change shapes.
Masks are hard top-k of the scores (straight-through to the scores); the kept fraction follows the
cubic schedule from `warmup_start` to `warmup_end` (fractions of the training steps). When training
ends, groups' removed atoms are sliced out of every member layer (the plan is recorded, as structural
pruning does, so nnslim.load rebuilds the smaller architecture).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from ..graph.layers import apply_slice, handler_for
from ..graph.modules import strip_parametrizations
from ..graph.scope import check_scope, select_linears, split_mha
from ..recipe import StepConfig, register_method
from .masks import WeightMask, attach_mask
from .structured import (PLAN_ATTR, as_tensors, batched, dependency_graph, group_importance,
                         ignored_member, input_norms, keep_count)

SCORES_ATTR = "nnslim_movement"


@dataclass(frozen=True)
class MovementPruneConfig(StepConfig):
    """Learned (movement) pruning of whole neurons/heads/channels and, optionally, weight blocks."""
    ranges = {"sparsity": (0.0, 0.999999), "head_sparsity": (0.0, 0.999999), "block_sparsity": (0.0, 0.999999),
              "warmup_start": (0.0, 1.0), "warmup_end": (0.0, 1.0), "score_lr": (1e-6, 1e6), "samples": (1, 1 << 20)}
    sparsity: float = 0.5  # fraction of each channel group (FFN neurons, conv channels) removed at the end
    head_sparsity: float | None = None  # fraction of attention heads removed; None: same as sparsity
    structured: bool = True
    block: tuple[int, ...] | None = None  # e.g. [32, 32]: also movement over weight blocks of the Linears
    block_sparsity: float = 0.5
    warmup_start: float = 0.1  # sparsity 0 until this fraction of the training steps
    warmup_end: float = 0.6  # cubic rise to the target until this fraction, then held
    score_lr: float = 20.0  # the scores' learning rate, as a multiple of the training step's lr
    init: Literal["auto", "activation", "l2"] = "auto"  # where scores start: auto = activation with data, else l2
    samples: int = 256  # calibration samples for activation importance
    ignore: tuple[str, ...] = ()  # module names or regexes whose output channels / weights are kept
    seed: int = 0

    def __post_init__(self):
        if self.warmup_end <= self.warmup_start:
            raise NnslimError(f"warmup_start={self.warmup_start}, warmup_end={self.warmup_end} are not allowed; "
                              "allowed: warmup_start < warmup_end")
        if self.block is not None and (len(self.block) != 2 or min(self.block) < 1):
            raise NnslimError(f"block={list(self.block)} is not allowed; allowed: [rows, columns], both >= 1")
        if not self.structured and self.block is None:
            raise NnslimError("structured=false needs block=[rows, columns]: there would be nothing to prune")


def cubic(fraction_done: float, target: float, start: float, end: float) -> float:
    if fraction_done < start:
        return 0.0
    if fraction_done >= end:
        return target
    return target * (1 - (1 - (fraction_done - start) / (end - start)) ** 3)


def _topk_mask(scores: torch.Tensor, keep: int, chunks: int) -> torch.Tensor:
    """0/1 mask keeping the `keep` highest scores (equally from each chunk when there are chunks)."""
    n = scores.numel()
    with torch.no_grad():
        if chunks > 1 and n % chunks == 0:
            s = scores.reshape(chunks, -1)
            idx = s.topk(max(1, keep // chunks), dim=1).indices
            return torch.zeros_like(s).scatter_(1, idx, 1.0).reshape(-1)
        return torch.zeros_like(scores).scatter_(0, scores.topk(max(1, keep)).indices, 1.0)


class MovementScores(nn.Module):
    """The learned scores and the schedule; attached to the model being pruned while it trains."""

    def __init__(self, config: MovementPruneConfig):
        super().__init__()
        self.config = config
        self.scores = nn.ParameterList()
        self.kinds: list[str] = []  # heads | channels | block
        self.extra: list[dict] = []  # chunks, multiple (groups); layer name (blocks)
        self.register_buffer("fraction", torch.zeros(()))  # training progress, for the schedule
        self.graph = None
        self.groups: list = []

    def add(self, scores: torch.Tensor, kind: str, **extra) -> int:
        p = nn.Parameter(scores.float())
        p.nnslim_lr = self.config.score_lr  # the trainer's parameter group for scores (no decay)
        self.scores.append(p)
        self.kinds.append(kind)
        self.extra.append(extra)
        return len(self.scores) - 1

    def target(self, i: int) -> float:
        c = self.config
        final = {"heads": c.head_sparsity if c.head_sparsity is not None else c.sparsity,
                 "channels": c.sparsity, "block": c.block_sparsity}[self.kinds[i]]
        return cubic(float(self.fraction), final, c.warmup_start, c.warmup_end)

    def mask(self, i: int) -> torch.Tensor:
        """The hard mask of score vector i, straight-through to the scores."""
        s = self.scores[i]
        n = s.numel()
        ex = self.extra[i]
        keep = keep_count(n, self.target(i), _Shape(ex.get("multiple", 1)), 1) if self.kinds[i] != "block" \
            else max(1, n - int(math.floor(n * self.target(i) + 1e-9)))
        hard = _topk_mask(s.reshape(-1), keep, ex.get("chunks", 1)).reshape(s.shape)
        return hard + (s - s.detach())

    def training_step(self, step: int, total: int) -> None:
        self.fraction.fill_(step / max(1, total))

    def finish_training(self) -> None:
        finish(self)


class _Shape:
    """What keep_count needs of a group: its multiple (GroupNorm groups) and kind."""

    def __init__(self, multiple: int):
        self.multiple, self.kind = multiple, "channels"


class ScoreMask(nn.Module):
    """Parametrization of one tensor: multiply by the masks of the score vectors it belongs to, each
    expanded along its dim (position p of a group owns indices p*block..(p+1)*block-1)."""

    def __init__(self, bank: MovementScores, factors: list[tuple[int, int, torch.Tensor]]):
        super().__init__()
        object.__setattr__(self, "bank", bank)  # a reference, not a submodule: the model holds the bank
        self.factors = [(i, dim) for i, dim, _ in factors]
        for k, (_, _, index) in enumerate(factors):
            self.register_buffer(f"index{k}", index)  # atom of every index along dim (-1: not in the group)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        for k, (i, dim) in enumerate(self.factors):
            index = getattr(self, f"index{k}")
            if index.dim() == 2:  # block scores: the mask of each block, tiled over the weight
                m = self.bank.mask(i)
                m = m.repeat_interleave(index[0, 0].item(), 0).repeat_interleave(index[0, 1].item(), 1)
                w = w * m[: w.shape[0], : w.shape[1]].to(w.dtype)
                continue
            m = self.bank.mask(i)
            full = torch.cat([m, torch.ones(1, dtype=m.dtype, device=m.device)])[index]  # -1 -> the 1 at the end
            shape = [1] * w.dim()
            shape[dim] = -1
            w = w * full.reshape(shape).to(w.dtype)
        return w


def _owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(tensor) -> (module that owns it, attribute name), for parameters and parametrized tensors (those
    under parametrize.cached(), so the same object the layer handlers return)."""
    out = {}
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            out.setdefault(id(p), (mod, name))
        if "parametrizations" in mod._modules:
            for name in mod.parametrizations:
                out.setdefault(id(getattr(mod, name)), (mod, name))
    return out


def attach(model: nn.Module, config: MovementPruneConfig, example: dict, notes: list[str],
           calibration: list[dict] | None = None) -> MovementScores:
    """Put learned scores and their masks on `model`. With calibration data the scores start from
    activation importance (what one-shot structural pruning would remove); training moves them."""
    from torch.nn.utils import parametrize

    with parametrize.cached():  # weights under an earlier mask: one tensor object per weight while reading
        bank, factors, n_groups, n_blocks, how = _scores(model, config, example, calibration)
    for (_, attr), entries in factors.items():
        owner, name = entries[0]
        parametrize.register_parametrization(owner, name, ScoreMask(bank, entries[1:]))
    setattr(model, SCORES_ATTR, bank)
    notes.append(f"movement: learned scores for {n_groups} channel/head groups and {n_blocks} block-scored layers; "
                 f"target sparsity {config.sparsity} (heads {config.head_sparsity if config.head_sparsity is not None else config.sparsity}"
                 f"{f', blocks {config.block_sparsity}' if n_blocks else ''}), schedule {config.warmup_start}-"
                 f"{config.warmup_end} of training, scores start from {how} importance")
    return bank


def _scores(model, config, example, calibration):
    bank = MovementScores(config)
    factors: dict[tuple[int, str], list] = {}  # (id(module), attribute) -> [(score index, dim, index tensor)]
    check_scope(model, config.ignore)
    if config.structured:
        split_mha(model, config.ignore)  # nn.MultiheadAttention as called q/k/v/out Linears: its heads are scored
    owners = _owners(model)
    rng = np.random.default_rng(config.seed)
    n_groups, how = 0, "l2"
    if config.structured:
        graph, _ = dependency_graph(model, example)
        groups = [g for g in graph.groups() if not ignored_member(g, graph, config.ignore, model)]
        bank.graph, bank.groups = graph, groups
        how = config.init if config.init != "auto" else ("activation" if calibration else "l2")
        norms = {}
        if how == "activation":
            if not calibration:
                raise NnslimError("init='activation' needs calibration data (or a testbed); or use init='l2'")
            norms = input_norms(model, [as_tensors(b, model) for b in batched(calibration, 8)])
        for gi, grp in enumerate(groups):
            init = group_importance(graph, model, grp, how, rng, norms)
            init = torch.as_tensor(init / max(float(np.mean(init)), 1e-12), dtype=torch.float32)
            si = bank.add(init, grp.kind, chunks=grp.chunks, multiple=grp.multiple, group=gi)
            atom_at = {a: k for k, a in enumerate(grp.atoms)}
            for mi in grp.members:
                mem = graph.members[mi]
                mod = model.get_submodule(mem.module) if mem.module else model
                tensors = [(getattr(mod, mem.role.split(":")[1]), int(mem.role.split(":")[2]), 1)] \
                    if mem.role.startswith("param:") else handler_for(mod).weights(mod, mem.role)
                for w, dim, block in tensors:
                    index = torch.full((w.shape[dim],), -1, dtype=torch.long)
                    for atom in grp.atoms:
                        for pos in np.atleast_1d(grp.positions[atom].get(mi, [])).tolist():
                            index[pos * block:(pos + 1) * block] = atom_at[atom]
                    owner = owners[id(w)]
                    factors.setdefault((id(owner[0]), owner[1]), [owner]).append((si, dim, index))
        n_groups = len(groups)
    n_blocks = 0
    if config.block is not None:
        bh, bw = config.block
        for name, lin in select_linears(model, config.ignore, False, "prune").items():
            rows, cols = -(-lin.out_features // bh), -(-lin.in_features // bw)
            w = lin.weight.detach().float()
            padded = torch.nn.functional.pad(w, (0, cols * bw - w.shape[1], 0, rows * bh - w.shape[0]))
            norms = padded.reshape(rows, bh, cols, bw).pow(2).sum((1, 3)).sqrt()
            si = bank.add(norms / norms.mean().clamp(min=1e-12), "block", layer=name)
            factors.setdefault((id(lin), "weight"), [(lin, "weight")]).append((si, 0, torch.tensor([[bh, bw]])))
            n_blocks += 1
    if not factors:
        raise NnslimError("prune-movement found nothing to prune (every group is frozen or ignored); "
                          "structural notes of prune-structured say why channels are kept")
    return bank, factors, n_groups, n_blocks, how


def finish(bank: MovementScores) -> None:
    """Freeze the final masks: fold them into the weights, slice out what whole groups lost, keep the
    zeros of block masks as fixed masks. The model is found as the bank's owner."""
    model = bank.__dict__.get("owner")
    if model is None:
        return
    bank.fraction.fill_(1.0)
    removed: set[int] = set()
    with torch.no_grad():
        for i, kind in enumerate(bank.kinds):
            if kind == "block":
                continue
            grp = bank.groups[bank.extra[i]["group"]]
            hard = bank.mask(i).detach()
            removed.update(a for a, keep in zip(grp.atoms, hard.tolist()) if keep < 0.5)
    fixed = [m for m in model.modules() if "parametrizations" in m._modules and "weight" in m.parametrizations
             and any(isinstance(p, WeightMask) for p in m.parametrizations["weight"])]  # earlier pruning steps' masks
    strip_parametrizations(model)
    delattr(model, SCORES_ATTR)
    plan = []
    if removed and bank.graph is not None:
        for member, keep in bank.graph.keep_indices(removed):
            apply_slice(model, member.module, member.role, keep)
            plan.append({"module": member.module, "role": member.role, "keep": keep.tolist()})
        object.__setattr__(model, PLAN_ATTR, getattr(model, PLAN_ATTR, []) + plan)
    if any(k == "block" for k in bank.kinds):  # block zeros stay masked through any later training
        fixed += [lin for lin in select_linears(model, bank.config.ignore, False, "prune").values()
                  if bool((lin.weight == 0).any())]
    for layer in fixed:  # (after slicing: the masks take the layers' new shapes)
        attach_mask(layer, layer.weight.detach() != 0)
    _note(model, bank, len(plan))


def _note(model, bank, sliced: int) -> None:
    notes = bank.__dict__.get("notes")
    if notes is not None:
        params = sum(p.numel() for p in model.parameters())
        notes.append(f"movement: final masks applied; {sliced} layer slices removed whole neurons/heads/channels; "
                     f"parameters now {params:,}")
        from ..graph.experts import structure_note

        notes += structure_note(model, "movement")


@register_method("prune-movement", MovementPruneConfig, "movement pruning: learned scores (weight x gradient), cubic "
                 "schedule, whole neurons/heads removed when training ends (JPQD with qat + distill)",
                 verb="prune", needs_training=True)
def _apply(model, config: MovementPruneConfig, ctx):
    calib = ctx.calibration(config.samples, what="movement") if config.init != "l2" and ctx.has_data else None
    bank = attach(model, config, ctx.export_example(), ctx.notes, calib)
    object.__setattr__(bank, "owner", model)  # references, not submodules
    object.__setattr__(bank, "notes", ctx.notes)
    return model
