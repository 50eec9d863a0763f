"""Concatenate linears that read the same input (q/k/v, gate/up) into one wider linear: one kernel
launch and one weight stream instead of several, for plain nn.Linear and nnslim's quantized linears.

The concatenated module owns new tensors; the original modules' tensors are re-pointed at slices of
them, so their values are unchanged and no second copy of the weights stays in memory.
"""
from __future__ import annotations

import torch
from torch import nn


def value_key(t: torch.Tensor | None) -> bytes | None:
    """Hashable form of a small tensor's values (per-input scales must be equal to concatenate)."""
    return None if t is None else t.detach().cpu().numpy().tobytes()


def _linear_key(m: nn.Linear) -> tuple:
    return (m.in_features, m.bias is None, m.weight.dtype, m.weight.device)


def _rowwise(m: nn.Module) -> tuple[str, ...]:
    """Tensors whose dim 0 is the output features."""
    return ("weight", "bias") if type(m) is nn.Linear else m.ROWWISE


def concat_blocker(mods: list[nn.Module]) -> str | None:
    """Why these linears cannot be concatenated, or None when they can."""
    cls = type(mods[0])
    names = [type(m).__name__ for m in mods]
    if any(type(m) is not cls for m in mods):
        return f"layers {names} have different types"
    if cls is nn.Linear:
        keys = [_linear_key(m) for m in mods]
    elif hasattr(cls, "concat_key"):
        keys = [m.concat_key() for m in mods]
    else:
        return f"{cls.__name__} has no concat_key"
    if any(k != keys[0] for k in keys):
        return f"layers {names} differ in input size, format, bias or per-input scale"
    return None


def concat_linears(mods: list[nn.Module]) -> nn.Module | None:
    """One module computing torch.cat([m(x) for m in mods], dim=-1), or None when the modules cannot
    be concatenated (see concat_blocker)."""
    if concat_blocker(mods) is not None:
        return None
    cls = type(mods[0])
    out_features = sum(m.out_features for m in mods)
    with torch.device("meta"):
        fused = (nn.Linear(mods[0].in_features, out_features, bias=mods[0].bias is not None) if cls is nn.Linear
                 else mods[0].empty_like(out_features))
    for name in _rowwise(mods[0]):
        parts = [getattr(m, name) for m in mods]
        if parts[0] is None:
            continue
        whole = torch.cat([p.detach() for p in parts])
        start = 0
        for m, p in zip(mods, parts):
            piece = whole[start:start + p.shape[0]]
            setattr(m, name, nn.Parameter(piece, requires_grad=False) if isinstance(p, nn.Parameter) else piece)
            start += p.shape[0]
        setattr(fused, name, nn.Parameter(whole, requires_grad=False) if isinstance(parts[0], nn.Parameter)
                else whole)
    for name, buf in mods[0].named_buffers(recurse=False):  # shared per-input buffers (equal by concat_key)
        if name not in _rowwise(mods[0]) and buf is not None:
            setattr(fused, name, buf)
    if hasattr(mods[0], "kernel"):
        fused.kernel = mods[0].kernel
    for m in mods:
        if hasattr(m, "_prepared"):
            m._prepared = {}  # kernel layouts of the originals are not needed by the fused module
    return fused
