"""Fold BatchNorm into the preceding convolution (exact in eval mode), before quantizing the weights.

Exporters fold BatchNorm too; folding first makes the quantized weights the ones that run.
Conv -> BatchNorm pairs are found with torch.fx; models fx cannot trace fall back to adjacent pairs
inside nn.Sequential containers.
"""
from __future__ import annotations

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter(bias * scale + shift)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # fx cannot trace data-dependent control flow: use the Sequential fallback
        return None
    mods = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), _BNS):
            src = node.args[0]
            if (getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), _CONVS)
                    and len(src.users) == 1):
                pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (n1, a), (n2, b) in zip(children, children[1:]):
                if isinstance(a, _CONVS) and isinstance(b, _BNS):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + n1, prefix + n2))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv->BatchNorm pair in place (BatchNorm becomes Identity); returns the count."""
    from .modules import replace_module

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    pairs = _pairs_fx(model)
    if pairs is None:
        pairs = _pairs_sequential(model)
    for conv_name, bn_name in pairs:
        _fold_pair(model.get_submodule(conv_name), model.get_submodule(bn_name))
        replace_module(model, bn_name, nn.Identity())
    return len(pairs)
