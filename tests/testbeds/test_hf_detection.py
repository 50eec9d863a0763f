"""Object detection (YOLOS, DETR with transformers' ResNet backbone): logits and boxes as two named outputs through
every runner and the ONNX artifact, metrics query by query against fp32."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nnslim

from hf_zoo import _build  # noqa: E402


pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


def test_detector_keeps_logits_and_boxes_through_int8_onnx(tmp_path):
    import onnxruntime as ort

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.detection import DetectionTestbed

    src = _build("yolos", tmp_path)
    tb = testbed_for_hf_dir(src)
    assert isinstance(tb, DetectionTestbed) and tb.task == "object-detection"
    ref = nnslim.evaluate(str(src))["metrics"]
    assert ref["top1_agreement"] == pytest.approx(1.0) and ref["box_iou_mean"] == pytest.approx(1.0)

    res = nnslim.compress(str(src), "int8-dynamic", out=tmp_path / "q", report=False)
    metrics = nnslim.evaluate(str(res.out), testbed=str(src))["metrics"]
    assert metrics["box_iou_top10"] > 0.95 and metrics["logits_cos_mean"] > 0.99
    sess = ort.InferenceSession(str(res.out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "pred_boxes"]
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)  # another batch size
    logits, boxes = sess.run(None, {"pixel_values": x})
    from transformers import AutoModelForObjectDetection

    with torch.no_grad():  # the fp32 source on the same images
        want = AutoModelForObjectDetection.from_pretrained(str(src)).eval()(pixel_values=torch.from_numpy(x))
    assert boxes.shape == (3, 10, 4) and np.abs(boxes - want.pred_boxes.numpy()).max() < 0.05
    assert logits.shape == tuple(want.logits.shape)
    from nnslim.runtime import make_runner

    assert set(make_runner(nnslim.load(res.out)).run_all({"pixel_values": x})) == {"logits", "pred_boxes"}


def test_detr_fp16_is_a_transformers_checkpoint(tmp_path):
    from transformers import AutoModelForObjectDetection

    src = _build("detr", tmp_path)
    half = nnslim.compress(str(src), "fp16", out=tmp_path / "h", report=False).out
    assert json.loads((half / "nnslim.json").read_text())["format"] == "hf"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        theirs = AutoModelForObjectDetection.from_pretrained(str(half)).float()(pixel_values=x).pred_boxes
        ours = nnslim.load(half).float()(x)[1]
    torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=0)


def test_box_iou():
    from nnslim.testbeds.detection import box_iou

    a = np.array([[0.5, 0.5, 0.2, 0.2]])
    assert box_iou(a, a)[0] == pytest.approx(1.0)
    assert box_iou(a, np.array([[0.6, 0.5, 0.2, 0.2]]))[0] == pytest.approx(0.02 / 0.06)  # shifted by half a width
    assert box_iou(a, np.array([[0.1, 0.1, 0.1, 0.1]]))[0] == 0.0


def test_detr_prunes_around_its_position_embeddings_and_cross_attention(tmp_path):
    """DETR adds a computed sine table to its attention inputs and its decoder attends to the encoder's states:
    the encoder width is kept (it was pruned, and the pruned model failed its check run), the FFNs are pruned."""
    src = _build("detr", tmp_path)
    res = nnslim.compress(str(src), {"steps": [{"method": "prune-structured", "ratio": 0.5}]}, out=tmp_path / "p",
                          report=False)
    pruned = nnslim.load(res.out).model.model
    assert pruned.input_projection.out_channels == 64 and pruned.encoder.layers[0].mlp.fc1.out_features == 64
    assert nnslim.evaluate(str(res.out), testbed=str(src))["metrics"]["box_iou_mean"] > 0.9
