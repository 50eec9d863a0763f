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


def test_fallback_exporter_is_kept_only_when_it_matches_torch_at_another_shape(tmp_path):
    """torch.export fails on data-dependent control flow; the TorchScript exporter then bakes the example's
    length into this graph, which the check at another length catches: a clear error, no file."""
    import pytest
    import torch

    from nnslim.errors import NnslimError
    from nnslim.runtime.onnx_export import export_onnx

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2 + torch.arange(int(x.shape[1]), dtype=x.dtype)
            return x

    x = np.abs(np.random.default_rng(0).standard_normal((2, 6))).astype(np.float32)
    with pytest.raises(NnslimError, match="ONNX export of DataDependent failed"):
        export_onnx(DataDependent(), {"x": x}, tmp_path / "m.onnx", {"x": {0: "batch", 1: "seq"}})
    assert not (tmp_path / "m.onnx").exists()
