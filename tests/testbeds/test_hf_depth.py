"""Monocular depth estimation (DPT): depth maps compared per image with fp32's (Pearson, absolute relative
difference, delta1), artifacts whose ONNX output is Optimum's `predicted_depth`."""
from __future__ import annotations

import numpy as np
import pytest

import nnslim

from hf_zoo import _build  # noqa: E402

pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


def test_dpt_depth_is_measured_per_image_and_deploys(tmp_path):
    import onnxruntime as ort

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.depth import DepthTestbed

    src = _build("dpt-depth", tmp_path)
    tb = testbed_for_hf_dir(src)
    assert isinstance(tb, DepthTestbed) and tb.primary_metric == "depth_pearson_vs_fp32"
    ref = nnslim.evaluate(str(src))["metrics"]
    assert ref["depth_pearson_vs_fp32"] == pytest.approx(1.0) and ref["abs_rel_vs_fp32"] == 0.0
    res = nnslim.compress(str(src), "int8-dynamic", out=tmp_path / "q", report=False)
    metrics = nnslim.evaluate(str(res.out), testbed=str(src))["metrics"]
    assert 0.99 < metrics["depth_pearson_vs_fp32"] <= 1 and 0 < metrics["abs_rel_vs_fp32"] < 0.5
    sess = ort.InferenceSession(str(res.out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["predicted_depth"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert sess.run(None, {"pixel_values": x})[0].shape[0] == 2 and sess.run(None, {"pixel_values": x})[0].ndim == 3


def test_depth_agreement_metrics():
    """An equal map scores 1 / 0 / 1; a scaled one keeps Pearson 1 (relative depth has a free scale) while
    abs_rel and delta1 see the scale; pixels where fp32 is ~0 are left out of the relative metrics."""
    from nnslim.testbeds.depth import depth_agreement

    ref = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)  # [batch, h, w]
    same = depth_agreement([ref], [ref.copy()])
    assert same == {"depth_pearson_vs_fp32": 1.0, "abs_rel_vs_fp32": 0.0, "delta1_vs_fp32": 1.0}
    scaled = depth_agreement([ref], [ref * 1.5])
    assert scaled["depth_pearson_vs_fp32"] == pytest.approx(1.0) and scaled["abs_rel_vs_fp32"] == pytest.approx(0.5)
    assert scaled["delta1_vs_fp32"] == 0.0  # every pixel 1.5x off
    near_zero = np.array([[[0.0, 2.0], [2.0, 2.0]]], np.float32)
    moved = near_zero.copy()
    moved[0, 0, 0] = 5.0  # only the pixel fp32 says is ~0 differs
    assert depth_agreement([near_zero], [moved])["abs_rel_vs_fp32"] == 0.0
