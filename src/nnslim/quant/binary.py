"""Binary weights (BinaryConnect / XNOR-Net): sign(W) scaled per output channel by mean|W|, optional
binary activations sign(x), trained with straight-through gradients. The first and last weight layers
stay float by default (they hold little of the model and most of its sensitivity).

`binary` wraps Linear/Conv layers in BinaryWrapper (float weights that training updates, binarized in
every forward); a later training step (`distill`) trains through them. The artifact stores each
binarized layer as BinaryLayer: 1 bit per weight (packed eight per byte) plus one float scale per
output channel, registered as a packed layer so nnslim.load rebuilds it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NnslimError
from ..graph.modules import register_packed, replace_module
from ..graph.scope import direct_reads, direct_reads_note, select_layers, split_mha
from ..recipe import StepConfig, register_method
from .modules import QUANTIZABLE, _Transparent


def sign_ste(x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """sign(x) in {-1, +1} forward; the identity gradient backward (zero where |x| > clip, if given)."""
    s = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    grad = x if clip is None else x * (x.abs() <= clip).to(x.dtype)
    return s.detach() + (grad - grad.detach())


def binarize(w: torch.Tensor) -> torch.Tensor:
    """alpha * sign(w), alpha = mean |w| per output channel (dim 0)."""
    alpha = w.detach().abs().reshape(w.shape[0], -1).mean(1).reshape(-1, *([1] * (w.dim() - 1)))
    return sign_ste(w) * alpha


def _layer_call(m: nn.Module, x: torch.Tensor, w: torch.Tensor, bias) -> torch.Tensor:
    return F.linear(x, w, bias) if isinstance(m, nn.Linear) else m._conv_forward(x, w, bias)


def _channel_view(shift: torch.Tensor, x: torch.Tensor, linear: bool) -> torch.Tensor:
    return shift if linear else shift.reshape(1, -1, *([1] * (x.dim() - 2)))


class BinaryWrapper(_Transparent):
    """A Linear/Conv trained with binarized weights and, optionally, binarized inputs sign(x - shift) with
    a learned per-channel shift (ReActNet's RSign: inputs after a ReLU are all >= 0, so a plain sign
    would carry nothing); the shift starts at each channel's mean on the first training batch."""
    _inner = "float_module"

    def __init__(self, float_module: nn.Module, activations: bool = False):
        super().__init__()
        self.float_module, self.activations = float_module, activations
        if activations:
            channels = float_module.in_features if isinstance(float_module, nn.Linear) else float_module.in_channels
            self.shift = nn.Parameter(torch.zeros(channels, dtype=float_module.weight.dtype))
            self.register_buffer("shift_ready", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.float_module
        if self.activations:
            linear = isinstance(m, nn.Linear)
            if not bool(self.shift_ready):
                with torch.no_grad():
                    dims = [d for d in range(x.dim()) if d != (x.dim() - 1 if linear else 1)]
                    self.shift.copy_(x.mean(dims))
                    self.shift_ready.fill_(True)
            x = sign_ste(x - _channel_view(self.shift, x, linear))
        return _layer_call(m, x, binarize(m.weight), m.bias)

    def packed_form(self) -> "BinaryLayer":
        return BinaryLayer.from_float(self.float_module, self.shift.detach() if self.activations else None)


def _conv_args(m: nn.Module) -> dict:
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in_features": m.in_features, "out_features": m.out_features}
    return {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding)
            if not isinstance(m.padding, str) else m.padding, "dilation": list(m.dilation), "groups": m.groups}


_CONVS = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}


