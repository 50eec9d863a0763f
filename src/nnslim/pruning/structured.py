"""Structural pruning: physically remove channels, FFN neurons and attention heads.

1. Trace the model on example inputs and build the channel dependency graph (graph/dependency.py),
   so that coupled layers shrink together (residual adds, concat, depthwise convs, norms, SE gates,
   attention heads with grouped-query attention kept consistent).
2. Score every atom of every group: `activation` (the channel's contribution to the next layer,
   ||x_j|| * ||W[:, j]|| over calibration batches, as Wanda does per weight), L1/L2 weight magnitude,
   first-order Taylor |w * dL/dw| of a label-free loss (half the squared output norm), or random;
   each member's scores are divided by their mean so layers of different scale compare, then summed
   over the group's members (for activation, over the layers that read the channel).
3. Choose what to remove: the same ratio in every group (`uniform`) or by one global ranking
   (`global`, capped by `max_ratio` per group), kept counts rounded to `round_to`.
4. Slice the tensors and fix the layers' attributes; the result is an ordinary, smaller nn.Module.
   The plan (module, role, kept indices) is kept on the model so a saved artifact can be rebuilt.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError, first_line
from ..graph.dependency import DependencyGraph, Group, build
from ..graph.scope import VISION, check_scope, is_vision_language, matches
from ..graph.layers import PrunedMultiheadAttention, apply_slice, convertible_mha, handler_for
from ..graph.trace import trace
from ..recipe import StepConfig, register_method
from ..runtime.base import call_module
from .reconstruct import observe_inputs, refit

PLAN_ATTR = "_nnslim_structured_plan"


@dataclass(frozen=True)
class StructuredPruneConfig(StepConfig):
    """Remove whole channels / neurons / heads and return a smaller model."""
    ranges = {"ratio": (0.0, 0.999999), "head_ratio": (0.0, 0.999999), "max_ratio": (1e-6, 0.999999),
              "round_to": (1, 1 << 20), "samples": (1, 1_000_000), "batches": (1, 100_000), "damp": (1e-9, 10.0)}
    ratio: float = 0.3  # fraction of channels (and FFN neurons) removed
    head_ratio: float | None = None  # fraction of attention heads removed; None: same as ratio
    importance: Literal["auto", "activation", "l1", "l2", "taylor", "random"] = "auto"  # auto: activation with data, else l2
    scope: Literal["uniform", "global"] = "uniform"  # uniform: the ratio in every group | global: one ranking
    max_ratio: float = 0.9  # global scope: at most this fraction leaves one group
    round_to: int = 1  # kept channel counts are multiples of this (e.g. 8), where the group allows
    ignore: tuple[str, ...] = ()  # module names (or their dotted ends) or regexes whose output channels are kept
    prune_embeddings: bool = False  # embeddings (and so a transformer's hidden size) stay by default
    prune_vision: bool = False  # a vision-language model's image encoder and projector stay by default
    reconstruct: Literal["sequential", "independent", "off"] = "independent"  # least-squares refit of Linears reading removed channels
    damp: float = 0.01  # relative ridge of that refit
    batches: int = 8  # calibration batches for activation / taylor importance and the refit
    samples: int = 256  # calibration samples for activation / taylor
    seed: int = 0
    tracer: Literal["auto", "fx", "dynamic"] = "auto"


def as_tensors(inputs, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Inputs as tensors; floating ones in `model`'s floating dtype when given (a bfloat16 model's example
    comes as float32 numpy)."""
    if isinstance(inputs, torch.Tensor):
        inputs = {"x": inputs}
    if not isinstance(inputs, dict) or not inputs:
        raise NnslimError("example_inputs must be a dict of named tensors/arrays (or one tensor); "
                          f"got {type(inputs).__name__}")
    out = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in inputs.items()}
    if model is not None:
        from ..runtime.base import model_dtype

        dtype = model_dtype(model)
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    return out


def _call(model, inputs: dict):
    """model(**inputs), or model(*values) when the names are not the forward's parameter names."""
    return call_module(model, inputs)


def convert_attention(model: nn.Module, keep: tuple[str, ...] = ()) -> list[str]:
    """Replace every nn.MultiheadAttention (fused in_proj) by the equivalent PrunedMultiheadAttention, except those
    inside the scopes `keep` names (parts left unpruned: their layout stays the one the model's config builds)."""
    from ..graph.attention import replace_attention

    names = [n for n, m in model.named_modules() if convertible_mha(m) and not any(matches(k, n, m) for k in keep)]
    for n in names:
        replace_attention(model, n, PrunedMultiheadAttention.from_mha(model.get_submodule(n)))
    return names


