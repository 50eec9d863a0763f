"""Which quantized layers of an ONNX graph a runtime actually runs in float.

A QDQ graph only says which layers are meant to be integer: each runtime fuses the groups it has integer
kernels for and runs the rest as float ops on dequantized tensors (ONNX Runtime 1.32 and OpenVINO 2026.4
both do so for a QDQ ConvTranspose, for example). The report names those layers, so that "int8" is never
claimed for a layer the runtime computes in float.

A quantized layer is a Conv / ConvTranspose / MatMul / Gemm whose weight (input 1) is a DequantizeLinear of
an integer initializer (through Transpose / Reshape); "static" when its input 0 is dequantized too.
- ONNX Runtime: the session's optimized graph (what it runs) is saved and read back; a quantized layer that
  is still a float op fed by a DequantizeLinear there runs in float (on weights dequantized at every run).
- OpenVINO: the compiled model's runtime graph gives each layer a runtime precision; a static quantized layer
  whose compute layer runs in f32 / bf16 / f16 runs in float. (Weight-only layers run float arithmetic on
  weights decompressed on the fly by design, so they are not listed.)
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_FLOAT_COMPUTE = COMPUTE + ("FusedConv", "FusedMatMul", "FusedGemm")  # ONNX Runtime's float fusions
_PASS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze")
_INTEGER = {2, 3, 4, 5, 6, 12, 13, 21, 22}  # ONNX uint8 int8 uint16 int16 int32 uint32 uint64 uint4 int4
_MAX_CHECK_BYTES = 1 << 30  # ONNX Runtime's optimized copy of a larger graph is not written just to check


def quantized_layers(graph, ops=COMPUTE) -> dict[str, tuple[str, bool]]:
    """{node name: (op type, input 0 dequantized too)} of the layers whose weight is a DequantizeLinear of an
    integer initializer."""
    producer = {o: n for n in graph.node for o in n.output}
    integer = {i.name for i in graph.initializer if i.data_type in _INTEGER}

    def dequantized(name: str, weight: bool) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in _PASS:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear" and (not weight or node.input[0] in integer)

    return {n.name: (n.op_type, dequantized(n.input[0], False)) for n in graph.node
            if n.op_type in ops and len(n.input) > 1 and dequantized(n.input[1], True)}


@lru_cache(maxsize=8)
def _layers_of(path: str, mtime_ns: int) -> dict[str, tuple[str, bool]]:
    """quantized_layers of an ONNX file, read once per version of it (both runtimes' checks ask)."""
    import onnx

    return quantized_layers(onnx.load(path, load_external_data=False).graph)


def _file_layers(path: str | Path) -> dict[str, tuple[str, bool]]:
    return _layers_of(str(path), Path(path).stat().st_mtime_ns)


def _describe(layers: list[tuple[str, str]]) -> list[str]:
    return [f"{op} {name!r}" for name, op in sorted(layers, key=lambda x: (x[1], x[0]))]


def ort_float_layers(path: str | Path) -> list[str] | None:
    """Quantized layers of the graph that ONNX Runtime's CPU session runs in float; None if not checked."""
    import onnx
    import onnxruntime as ort

    if not _file_layers(path):
        return None
    with tempfile.TemporaryDirectory(prefix="nnslim-ort-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what OrtRunner runs
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        left = quantized_layers(onnx.load(opts.optimized_model_filepath).graph, _FLOAT_COMPUTE)
    return _describe([(name, op) for name, (op, _) in left.items()])


def ov_float_layers(compiled, path: str | Path) -> list[str] | None:
    """Static quantized layers of the ONNX graph that the compiled OpenVINO model runs in float."""
    static = {name: op for name, (op, act) in _file_layers(path).items() if act}
    if not static:
        return None
    floating = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precision = info["runtimePrecision"].astype(str)
        names = set(info["originalLayersNames"].astype(str).split(","))
        if precision in ("f32", "bf16", "f16"):
            floating += [(name, static[name]) for name in names & static.keys()]
    return _describe(floating)


def float_layer_note(name: str, runner, model) -> str | None:
    """The report note naming the quantized layers this runner's runtime computes in float (None: all run as
    integer ops, or nothing to check)."""
    if getattr(model, "is_ir", True) or len(getattr(model, "graphs", ())) != 1:
        return None
    if runner.backend == "onnxruntime":
        if model.size_bytes > _MAX_CHECK_BYTES:
            return (f"{name}: not checked which quantized layers onnxruntime runs in float (the graph is over "
                    f"{_MAX_CHECK_BYTES >> 30} GB; its optimized copy is not written just for that)")
        left = ort_float_layers(model.path)
    elif runner.backend == "openvino":
        left = ov_float_layers(runner.compiled, model.path)
    else:
        return None
    if not left:
        return None
    shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
    return (f"{name}: {runner.backend} has no integer kernel for {len(left)} quantized layer(s) and runs them in "
            f"float on dequantized tensors: {shown}")