@register_packed("binary")
class BinaryLayer(nn.Module):
    """A binarized Linear/Conv as stored: sign bits packed eight per byte, a float scale per output
    channel, the bias; the forward unpacks once per device/dtype and runs the float op."""

    def __init__(self, args: dict, bias: bool, activations: bool, dtype=torch.float32):
        super().__init__()
        self.args, self.activations = dict(args), activations
        self.layer = self._make(args, bias, dtype)
        channels = args["in_features"] if args["type"] == "linear" else args["in_channels"]
        self.register_buffer("shift", torch.zeros(channels, dtype=dtype) if activations else None)
        shape = self.layer.weight.shape
        del self.layer.weight
        self.weight_shape = tuple(shape)
        n = int(np.prod(shape))
        self.register_buffer("bits", torch.zeros(-(-n // 8), dtype=torch.uint8))
        self.register_buffer("alpha", torch.ones(shape[0], dtype=dtype))
        self._unpacked = None

    @property
    def weight(self) -> torch.Tensor:
        """A shape-and-dtype view on the meta device (graph/modules.py's PackedLinear): code reading a layer's
        `weight.dtype` works, and fused fast paths (nn.TransformerEncoderLayer) stand down."""
        return torch.empty(self.weight_shape, dtype=self.alpha.dtype, device="meta")

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    @staticmethod
    def _make(args: dict, bias: bool, dtype) -> nn.Module:
        if args["type"] == "linear":
            return nn.Linear(args["in_features"], args["out_features"], bias=bias, dtype=dtype)
        if args["type"] not in _CONVS:
            raise NnslimError(f"binary layer type {args['type']!r} is not allowed; allowed: linear, {', '.join(_CONVS)}")
        padding = args["padding"] if isinstance(args["padding"], str) else tuple(args["padding"])
        return _CONVS[args["type"]](args["in_channels"], args["out_channels"], tuple(args["kernel_size"]),
                                    tuple(args["stride"]), padding, tuple(args["dilation"]), args["groups"],
                                    bias=bias, dtype=dtype)

    @classmethod
    def from_float(cls, m: nn.Module, shift: torch.Tensor | None) -> "BinaryLayer":
        w = m.weight.detach()
        new = cls(_conv_args(m), m.bias is not None, shift is not None, w.dtype).to(w.device)
        if shift is not None:
            new.shift.copy_(shift)
        signs = (w.reshape(-1) >= 0).cpu().numpy()
        new.bits.copy_(torch.from_numpy(np.packbits(signs)))
        new.alpha.copy_(w.abs().reshape(w.shape[0], -1).mean(1))
        if m.bias is not None:
            new.layer.bias.data.copy_(m.bias.detach())
        return new

    def packed_config(self) -> dict:
        return {"args": self.args, "bias": self.layer.bias is not None, "activations": self.activations,
                "in_features": int(np.prod(self.weight_shape[1:])), "out_features": self.weight_shape[0]}

    @classmethod
    def from_packed_config(cls, cfg: dict, dtype: torch.dtype) -> "BinaryLayer":
        return cls(cfg["args"], cfg["bias"], cfg["activations"], dtype)

    def _apply(self, fn, *args, **kwargs):
        self._unpacked = None
        return super()._apply(fn, *args, **kwargs)

    def signed_weight(self) -> torch.Tensor:
        key = (self.bits.data_ptr(), self.bits._version, self.alpha._version)
        if self._unpacked is None or self._unpacked[0] != key:
            n = int(np.prod(self.weight_shape))
            bits = np.unpackbits(self.bits.cpu().numpy())[:n].astype(np.float32) * 2 - 1
            w = torch.from_numpy(bits).reshape(self.weight_shape).to(self.alpha.device, self.alpha.dtype)
            self._unpacked = (key, w * self.alpha.reshape(-1, *([1] * (w.dim() - 1))))
        return self._unpacked[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations:
            x = x - _channel_view(self.shift.to(x.dtype), x, self.args["type"] == "linear")
            x = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        return _layer_call(self.layer, x, self.signed_weight().to(x.dtype), self.layer.bias)


@dataclass(frozen=True)
class BinaryConfig(StepConfig):
    """Binary (1-bit) weights with per-channel scales; optional binary activations (XNOR-Net)."""
    activations: bool = False  # also binarize each binarized layer's input (sign)
    keep_first_last: bool = True  # the first and last weight layers stay float
    ignore: tuple[str, ...] = ()  # layer names, globs, "re:REGEX" or "type:ClassName"


def binarize_model(model: nn.Module, config: BinaryConfig, inplace: bool = False, notes: list | None = None
                   ) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise NnslimError(f"binary weights need a torch.nn.Module, got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    split_mha(model, config.ignore)
    read = direct_reads(model)  # a wrapper the model never calls would binarize nothing
    layers = {n: m for n, m in select_layers(model, QUANTIZABLE, config.ignore).items() if n not in read}
    every = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    kept = [every[0], every[-1]] if config.keep_first_last and len(every) > 1 else []
    targets = [n for n in layers if n not in kept]
    if not targets:
        raise NnslimError("binary: no Linear/Conv layer left to binarize (check `ignore` and keep_first_last)")
    for n in targets:
        replace_module(model, n, BinaryWrapper(layers[n], config.activations))
    if notes is not None:
        notes.append(f"binary: {len(targets)} layers with 1-bit weights{' and activations' if config.activations else ''}"
                     f"; kept float: {', '.join(kept) or 'none'}{direct_reads_note(model)}")
    return model


@register_method("binary", BinaryConfig, "binary 1-bit weights (sign x per-channel scale, STE), optional binary "
                 "activations; first/last layers float; packed 1-bit storage", verb="quantize")
def _apply(model, config: BinaryConfig, ctx):
    return binarize_model(model, config, inplace=True, notes=ctx.notes)
