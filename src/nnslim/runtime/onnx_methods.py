"""Recipe steps `onnx` and `onnx-fp16`: export, then check the graph against torch on another shape."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NnslimError, first_line
from ..recipe import StepConfig, register_method
from .base import OnnxModel, TorchRunner
from .onnx_export import convert_onnx_fp16, export_onnx, share_transposed_initializers_in_file
from .onnx_llm import graph_for_export, takes_past
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
    from . import make_runner

    ref = TorchRunner(module)(inputs)
    shapes = {k: v.shape for k, v in inputs.items()}
    try:
        got = make_runner(onnx_model, "onnxruntime")(inputs)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own errors, reported on one line
        raise NnslimError(f"the exported ONNX graph fails in ONNX Runtime on input shapes {shapes} (the check runs "
                          f"another shape than the export example's): {first_line(e)[:300]}; the model's code "
                          "fixes a dimension that should vary (e.g. a Python loop over the sequence)") from e
    if ref.shape != got.shape:
        raise NnslimError(f"ONNX output shape {got.shape} != torch {ref.shape} on input shapes "
                          f"{ {k: v.shape for k, v in inputs.items()} }")
    err = float(np.abs(ref - got).max() / max(1.0, float(np.abs(ref).max())))
    if not err <= tolerance:  # NaN fails too
        raise NnslimError(f"exported ONNX differs from torch by {err:.3g} (relative) > tolerance={tolerance} "
                          f"on input shapes { {k: v.shape for k, v in inputs.items()} }")
    return err


def export_graphs(model: torch.nn.Module, example: dict, axes: dict, directory, opset: int = 18, past: bool = True,
                  calibration=None, quantized: bool | None = None) -> tuple[OnnxModel, list[str]]:
    """Export `model` as the graph(s) it deploys as: a causal LM with its KV cache (one graph for the prefill
    and every step), an encoder-decoder as Optimum's three graphs (onnx_seq2seq.py) when `past`, anything else
    as one graph; quantized layers as integer QDQ. Returns (model, notes)."""
    from pathlib import Path

    from .onnx_seq2seq import DECODER_FILE, WITH_PAST_FILE, export_layout, parts_of, share_decoder_weights

    notes: list[str] = []
    quantized = has_integer_onnx_layers(model) if quantized is None else quantized

    def one(part, part_example, path, part_axes, part_calibration):
        if quantized:
            # An encoder-decoder's two decoders would calibrate int8 attention products apart (the first on
            # whole targets, the one with past one token at a time), so generation through the cache would
            # differ from the graph that is measured: the decoders keep them float.
            written, part_notes = export_quantized_onnx(part, part_example, path, part_axes, opset,
                                                        calibration=part_calibration,
                                                        matmuls=path.name not in (DECODER_FILE, WITH_PAST_FILE))
            notes.extend(f"{path.name}: {n}" if path.name != "model.onnx" else n for n in part_notes)
        else:
            written = export_onnx(part, part_example, path, dynamic_axes=part_axes, opset=opset)
        shared = share_transposed_initializers_in_file(path)
        if shared:
            notes.append(f"{path.name}: a tied weight stored once ({', '.join(shared)}: a Transpose of it)")
        return written

    if past and callable(getattr(model, "encoder_decoder", None)):
        parts = parts_of(model)
        written = export_layout(parts, example, Path(directory), one, calibration)
        layers = parts[1][1].n_layers
        notes.insert(0, f"onnx: encoder-decoder as Optimum's seq2seq layout (encoder_model.onnx, decoder_model.onnx, "
                        f"decoder_with_past_model.onnx; {layers} decoder layers)")
        notes.extend(share_decoder_weights(Path(directory)))
        return written, notes
    graph_model, example, axes = graph_for_export(model, example, axes, past)
    if graph_model is not model:
        notes.append(f"onnx: decoder with KV cache ({graph_model.n_layers} layers; inputs "
                     f"{', '.join(graph_model.input_names[:3])}, past_key_values.*; outputs logits, present.*)")
    return one(graph_model, example, Path(directory) / "model.onnx", axes, calibration), notes


def _export(model, config: OnnxConfig, ctx) -> OnnxModel:
    if not isinstance(model, torch.nn.Module):
        raise NnslimError(f"step {config.method!r} needs a torch model, got {type(model).__name__}")
    tolerance = config.tolerance
    quantized = has_integer_onnx_layers(model)  # quantized layers export as integer QDQ, never as float ops
    if quantized and isinstance(config, OnnxFp16Config):
        raise NnslimError("onnx-fp16 cannot follow an integer quantization step; use method onnx (it writes "
                          "the int8/int4 QDQ graph)")
    from .base import model_dtype

    if not quantized and model_dtype(model) != torch.float32:  # "onnx" is float32 (onnx-fp16 converts after)
        import copy

        ctx.notes.append(f"onnx: the {str(model_dtype(model)).replace('torch.', '')} model exported in float32")
        model = copy.deepcopy(model).float()
    onnx_model, notes = export_graphs(model, ctx.export_example(), ctx.dynamic_axes, ctx.workdir, config.opset,
                                      config.past, ctx.calibration if ctx.has_data else None, quantized)
    ctx.notes.extend(notes)
    if quantized:
        tolerance = max(tolerance, QDQ_TOLERANCE)  # integer kernels vs float simulation: rounding differs
        if any(callable(getattr(m, "onnx_qdq_spec", None)) for m in model.modules()):
            # ONNX Runtime fuses blocked DQ -> MatMul into MatMulNBits, which by default computes with int8
            # activations (accuracy level 4): the torch weight-only model keeps float activations.
            tolerance = max(tolerance, NBITS_TOLERANCE)
            ctx.notes.append("weight-only ONNX: ONNX Runtime runs these layers as MatMulNBits with int8 "
                             "activations (its default accuracy level 4); the metrics above are of that")
    if config.check:
        check = ctx.check_example()
        ctx.notes.append(f"onnx check vs torch: relative max error "
                         f"{check_against_torch(model, onnx_model, check, tolerance):.2e}")
        if len(onnx_model.graphs) > 1:
            from . import make_runner
            from .onnx_seq2seq import check_step_with_past

            err = check_step_with_past(model, onnx_model, check, tolerance, make_runner)
            ctx.notes.append(f"onnx check of a decoder step with past vs torch: relative max error {err:.2e}")
        elif takes_past(_input_names(onnx_model)):
            err = check_decode_step(model, onnx_model, check["input_ids"][:1], tolerance)
            ctx.notes.append(f"onnx check of a decode step with past vs torch: relative max error {err:.2e}")
    return onnx_model


def _input_names(onnx_model: OnnxModel) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(onnx_model.path), load_external_data=False).graph.input]


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
    from .onnx_seq2seq import parts_of

    if config.past and isinstance(model, torch.nn.Module) and parts_of(model) is not None:
        raise NnslimError("onnx-fp16 of an encoder-decoder with past=true (Optimum's three graphs) is not supported "
                          "yet; allowed: past=false (one graph, no KV cache), or method onnx (fp32) / openvino")
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
    from .openvino import onnx_to_ir

    from .onnx_seq2seq import IR_FILES

    onnx_model = _export(model, config, ctx)
    graphs = onnx_model.graphs  # one, or an encoder-decoder's three (named as optimum-intel reads them)
    irs = [onnx_to_ir(g, ctx.workdir / (IR_FILES[g.name] if len(graphs) > 1 else IR_FILE), config.fp16_weights)
           for g in graphs]
    ir = irs[0]
    for p in onnx_model.files:
        p.unlink(missing_ok=True)
    ctx.notes.append(f"openvino: IR {', '.join(p.path.name for p in irs)} written from the checked ONNX graph "
                     f"(weights {'fp16' if config.fp16_weights else 'as exported'}); runs in OpenVINO only")
    return ir
