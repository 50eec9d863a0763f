"""Fold BatchNorm into the preceding convolution (exact in eval mode), before quantizing the weights.

Exporters fold BatchNorm too; folding first makes the quantized weights the ones that run.
Conv -> BatchNorm pairs are found with torch.fx; in models fx cannot trace (Hugging Face ResNet, ...) they
are the adjacent pairs inside nn.Sequential containers and, given an example input, every BatchNorm that is
called on the very tensor a convolution returned in one run, kept only if the folded model gives the same
output on that input (a conv output also read by other code would make the fold wrong: it is then undone).
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


class _ConvLeaves(torch.fx.Tracer):
    """fx keeps only torch.nn's own modules whole: a subclass of a convolution or BatchNorm (transformers'
    EfficientNetDepthwiseConv2d) would be traced into a bare conv2d call and its pair missed."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_CONVS, *_BNS)) or super().is_leaf_module(m, qualname)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        gm = torch.fx.GraphModule(model, _ConvLeaves().trace(model))
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


@torch.no_grad()
def _run(model: nn.Module, example: dict) -> torch.Tensor:
    from ..runtime.base import TorchRunner, call_module, first_tensor

    return first_tensor(call_module(model, TorchRunner(model).to_tensors(example))).float()


def _pairs_traced(model: nn.Module, example: dict) -> list[tuple[str, str]]:
    """(conv, BatchNorm) where the BatchNorm, called once in a run on `example`, reads exactly the tensor the
    conv (called once) returned."""
    names = {m: n for n, m in model.named_modules()}
    made, kept, seen, calls = {}, [], [], {}

    def on_conv(mod, args, out):
        calls[names[mod]] = calls.get(names[mod], 0) + 1
        made[id(out)] = names[mod]
        kept.append(out)  # alive until the run ends: ids stay unique

    def on_bn(mod, args):
        calls[names[mod]] = calls.get(names[mod], 0) + 1
        if id(args[0]) in made:
            seen.append((made[id(args[0])], names[mod]))

    hooks = [m.register_forward_hook(on_conv) for m in names if isinstance(m, _CONVS)]
    hooks += [m.register_forward_pre_hook(on_bn) for m in names if isinstance(m, _BNS)]
    try:
        _run(model, example)
    finally:
        for h in hooks:
            h.remove()
    return [(c, b) for c, b in seen if calls[c] == 1 and calls[b] == 1]


def fold_batchnorm(model: nn.Module, example: dict | None = None) -> int:
    """Fold every Conv->BatchNorm pair in place (BatchNorm becomes Identity); returns the count."""
    from .modules import replace_module

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    pairs, checked = _pairs_fx(model), False
    if pairs is None and example is not None and any(isinstance(m, _BNS) for m in model.modules()):
        try:
            pairs, before, checked = _pairs_traced(model, example), _run(model, example), True
        except Exception:  # noqa: BLE001  (a bad example is reported by the caller's own data checks)
            pairs = None
    if pairs is None:
        pairs = _pairs_sequential(model)
    if checked:
        saved = [(c, b, model.get_submodule(c).weight.detach().clone(), model.get_submodule(c).bias,
                  model.get_submodule(b)) for c, b in pairs]
    for conv_name, bn_name in pairs:
        _fold_pair(model.get_submodule(conv_name), model.get_submodule(bn_name))
        replace_module(model, bn_name, nn.Identity())
    if checked and pairs:
        after = _run(model, example)
        if not torch.allclose(after, before, rtol=1e-3, atol=1e-4 * max(1.0, float(before.abs().max()))):
            with torch.no_grad():
                for c, b, weight, bias, bn in saved:  # not an exact fold: leave the model as it was
                    conv = model.get_submodule(c)
                    conv.weight.copy_(weight)
                    conv.bias = bias
                    replace_module(model, b, bn)
            return 0
    return len(pairs)
