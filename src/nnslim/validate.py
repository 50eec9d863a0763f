"""Checks shared by every entry point: finite numbers in models, data and options."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .errors import NnslimError


def first_nonfinite_tensor(module: torch.nn.Module) -> str | None:
    """Name of the first parameter/buffer holding NaN or Inf, or None when all are finite (tensors still on
    the meta device are checked when they are read from their shards, graph/streaming.py)."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and t.numel() and not t.is_meta and not tensor_finite(t):
            return name
    return None


def tensor_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """All values finite, checked in chunks (no temporary the size of a whole embedding table)."""
    flat = t.detach().reshape(-1)
    wide = t.element_size() == 1  # fp8 codes: isfinite has no fp8 kernel on the CPU
    return all(bool(torch.isfinite(flat[i:i + chunk].float() if wide else flat[i:i + chunk]).all())
               for i in range(0, flat.numel(), chunk))


def check_finite_module(module, where: str) -> None:
    """Refuse a model whose weights are not all finite (NaN/Inf), naming the tensor."""
    if not isinstance(module, torch.nn.Module):
        return
    name = first_nonfinite_tensor(module)
    if name is not None:
        raise NnslimError(f"{where}: tensor {name!r} holds NaN or Inf; nnslim refuses to go on with "
                          "non-finite weights (check the input model, the data and learning-rate options)")


def check_finite_data(items: Iterable[Any], field: str) -> None:
    """Refuse calibration/training samples with NaN or Inf values, naming the sample and input."""
    for i, item in enumerate(items):
        values = item.items() if isinstance(item, dict) else enumerate(item if isinstance(item, (list, tuple))
                                                                       else [item])
        for key, v in values:
            if isinstance(v, torch.Tensor):
                bad = v.is_floating_point() and not bool(torch.isfinite(v).all())
            else:
                a = np.asarray(v)
                bad = a.dtype.kind in "fc" and not bool(np.isfinite(a).all())
            if bad:
                raise NnslimError(f"{field}[{i}][{key!r}] holds NaN or Inf; give finite input values")

