"""Quantization math shared by every method: qparams, quantize, dequantize, fake-quant (STE).

Conventions (as ONNX QuantizeLinear): q = clamp(round(x / scale) + zero_point, qmin, qmax),
x_hat = (q - zero_point) * scale. Per-channel parameters broadcast along `axis`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import NnslimError


@dataclass(frozen=True)
class QScheme:
    bits: int = 8
    symmetric: bool = True
    signed: bool = True  # int8 (signed) or uint8 storage
    narrow_range: bool = False  # symmetric int8 in [-127, 127], keeping the range balanced

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise NnslimError(f"bits={self.bits} is not allowed; allowed: 2..8")

    @property
    def qmin(self) -> int:
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1


INT8_WEIGHT = QScheme(8, symmetric=True, signed=True, narrow_range=True)
INT7_WEIGHT = QScheme(7, symmetric=True, signed=True, narrow_range=True)  # stored as int8
UINT8_ACT = QScheme(8, symmetric=False, signed=False)


def choose_qparams(lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme, eps: float = 1e-8
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) covering [lo, hi] (tensors: one value per channel, or scalars).

    The range always contains 0 so that zero (padding, ReLU output) is exact.
    """
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros(()))
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = torch.maximum(-lo, hi)
        half = (qmax - qmin) / 2.0
        scale = torch.clamp(amax / half, min=eps)
        center = 0 if scheme.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, center, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=eps)
        zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def _shape_for(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QScheme,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes (int32 tensor) of x."""
    s, z = _shape_for(scale, x, axis), _shape_for(zero_point, x, axis)
    return torch.clamp(torch.round(x / s) + z, scheme.qmin, scheme.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
               ) -> torch.Tensor:
    s, z = _shape_for(scale, q, axis), _shape_for(zero_point, q, axis)
    return (q.to(torch.float32) - z) * s


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        ctx.save_for_backward(x, scale, zero_point)
        ctx.bounds = (qmin, qmax)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        inside = (x / scale + zero_point >= qmin) & (x / scale + zero_point <= qmax)
        return grad * inside, None, None, None, None  # straight-through inside the range


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QScheme,
                  axis: int | None = None) -> torch.Tensor:
    """quantize -> dequantize in float, with a straight-through gradient (for QAT)."""
    s = _shape_for(scale, x, axis).to(x.dtype)
    z = _shape_for(zero_point, x, axis).to(x.dtype)
    return _FakeQuantSTE.apply(x, s, z, scheme.qmin, scheme.qmax)


def weight_qparams(w: torch.Tensor, scheme: QScheme = INT8_WEIGHT, per_channel: bool = True, axis: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-based qparams of a weight: per output channel (axis) or per tensor."""
    if per_channel:
        dims = [d for d in range(w.dim()) if d != axis]
        lo, hi = w.amin(dim=dims), w.amax(dim=dims)
    else:
        lo, hi = w.min(), w.max()
    return choose_qparams(lo, hi, scheme)
