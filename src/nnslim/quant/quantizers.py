"""Fake-quantizers: the compression state of a quantized layer that training sees and keeps.

Every quantizer rounds with a straight-through estimator (quant.primitives.fake_quantize), so a layer
that holds them can be trained (QAT) and still deploys as real integers afterwards.

WeightQuantizer (symmetric, per output channel or per tensor):
  minmax  the scale follows the weight's current range at every call (plain STE QAT; PTQ)
  lsq     the scale is a learnable parameter (LSQ, Esser et al. 2020), initialised from the range
ActQuantizer (per tensor; asymmetric uint8, or symmetric int8 with zero point 0 for a signed range when asked):
  fixed   scale / zero point from PTQ calibration
  lsq     learnable scale (zero point fixed from calibration)
  pact    learnable clipping range [lo, hi] (PACT, Choi et al. 2018), initialised from calibration
  dynamic the range of each call, as ONNX DynamicQuantizeLinear
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .primitives import QScheme, choose_qparams, fake_quantize, quantize, weight_qparams

WeightMode = Literal["minmax", "lsq"]
ActMode = Literal["fixed", "lsq", "pact", "dynamic"]


def _grad_scaled(p: torch.Tensor, factor: float) -> torch.Tensor:
    """p in the forward pass, p's gradient times `factor` in the backward pass (LSQ's step-size scaling)."""
    return (p - p * factor).detach() + p * factor


def weight_scheme(bits: int) -> QScheme:
    """Symmetric signed codes in [-(2^(b-1) - 1), 2^(b-1) - 1] (narrow: the range stays balanced)."""
    return QScheme(bits, symmetric=True, signed=True, narrow_range=True)


def act_scheme(bits: int, signed: bool = False) -> QScheme:
    """uint8 with a zero point; or (signed) int8 symmetric, zero point 0, as NNCF's CNN preset quantizes a
    tensor with negative values (OpenVINO's int8 convolutions then need no zero-point compensation)."""
    return QScheme(bits, symmetric=signed, signed=signed)


class WeightQuantizer(nn.Module):
    def __init__(self, weight: torch.Tensor, bits: int = 8, per_channel: bool = True, mode: WeightMode = "minmax"):
        super().__init__()
        self.bits, self.per_channel, self.mode = bits, per_channel, mode
        scale, _ = weight_qparams(weight.detach().float(), self.scheme, per_channel=per_channel, axis=0)
        if mode == "lsq":
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    @property
    def scheme(self) -> QScheme:
        return weight_scheme(self.bits)

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "minmax":  # follows the weight as it trains (a no-op change in PTQ)
            with torch.no_grad():
                scale, _ = weight_qparams(w.detach().float(), self.scheme, per_channel=self.per_channel, axis=0)
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                # a new tensor, not copy_(): a layer called twice in one forward (LayoutLM's x-position table, for
                # the left and right of each box) saved the first call's scale for its backward
                self.scale = scale.to(self.scale.dtype)
            else:  # (in place: a tensor made under inference_mode could not be used by a later training step)
                self.scale.copy_(scale)
        return self.scale

    def _axis(self) -> int | None:
        return 0 if self.per_channel else None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.current_scale(w)
        if self.mode == "lsq" and self.training:
            per_scale = w.numel() // max(s.numel(), 1)
            s = _grad_scaled(s, 1.0 / math.sqrt(per_scale * self.scheme.qmax))
        return fake_quantize(w, s, None, self.scheme, self._axis())

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of `w` with the current scale."""
        return quantize(w.detach().float(), self.current_scale(w).detach(), None, self.scheme, self._axis())

    def slice_(self, keep: torch.Tensor) -> None:
        """Keep the scales of output channels `keep` (structural pruning of a quantized layer)."""
        if self.per_channel:
            new = self.scale.detach().index_select(0, keep.to(self.scale.device)).clone()
            if isinstance(self.scale, nn.Parameter):
                self.scale = nn.Parameter(new)
            else:
                self.scale = new

    def extra_repr(self) -> str:
        return f"int{self.bits}, per-{'channel' if self.per_channel else 'tensor'}, {self.mode}"


class ActQuantizer(nn.Module):
    def __init__(self, bits: int = 8, mode: ActMode = "fixed", lo: float = 0.0, hi: float = 1.0,
                 symmetric: bool = False):
        """symmetric: a range with negative values gets int8 codes with zero point 0 (fixed / lsq modes);
        a non-negative one stays uint8 (its zero point is 0 either way)."""
        super().__init__()
        self.bits, self.mode = bits, mode
        self.signed = bool(symmetric and mode in ("fixed", "lsq") and lo < 0)
        lo_t, hi_t = torch.tensor(float(min(lo, 0.0))), torch.tensor(float(max(hi, 0.0)))
        scale, zp = choose_qparams(lo_t, hi_t, self.scheme)
        if mode == "pact":
            self.lo, self.hi = nn.Parameter(lo_t), nn.Parameter(hi_t)
        elif mode == "lsq":
            self.scale = nn.Parameter(scale.reshape(()))
            self.register_buffer("zero_point", zp.reshape(()))
        elif mode == "fixed":
            self.register_buffer("scale", scale.reshape(()))
            self.register_buffer("zero_point", zp.reshape(()))

    @property
    def scheme(self) -> QScheme:
        return act_scheme(self.bits, self.signed)

    def qparams(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) as the forward uses them (for `dynamic`, those of x)."""
        if self.mode == "dynamic":
            return choose_qparams(x.detach().min(), x.detach().max(), self.scheme)
        if self.mode == "pact":
            lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
            scale = torch.clamp((hi - lo) / (self.scheme.qmax - self.scheme.qmin), min=1e-8)
            zp = torch.clamp(torch.round(self.scheme.qmin - lo.detach() / scale.detach()), self.scheme.qmin,
                             self.scheme.qmax)
            return scale, zp
        return self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zp = self.qparams(x)
        if self.mode == "pact":  # clip with a gradient for the range ends, then round (STE)
            x = torch.minimum(torch.maximum(x, self.lo.to(x.dtype)), self.hi.to(x.dtype))
        elif self.mode == "lsq" and self.training:
            scale = _grad_scaled(scale, 1.0 / math.sqrt(max(x.numel(), 1) * self.scheme.qmax))
        return fake_quantize(x, scale.to(x.dtype), zp, self.scheme)

    def export_qparams(self) -> tuple[float, int] | None:
        """Static (scale, zero point) for a QDQ graph; None when the range is dynamic."""
        if self.mode == "dynamic":
            return None
        scale, zp = self.qparams()
        return float(scale.detach()), int(zp.detach())

    def extra_repr(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}, {self.mode}"


