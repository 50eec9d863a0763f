"""Running calibration data through a model with hooks on chosen layers; input validation."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from ..progress import progress
from ..runtime.base import TorchRunner, call_module


def check_calibration(data, example: dict[str, np.ndarray], field: str = "calibration") -> list[dict]:
    """Validate calibration items against the model's example inputs; a clear error naming the item."""
    if data is None:
        raise NnslimError(f"{field} data is required: an iterable of dicts of input name -> array, "
                          f"like {{{', '.join(repr(k) for k in example)}}}")
    items = list(data)
    if not items:
        raise NnslimError(f"{field} is empty; give at least one sample (100-1000 is typical)")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise NnslimError(f"{field}[{i}] is a {type(item).__name__}; expected a dict with keys "
                              f"{sorted(example)}")
        if set(item) != set(example):
            raise NnslimError(f"{field}[{i}] has keys {sorted(item)}; expected {sorted(example)}")
        for key, ref in example.items():
            value = item[key]
            shape = tuple(getattr(value, "shape", ()))
            if len(shape) != np.ndim(ref):
                raise NnslimError(f"{field}[{i}][{key!r}] has shape {shape}; expected rank {np.ndim(ref)} "
                                  f"like {tuple(np.shape(ref))}")
            # Other sizes (sequence length, image size) may be legal; a forward that fails on them
            # is reported by run_with_hooks with the offending shapes.
            kind = np.asarray(value).dtype.kind if not isinstance(value, torch.Tensor) else (
                "f" if value.is_floating_point() else "i")
            if (kind == "f") != (np.asarray(ref).dtype.kind == "f"):
                raise NnslimError(f"{field}[{i}][{key!r}] has dtype kind {kind!r}; expected "
                                  f"{np.asarray(ref).dtype}")
    return items


@torch.no_grad()  # not inference_mode: what it makes must work in autograd forwards
def run_with_hooks(model: nn.Module, layers: dict[str, nn.Module], data: Iterable[dict],
                   on_input: Callable[[str, torch.Tensor], None], desc: str) -> None:
    """Call on_input(layer_name, input_tensor) for every layer call while `data` runs through model."""
    runner = TorchRunner(model)
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: on_input(n, args[0]))
               for name, m in layers.items()]
    items = list(data)
    try:
        for item in progress(items, desc=desc, total=len(items)):
            try:
                call_module(model, runner.to_tensors(
                    {k: v if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in item.items()}))
            except (RuntimeError, ValueError, TypeError) as e:
                shapes = {k: tuple(np.shape(v)) for k, v in item.items()}
                raise NnslimError(f"the model failed on calibration input of shapes {shapes}: "
                                  f"{str(e).splitlines()[0]}") from None
    finally:
        for h in handles:
            h.remove()
