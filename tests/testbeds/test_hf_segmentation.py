"""Semantic segmentation (SegFormer): per-pixel logits, the image size from the preprocessor (its config has none),
metrics per pixel and the label maps' IoU against fp32, artifacts that ONNX Runtime and transformers load."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nnslim

from hf_zoo import _build  # noqa: E402


pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


def test_segformer_is_measured_per_pixel_and_deploys(tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForSemanticSegmentation

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.segmentation import SegmentationTestbed

    src = _build("segformer", tmp_path)
    tb = testbed_for_hf_dir(src)
    assert isinstance(tb, SegmentationTestbed) and tb.size == (64, 64)  # preprocessor_config.json's size
    ref = nnslim.evaluate(str(src))["metrics"]
    assert ref["top1_agreement"] == pytest.approx(1.0) and ref["miou_vs_fp32"] == pytest.approx(1.0)

    res = nnslim.compress(str(src), "int8-dynamic", out=tmp_path / "q", report=False)
    metrics = nnslim.evaluate(str(res.out), testbed=str(src))["metrics"]
    assert 0.5 < metrics["miou_vs_fp32"] <= 1 and metrics["top1_agreement"] > 0.8 and metrics["logits_cos_mean"] > 0.99
    sess = ort.InferenceSession(str(res.out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = sess.run(None, {"pixel_values": x})[0]
    assert got.ndim == 4 and got.shape[:2] == (2, 5)  # [batch, classes, h, w]

    half = nnslim.compress(str(src), "fp16", out=tmp_path / "h", report=False).out
    assert json.loads((half / "nnslim.json").read_text())["format"] == "hf"
    with torch.no_grad():
        theirs = AutoModelForSemanticSegmentation.from_pretrained(str(half)).float()(pixel_values=torch.from_numpy(x))
    assert (theirs.logits.argmax(1).numpy() == got.argmax(1)).mean() > 0.8


def test_iou_of_the_label_maps():
    """miou_vs_fp32 is the mean over fp32's classes of |both| / |either|: an oracle scores 1, a shifted map less."""
    from nnslim.testbeds.segmentation import SegmentationTestbed

    tb = SegmentationTestbed.__new__(SegmentationTestbed)
    tb._ref_out = None
    logits = np.zeros((1, 2, 2, 4), np.float32)  # [batch, classes, h, w]
    logits[0, 0, 0, :] = 1  # top row class 0
    logits[0, 1, 1, :] = 1  # bottom row class 1
    tb._images = lambda split: (np.zeros((1, 3, 2, 4), np.float32), None)
    tb.n_eval = 1
    tb.reference_runner = lambda: (lambda b: logits)
    assert tb.evaluate(lambda b: logits)["miou_vs_fp32"] == 1.0
    flipped = logits.copy()
    flipped[0, :, 0, 0], flipped[0, :, 1, 0] = [0, 1], [1, 0]  # the first pixel of each row swapped
    # each class: 3 pixels in both maps of 5 in either -> 0.6
    assert tb.evaluate(lambda b: flipped)["miou_vs_fp32"] == pytest.approx(0.6)
