"""Low-bit weight formats: grouped qparams, packing (two int4 codes per byte), dequantization.

Canonical storage of a quantized Linear weight W [N, K] (what is saved in safetensors):
  qweight  uint8 [N, ceil(K * bits / 8)]   codes in [0, 2**bits), packed along K, low bits first
  scales   [N, K // group]                  in the model's float dtype
  zeros    uint8 [N, K // group]            integer zero points (2**(bits-1) when symmetric)
so that W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g] with g = k // group. Codes are unsigned, as
in GPTQ/AWQ checkpoints; the qparams come from the package's shared `choose_qparams`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import NnslimError
from ..primitives import QScheme, block_qparams, dequantize, quantize

BITS = (2, 3, 4, 8)
GROUP_SIZES = (-1, 32, 64, 128, 256)  # -1: one group per output channel (per-channel)


@dataclass(frozen=True)
class WeightSpec:
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self):
        if self.bits not in BITS:
            raise NnslimError(f"bits={self.bits} is not allowed; allowed: {', '.join(map(str, BITS))}")
        if self.group_size not in GROUP_SIZES:
            raise NnslimError(f"group_size={self.group_size} is not allowed; allowed: "
                              f"{', '.join(map(str, GROUP_SIZES))} (-1 = per output channel)")

    @property
    def scheme(self) -> QScheme:
        return QScheme(self.bits, symmetric=self.symmetric, signed=False)

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    def group_for(self, in_features: int, layer: str = "") -> int:
        """The group length for a layer with `in_features` inputs; error if it does not divide."""
        if self.group_size == -1:
            return in_features
        if in_features % self.group_size:
            divisors = [g for g in GROUP_SIZES if g > 0 and in_features % g == 0]
            raise NnslimError(
                f"group_size={self.group_size} does not divide in_features={in_features} of layer "
                f"{layer or '?'}; allowed for this layer: {', '.join(map(str, divisors)) or 'none'} "
                "or -1 (per channel); or add the layer to `ignore`")
        return self.group_size


def group_qparams(w: torch.Tensor, spec: WeightSpec, group: int, clip: torch.Tensor | float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [N, G] fp32, zero [N, G] int32) from each group's range, shrunk by `clip` (AWQ/MSE search)."""
    return block_qparams(w, (1, group), spec.scheme, clip)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Integer codes [N, K] (int32) of w for per-group scale/zero [N, G]."""
    return quantize(w, scale, zero, spec.scheme)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return dequantize(q, scale, zero, dtype=dtype)


def fake_quantize_weight(w: torch.Tensor, spec: WeightSpec, group: int, clip: torch.Tensor | float = 1.0
                         ) -> torch.Tensor:
    """Round-to-nearest quantize -> dequantize of a weight (used by searches and RTN)."""
    scale, zero = group_qparams(w, spec, group, clip)
    return dequantize_codes(quantize_codes(w, scale, zero, spec), scale, zero, w.dtype)


def per_byte(bits: int) -> int:
    return 8 // bits if 8 % bits == 0 else 1  # int3 is kept one code per byte


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [N, K] in [0, 2**bits) -> uint8 [N, ceil(K / per_byte)], low bits first."""
    n = per_byte(bits)
    q = q.to(torch.uint8)
    if n == 1:
        return q.contiguous()
    pad = (-q.shape[1]) % n
    if pad:
        q = torch.nn.functional.pad(q, (0, pad))
    q = q.reshape(q.shape[0], -1, n)
    out = torch.zeros(q.shape[:2], dtype=torch.uint8, device=q.device)
    for i in range(n):
        out |= q[..., i] << (bits * i)
    return out


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of pack: uint8 [N, *] -> int32 codes [N, k]."""
    n = per_byte(bits)
    if n == 1:
        return packed[:, :k].to(torch.int32)
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(n)]
    return torch.stack(parts, dim=-1).reshape(packed.shape[0], -1)[:, :k].to(torch.int32)
