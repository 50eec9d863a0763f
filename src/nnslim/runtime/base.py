"""The Runner interface and the torch backend."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX model on disk (the result of an export step); weights may sit in `<path>.data`."""
    path: Path

    @property
    def is_ir(self) -> bool:
        """An OpenVINO IR (.xml + .bin) rather than an ONNX file: it runs in OpenVINO only."""
        return self.path.suffix == ".xml"

    @property
    def graphs(self) -> list[Path]:
        """The graph files of this model: the one file, or an encoder-decoder's three (runtime/onnx_seq2seq.py)."""
        from .onnx_seq2seq import is_seq2seq_layout, layout_files

        return layout_files(self.path) if is_seq2seq_layout(self.path) else [self.path]

    @property
    def files(self) -> list[Path]:
        """Every file the model is made of: its graphs and the weights files they refer to (ONNX external data,
        or an OpenVINO IR's .bin)."""
        if self.is_ir:
            return [f for g in self.graphs for f in (g, g.with_suffix(".bin"))]
        from ..io import onnx_external_files

        # dict.fromkeys: a weights file shared by several graphs (an encoder-decoder's two decoders) counts once
        return list(dict.fromkeys(f for g in self.graphs for f in [g, *(g.parent / n for n in onnx_external_files(g))]))

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files if p.exists())


class Runner(ABC):
    """Runs a model on named numpy inputs and returns its first output as float32 numpy."""
    backend = "abstract"

    @abstractmethod
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch."""

    decodes = False  # can it decode token by token with a KV cache (decode / run_all)?

    def decode(self, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float]:
        """Greedy tokens after prompt [1, P] and the decode rate in tokens/s (prefill excluded)."""
        from .onnx_llm import greedy_decode

        tokens, _, rate = greedy_decode(self.run_all, prompt, new_tokens)
        return tokens, rate


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def tensor_leaves(out, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a module's output with names, in order: a tensor, a dict / HF ModelOutput (by key), a
    dataclass (by field), a tuple / list (by index), nested; other values are left out."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, Mapping):
        items = list(out.items())
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    elif isinstance(out, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        return []
    leaves = []
    for key, value in items:
        name = str(key) if prefix == "output" and not str(key).isdigit() else f"{prefix}_{key}"
        leaves += tensor_leaves(value, name)
    return leaves


def first_tensor(out) -> torch.Tensor:
    """The main output of a module: a tensor; the logits / last_hidden_state of a HF ModelOutput, a dict or a
    dataclass; else its first tensor (see tensor_leaves)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = out.get(key) if isinstance(out, Mapping) else getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    leaves = tensor_leaves(out)
    if leaves:
        return leaves[0][1]
    raise TypeError(f"cannot take a tensor output from {type(out).__name__}")


def by_name(module: torch.nn.Module, inputs: dict) -> bool:
    """Can module(**inputs) bind? (an nn.Sequential or forward(x) takes its one input by position)."""
    import inspect

    try:
        inspect.signature(module.forward).bind(**inputs)
        return True
    except (TypeError, ValueError):
        return False


