"""Perplexity of a causal LM streamed from its shards, one decoder block at a time (issue 19).

A streamed model (nnslim.load(dir, stream=True), compressed or not, its finished blocks possibly offloaded to
disk) never has all its weights in memory, so the usual evaluation (one full forward per window) would read
every block once per window. Here every evaluation window goes through block 0, then block 1, ... (each block
read once, run on all windows, dropped), and the last hidden states go through the model's own tail (final
norm, head) by re-running the model with its blocks replaced by stand-ins that hand back those states.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from ..graph.layerwise import _move_rest, call_block, capture_inputs, find_blocks
from ..graph.streaming import resident, retie, source_of
from ..io import big_allocations_mapped
from ..progress import progress, step_done
from .metrics import perplexity, token_nll


class _Replay(nn.Module):
    """Stands in for a decoder block: returns the states it is given (ignoring its input), shaped as the real
    block's output; other attributes (attention_type, ...) read from the real block."""

    def __init__(self, block: nn.Module, tuple_out: bool):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: its weights stay where they are
        self.state: torch.Tensor | None = None
        self.tuple_out = tuple_out

    def forward(self, *args, **kwargs):
        return (self.state,) if self.tuple_out else self.state

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


def streamed_perplexity(model: nn.Module, testbed) -> tuple[float, str]:
    """(perplexity of a streamed causal LM on `testbed`'s evaluation windows, the device it ran on: CUDA when
    there is one)."""
    if not hasattr(testbed, "eval_windows"):
        raise NnslimError(f"a streamed model is evaluated block by block as a causal LM (perplexity); testbed "
                          f"{testbed.name!r} is not one")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return layerwise_perplexity(model, testbed.eval_windows(), device), device


def layerwise_perplexity(model: nn.Module, windows: np.ndarray, device: str | torch.device = "cpu") -> float:
    """Perplexity of `model` (a causal LM) on token windows [n, seq], block by block."""
    with big_allocations_mapped(), torch.no_grad():  # blocks read and freed one by one: no heap holes
        return _perplexity(model, windows, device)


def _perplexity(model: nn.Module, windows: np.ndarray, device) -> float:
    source = source_of(model)
    if source is None:
        raise NnslimError("layer-wise evaluation is for a model streamed from its shards (nnslim.load(..., "
                          "stream=True)); evaluate a model in memory with nnslim.evaluate")
    device = torch.device(device)
    prefix, blocks = find_blocks(model)
    source.materialize(model, skip=blocks)  # embeddings, final norm, head
    retie(model)
    _move_rest(model, blocks, device)
    samples = [{"input_ids": torch.as_tensor(row[None])} for row in windows]
    try:
        states, kwargs = capture_inputs(model, blocks, samples, device)
        tuple_out = False
        bar = progress(range(len(blocks)), desc="perplexity, block by block", total=len(blocks))
        for i in bar:
            with resident(source, blocks[i], f"{prefix}.{i}") as block:
                block.to(device)
                for j in range(len(states)):
                    out = call_block(block, states[j], kwargs[j], raw=True)
                    tuple_out = isinstance(out, (tuple, list))
                    states[j] = out[0] if tuple_out else out
                block.to("cpu")
            step_done(bar, f"perplexity: block {i + 1}/{len(blocks)}", device)
        parent_name, attr = prefix.rsplit(".", 1) if "." in prefix else ("", prefix)
        parent = model.get_submodule(parent_name)
        stand_ins = nn.ModuleList([_Replay(b, tuple_out) for b in blocks])
        setattr(parent, attr, stand_ins)
        try:
            nll, count = 0.0, 0
            no_cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
            for sample, state in zip(samples, states):
                for r in stand_ins:
                    r.state = state
                out = model(input_ids=sample["input_ids"].to(device), **no_cache)
                logits = out.logits if hasattr(out, "logits") else out
                s, c = token_nll(logits.float().cpu().numpy(), sample["input_ids"].numpy())
                nll, count = nll + s, count + c
        finally:
            setattr(parent, attr, blocks)
    finally:
        _move_rest(model, blocks, torch.device("cpu"))
        if source.offload_dir is not None:
            source.settle(model)  # host memory ends as it began
    return perplexity(nll, count)
