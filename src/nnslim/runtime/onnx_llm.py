"""Decoder LLMs in ONNX with a KV cache, named as Optimum's `text-generation-with-past` export names them:

  inputs   input_ids [batch, seq], attention_mask [batch, past+seq], position_ids [batch, seq] (where the
           model takes them), past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
  outputs  logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past+seq, head_dim]

The same graph serves the prefill (past of length 0) and every decode step, so evaluation, latency and
token-by-token decode all run the artifact as written. `greedy_decode` drives it from any Runner that
returns every output (ONNX Runtime, OpenVINO).
"""
from __future__ import annotations

import inspect
import time

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError

PAST = "past_key_values."
PRESENT = "present."


class NoKVCache(NnslimError):
    """The model's cache is not per-layer keys / values (state-space models: Mamba, RWKV), or it takes none."""


def _cache_layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(la, "keys") and hasattr(la, "values") for la in layers):
        raise NoKVCache(f"the model's KV cache ({type(cache).__name__}) is not a per-layer key/value cache; "
                       "export it without past: a recipe step {method: onnx, past: false} after the method")
    return layers


class CausalLMWithPast(nn.Module):
    """An HF causal LM as forward(input_ids, attention_mask, [position_ids,] *past) -> (logits, *present)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        params = inspect.signature(lm.forward).parameters
        self.cache_arg = next((n for n in ("past_key_values", "cache") if n in params), None)
        if self.cache_arg is None:
            raise NoKVCache(f"{type(lm).__name__}.forward takes no past_key_values: it cannot be exported with a "
                           "KV cache; a recipe step {method: onnx, past: false} after the method exports it without")
        self.takes_positions = "position_ids" in params
        p = next(lm.parameters())
        with torch.no_grad():
            out = lm(input_ids=torch.zeros(1, 1, dtype=torch.long, device=p.device), use_cache=True)
        self.geometry = [(tuple(la.keys.shape[1:2]) + tuple(la.keys.shape[3:]),
                          tuple(la.values.shape[1:2]) + tuple(la.values.shape[3:]))
                         for la in _cache_layers(out.past_key_values)]
        self.n_layers = len(self.geometry)
        kv = [f"{i}.{k}" for i in range(self.n_layers) for k in ("key", "value")]
        self.input_names = (["input_ids", "attention_mask"] + (["position_ids"] if self.takes_positions else [])
                            + [PAST + n for n in kv])
        self.output_names = ["logits"] + [PRESENT + n for n in kv]

    def forward(self, input_ids, attention_mask, *rest):
        from transformers import DynamicCache

        positions, past = (rest[0], rest[1:]) if self.takes_positions else (None, rest)
        # Full layers, without the config: a sliding-window layer (Gemma 2/3, Mistral's window) would crop what
        # it keeps to the window at trace-time sizes, which the graph cannot follow past them; a full cache with
        # the model's own sliding-window masks attends to the same keys.
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)])
        kwargs = {"position_ids": positions} if self.takes_positions else {}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                      **{self.cache_arg: cache}, **kwargs)
        present = [t for la in _cache_layers(out.past_key_values) for t in (la.keys, la.values)]
        return (out.logits, *present)

    def example(self, input_ids: np.ndarray, past_len: int = 3) -> dict[str, np.ndarray]:
        """Inputs for tracing: the given ids after a random past of past_len tokens (so the past axis is symbolic)."""
        p = next(self.lm.parameters())
        ids = np.asarray(input_ids, dtype=np.int64)
        b, s = ids.shape
        rng = np.random.default_rng(0)
        out = {"input_ids": ids, "attention_mask": np.ones((b, past_len + s), np.int64)}
        if self.takes_positions:
            out["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + s), (b, s)).astype(np.int64)
        dtype = torch.empty(0, dtype=p.dtype).numpy().dtype if p.dtype != torch.bfloat16 else np.float32
        for i, (kg, vg) in enumerate(self.geometry):
            for name, g in (("key", kg), ("value", vg)):
                out[f"{PAST}{i}.{name}"] = rng.standard_normal((b, g[0], past_len, g[1])).astype(dtype)
        return out

    @torch.inference_mode()
    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run in torch on numpy inputs named as the graph's (missing mask / positions / past get their
        defaults, an empty past for a prefill); returns {output name: array}, as the ONNX runners do."""
        from .base import with_default_inputs

        p = next(self.lm.parameters())
        shapes = {f"{PAST}{i}.{k}": [None, g[0], None, g[1]]
                  for i, (kg, vg) in enumerate(self.geometry) for k, g in (("key", kg), ("value", vg))}
        feed = with_default_inputs(self.input_names, inputs, shapes)
        args = [torch.as_tensor(np.asarray(feed[n]), device=p.device) for n in self.input_names]
        args = [a.to(p.dtype) if a.is_floating_point() else a for a in args]
        out = self(*args)
        return {n: t.float().cpu().numpy() for n, t in zip(self.output_names, out)}

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total_seq"}}
        if self.takes_positions:
            axes["position_ids"] = {0: "batch", 1: "seq"}
        axes.update({n: {0: "batch", 2: "past_seq"} for n in self.input_names if n.startswith(PAST)})
        return axes


