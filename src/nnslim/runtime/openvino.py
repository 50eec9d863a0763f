"""OpenVINO runtime backend (CPU plugin), reading the same ONNX files ONNX Runtime runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Runner, with_default_inputs
from .onnx_llm import takes_past


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32"):
        import openvino as ov

        # f32 inference precision: OpenVINO may otherwise pick bf16 on CPUs that have it, which would
        # make an "fp32" row silently lower precision. Int8 nodes in the graph still run as int8.
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        from ..errors import NnslimError
        from .onnx_lstm import needs_onnxruntime

        if str(path).endswith(".onnx") and needs_onnxruntime(path):
            raise NnslimError(f"backend openvino cannot run {Path(path).name}: it uses ONNX Runtime's own ops "
                              "(com.microsoft, e.g. int8 LSTMs); use backend onnxruntime")
        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        # A port can carry several tensor names (e.g. after fp16 conversion inserts casts).
        self.input_names = [sorted(p.get_names()) for p in self.compiled.inputs]
        self.input_shapes = {}
        for port, names in zip(self.compiled.inputs, self.input_names):
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            self.input_shapes.update({n: shape for n in names})
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.decodes = takes_past(self.input_shapes)  # a decoder exported with its KV cache

    def _infer(self, inputs: dict[str, np.ndarray]):
        feed = {}
        inputs = with_default_inputs([n for names in self.input_names for n in names], inputs, self.input_shapes)
        for i, names in enumerate(self.input_names):
            name = next((n for n in names if n in inputs), None)
            if name is None:
                raise KeyError(f"input {names} of the OpenVINO model not among the given inputs {list(inputs)}")
            feed[i] = np.ascontiguousarray(inputs[name])
        return self.request.infer(feed)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._infer(inputs)[self.compiled.output(0)], dtype=np.float32)

    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name (a decoder's logits and its present key/values)."""
        result = self._infer(inputs)  # a port may carry several names (OpenVINO's any name may not be the graph's)
        return {name: result[port] for port in self.compiled.outputs for name in port.get_names()}


def drop_zero_weight_offsets(model) -> int:
    """Remove the Subtract of an all-zero zero point from every weight decompression (Constant -> Convert ->
    Subtract(zero) -> Multiply) of an OpenVINO model, in place; returns how many. A symmetric weight's
    DequantizeLinear carries an explicit zero zero point in nnslim's ONNX (in ONNX Runtime the difference is
    inside the noise); OpenVINO computes the subtraction in every decompression (int4 decode slower, measured
    in BENCHMARKS 7c'), and NNCF's IRs have none."""
    removed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Subtract":
            continue
        x, z = op.input_value(0).get_node(), op.input_value(1).get_node()
        while z.get_type_name() in ("Convert", "Reshape", "Unsqueeze"):
            z = z.input_value(0).get_node()
        w = x.input_value(0).get_node() if x.get_type_name() == "Convert" else x
        while w.get_type_name() in ("Reshape", "Unsqueeze"):  # a blocked (group-wise) DequantizeLinear's codes
            w = w.input_value(0).get_node()
        if (z.get_type_name() == "Constant" and x.get_type_name() == "Convert"
                and w.get_type_name() == "Constant" and not np.any(z.get_data())
                and op.get_output_partial_shape(0) == op.get_input_partial_shape(0)):  # (no broadcast widening)
            op.output(0).replace(op.input_value(0))
            removed += 1
    if removed:
        model.validate_nodes_and_infer_types()
    return removed


def keep_graph_names(model, onnx_path: str | Path) -> None:
    """Name each input / output of the converted model by its ONNX graph name alone. The converter folds ops
    that pass a graph input through (a one-input Concat, in T5's decoder with past) into the input, which then
    carries the op's output name too; loaders that take any one of the names (optimum-intel's
    `get_any_name()`) then miss `past_key_values.*` and feed the model an empty past."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    for ports, names in ((model.inputs, {i.name for i in graph.input}), (model.outputs, {o.name for o in graph.output})):
        for port in ports:
            own = port.get_names() & names
            if len(own) == 1 and len(port.get_names()) > 1:
                port.get_tensor().set_names(own)


def onnx_to_ir(onnx_path: str | Path, xml_path: str | Path, fp16_weights: bool = False):
    """Convert an ONNX file to an OpenVINO IR (.xml + .bin beside it), both written atomically; weight
    decompressions lose their zero zero points (drop_zero_weight_offsets)."""
    import os

    import openvino as ov

    from .base import OnnxModel

    from ..errors import NnslimError
    from .onnx_lstm import needs_onnxruntime

    if needs_onnxruntime(onnx_path):
        raise NnslimError("openvino: the ONNX graph uses ONNX Runtime's own ops (com.microsoft, e.g. the int8 LSTMs "
                          "of int8-dynamic), which OpenVINO cannot convert; quantize with lstm: false, or deploy "
                          "with ONNX Runtime")
    xml_path = Path(xml_path)
    model = ov.convert_model(str(onnx_path))
    drop_zero_weight_offsets(model)
    keep_graph_names(model, onnx_path)
    tmp = xml_path.with_name(f".{xml_path.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=fp16_weights)
    os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    os.replace(tmp, xml_path)
    return OnnxModel(xml_path)
