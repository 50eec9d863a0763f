import numpy as np
import pytest

import nnslim
from nnslim.runtime import TorchRunner, make_runner


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_digits_onnx_matches_torch_on_other_batch(tmp_path, digits, backend):
    tb, model = digits
    onnx_model = nnslim.compress("digits-cnn", "onnx", out=tmp_path, report=False).model
    x = tb.example_inputs(batch=13)
    np.testing.assert_allclose(make_runner(onnx_model, backend)(x), TorchRunner(model)(x), atol=1e-4)


def test_onnx_fp16_keeps_fp32_io_and_accuracy(tmp_path, digits):
    tb, _ = digits
    res = nnslim.compress("digits-cnn", "onnx-fp16", out=tmp_path, report=False)
    import onnx

    proto = onnx.load(str(res.model.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert res.model.size_bytes < 0.6 * 1.24e6
    for backend in ("onnxruntime", "openvino"):
        assert tb.evaluate(make_runner(res.model, backend))["accuracy"] >= 0.97


@pytest.mark.slow
def test_minilm_export_matches_torch_at_another_sequence_length(tmp_path, minilm):
    tb, model = minilm
    res = nnslim.compress(model, "onnx", testbed=tb, out=tmp_path, report=False)
    x = tb.example_inputs(batch=3, seq=57)  # export example was batch 2, seq 16
    ref = TorchRunner(model)(x)
    for backend in ("onnxruntime", "openvino"):
        np.testing.assert_allclose(make_runner(res.model, backend)(x), ref, atol=1e-5)
    assert any("relative max error" in n for n in res.notes)
