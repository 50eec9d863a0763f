"""Parameters of a Hugging Face checkpoint read from its safetensors shards when they are needed, for a model
built with its parameters on the meta device: a layer-wise method materialises one layer (or one decoder
block) at a time, so host memory holds one block of float weights plus what is already compressed, never
the whole float model (issue 19).

Every shard is opened and its header checked before any work starts (a missing or mismatched shard is one
error naming the file); tensors are read with plain reads in the checkpoint's own dtype.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import NnslimError
from ..io import SafetensorsReader
from ..validate import tensor_finite

ATTR = "nnslim_shards"  # a model built on meta carries its ShardSource under this attribute


class ShardSource:
    def __init__(self, directory: str | Path, prefix: str = ""):
        """`prefix`: what the model's own names add in front of the checkpoint's (nnslim's wrapper, 'lm.')."""
        self.directory, self.prefix = Path(directory), prefix
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise NnslimError(f"{str(index)!r} is not a safetensors index (weight_map): {e}") from None
            files = sorted(set(weight_map.values()))
        else:
            files, weight_map = ["model.safetensors"], None
        self.readers: dict[str, SafetensorsReader] = {}
        self.where: dict[str, str] = {}
        for name in files:
            path = self.directory / name
            if Path(name).name != name or not path.is_file():
                raise NnslimError(f"shard {str(path)!r} is missing (listed by {index.name if weight_map else 'default'})")
            reader = self.readers[name] = SafetensorsReader(path)
            for key in reader.keys():
                self.where[key] = name
        if weight_map is not None:
            wrong = [k for k, f in weight_map.items() if self.where.get(k) != f]
            if wrong:
                raise NnslimError(f"{str(index)!r} maps {wrong[0]!r} to {weight_map[wrong[0]]!r}, which does not "
                                  "hold it: the shards do not match their index")

    def _key(self, name: str) -> str:
        """The checkpoint's name of a model tensor name (without the wrapper's prefix)."""
        return name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name

    def read(self, name: str) -> torch.Tensor:
        key = self._key(name)
        if key not in self.where:
            raise NnslimError(f"{str(self.directory)!r}: no tensor {key!r} in the checkpoint's shards")
        return self.readers[self.where[key]].get_tensor(key)

    def __deepcopy__(self, memo):  # a copied model reads the same files
        return self

    def has(self, name: str) -> bool:
        return self._key(name) in self.where

    def materialize(self, module: nn.Module, prefix: str = "", skip: nn.Module | None = None) -> None:
        """Give every meta parameter / buffer of `module` (named `prefix` in the model; `skip`: a submodule
        left on meta) its stored values, in the checkpoint's dtype, on the CPU."""
        inside = {id(m) for m in skip.modules()} if skip is not None else set()
        for mname, owner in module.named_modules():
            if id(owner) in inside:
                continue
            for attr, t in [*owner._parameters.items(), *owner._buffers.items()]:
                if t is None or not t.is_meta:
                    continue
                full = ".".join(p for p in (prefix, mname, attr) if p)
                if not self.has(full) and attr in owner._parameters and _tied(module, owner):
                    continue  # a tied head, stored once as the embedding: tied again by the caller
                value = self.read(full)
                if value.is_floating_point() and not tensor_finite(value):
                    raise NnslimError(f"{str(self.directory)!r}: tensor {full!r} holds NaN or Inf; nnslim refuses "
                                      "to go on with non-finite weights")
                if tuple(value.shape) != tuple(t.shape):
                    raise NnslimError(f"{full}: shape {tuple(value.shape)} in the checkpoint, {tuple(t.shape)} "
                                      "in the config")
                if attr in owner._parameters:
                    owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
                else:
                    owner._buffers[attr] = value

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


def _tied(model: nn.Module, owner: nn.Module) -> bool:
    """Is `owner` the output embedding of a Hugging Face model inside `model` whose config ties it?"""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if getattr(cfg, "tie_word_embeddings", False) and hasattr(m, "get_output_embeddings"):
            return m.get_output_embeddings() is owner
    return False


def retie(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(getattr(m, "config", None), "tie_word_embeddings", False) and hasattr(m, "tie_weights"):
            m.tie_weights()
            return


def source_of(model: nn.Module) -> ShardSource | None:
    return getattr(model, ATTR, None)
