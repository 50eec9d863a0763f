"""Module surgery shared by every algorithm: replacing a submodule by name, and the registry of packed
layers (layers saved as their own tensors plus a small config, rebuilt empty on load).

A packed layer class registers itself with `@register_packed("kind")` in its own file and defines
  packed_config(self) -> dict            JSON-able constructor arguments (the kind is added here)
  from_packed_config(cls, cfg, dtype)    an empty layer of that config (its tensors are then loaded)
so the artifact code never lists layer types.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import NnslimError

PACKED: dict[str, type[nn.Module]] = {}


class PackedLinear(nn.Module):
    """Base of the layers that replace an nn.Linear with packed codes. Their `weight` is a shape-and-dtype
    view on the meta device: model code written for nn.Linear that only reads `layer.weight.dtype` or its
    shape works (T5's feed-forward casts its input to `wo.weight.dtype`); its values do not exist."""

    def float_dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return torch.empty((self.out_features, self.in_features), dtype=self.float_dtype(), device="meta")


def plain_module(model):
    """The module a torch.compile wrapper holds (compressing the wrapper would name every layer `_orig_mod.*`
    and recompile on each change); anything else as it is. Compile the compressed result again."""
    while isinstance(model, nn.Module) and type(model).__name__ == "OptimizedModule" and \
            isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` (dotted) of `root` is."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def replace_everywhere(root: nn.Module, name: str, new: nn.Module) -> list[str]:
    """Put `new` at `name` and at every other path that holds the same module object (T5's `shared`
    embedding is also `encoder.embed_tokens` and `decoder.embed_tokens`); returns the paths replaced."""
    old = root.get_submodule(name)
    paths = [n for n, m in root.named_modules(remove_duplicate=False) if m is old and n]
    for path in paths:
        replace_module(root, path, new)
    return paths


def register_packed(kind: str):
    """Class decorator registering a packed layer under `kind` (the key written to nnslim.json)."""
    def wrap(cls):
        if kind in PACKED and PACKED[kind] is not cls:
            raise ValueError(f"packed layer kind {kind!r} is registered twice ({PACKED[kind].__name__}, {cls.__name__})")
        cls.packed_kind = kind
        PACKED[kind] = cls
        return cls
    return wrap


def is_packed(module: nn.Module) -> bool:
    return getattr(type(module), "packed_kind", None) in PACKED


def packed_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """name -> {kind, constructor config} of every packed layer in `model`."""
    return {n: {"kind": type(m).packed_kind, **m.packed_config()} for n, m in model.named_modules() if is_packed(m)}


def packed_aliases(model: nn.Module) -> dict[str, str]:
    """Other path -> the path packed_layers() names, for packed layers the model holds at several paths (one
    int8 table for T5's shared / encoder / decoder embeddings)."""
    first: dict[int, str] = {}
    out = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if n and is_packed(m):
            if id(m) in first:
                out[n] = first[id(m)]
            else:
                first[id(m)] = n
    return out


def build_packed(cfg: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """An empty packed layer from its saved config (unknown kinds and bad fields are errors)."""
    kind = cfg.get("kind")
    if kind not in PACKED:
        raise NnslimError(f"quantized layer kind {kind!r} is not allowed; allowed: {', '.join(sorted(PACKED))}")
    return PACKED[kind].from_packed_config(cfg, dtype)


def has_parametrizations(model: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return any(parametrize.is_parametrized(m) for m in model.modules())


def fold_foreign_parametrizations(model: nn.Module) -> list[str]:
    """Fold parametrizations that are not nnslim's (weight_norm, spectral_norm, orthogonal) into the weights they
    compute, in place: the tensors the model runs with, which methods then quantize / prune / export. Returns the
    names of the modules folded."""
    from torch.nn.utils.parametrizations import _WeightNorm

    folded = []
    for name, m in list(model.named_modules()):
        plist = m._modules.get("parametrizations")
        if plist is not None and any(not type(p).__module__.startswith("nnslim.")
                                     for ps in plist.values() for p in ps):
            # weight_norm's dim, so a transformers checkpoint can store the form its loader expects (g, v)
            norms = {t: ps[0].dim for t, ps in plist.items() if len(ps) == 1 and isinstance(ps[0], _WeightNorm)}
            strip_parametrizations(m)
            if norms:
                m.nnslim_weight_norm = norms
            folded.append(name)
    return folded


def weight_norm_keys(model: nn.Module) -> dict[str, int]:
    """{state-dict key of a weight whose weight_norm fold_foreign_parametrizations folded: its dim}."""
    return {f"{name}.{t}" if name else t: dim for name, m in model.named_modules()
            for t, dim in (getattr(m, "nnslim_weight_norm", None) or {}).items()}


def as_weight_norm(key: str, w: torch.Tensor, dim: int) -> list[tuple[str, torch.Tensor]]:
    """A folded weight as transformers' checkpoints store a weight_norm: parametrizations.<name>.original0 (g,
    the norm over every dim but `dim`) and original1 (v)."""
    base, _, t = key.rpartition(".")
    base = f"{base}." if base else ""
    return [(f"{base}parametrizations.{t}.original0", torch.norm_except_dim(w, 2, dim)),
            (f"{base}parametrizations.{t}.original1", w)]


def unfold_weight_norms(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """In a state dict of `model`, each folded weight_norm stored back as transformers stores it (as_weight_norm)."""
    for key, dim in weight_norm_keys(model).items():
        if key in state:
            state.update(as_weight_norm(key, state.pop(key), dim))


def strip_parametrizations(model: nn.Module) -> int:
    """Fold every parametrization (pruning masks, learned-score masks) into the tensor it computes, in
    place: what remains is the plain module as it will deploy. Returns how many were folded.

    Not torch's remove_parametrizations: a deep copy of a parametrized module shares its generated
    class, and removing the last parametrization deletes the property from that shared class, breaking
    the original. Here only this module's class pointer changes."""
    count = 0
    for m in list(model.modules()):
        if "parametrizations" not in m._modules:  # (a wrapper may read the attribute through to its inner layer)
            continue
        names = list(m.parametrizations.keys())
        values = {n: (getattr(m, n).detach().clone(),  # (weight_norm keeps original0 / original1)
                      next(m.parametrizations[n].parameters(), torch.ones(())).requires_grad) for n in names}
        del m._modules["parametrizations"]
        m.__class__ = type(m).__bases__[0]  # the generated Parametrized<Class> derives from the module's own class
        for n, (value, grad) in values.items():
            m._parameters[n] = nn.Parameter(value, requires_grad=grad)
        count += len(names)
    return count


def deployable_copy(model: nn.Module) -> nn.Module:
    """The model as it deploys: parametrizations folded in, and every layer kept in a training form that
    has a packed form (`packed_form()`, e.g. binary weights) replaced by it. `model` itself when there is
    nothing to change, else a copy."""
    def packable(m):
        return callable(getattr(m, "packed_form", None))

    if not has_parametrizations(model) and not any(packable(m) for m in model.modules()):
        return model
    import copy

    out = copy.deepcopy(model)
    strip_parametrizations(out)
    for name, m in list(out.named_modules()):
        if packable(m):
            replace_module(out, name, m.packed_form())
    return out


def linear_conv1d(model: torch.nn.Module) -> torch.nn.Module:
    """Replace Hugging Face's Conv1D (GPT-2 family: a Linear storing its weight as [in, out]) with the
    nn.Linear it is, so that every method, kernel and exporter sees a Linear. Outputs are unchanged."""
    converted = []
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "Conv1D" or not hasattr(module, "nf") or module.weight.dim() != 2:
            continue
        n_in, n_out = module.weight.shape
        linear = torch.nn.Linear(n_in, n_out, bias=module.bias is not None, device=module.weight.device,
                                 dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        replace_module(model, name, linear)
        converted.append(name)
    if converted:  # writers of HF-layout checkpoints must transpose these back (or refuse)
        model.nnslim_conv1d = tuple(converted)
    return model