def graph_for_export(model: nn.Module, example: dict, axes: dict, past: bool = True):
    """(module, example inputs, dynamic axes) to export: a causal LM (a module with decoder_with_past())
    as its with-past form when `past`, anything else as it is."""
    make = getattr(model, "decoder_with_past", None)
    if not past or not callable(make):
        return model, example, axes
    graph = make()
    return graph, graph.example(example["input_ids"]), graph.dynamic_axes


def default_past(name: str, shape, batch: int, dtype=np.float32) -> np.ndarray:
    """An empty past (length 0) for graph input `name` whose declared shape is [batch, heads, past, head_dim]
    (heads and head_dim static in the graph)."""
    dims = list(shape)
    if len(dims) != 4 or not isinstance(dims[1], int) or not isinstance(dims[3], int):
        raise NnslimError(f"graph input {name!r} has shape {dims}; a past key/value input needs static heads and "
                          "head_dim ([batch, heads, past, head_dim])")
    return np.zeros((batch, dims[1], 0, dims[3]), dtype)


def takes_past(names) -> bool:
    return any(n.startswith(PAST) for n in names)


def past_from(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A step's present.* outputs renamed as the next step's past_key_values.* inputs."""
    return {PAST + k[len(PRESENT):]: v for k, v in outputs.items() if k.startswith(PRESENT)}


def greedy_decode(run_all, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy tokens after `prompt` [1, P] through a with-past graph. `run_all(feed) -> {name: array}` runs the
    graph and returns every output (inputs it does not take are ignored). Returns (tokens, prefill seconds,
    decode tokens/s with the prefill excluded)."""
    prompt = np.asarray(prompt, dtype=np.int64)
    b, p = prompt.shape
    feed = {"input_ids": prompt, "attention_mask": np.ones((b, p), np.int64),
            "position_ids": np.arange(p, dtype=np.int64)[None].repeat(b, 0)}
    start = time.perf_counter()
    out = run_all(feed)
    prefill = time.perf_counter() - start
    tokens = []
    start = time.perf_counter()
    for i in range(new_tokens):
        nxt = out["logits"][:, -1].argmax(-1).astype(np.int64)
        tokens.append(int(nxt[0]))
        if i == new_tokens - 1:
            break
        total = p + i + 1
        feed = {"input_ids": nxt[:, None], "attention_mask": np.ones((b, total), np.int64),
                "position_ids": np.full((b, 1), total - 1, np.int64)}
        feed.update(past_from(out))
        out = run_all(feed)
    elapsed = time.perf_counter() - start
    return tokens, prefill, (new_tokens - 1) / elapsed if new_tokens > 1 and elapsed > 0 else float("nan")
