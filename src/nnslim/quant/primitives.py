"""The one quantize / dequantize primitive of nnslim, for every granularity and format.

Conventions (as ONNX QuantizeLinear): q = clamp(round(x / scale) + zero_point, qmin, qmax),
x_hat = (q - zero_point) * scale. FP8 schemes store x / scale clamped to the format's range in
float8 (the cast rounds) and have no zero point.

Granularity comes from the shape of the parameters, as torchao's block sizes do:
  a scalar                   per tensor
  a vector with `axis`       per channel along that axis
  the rank of x              per block: each dim of the parameter divides x's dim, and one value
                             covers x.shape[d] // scale.shape[d] elements (per group: [N, K // g];
                             per row: [N, 1]; 2-D tiles: [N // b, K // b])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import NnslimError

FP8_MAX = 448.0  # float8 e4m3fn


@dataclass(frozen=True)
class QScheme:
    bits: int = 8
    symmetric: bool = True
    signed: bool = True  # int8 (signed) or uint8 storage
    narrow_range: bool = False  # symmetric int8 in [-127, 127], keeping the range balanced
    fp8: bool = False  # float8 e4m3 codes (symmetric, no zero point)

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise NnslimError(f"bits={self.bits} is not allowed; allowed: 1..8")

    @property
    def qmin(self) -> float:
        if self.fp8:
            return -FP8_MAX
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def qmax(self) -> float:
        if self.fp8:
            return FP8_MAX
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def storage(self) -> torch.dtype:
        """The dtype codes are kept in (packing of sub-byte codes is the caller's)."""
        if self.fp8:
            return torch.float8_e4m3fn
        return torch.int8 if self.signed else torch.uint8


INT8_WEIGHT = QScheme(8, symmetric=True, signed=True, narrow_range=True)
INT7_WEIGHT = QScheme(7, symmetric=True, signed=True, narrow_range=True)  # stored as int8
UINT8_ACT = QScheme(8, symmetric=False, signed=False)
FP8_E4M3 = QScheme(8, fp8=True)


def choose_qparams(lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme, eps: float = 1e-8
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) covering [lo, hi] (tensors of any shape: one value per tensor/channel/group).

    The range always contains 0 so that zero (padding, ReLU output) is exact.
    """
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros((), device=torch.as_tensor(lo).device))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros((), device=lo.device))
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.fp8:
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=eps)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
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


def expand(p: torch.Tensor, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """A quantization parameter broadcast against x (see the module docstring for the shapes)."""
    p = torch.as_tensor(p, device=x.device)
    if p.dim() == 0:
        return p
    if axis is not None and p.dim() == 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        return p.reshape(shape)
    if p.dim() != x.dim():
        raise ValueError(f"quantization parameter of shape {tuple(p.shape)} does not fit a tensor of shape "
                         f"{tuple(x.shape)}: give axis= for a per-channel vector, or one of the same rank")
    for d, (n, m) in enumerate(zip(x.shape, p.shape)):
        if m != n and m != 1:
            if n % m:
                raise ValueError(f"quantization parameter of shape {tuple(p.shape)} does not tile {tuple(x.shape)}")
            p = p.repeat_interleave(n // m, dim=d)
    return p


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int | None, scheme: QScheme,
             axis: int | None = None) -> torch.Tensor:
    """Codes of x: int32 for integer schemes, float8 for FP8 schemes."""
    s = expand(scale, x, axis).float()
    if scheme.fp8:
        return torch.clamp(x.float() / s, scheme.qmin, scheme.qmax).to(scheme.storage)
    z = 0 if zero_point is None else expand(zero_point, x, axis)
    return torch.clamp(torch.round(x.float() / s) + z, scheme.qmin, scheme.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int | None = None,
               axis: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    s = expand(scale, q, axis).float()
    z = 0 if zero_point is None else expand(zero_point, q, axis).float()
    return ((q.float() - z) * s).to(dtype)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int | None, scheme: QScheme,
                  axis: int | None = None) -> torch.Tensor:
    """quantize -> dequantize in x's dtype, differentiable for training (QAT): rounding is straight-through,
    so x gets the gradient inside the range and none outside it, and a scale that requires grad gets
    LSQ's gradient (round(v) - v inside the range, the clamped code outside)."""
    s = expand(scale, x, axis).to(x.dtype)
    if scheme.fp8:
        return torch.clamp(x / s, scheme.qmin, scheme.qmax).to(scheme.storage).to(x.dtype) * s
    z = 0.0 if zero_point is None else expand(zero_point, x, axis).to(x.dtype)
    v = torch.clamp(x / s + z, scheme.qmin, scheme.qmax)
    q = v.detach().round() + (v - v.detach())  # the exact integer forward, the identity backward
    return (q - z) * s


def weight_qparams(w: torch.Tensor, scheme: QScheme = INT8_WEIGHT, per_channel: bool = True, axis: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-based qparams of a weight: per output channel (a vector along `axis`) or per tensor."""
    if per_channel:
        dims = [d for d in range(w.dim()) if d != axis]
        lo, hi = w.amin(dim=dims), w.amax(dim=dims)
    else:
        lo, hi = w.min(), w.max()
    return choose_qparams(lo, hi, scheme)


def block_qparams(x: torch.Tensor, block: tuple[int, ...], scheme: QScheme, clip: torch.Tensor | float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Range-based qparams per block of x (block[d] elements along dim d; -1 = the whole dim), shrunk by
    `clip` (a float, or one ratio per block). Returns parameters of x's rank, e.g. [N, K // g] for
    block (1, g): the per-group form that quantize/dequantize take."""
    shape = []
    for n, b in zip(x.shape, block):
        b = n if b == -1 else b
        if n % b:
            raise ValueError(f"block {block} does not tile a tensor of shape {tuple(x.shape)}")
        shape += [n // b, b]
    xb = x.float().reshape(shape)
    dims = tuple(range(1, len(shape), 2))
    lo, hi = xb.amin(dim=dims), xb.amax(dim=dims)
    if not isinstance(clip, float) or clip != 1.0:
        lo, hi = lo * clip, hi * clip
    return choose_qparams(lo, hi, scheme)
