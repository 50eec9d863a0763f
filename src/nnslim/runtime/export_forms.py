"""Modules the ONNX exporter gets wrong, rewritten for export only into the same computation in ops it handles.

nn.EmbeddingBag: torch.export's ONNX translation writes a Loop whose nodes are not topologically sorted
(onnx's checker rejects it; OpenVINO fails to read it). The rewrite gathers the rows (a Gather ONNX Runtime
and OpenVINO run, and that the int8 exporter can quantize like an Embedding) and reduces each bag with
index_add / scatter_reduce, for both input forms (2D fixed-size bags, 1D indices + offsets), per-sample
weights, padding_idx and include_last_offset. max_norm renormalizes the weight as a side effect of the call:
such a bag is left as it is.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


class ExportEmbeddingBag(nn.Module):
    """nn.EmbeddingBag's forward (inference) in gather + reduce ops; shares the bag's weight."""

    def __init__(self, bag: nn.EmbeddingBag):
        super().__init__()
        self.weight = bag.weight
        self.mode, self.padding_idx = bag.mode, bag.padding_idx
        self.include_last_offset = bag.include_last_offset

    def forward(self, input, offsets=None, per_sample_weights=None):
        if input.dim() == 2:
            n_bags = input.shape[0]
            bag_of = torch.arange(n_bags, device=input.device).unsqueeze(1).expand_as(input).reshape(-1)
            input = input.reshape(-1)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
        else:
            n = input.shape[0]
            starts = offsets[:-1] if self.include_last_offset else offsets
            n_bags = starts.shape[0]
            # bag of every index: how many bag starts (after the first) lie at or before it; starts beyond the
            # indices (empty last bags) land in the spare slot
            marks = torch.zeros(n + 1, dtype=torch.long, device=input.device)
            marks = marks.scatter_add(0, starts[1:].clamp(max=n), torch.ones_like(starts[1:]))
            bag_of = marks[:n].cumsum(0)
        rows = F.embedding(input, self.weight)
        keep = torch.ones_like(input, dtype=rows.dtype)
        if self.padding_idx is not None:  # padding entries count for no bag
            keep = (input != self.padding_idx).to(rows.dtype)
        if per_sample_weights is not None:
            rows = rows * per_sample_weights.unsqueeze(-1).to(rows.dtype)
        rows = rows * keep.unsqueeze(-1)
        out = rows.new_zeros(n_bags, rows.shape[-1])
        if self.mode == "max":
            fill = torch.where(keep.unsqueeze(-1) > 0, rows, torch.full_like(rows, float("-inf")))
            out = out.scatter_reduce(0, bag_of.unsqueeze(-1).expand_as(rows), fill, "amax", include_self=False)
            return torch.where(torch.isinf(out), torch.zeros_like(out), out)  # empty bags are zeros
        out = out.index_add(0, bag_of, rows)
        if self.mode == "mean":
            count = keep.new_zeros(n_bags).index_add(0, bag_of, keep)
            out = out / count.clamp(min=1).unsqueeze(-1)
        return out


def exportable(module: nn.Module) -> nn.Module:
    """`module` itself when nothing in it needs a rewrite, else a copy with the rewritten modules."""
    bags = [n for n, m in module.named_modules() if type(m) is nn.EmbeddingBag and m.max_norm is None]
    if not bags:
        return module
    from ..graph.modules import replace_module

    memo = {id(p): p for p in module.parameters()}  # the copy shares the weights: only the modules are new
    memo.update({id(b): b for b in module.buffers()})
    out = copy.deepcopy(module, memo)
    for name in bags:
        replace_module(out, name, ExportEmbeddingBag(out.get_submodule(name)))
    return out
