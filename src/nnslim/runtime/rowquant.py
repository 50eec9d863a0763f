"""Per-row (per-token) symmetric int8 / fp8 quantization in torch, shared by W8A8 activations and weights,
the KV cache and the reference of the Triton row quantizer (kernels/triton_w8a8.py); no Triton import here,
so importing nnslim does not import Triton."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import NnslimError

FP8_MAX = 448.0  # float8_e4m3fn

ROW_FORMATS = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, FP8_MAX)}


def require_fp8(device: torch.device, option: str, instead: str) -> None:
    """A clear error when `option` asks for fp8 arithmetic on a CUDA GPU without it (compute capability below 8.9:
    no fp8 tensor cores, no fp8 conversions in cuBLAS or Triton)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise NnslimError(f"{option} needs a GPU with fp8 (compute capability 8.9 or newer); this one is {cap}: "
                          f"{instead}")


class PreQuantized(NamedTuple):
    """An activation already quantized per row (by the kernel that produced it, e.g. a fused RMSNorm):
    W8A8 linears that take it skip their own activation quantization."""
    q: torch.Tensor  # [M, K] int8 / float8_e4m3fn
    scale: torch.Tensor  # [M] fp32
    dtype: torch.dtype  # the activation dtype it stands for (the linear's output dtype)

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def device(self) -> torch.device:
        return self.q.device


def quantize_rows_torch(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization over the last dim in torch (the reference of `quantize_rows`, the CPU
    path, and the KV cache's): (codes int8 [-127, 127] or float8_e4m3fn, scale [...] fp32 = absmax / qmax)."""
    storage, qmax = ROW_FORMATS[fmt]
    xf = x.float()
    # the same values as abs().amax(), in one kernel; then in-place steps on fresh tensors: one row (a CPU decode
    # step) costs per-op overhead, not arithmetic
    scale = torch.linalg.vector_norm(xf, ord=float("inf"), dim=-1).clamp_(min=1e-12).div_(qmax)
    v = xf / scale[..., None]
    if fmt == "int8":
        v.round_()
    return v.clamp_(-qmax, qmax).to(storage), scale