def dependency_graph(model: nn.Module, example_inputs, config: StructuredPruneConfig | None = None
                     ) -> tuple[DependencyGraph, str]:
    """The channel dependency graph of `model` and the tracer that produced it."""
    config = config or StructuredPruneConfig()
    inputs = as_tensors(example_inputs, model)
    leaf = lambda m: handler_for(m) is not None  # noqa: E731
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer kernel hides the layers
    try:
        t = trace(model, inputs, leaf, config.tracer)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return build(t, handler_for, {"prune_embeddings": config.prune_embeddings}), t.tracer


def input_norms(model: nn.Module, batches: list[dict]) -> dict[int, torch.Tensor]:
    """id(weight) -> sum over calibration tokens/pixels of x_j^2 per input channel, for every Linear
    and ungrouped conv."""
    sums: dict[int, torch.Tensor] = {}

    def hook(mod, args):
        x = args[0].detach().float()
        per = x.pow(2).reshape(-1, x.shape[-1]).sum(0) if isinstance(mod, nn.Linear) else \
            x.pow(2).transpose(0, 1).reshape(x.shape[1], -1).sum(1)
        sums[id(mod.weight)] = sums.get(id(mod.weight), 0) + per

    mods = [m for m in model.modules() if isinstance(m, nn.Linear) or
            (isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1 and not m.transposed)]
    with torch.no_grad():
        observe_inputs(model, mods, batches, _call, hook)
    return sums


def _member_scores(model, mem, how: str, norms: dict) -> np.ndarray | None:
    """Per-position importance of one member, or None when `how` has nothing to say about it."""
    mod = model.get_submodule(mem.module) if mem.module else model
    if mem.role.startswith("param:"):
        _, attr, axis = mem.role.split(":")
        tensors = [(getattr(mod, attr), int(axis), 1)]
    else:
        tensors = handler_for(mod).weights(mod, mem.role)
    per_pos, used = np.zeros(len(mem.labels)), False
    for w, dim, block in tensors:
        t = w.detach().float()
        if how == "activation":
            if dim != 1 or id(w) not in norms:
                continue
            t = t.pow(2).transpose(0, 1).reshape(t.shape[1], -1).sum(1).sqrt() * norms[id(w)].sqrt().to(t.device)
        elif how == "taylor":
            if w.grad is None:
                continue
            t = (t * w.grad.float()).abs()
        if how != "activation":
            t = t.abs() if how in ("l1", "taylor") else t.pow(2)
            t = t.transpose(0, dim).reshape(t.shape[dim], -1).sum(1)
        per_pos += t.reshape(-1, block).sum(1).cpu().numpy()[: len(per_pos)]
        used = True
    if not used:
        return None
    return np.sqrt(per_pos) if how == "l2" else per_pos


def group_importance(graph: DependencyGraph, model: nn.Module, group: Group, how: str, rng: np.random.Generator,
           norms: dict) -> np.ndarray:
    if how == "random":
        return rng.random(len(group.atoms))
    total = np.zeros(len(group.atoms))
    scored = False
    for mi in group.members:
        per_pos = _member_scores(model, graph.members[mi], how, norms)
        if per_pos is None or per_pos.mean() <= 0:
            continue
        per_pos = per_pos / per_pos.mean()
        scored = True
        for i, atom in enumerate(group.atoms):
            pos = group.positions[atom].get(mi)
            if pos is not None:
                total[i] += per_pos[pos].mean()
    if not scored and how in ("activation", "taylor"):  # nothing reads these channels through a weight
        return group_importance(graph, model, group, "l2", rng, norms)
    return total


def keep_count(n: int, ratio: float, group: Group, round_to: int) -> int:
    keep = n - int(math.floor(n * ratio + 1e-9))
    step = math.lcm(group.multiple, round_to if group.kind == "channels" else 1)
    if step > 1 and n >= step:
        keep = min(n - n % step if n % step else n, int(math.ceil(keep / step)) * step)
    return max(keep, 1)


