"""Recipe steps `onnx` and `onnx-fp16`: export, then check the graph against torch on another shape."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NnslimError
from ..recipe import StepConfig, register_method
from .base import OnnxModel, TorchRunner
from .onnx_export import convert_onnx_fp16, export_onnx
from .onnx_llm import graph_for_export
from .qdq import export_quantized_onnx, has_integer_onnx_layers

QDQ_TOLERANCE = 0.05
IR_FILE = "openvino_model.xml"  # the name optimum-intel's OVModel classes read
NBITS_TOLERANCE = 0.15


@dataclass(frozen=True)
class OnnxConfig(StepConfig):
    """Export to ONNX (fp32) with dynamic batch (and sequence) axes."""
    ranges = {"opset": (13, 23), "tolerance": (1e-12, 1e6)}
    opset: int = 18
    check: bool = True  # compare ONNX Runtime against torch on a shape other than the export example's
    tolerance: float = 1e-3  # max |onnx - torch| / max(1, max|torch|) accepted by the check
    past: bool = True  # causal LMs: export with a KV cache (past_key_values.* in, present.* out), as Optimum does


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
    # A causal LM exports with its KV cache: one graph for the prefill and every decode step.
    graph_model, example, axes = graph_for_export(model, ctx.export_example(), ctx.dynamic_axes, config.past)
    if graph_model is not model:
        ctx.notes.append(f"onnx: decoder with KV cache ({graph_model.n_layers} layers; inputs "
                         f"{', '.join(graph_model.input_names[:3])}, past_key_values.*; outputs logits, present.*)")
    if has_integer_onnx_layers(model):  # quantized layers export as integer QDQ, never as float ops
        if isinstance(config, OnnxFp16Config):
            raise NnslimError("onnx-fp16 cannot follow an integer quantization step; use method onnx (it writes "
                              "the int8/int4 QDQ graph)")
        onnx_model, notes = export_quantized_onnx(graph_model, example, path, axes, config.opset,
                                                  calibration=ctx.calibration if ctx.has_data else None)
        ctx.notes.extend(notes)
        tolerance = max(tolerance, QDQ_TOLERANCE)  # integer kernels vs float simulation: rounding differs
        if any(callable(getattr(m, "onnx_qdq_spec", None)) for m in model.modules()):
            # ONNX Runtime fuses blocked DQ -> MatMul into MatMulNBits, which by default computes with int8
            # activations (accuracy level 4): the torch weight-only model keeps float activations.
            tolerance = max(tolerance, NBITS_TOLERANCE)
            ctx.notes.append("weight-only ONNX: ONNX Runtime runs these layers as MatMulNBits with int8 "
                             "activations (its default accuracy level 4); the metrics above are of that")
    else:
        onnx_model = export_onnx(graph_model, example, path, dynamic_axes=axes, opset=config.opset)
    if config.check:
        check = ctx.check_example()
        ctx.notes.append(f"onnx check vs torch: relative max error "
                         f"{check_against_torch(model, onnx_model, check, tolerance):.2e}")
        if graph_model is not model:
            err = check_decode_step(model, onnx_model, check["input_ids"][:1], tolerance)
            ctx.notes.append(f"onnx check of a decode step with past vs torch: relative max error {err:.2e}")
    return onnx_model


def check_decode_step(module: torch.nn.Module, onnx_model: OnnxModel, ids: np.ndarray, tolerance: float) -> float:
    """Prefill all but the last token, then one decode step fed the graph's own present key/values: its logits
    must match torch's last-position logits on the whole sequence."""
    from .onnx_llm import past_from
    from .onnxruntime import OrtRunner

    runner = OrtRunner(onnx_model.path)
    ids = np.asarray(ids, dtype=np.int64)
    p = ids.shape[1] - 1
    out = runner.run_all({"input_ids": ids[:, :p]})
    feed = {"input_ids": ids[:, p:], "attention_mask": np.ones_like(ids),
            "position_ids": np.full((ids.shape[0], 1), p, np.int64)}
    feed.update(past_from(out))
    got = np.asarray(runner.run_all(feed)["logits"][:, -1], dtype=np.float32)
    ref = TorchRunner(module)({"input_ids": ids})[:, -1]
    err = float(np.abs(ref - got).max() / max(1.0, float(np.abs(ref).max())))
    if not err <= tolerance:
        raise NnslimError(f"the exported decoder's step with past differs from torch by {err:.3g} (relative) "
                          f"> tolerance={tolerance}")
    return err


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


@dataclass(frozen=True)
class OpenVinoConfig(OnnxConfig):
    """Export to ONNX (checked as the onnx step does), then write an OpenVINO IR (openvino_model.xml / .bin):
    integer weights stay integer in the .bin, float weights stay fp32 unless fp16_weights."""
    fp16_weights: bool = False  # store float weights as fp16 (OpenVINO's own default; computes in fp32)


@register_method("openvino", OpenVinoConfig, "export to an OpenVINO IR (openvino_model.xml/.bin) for OpenVINO",
                 produces="onnx", stage="export")
def apply_openvino(model, config: OpenVinoConfig, ctx) -> OnnxModel:
    from ..io import onnx_external_files
    from .openvino import onnx_to_ir

    onnx_model = _export(model, config, ctx)
    ir = onnx_to_ir(onnx_model.path, ctx.workdir / IR_FILE, config.fp16_weights)
    for p in [onnx_model.path, *(onnx_model.path.parent / n for n in onnx_external_files(onnx_model.path))]:
        p.unlink(missing_ok=True)
    ctx.notes.append(f"openvino: IR {IR_FILE} written from the checked ONNX graph (weights "
                     f"{'fp16' if config.fp16_weights else 'as exported'}); runs in OpenVINO only")
    return ir
