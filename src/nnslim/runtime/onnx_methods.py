"""Recipe steps `onnx` and `onnx-fp16`: export, then check the graph against torch on another shape."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NnslimError
from ..recipe import StepConfig, register_method
from .base import OnnxModel, TorchRunner
from .onnx_export import convert_onnx_fp16, export_onnx
from .qdq import export_quantized_onnx, has_integer_onnx_layers

QDQ_TOLERANCE = 0.05
NBITS_TOLERANCE = 0.15


@dataclass(frozen=True)
class OnnxConfig(StepConfig):
    """Export to ONNX (fp32) with dynamic batch (and sequence) axes."""
    ranges = {"opset": (13, 23), "tolerance": (1e-12, 1e6)}
    opset: int = 18
    check: bool = True  # compare ONNX Runtime against torch on a shape other than the export example's
    tolerance: float = 1e-3  # max |onnx - torch| / max(1, max|torch|) accepted by the check


@dataclass(frozen=True)
class OnnxFp16Config(OnnxConfig):
    """Export to ONNX, then convert weights and compute to fp16 (inputs/outputs stay fp32)."""
    tolerance: float = 5e-2


def check_against_torch(module: torch.nn.Module, onnx_model: OnnxModel, inputs, tolerance: float) -> float:
    from .onnxruntime import OrtRunner

    ref = TorchRunner(module)(inputs)
    got = OrtRunner(onnx_model.path)(inputs)
    if ref.shape != got.shape:
        raise NnslimError(f"ONNX output shape {got.shape} != torch {ref.shape} on input shapes "
                          f"{ {k: v.shape for k, v in inputs.items()} }")
    err = float(np.abs(ref - got).max() / max(1.0, float(np.abs(ref).max())))
    if not err <= tolerance:  # NaN fails too
        raise NnslimError(f"exported ONNX differs from torch by {err:.3g} (relative) > tolerance={tolerance} "
                          f"on input shapes { {k: v.shape for k, v in inputs.items()} }")
    return err


def _export(model, config: OnnxConfig, ctx) -> OnnxModel:
    if not isinstance(model, torch.nn.Module):
        raise NnslimError(f"step {config.method!r} needs a torch model, got {type(model).__name__}")
    path = ctx.workdir / "model.onnx"
    tolerance = config.tolerance
    if has_integer_onnx_layers(model):  # quantized layers export as integer QDQ, never as float ops
        if isinstance(config, OnnxFp16Config):
            raise NnslimError("onnx-fp16 cannot follow an integer quantization step; use method onnx (it writes "
                              "the int8/int4 QDQ graph)")
        onnx_model, notes = export_quantized_onnx(model, ctx.export_example(), path, ctx.dynamic_axes, config.opset)
        ctx.notes.extend(notes)
        tolerance = max(tolerance, QDQ_TOLERANCE)  # integer kernels vs float simulation: rounding differs
        if any(callable(getattr(m, "onnx_qdq_spec", None)) for m in model.modules()):
            # ONNX Runtime fuses blocked DQ -> MatMul into MatMulNBits, which by default computes with int8
            # activations (accuracy level 4): the torch weight-only model keeps float activations.
            tolerance = max(tolerance, NBITS_TOLERANCE)
            ctx.notes.append("weight-only ONNX: ONNX Runtime runs these layers as MatMulNBits with int8 "
                             "activations (its default accuracy level 4); the metrics above are of that")
    else:
        onnx_model = export_onnx(model, ctx.export_example(), path, dynamic_axes=ctx.dynamic_axes, opset=config.opset)
    if config.check:
        ctx.notes.append(f"onnx check vs torch: relative max error "
                         f"{check_against_torch(model, onnx_model, ctx.check_example(), tolerance):.2e}")
    return onnx_model


@register_method("onnx", OnnxConfig, "export to ONNX fp32 (runs in ONNX Runtime and OpenVINO)",
                 produces="onnx", stage="export")
def apply_onnx(model, config: OnnxConfig, ctx) -> OnnxModel:
    return _export(model, config, ctx)


@register_method("onnx-fp16", OnnxFp16Config, "export to ONNX, weights and compute in fp16, fp32 I/O",
                 produces="onnx", stage="export")
def apply_onnx_fp16(model, config: OnnxFp16Config, ctx) -> OnnxModel:
    fp32 = _export(model, config, ctx)
    tmp_path = fp32.path.with_name("model.fp32.onnx")
    fp32.path.rename(tmp_path)
    half = convert_onnx_fp16(tmp_path, ctx.workdir / "model.onnx")
    tmp_path.unlink()
    if config.check:
        ctx.notes.append(f"onnx-fp16 check vs torch: relative max error "
                         f"{check_against_torch(model, half, ctx.check_example(), config.tolerance):.2e}")
    return half