def call_module(module: torch.nn.Module, inputs: dict):
    """module(**inputs), or module(*values) when the names are not the forward's parameter names."""
    return module(**inputs) if by_name(module, inputs) else module(*inputs.values())


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()
        self.dtype = model_dtype(module)
        self.device = model_device(module)

    def to_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in inputs.items():
            t = torch.as_tensor(value, device=self.device)
            out[name] = t.to(self.dtype) if t.is_floating_point() else t
        return out

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = first_tensor(call_module(self.module, self.to_tensors(inputs)))
        return out.float().cpu().numpy()

    @property
    def decodes(self) -> bool:
        """Can it decode token by token with a KV cache (run_all)?"""
        return callable(getattr(self.module, "decoder_with_past", None))

    def decode(self, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float]:
        """Llama-family models decode through StaticDecoder (static KV cache, nnslim's fastest torch path);
        others through the HF model's own DynamicCache (run_all)."""
        from ..errors import NnslimError
        from .decode import StaticDecoder
        from .onnx_llm import NoKVCache

        prompt = np.asarray(prompt, dtype=np.int64)
        if getattr(self, "_own_cache", False):  # found below on an earlier call: no KV-cache form to try again
            return generate_decode(self.module.lm, prompt, new_tokens)
        try:
            dec = StaticDecoder(self.module.lm, prompt.shape[1] + new_tokens)
        except (NnslimError, AttributeError):
            try:
                return super().decode(prompt, new_tokens)
            except NoKVCache:  # a state-space model's own cache: its generate()
                self._own_cache = True
                return generate_decode(self.module.lm, prompt, new_tokens)
        return dec.generate(torch.as_tensor(prompt), new_tokens)

    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name, as the ONNX runners give them: a model of several named outputs (`output_names`:
        a detector's logits and boxes), or a decoder LM with its KV cache (logits and present.*)."""
        names = getattr(self.module, "output_names", None)
        if names and not callable(getattr(self.module, "decoder_with_past", None)):
            with torch.inference_mode():
                out = call_module(self.module, self.to_tensors(inputs))
            return {n: t.float().cpu().numpy() for n, t in zip(names, out)}
        if getattr(self, "_with_past", None) is None:
            make = getattr(self.module, "decoder_with_past", None)
            if not callable(make):
                raise TypeError(f"{type(self.module).__name__} has no KV-cache form (decoder_with_past)")
            self._with_past = make().eval()
        return self._with_past.run_all(inputs)


# Inputs that exporters (Optimum) add and that have one obvious value when a data source does not feed them.
DEFAULTABLE_INPUTS = ("token_type_ids", "position_ids", "attention_mask")


def defaultable(name: str) -> bool:
    """Does a graph input of this name get a default value when the data does not feed it?"""
    from .onnx_llm import PAST

    return name in DEFAULTABLE_INPUTS or name.startswith(PAST)


def with_default_inputs(names, inputs: dict[str, np.ndarray], shapes: dict | None = None) -> dict[str, np.ndarray]:
    """`inputs` plus the inputs a graph takes that have one obvious value when not given: token_type_ids
    (zeros), attention_mask (ones), position_ids (0..seq-1) and, for a decoder exported with a KV cache, an
    empty past (`shapes` gives each graph input's declared shape: static heads and head_dim)."""
    missing = [n for n in names if n not in inputs]
    if not missing or "input_ids" not in inputs:
        return inputs
    from .onnx_llm import PAST, default_past

    ids = np.asarray(inputs["input_ids"])
    out = dict(inputs)
    for name in missing:
        if name == "token_type_ids":
            out[name] = np.zeros_like(ids)
        elif name == "attention_mask":
            out[name] = np.ones_like(ids)
        elif name == "position_ids":
            out[name] = np.broadcast_to(np.arange(ids.shape[-1], dtype=ids.dtype), ids.shape).copy()
        elif name.startswith(PAST) and shapes is not None:
            out[name] = default_past(name, shapes[name], ids.shape[0])
    return out


@torch.inference_mode()
def generate_decode(lm: torch.nn.Module, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float]:
    """Greedy tokens and decode tokens/s through a Hugging Face LM's own generate() and cache (models whose cache
    is not per-layer keys / values: Mamba). generate() times the prefill with the tokens, so the rate is taken
    from two runs: (new_tokens - 1) / (time of new_tokens - time of 1 token)."""
    import time

    ids = torch.as_tensor(prompt, device=model_device(lm))
    kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))

    def timed(n: int):
        start = time.perf_counter()
        out = lm.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        return out, time.perf_counter() - start

    out, full = timed(new_tokens)
    _, first = timed(1)
    rate = (new_tokens - 1) / (full - first) if new_tokens > 1 and full > first else float("nan")
    return out[0, ids.shape[1]:].tolist(), rate
