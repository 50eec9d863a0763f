"""One way to get data: whatever the user iterates over becomes a list of input dicts keyed by the
forward's argument names (what every algorithm consumes).

Accepted: a dict of inputs, a tensor/array (one batch), a tuple/list of positional inputs, an iterable
of any of these (a list, a generator, a torch DataLoader), or `Dataset(data, transform)` whose transform
maps each item to one of these forms (as NNCF's `nncf.Dataset(loader, transform_fn)`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .errors import NnslimError

ACCEPTED = ("a dict of named inputs, a tensor or array, a tuple of positional inputs, an iterable of "
            "those (list, DataLoader, generator), or nnslim.Dataset(data, transform)")
MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class Dataset:
    """Data plus a function mapping each item to the model's inputs (a dict, a tensor or a tuple)."""
    data: Iterable
    transform: Callable[[Any], Any] | None = None


def forward_names(model: torch.nn.Module) -> list[str]:
    """Names of the forward's positional-or-keyword parameters, in order."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def required_count(model: torch.nn.Module | None) -> int | None:
    """How many leading positional parameters of model.forward have no default (None when unknown)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


# optional inputs that legitimately take one integer per sample (an LSTM's lengths, an EmbeddingBag's offsets)
_INT_INPUTS = ("len", "offset", "index", "indices", "pos", "mask", "ids", "count", "size")


def _looks_like_labels(value, first) -> bool:
    """A 1-D integer array as long as the batch of the first input: the class labels of an (inputs, labels) batch."""
    shape0 = getattr(first, "shape", ())
    return (getattr(value, "ndim", 0) == 1 and len(shape0) >= 1 and value.shape[0] == shape0[0]
            and not (value.dtype.is_floating_point if isinstance(value, torch.Tensor)
                     else np.issubdtype(value.dtype, np.floating)))


def to_numpy(value) -> np.ndarray:
    """An input as numpy; tensors in dtypes numpy lacks (bfloat16, float8) as float32 (runners cast them back to
    the model's dtype)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
            value = value.float()
    return np.asarray(value)


def _is_input(x) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _one(item, names: list[str], where: str, required: int | None = None) -> dict:
    if isinstance(item, dict):
        bad = [k for k in item if not isinstance(k, str)]
        if bad:
            raise NnslimError(f"{where} has a key {bad[0]!r} that is not an input name; keys must be strings")
        return dict(item)
    if _is_input(item):
        item = (item,)
    if isinstance(item, (tuple, list)) and item and all(_is_input(v) for v in item):
        if len(item) > len(names):
            raise NnslimError(f"{where} is a tuple of {len(item)} inputs but forward takes ({', '.join(names)}); "
                              "pass nnslim.Dataset(data, transform=lambda item: ...) to pick the inputs "
                              "(e.g. drop labels)")
        if (required is not None and len(item) > max(required, 1) and _looks_like_labels(item[-1], item[0])
                and not any(w in names[len(item) - 1].lower() for w in _INT_INPUTS)):
            # (inputs, labels) from a DataLoader: the labels would silently become an optional input
            raise NnslimError(f"{where} is a tuple of {len(item)} whose last element ({item[-1].dtype}, shape "
                              f"{tuple(item[-1].shape)}) looks like labels, and it would be passed as the optional "
                              f"input {names[len(item) - 1]!r} of forward({', '.join(names)}); pass "
                              f"nnslim.Dataset(data, transform=lambda item: item[:{len(item) - 1}]) to drop them, "
                              "or a dict of named inputs")
        return dict(zip(names, item))
    raise NnslimError(f"{where} is a {type(item).__name__}; accepted: {ACCEPTED}")


def as_samples(data, model: torch.nn.Module | None, field: str = "calibration",
               names: list[str] | None = None) -> list[dict] | None:
    """`data` in any accepted form -> a list of input dicts matched to model.forward's signature (or to
    `names`, e.g. the keys of the example inputs, for positional items)."""
    if data is None:
        return None
    transform = None
    if isinstance(data, Dataset):
        data, transform = data.data, data.transform
        if transform is not None and not callable(transform):
            raise NnslimError(f"{field}: Dataset.transform is a {type(transform).__name__}, not a function")
    required = required_count(model) if model is not None and not names else None
    names = names or (forward_names(model) if model is not None else []) or ["input"]
    if isinstance(data, (dict, torch.Tensor, np.ndarray)):
        data = [data]  # one sample / one batch
    elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise NnslimError(f"{field} is a {type(data).__name__}; accepted: {ACCEPTED}")
    out = []
    for i, item in enumerate(data):
        if i >= MAX_SAMPLES:
            raise NnslimError(f"{field} has more than {MAX_SAMPLES} samples; pass fewer")
        if transform is not None:
            try:
                item = transform(item)
            except Exception as e:
                raise NnslimError(f"{field}[{i}]: the transform failed: {type(e).__name__}: {str(e)[:200]}") from None
        out.append(_one(item, names, f"{field}[{i}]", required))
    return out


def as_inputs(example, model: torch.nn.Module | None, field: str = "example_inputs") -> dict | None:
    """Example inputs in any single-sample form (dict, tensor, tuple) -> a dict keyed by input names."""
    if example is None:
        return None
    if isinstance(example, Dataset) or not isinstance(example, (dict, torch.Tensor, np.ndarray, tuple, list)):
        raise NnslimError(f"{field} is a {type(example).__name__}; accepted: a dict of named inputs, a tensor "
                          "or a tuple of positional inputs")
    names = (forward_names(model) if model is not None else []) or ["input"]
    return _one(example, names, field)
