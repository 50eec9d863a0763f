"""The report names the quantized layers a runtime runs in float (issue 16's bad input: an op the chosen
runtime cannot run as int8). ONNX Runtime 1.32 and OpenVINO 2026.4 have no integer kernel for a QDQ
ConvTranspose; both fuse a QDQ Conv."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnslim.runtime import OnnxModel, make_runner
from nnslim.runtime.float_fallbacks import float_layer_note, quantized_layers


def _qdq_graph(path, op, wshape, xshape, yshape, static=True, out_q=False):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 127, wshape).astype(np.int8), "W"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, np.float32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = [helper.make_node("DequantizeLinear", ["W", "ws", "wz"], ["Wf"], name="dq_w")]
    x = "x"
    if static:
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x")]
        x = "xd"
    nodes.append(helper.make_node(op, [x, "Wf"], ["y0"], name="layer"))
    if out_q:  # the output quantized too: what ONNX Runtime needs to fuse the group into one integer op
        nodes += [helper.make_node("QuantizeLinear", ["y0", "xs", "xz"], ["yq"], name="q_y"),
                  helper.make_node("DequantizeLinear", ["yq", "xs", "xz"], ["y1"], name="dq_y")]
    nodes.append(helper.make_node("Relu", ["y1" if out_q else "y0"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return OnnxModel(path)


def test_quantized_layers_found_through_transposes():
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["W", "s"], ["Wf"]), helper.make_node("Transpose", ["Wf"], ["Wt"]),
         helper.make_node("MatMul", ["x", "Wt"], ["y"], name="head"), helper.make_node("MatMul", ["x", "F"], ["z"], name="f")],
        "g", [], [], [numpy_helper.from_array(np.zeros((2, 2), np.int8), "W"), numpy_helper.from_array(np.zeros((2, 2), np.float32), "F")])
    assert quantized_layers(graph) == {"head": ("MatMul", False)}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_layer_the_runtime_runs_in_float_is_named(tmp_path, backend):
    model = _qdq_graph(tmp_path / "deconv.onnx", "ConvTranspose", (4, 8, 3, 3), [1, 4, 8, 8], [1, 8, 10, 10])
    note = float_layer_note("int8", make_runner(model, backend), model)
    assert note is not None and backend in note and "ConvTranspose 'layer'" in note and "1 quantized layer" in note
    conv = _qdq_graph(tmp_path / "conv.onnx", "Conv", (8, 4, 3, 3), [1, 4, 8, 8], [1, 8, 6, 6], out_q=True)
    assert float_layer_note("int8", make_runner(conv, backend), conv) is None  # fused into an integer kernel


def test_qdq_conv_without_an_output_quantizer_runs_float_in_onnxruntime(tmp_path):
    """ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv; with a float consumer after the Conv it runs a float
    (Fused)Conv on dequantized tensors, and the note says so; OpenVINO runs the same graph in u8."""
    model = _qdq_graph(tmp_path / "conv.onnx", "Conv", (8, 4, 3, 3), [1, 4, 8, 8], [1, 8, 6, 6])
    assert "Conv 'layer'" in float_layer_note("int8", make_runner(model, "onnxruntime"), model)
    assert float_layer_note("int8", make_runner(model, "openvino"), model) is None


def test_weight_only_conv_kept_float_by_onnxruntime_is_named(tmp_path):
    """ONNX Runtime runs a DequantizeLinear -> Conv with float input as a float Conv on weights dequantized at
    every run (no integer kernel); OpenVINO decompresses weight-only layers by design: not listed there."""
    model = _qdq_graph(tmp_path / "wo.onnx", "Conv", (8, 4, 3, 3), [1, 4, 8, 8], [1, 8, 6, 6], static=False)
    assert "Conv 'layer'" in float_layer_note("w8", make_runner(model, "onnxruntime"), model)
    assert float_layer_note("w8", make_runner(model, "openvino"), model) is None


def test_gemm_bias_as_int32_lets_onnxruntime_run_an_integer_qgemm(tmp_path):
    """A static QDQ Gemm with a float bias (the exporter's Linear) runs float in ONNX Runtime; with the bias as
    int32 codes (quantize_gemm_biases) it becomes a QGemm, and the output stays within the bias rounding."""
    from nnslim.runtime.qdq_matmul import quantize_gemm_biases

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             # 7-bit weights: u8 x s8 products of full-range codes saturate on CPUs without VNNI (BENCHMARKS 2c)
             numpy_helper.from_array(rng.integers(-63, 64, (8, 16)).astype(np.int8), "W"),
             numpy_helper.from_array(rng.uniform(0.005, 0.02, 8).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz"), numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    nodes = [helper.make_node("DequantizeLinear", ["W", "ws", "wz"], ["Wf"], axis=0),
             helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("Gemm", ["xd", "Wf", "b"], ["y"], name="classifier", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    onnx.save(proto, str(tmp_path / "f.onnx"))
    before = OnnxModel(tmp_path / "f.onnx")
    assert "Gemm 'classifier'" in float_layer_note("int8", make_runner(before, "onnxruntime"), before)
    assert quantize_gemm_biases(proto.graph) and not any(i.name == "b" for i in proto.graph.initializer)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp_path / "q.onnx"))
    after = OnnxModel(tmp_path / "q.onnx")
    assert float_layer_note("int8", make_runner(after, "onnxruntime"), after) is None
    x = {"x": rng.uniform(-2, 2, (4, 16)).astype(np.float32)}
    ya, yb = make_runner(after, "onnxruntime")(x), make_runner(before, "onnxruntime")(x)
    assert np.abs(ya - yb).max() <= 0.5 * 0.02 * 0.02 + 1e-5
