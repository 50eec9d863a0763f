"""Monocular depth estimation (DPT, Depth Anything, GLPN, ZoeDepth heads: AutoModelForDepthEstimation).

The output is the model's `predicted_depth` [batch, h, w] (depth, or relative inverse depth for Depth Anything,
at the head's resolution, as transformers returns it; named `predicted_depth` in ONNX as Optimum names it).
Metrics vs the fp32 model, per image then averaged: the Pearson correlation of the two maps (primary: it is
blind to the scale and shift that relative-depth models leave free), the mean absolute relative difference and
delta1 (the share of pixels within 1.25x of fp32's value), both over pixels where fp32's value is not near zero.
Accuracy against ground-truth depth is not computed (no data source reads depth maps); the images come from the
same sources as image classifiers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .classifier import HFLogits, ImageClassifierTestbed

NEAR_ZERO = 1e-3  # of an image's largest |fp32 value|: pixels below it are left out of the relative metrics


class DepthMap(HFLogits):
    output_name = "predicted_depth"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).predicted_depth


def depth_agreement(ref: list[np.ndarray], new: list[np.ndarray]) -> dict[str, float]:
    """Per-image Pearson, absolute relative difference and delta1 of `new` depth maps against `ref`, averaged."""
    pearson, abs_rel, delta1 = [], [], []
    for r_batch, n_batch in zip(ref, new):
        for r, n in zip(np.asarray(r_batch, np.float64), np.asarray(n_batch, np.float64)):
            r, n = r.ravel(), n.ravel()
            if np.array_equal(r, n):
                pearson.append(1.0)
            else:
                pearson.append(float(np.corrcoef(r, n)[0, 1]) if r.std() and n.std() else 0.0)
            ok = np.abs(r) > NEAR_ZERO * (np.abs(r).max() or 1.0)
            if ok.any():
                abs_rel.append(float(np.mean(np.abs(n[ok] - r[ok]) / np.abs(r[ok]))))
                ratio = np.maximum(n[ok] / r[ok], r[ok] / np.where(n[ok] == 0, np.inf, n[ok]))
                delta1.append(float(np.mean((ratio > 0) & (ratio < 1.25))))
    return {"depth_pearson_vs_fp32": float(np.mean(pearson)),
            "abs_rel_vs_fp32": float(np.mean(abs_rel)) if abs_rel else 0.0,
            "delta1_vs_fp32": float(np.mean(delta1)) if delta1 else 1.0}


class DepthTestbed(ImageClassifierTestbed):
    task = "depth-estimation"
    primary_metric = "depth_pearson_vs_fp32"
    output_kind = "tensor"

    def __init__(self, model_dir, **options):
        super().__init__(model_dir, **options)
        self.default_batch = 4
        self.regression = False  # (a depth head has no labels)
        self.primary_metric = "depth_pearson_vs_fp32"
        self.description = ("monocular depth estimation; metrics: per-image Pearson correlation, absolute relative "
                            "difference and delta1 (within 1.25x) of the depth maps vs fp32")

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForDepthEstimation

        return DepthMap(self.load_hf(AutoModelForDepthEstimation), self.task).eval()

    def evaluate(self, runner) -> dict[str, float]:
        images, _ = self._images("eval")
        images = images[: self.n_eval]
        batches = [{"pixel_values": images[i:i + 8]} for i in range(0, len(images), 8)]
        if self._ref_out is None:
            ref = self.reference_runner()
            self._ref_out = [np.asarray(ref(b), np.float32) for b in batches]
        return depth_agreement(self._ref_out, [np.asarray(runner(b), np.float32) for b in batches])
