"""Artifacts made from a transformers model object (no folder, no tokenizer): config.json written as
save_pretrained writes it (naming the model's class), and read back by that class of the transformers package
(never code from the folder), so nnslim.load needs no model= and transformers' from_pretrained loads float /
pruned / compressed-tensors artifacts as they are."""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import NnslimError, short_repr


def object_config(model):
    """A transformers object's config as save_pretrained writes it: naming the model's class (architectures)."""
    import copy

    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    return config


def transformers_class(directory: Path):
    """The transformers model class config.json names (`architectures`): a class of the transformers package only,
    never code from the folder."""
    import transformers

    from .io import read_json_object

    names = read_json_object(directory / "config.json").get("architectures")
    cls = getattr(transformers, names[0], None) if isinstance(names, list) and names and isinstance(names[0], str) \
        else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise NnslimError(f"{directory}: config.json names no transformers model class ({short_repr(names)}); pass "
                          "model=<an instance of the model's class> to nnslim.load")
    return cls


def load_hf_object(directory: Path, meta: dict, model: torch.nn.Module | None):
    """A save_pretrained folder made from a transformers model object: read by the class of `model` when given,
    else by the transformers class config.json names (a class of the transformers package only, never code from
    the folder), as transformers' from_pretrained reads it (safetensors only)."""
    from .artifact import meta_dtype
    from .io import META_FILE

    if not any(str(f).endswith(".safetensors") for f in meta.get("files", [])):
        raise NnslimError(f"{directory / META_FILE}: files lists no .safetensors weights")
    cls = type(model) if model is not None else transformers_class(directory)
    return cls.from_pretrained(str(directory), dtype=meta_dtype(meta, directory), use_safetensors=True,
                               trust_remote_code=False).eval()


def object_skeleton(directory: Path, weights: Path) -> torch.nn.Module:
    """The transformers class config.json names, built from it (its size checked against the weights first, on
    meta): what a torch-format artifact saved from a transformers object loads into."""
    from transformers import AutoConfig

    from .artifact import _check_config_size
    from .graph.modules import linear_conv1d

    cls = transformers_class(directory)
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    _check_config_size(None, weights, build=lambda: cls(config))
    return linear_conv1d(cls(config))
