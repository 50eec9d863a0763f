"""Ignored / target scopes by layer name, regex ("re:...") or type ("type:ClassName")."""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from ..errors import NnslimError


def _matches(entry: str, name: str, module: nn.Module) -> bool:
    if entry.startswith("re:"):
        return re.search(entry[3:], name) is not None
    if entry.startswith("type:"):
        return any(cls.__name__ == entry[5:] for cls in type(module).__mro__)
    return name == entry or name.startswith(entry + ".")


def check_patterns(ignore: Iterable[str], field: str = "ignore") -> None:
    """Validate scope entries up front (before any work): strings, and regexes that compile."""
    for entry in ignore:
        if not isinstance(entry, str) or not entry:
            raise NnslimError(f"{field} entry {entry!r} is not allowed; allowed: a layer name, 're:REGEX' or "
                              "'type:ClassName'")
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as e:
                raise NnslimError(f"{field} entry {entry!r} is not a valid regex: {e}") from None


def select_layers(model: nn.Module, types: tuple[type, ...], ignore: Iterable[str] = (),
                  field: str = "ignore") -> dict[str, nn.Module]:
    """Named modules of `types`, minus those matched by `ignore`. An entry matching no layer of the
    model is an error naming it (a typo would otherwise silently quantize everything)."""
    ignore = list(ignore)
    check_patterns(ignore, field)
    named = list(model.named_modules())
    for entry in ignore:
        if not any(_matches(entry, n, m) for n, m in named if n):
            sample = ", ".join(n for n, m in named if isinstance(m, types))[:300]
            raise NnslimError(f"{field} entry {entry!r} matches no layer of the model; layers look like: {sample}")
    return {n: m for n, m in named if n and isinstance(m, types) and not any(_matches(e, n, m) for e in ignore)}


HEAD = "re:(^|\\.)(lm_head|classifier|score)$"  # output heads: kept as they are unless asked


def is_head(name: str, module: nn.Module) -> bool:
    return _matches(HEAD, name, module)


def select_linears(model: nn.Module, ignore: Iterable[str] = (), include_head: bool = False,
                   what: str = "quantize") -> dict[str, nn.Linear]:
    """The nn.Linear layers a method works on: minus `ignore`, minus the output head unless asked, minus
    mixture-of-experts routers (graph/experts.py). Fused MoE experts blocks (3D weights) not ignored as a whole are first split into per-expert
    Linears in place (graph/experts.py), so the method reaches the experts."""
    from .experts import fused_experts, routers, split_experts

    ignore = list(ignore)
    check_patterns(ignore)
    fused = [n for n, m in fused_experts(model).items() if not any(_matches(e, n, m) for e in ignore)]
    if fused:
        split_experts(model, fused, what=what)
    layers = select_layers(model, (nn.Linear,), ignore)
    kept = routers(model)
    layers = {n: m for n, m in layers.items() if n not in kept}
    if not include_head:
        layers = {n: m for n, m in layers.items() if not _matches(HEAD, n, m)}
    if not layers:
        raise NnslimError(f"{type(model).__name__} has no nn.Linear layer left to {what} "
                          f"(ignore={list(ignore)}, head included: {include_head})")
    return layers
