"""Side-by-side measurement of model variants (baseline and compressed) in one run: metrics, latency
interleaved, size on disk, parameters and peak memory, gathered into one Report."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..graph.modules import is_packed
from ..io import library_versions, machine_info
from ..runtime import OnnxModel, make_runner
from ..runtime.base import model_dtype
from ..runtime.float_fallbacks import float_layer_note
from .latency import measure_interleaved
from .memory import peak_memory_bytes
from .report import Report, VariantResult


def param_count(model) -> int | None:
    if isinstance(model, torch.nn.Module):
        seen, total = set(), 0
        for p in model.parameters():
            key = id(p) if p.is_meta else p.data_ptr()  # (every meta tensor's data_ptr is 0: a streamed model)
            if key not in seen:
                seen.add(key)
                total += p.numel()
        for m in model.modules():  # packed layers that hold their weights as buffers count as the layer they are
            if is_packed(m):
                own = [n for n, _ in m.named_parameters()]
                c = m.packed_config()
                if not any(n.endswith("weight") for n in own):
                    total += c["in_features"] * c["out_features"]
                if c.get("bias") and not any(n.endswith("bias") for n in own):
                    total += c["out_features"]
        return total
    return onnx_summary(str(model.path), model.path.stat().st_mtime_ns)[0]


@lru_cache(maxsize=32)
def onnx_summary(path: str, mtime_ns: int) -> tuple[int | None, str]:
    """(parameter count, dtype label) of an ONNX file, read once per file version."""
    if path.endswith(".xml"):  # an OpenVINO IR (rival tools' output in benchmarks)
        return None, "openvino-ir"
    import onnx

    proto = onnx.load(path, load_external_data=False)
    params = onnx_weight_count(proto.graph)
    types = {t.data_type for t in proto.graph.initializer}
    if onnx.TensorProto.INT8 in types:
        dtype = "int8"
    elif onnx.TensorProto.FLOAT16 in types:
        dtype = "float16" if onnx.TensorProto.FLOAT not in types else "mixed"
    else:
        dtype = "float32"
    return params, dtype


# (op, input index) of the tensors that are a layer's weights or bias in quantized ONNX ops; their other inputs
# (scales, zero points, group indices) are not parameters
_WEIGHT_INPUTS = {"DequantizeLinear": {0}, "QuantizeLinear": set(), "DynamicQuantizeLinear": set(),
                  "MatMulNBits": {1, 5}, "QLinearMatMul": {0, 3}, "QLinearConv": {3, 8}, "MatMulInteger": {0, 1},
                  "ConvInteger": {0, 1}, "DynamicQuantizeMatMul": {1, 4}, "MatMulIntegerToFloat": {1, 6},
                  "QAttention": {1, 3}, "QGemm": {3, 6}}


def onnx_weight_count(graph) -> int:
    """Parameters of an ONNX graph as a torch model counts them: weights and biases (an int4 MatMulNBits weight
    as its N x K values), not the quantization scales / zero points, shape constants or scalars beside them."""
    import onnx

    uses: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    total = 0
    for t in graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        used = uses.get(t.name, [])
        weight = any(i in _WEIGHT_INPUTS.get(node.op_type, ()) for node, i in used)  # (an int32 bias too)
        if n <= 1 or (not weight and t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32,
                                                         onnx.TensorProto.BOOL)):
            continue  # scalars, shapes, axes, indices, position-id and mask buffers
        if used and all(node.op_type in _WEIGHT_INPUTS and i not in _WEIGHT_INPUTS[node.op_type] for node, i in used):
            continue
        if used and t.name.lower().endswith("scale") and all(node.op_type in ("Mul", "Div") for node, _ in used):
            continue  # a dynamic int8 layer's weight scale (a Mul after MatMulInteger), a SmoothQuant divisor
        if t.name.startswith("nnslim_") and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue  # nnslim's own quantization scales (an int8 embedding table's per-row scales, gathered)
        nbits = next((node for node, i in used if node.op_type == "MatMulNBits" and i == 1), None)
        if nbits is not None:
            attrs = {a.name: a.i for a in nbits.attribute}
            n = attrs.get("N", 0) * attrs.get("K", 0) or n
        total += n
    return total


def size_on_disk(model) -> int:
    """Bytes of the saved file: the ONNX file(s), or the safetensors a torch model saves to."""
    if isinstance(model, OnnxModel):
        return model.size_bytes
    from safetensors.torch import save_model

    from ..io import remove_stale

    remove_stale(Path(tempfile.gettempdir()), "nnslim-size-")  # left by a killed run
    with tempfile.TemporaryDirectory(prefix=f"nnslim-size-{os.getpid()}-") as tmp:
        path = os.path.join(tmp, "m.safetensors")
        save_model(model, path)
        return os.path.getsize(path)


@dataclass
class Variant:
    """One model to put in a report: a name, the model, the backend that runs it, how to reload it."""
    name: str
    model: Any
    backend: str | None = None
    source: str | None = None
    size_bytes: int | None = None  # the files as written (artifact rows); else measured from the model


def _format(model) -> str:
    if isinstance(model, OnnxModel):
        return "openvino-ir" if model.is_ir else "onnx"
    return "torch"


def dtype_of(model) -> str:
    if isinstance(model, torch.nn.Module):
        return str(model_dtype(model)).replace("torch.", "")
    return onnx_summary(str(model.path), model.path.stat().st_mtime_ns)[1]


def compare(testbed, variants: list[Variant], batch: int | None = None, seq: int | None = None,
            repeats: int = 20, warmup: int = 3, memory: bool = True, metrics: bool = True,
            max_seconds: float | None = 120.0, threads: int | None = None) -> Report:
    """Evaluate every variant, time them interleaved in one run, measure peak memory: one Report."""
    batch = batch or testbed.default_batch
    seq = seq or testbed.default_seq
    inputs = testbed.example_inputs(batch=batch, seq=seq)
    variants, runners, dropped = _runnable(variants, inputs, threads)
    results = []
    for v, runner in zip(variants, runners):
        results.append(VariantResult(
            name=v.name, backend=runner.backend, format=_format(v.model),
            dtype=dtype_of(v.model),
            size_bytes=v.size_bytes if v.size_bytes is not None else size_on_disk(v.model), params=param_count(v.model),
            metrics=testbed.evaluate(runner) if metrics else {}))
    lat = measure_interleaved({str(i): (lambda r=r: r(inputs)) for i, r in enumerate(runners)}, batch=batch,
                              warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    for i, (v, res) in enumerate(zip(variants, results)):
        res.latency = lat[str(i)]
        if memory and v.source:
            res.peak_mem_bytes = peak_memory_bytes(v.source, res.backend, inputs)
    decode_notes = measure_decode(testbed, runners, results, rounds=min(3, repeats))
    fallback_notes = [n for v, r, res in zip(variants, runners, results)
                      if (n := float_layer_note(res.name, r, v.model)) is not None]
    report = Report(testbed=testbed.name, primary_metric=testbed.primary_metric,
                    higher_is_better=testbed.higher_is_better, batch=batch, seq=seq, variants=results,
                    machine=machine_info(), versions=library_versions())
    for res in results:
        bad = [k for k, x in res.metrics.items() if isinstance(x, float) and not np.isfinite(x)]
        if bad:
            report.notes.append(f"{res.name}: metrics {', '.join(bad)} are not finite (NaN/Inf; written as null)")
    report.notes.extend(dropped)
    report.notes.append(f"latency: {warmup} warm-up runs, then {lat['0'].runs} interleaved "
                        "rounds; median (p90); throughput = batch / median")
    report.notes.extend(decode_notes)
    report.notes.extend(fallback_notes)
    if memory:
        report.notes.append("peak mem: peak RSS of a fresh process loading the variant and running one batch, "
                            "minus that process's RSS after imports")
    return report


def _runnable(variants: list[Variant], inputs: dict, threads: int | None):
    """(variants, their runners, notes): a runtime that cannot load or run an ONNX graph that another runtime
    measures is left out with a note (OpenVINO has no wrap-mode Pad, for one); a model no runtime runs is an error
    naming the runtime and why."""
    from ..errors import NnslimError

    kept, runners, notes = [], [], []
    for v in variants:
        try:
            runner = make_runner(v.model, v.backend, threads=threads)
            runner(inputs)  # a runtime may load a graph it then fails to run
        except NnslimError:
            raise
        except Exception as e:  # noqa: BLE001 - any runtime's own failure, reported in one line
            others = [w for w in variants if w is not v and w.model is v.model]
            if isinstance(v.model, OnnxModel) and others:
                notes.append(f"{v.name}: not measured: {v.backend} cannot run this graph ({_reason(e)})")
                continue
            raise NnslimError(f"{v.name}: {v.backend} cannot run the model: {_reason(e)}") from None
        kept.append(v)
        runners.append(runner)
    return kept, runners, notes


def _reason(e: BaseException) -> str:
    """A runtime's error in one line: the line saying what is unsupported when there is one (OpenVINO's first
    lines name only its source files)."""
    import re

    from ..errors import first_line

    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if re.search(r"[Uu]nsupported|not supported|NOT_IMPLEMENTED|Conversion is failed",
                                                 ln)), None)
    return (hit or first_line(e))[:240]


def measure_decode(testbed, runners, results, rounds: int = 3) -> list[str]:
    """Decoder LMs: greedy decode tokens/s of every variant that has a KV-cache form (a torch model, or an
    ONNX graph exported with past), batch 1, rounds interleaved, median. Returns the report notes."""
    prompt_fn = getattr(testbed, "decode_prompt", None)
    able = [i for i, r in enumerate(runners) if getattr(r, "decodes", False)]
    if not callable(prompt_fn) or not able:
        return []
    prompt, new_tokens = prompt_fn(), getattr(testbed, "decode_tokens", 32)
    rates: dict[int, list[float]] = {i: [] for i in able}
    for i in able:  # warm-up
        runners[i].decode(prompt, 4)
    for r in range(max(1, rounds)):
        for i in able[r % len(able):] + able[:r % len(able)]:
            rates[i].append(runners[i].decode(prompt, new_tokens)[1])
    for i in able:
        results[i].decode_tok_s = float(np.median(rates[i]))
    notes = [f"decode: greedy, batch 1, prompt {prompt.shape[1]} + {new_tokens} new tokens with the KV cache "
             "(torch: nnslim's StaticDecoder for Llama-family models, else the HF model's own cache; ONNX: the "
             f"graph's past/present; ONNX Runtime's threads spin between the ops of a run, as by its default, and "
             f"stop between runs), prefill excluded; median of {max(1, rounds)} interleaved rounds"]
    missing = [results[i].name for i in range(len(runners)) if i not in able]
    if missing:
        notes.append(f"decode: not measured for {', '.join(missing)} (no KV cache in the graph: export with "
                     "past: true)")
    return notes


def variants_for(name: str, model, source: str | None, backend: str | None = None) -> list[Variant]:
    """A torch model gives one torch row; an ONNX model gives a row per runtime unless one is named."""
    if isinstance(model, OnnxModel):
        from ..runtime.onnx_lstm import needs_onnxruntime

        backends = [backend] if backend else (["openvino"] if model.is_ir else ["onnxruntime"] if any(
            needs_onnxruntime(g) for g in model.graphs) else ["onnxruntime", "openvino"])
        return [Variant(f"{name}" if len(backends) == 1 else f"{name} ({b})", model, b, source) for b in backends]
    return [Variant(name, model, backend or "torch", source)]