def _choose(group: Group, scores: np.ndarray, keep: int) -> list[int]:
    """Atoms removed: the lowest scores, taken equally from each chunk when the group has chunks."""
    n = len(group.atoms)
    if group.chunks > 1 and n % group.chunks == 0:
        size = n // group.chunks
        per = max(1, keep // group.chunks)
        out = []
        for c in range(group.chunks):
            idx = np.arange(c * size, (c + 1) * size)
            out.extend(idx[np.argsort(scores[idx], kind="stable")[: size - per]].tolist())
        return [group.atoms[i] for i in out]
    order = np.argsort(scores, kind="stable")
    return [group.atoms[i] for i in order[: n - keep]]


def batched(samples: list[dict], n: int) -> list[dict]:
    """Calibration samples merged into at most n batches (ragged sequences zero-padded)."""
    from ..batching import collate

    if not samples:
        return []
    size = max(1, -(-len(samples) // n))
    return [collate(samples[i:i + size]) for i in range(0, len(samples), size)]


def _taylor_grads(model: nn.Module, batches: list[dict]) -> None:
    """Accumulate gradients of a label-free loss: half the squared norm of the outputs, per batch."""
    from ..graph.trace import tensors_in

    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for b in batches:
            outs = [t for t in tensors_in(_call(model, b)) if t.is_floating_point()]
            loss = sum(0.5 * o.float().pow(2).mean() for o in outs)
            loss.backward()


def input_projections(model: nn.Module) -> tuple[str, ...]:
    """The weighted layers of input embeddings that are not an nn.Embedding (a ViT's patch projection, found
    through Hugging Face's get_input_embeddings()): they set the hidden size like a token table does, so they
    are kept with the embeddings."""
    names = {id(m): n for n, m in model.named_modules()}
    found = []
    for sub in model.modules():
        get = getattr(sub, "get_input_embeddings", None)
        try:
            emb = get() if callable(get) else None
        except (NotImplementedError, AttributeError, TypeError):  # a model without one
            continue
        if isinstance(emb, nn.Module) and not isinstance(emb, nn.Embedding) and id(emb) in names:
            found += [names[id(m)] for m in emb.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    return tuple(dict.fromkeys(found))


def ignored_member(group: Group, graph: DependencyGraph, ignore: tuple[str, ...], model: nn.Module) -> str | None:
    """The first module of `group` whose output channels an `ignore` entry keeps (graph/scope.py's rules)."""
    for mi in group.members:
        m = graph.members[mi]
        if m.role in ("in", "ch"):
            continue
        if any(matches(pat, m.module, _submodule(model, m.module)) for pat in ignore):
            return m.module
    return None


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def prune_structured(model: nn.Module, config: StructuredPruneConfig, example_inputs, calibration=None,
                     inplace: bool = False, notes: list[str] | None = None) -> nn.Module:
    """A smaller copy of `model` (or the model itself if inplace) with channels/neurons/heads removed."""
    if not isinstance(model, nn.Module):
        raise NnslimError(f"structural pruning needs a torch.nn.Module, got {type(model).__name__}")
    from ..graph.modules import has_parametrizations

    if has_parametrizations(model):
        raise NnslimError("structural pruning needs a model without pruning masks or learned scores on its weights: "
                          "remove structure first, then mask (prune-structured before prune-magnitude / "
                          "prune-movement), or nnslim.save and nnslim.load the model to fold the masks in")
    check_scope(model, config.ignore)
    notes = notes if notes is not None else []
    inputs = as_tensors(example_inputs, model)
    model = model if inplace else copy.deepcopy(model)
    was_training = model.training
    model.eval()
    before = sum(p.numel() for p in model.parameters())
    vision = (VISION, ) if not config.prune_vision and is_vision_language(model) else ()
    plan: list[dict] = [{"module": n, "role": "convert-mha", "keep": []} for n in convert_attention(model, vision)]
    if plan:
        notes.append(f"structured: {len(plan)} nn.MultiheadAttention modules replaced by the equivalent "
                     "PrunedMultiheadAttention (separate projections; torch's fused encoder fast path no longer applies)")
    graph, tracer = dependency_graph(model, inputs, config)
    groups = graph.groups()
    if not groups:
        reasons = sorted(set(graph.frozen.values()))[:5] or ["no layer with a pruning function produces channels "
                                                             "that stay inside the model"]
        raise NnslimError("nothing in this model can be pruned structurally; channels are kept because: "
                          + "; ".join(reasons))
    how = config.importance
    if how == "auto":
        how = "activation" if calibration else "l2"
    norms: dict = {}
    batches = [as_tensors(b, model) for b in batched(list(calibration or []), config.batches)]
    if how in ("taylor", "activation"):
        if not calibration:
            raise NnslimError(f"importance={how!r} needs calibration batches (calibration=[{{...}}, ...])")
        if how == "taylor":
            _taylor_grads(model, batches)
        else:
            norms = input_norms(model, batches)
    rng = np.random.default_rng(config.seed)
    head_ratio = config.ratio if config.head_ratio is None else config.head_ratio
    embedding_layers = () if config.prune_embeddings else input_projections(model)
    ignore = tuple(config.ignore) + embedding_layers
    removed: set[int] = set()
    counts = {"channels": [0, 0], "heads": [0, 0]}
    candidates, kept_vision = [], []
    for grp in groups:
        if vision and ignored_member(grp, graph, vision, model):
            kept_vision.append(grp)
            continue
        who = ignored_member(grp, graph, ignore, model)
        if who:
            why = ("prune_embeddings=False keeps the input embedding" if who in embedding_layers
                   else "ignored layer")
            notes.append(f"structured: kept {grp.describe(graph)} ({why} {who})")
            continue
        candidates.append((grp, group_importance(graph, model, grp, how, rng, norms)))
    if kept_vision:
        notes.append(f"structured: {len(kept_vision)} group(s) of the vision-language model's image encoder and "
                     "projector kept (prune_vision: true prunes them too): the language model is what is pruned")
    if config.scope == "global":
        ch = [(s / max(sc.mean(), 1e-12), gi, i) for gi, (grp, sc) in enumerate(candidates)
              if grp.kind == "channels" for i, s in enumerate(sc)]
        drop = int(math.floor(len(ch) * config.ratio))
        taken: dict[int, int] = {}
        for _, gi, _ in sorted(ch)[:drop]:
            taken[gi] = taken.get(gi, 0) + 1
    for gi, (grp, scores) in enumerate(candidates):
        n = len(grp.atoms)
        if grp.kind == "heads":
            keep = keep_count(n, head_ratio, grp, 1)
        elif config.scope == "global":
            keep = keep_count(n, min(taken.get(gi, 0) / n, config.max_ratio), grp, config.round_to)
        else:
            keep = keep_count(n, config.ratio, grp, config.round_to)
        gone = _choose(grp, scores, keep)
        removed.update(gone)
        counts[grp.kind][0] += len(gone)
        counts[grp.kind][1] += n
    slices = graph.keep_indices(removed)
    if config.reconstruct != "off" and calibration:
        n = refit(model, slices, batches, config.damp, config.reconstruct, _call)
        notes.append(f"structured: least-squares refit ({config.reconstruct}) of {n} Linear layers that read "
                     "removed channels")
    for member, keep in slices:
        apply_slice(model, member.module, member.role, keep)
        plan.append({"module": member.module, "role": member.role, "keep": keep.tolist()})
    model.zero_grad(set_to_none=True)
    plan = getattr(model, PLAN_ATTR, []) + plan
    object.__setattr__(model, PLAN_ATTR, plan)
    with torch.no_grad():
        try:
            _call(model, inputs)  # the pruned model must still run
        except Exception as e:  # noqa: BLE001 - a size the model's code keeps that the slicing did not follow
            raise NnslimError(f"structured pruning made a {type(model).__name__} that fails on the example input "
                              f"({first_line(e)}): its code keeps a size nnslim did not update; keep the layers "
                              "involved with ignore=[...] or head_ratio=0 for attention heads") from e
    after = sum(p.numel() for p in model.parameters())
    notes.append(f"structured pruning ({tracer} trace, {how}, {config.scope}): removed "
                 f"{counts['channels'][0]}/{counts['channels'][1]} channels and {counts['heads'][0]}/"
                 f"{counts['heads'][1]} heads; parameters {before:,} -> {after:,} ({after / before:.1%})")
    if graph.warnings:
        warnings.warn("structured pruning kept some channels: " + "; ".join(sorted(set(graph.warnings))[:4]),
                      stacklevel=2)
    kept = sorted({r for r in graph.frozen.values() if r})
    if kept:
        notes.append("structured: channels kept because " + "; ".join(kept[:6]) + (" ..." if len(kept) > 6 else ""))
    from ..graph.experts import structure_note

    notes += structure_note(model, "structured")
    return model.train(was_training)




def apply_plan(model: nn.Module, plan: list[dict]) -> nn.Module:
    """Re-apply a recorded structured-pruning plan to a fresh model of the original architecture."""
    from ..graph.attention import replace_attention

    if not isinstance(plan, list):
        raise NnslimError(f"structured_plan={type(plan).__name__} is not allowed; allowed: a list of steps")
    for step in plan:
        name, role = (step.get("module"), step.get("role")) if isinstance(step, dict) else (None, None)
        try:
            if not isinstance(name, str):
                raise TypeError(f"module={name!r} is not a module name")
            if role == "convert-mha":
                replace_attention(model, name, PrunedMultiheadAttention.from_mha(model.get_submodule(name)))
            else:
                apply_slice(model, name, role, step["keep"])
        except (AttributeError, KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:
            raise NnslimError(f"structured plan step {name}:{role} does not fit this model: "
                              f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    object.__setattr__(model, PLAN_ATTR, list(plan))
    return model


def _apply(model, config: StructuredPruneConfig, ctx):
    calib = None
    if config.importance in ("activation", "taylor") or (config.importance == "auto" and ctx.has_data):
        calib = ctx.calibration(config.samples, what=f"importance={config.importance!r}")
    return prune_structured(model, config, ctx.export_example(), calib, inplace=True, notes=ctx.notes)


register_method("prune-structured", StructuredPruneConfig,
                "structural pruning: remove channels, FFN neurons and attention heads (dependency graph)",
                verb="prune", stage="structure")(_apply)
