"""FP16 / BF16 conversion of a torch model: every floating-point parameter and buffer cast."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..recipe import StepConfig, register_method


@dataclass(frozen=True)
class Fp16Config(StepConfig):
    """Cast weights and compute to float16 (halves the size; speed depends on the hardware)."""


@dataclass(frozen=True)
class Bf16Config(StepConfig):
    """Cast weights and compute to bfloat16 (fp32's range, 8-bit mantissa)."""


def cast_model(model: torch.nn.Module, dtype: torch.dtype, inplace: bool = False) -> torch.nn.Module:
    """A copy of `model` (or the model itself if inplace) with floating tensors in `dtype`."""
    if not isinstance(model, torch.nn.Module):
        from ..errors import NnslimError
        raise NnslimError(f"casting to {dtype} needs a torch.nn.Module, got {type(model).__name__}")
    out = model if inplace else copy.deepcopy(model)
    return out.to(dtype).eval()


@register_method("fp16", Fp16Config, "cast weights and activations to float16", stage="quantize")
def apply_fp16(model, config: Fp16Config, ctx) -> torch.nn.Module:
    return cast_model(model, torch.float16, inplace=True)


@register_method("bf16", Bf16Config, "cast weights and activations to bfloat16", stage="quantize")
def apply_bf16(model, config: Bf16Config, ctx) -> torch.nn.Module:
    return cast_model(model, torch.bfloat16, inplace=True)
