"""The static KV cache of StaticDecoder: per layer, keys and values [B, kv_heads, L, D], stored in the
model's dtype (`model`) or as int8 / fp8 (e4m3) codes with one fp32 scale per (sequence, kv head,
position): symmetric absmax / qmax over the head dimension (the per-row primitive shared with W8A8's
activations, kernels/triton_w8a8.quantize_rows_torch). A quantized cache halves the bytes that every
decode step reads at long context; the fused attention kernel reads the codes and applies the
scales itself (kernels/triton_decode.py), the unfused path dequantizes with torch.
"""
from __future__ import annotations

import torch

from ..errors import NnslimError
from .rowquant import ROW_FORMATS, quantize_rows_torch, require_fp8

KV_FORMATS = ("model", "int8", "fp8")


def check_kv_format(fmt: str, device: torch.device) -> None:
    if fmt not in KV_FORMATS:
        raise NnslimError(f"kv_cache={fmt!r} is not allowed; allowed: {', '.join(KV_FORMATS)}")
    if fmt == "fp8":
        require_fp8(device, "kv_cache='fp8'", "use kv_cache='int8'")


class KVCache:
    def __init__(self, fmt: str, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        check_kv_format(fmt, device)
        self.fmt = fmt
        self.quantized = fmt != "model"
        store = ROW_FORMATS[fmt][0] if self.quantized else dtype
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=store, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=store, device=device) for _ in range(layers)]
        n = layers if self.quantized else 0
        self.ks = [torch.zeros(shape[:3], dtype=torch.float32, device=device) for _ in range(n)] or [None] * layers
        self.vs = [torch.zeros(shape[:3], dtype=torch.float32, device=device) for _ in range(n)] or [None] * layers

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.k, *self.v, *self.ks, *self.vs] if t is not None)

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """Store k, v [B, kv_heads, T, D] of layer i at positions pos [T]."""
        if not self.quantized:
            self.k[i].index_copy_(2, pos, k.to(self.k[i].dtype))
            self.v[i].index_copy_(2, pos, v.to(self.v[i].dtype))
            return
        for codes, scales, x in ((self.k[i], self.ks[i], k), (self.v[i], self.vs[i], v)):
            q, s = quantize_rows_torch(x, self.fmt)
            codes.view(torch.uint8).index_copy_(2, pos, q.view(torch.uint8))  # fp8 has no CPU index_copy
            scales.index_copy_(2, pos, s)

    def read(self, i: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer i [B, kv_heads, L, D] in dtype (dequantized when stored as codes)."""
        if not self.quantized:
            return self.k[i], self.v[i]
        return ((self.k[i].float() * self.ks[i][..., None]).to(dtype),
                (self.v[i].float() * self.vs[i][..., None]).to(dtype))

    def kernel_args(self, i: int) -> tuple:
        """(k, v, k_scale, v_scale) as the fused kernels take them (scales None for an unquantized cache)."""
        return self.k[i], self.v[i], self.ks[i], self.vs[i]
