"""Object detection (DETR, Conditional / Deformable DETR, YOLOS, RT-DETR: AutoModelForObjectDetection).

The model's outputs are kept as transformers and Optimum name them: `logits` [batch, queries, classes (+ no-object)]
and `pred_boxes` [batch, queries, 4] (normalized cx, cy, w, h); the ONNX artifact has both. Metrics vs the fp32
model, query by query (the same architecture answers the same queries): top-1 class agreement, the logits' cosine
per image, `box_iou_mean` (the IoU of the two boxes of every query) and `box_iou_top10` (over each image's ten
queries fp32 is most confident of, the no-object class excluded). mAP against annotated boxes is not computed (the
data sources read image labels, not boxes); the images come from the same sources as image classifiers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .classifier import ImageClassifierTestbed, _read_json, agreement


class DetectorOutputs(nn.Module):
    output_names = ("logits", "pred_boxes")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pred_boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes given as (cx, cy, w, h), elementwise over the leading axes."""
    def corners(x):
        return x[..., 0] - x[..., 2] / 2, x[..., 1] - x[..., 3] / 2, x[..., 0] + x[..., 2] / 2, x[..., 1] + x[..., 3] / 2

    ax0, ay0, ax1, ay1 = corners(a.astype(np.float64))
    bx0, by0, bx1, by1 = corners(b.astype(np.float64))
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * \
        np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)


class DetectionTestbed(ImageClassifierTestbed):
    task = "object-detection"

    def __init__(self, model_dir, **options):
        super().__init__(model_dir, **options)
        self.default_batch = 4
        labels = _read_json(self._dir / "config.json").get("id2label") or {}
        self.n_labels = len(labels)
        self.description = ("object detection; metrics per query vs fp32: class top-1 agreement, logits cosine, "
                            "box IoU (all queries and fp32's ten most confident per image)")

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForObjectDetection

        return DetectorOutputs(self.load_hf(AutoModelForObjectDetection)).eval()

    def evaluate(self, runner) -> dict[str, float]:
        images, _ = self._images("eval")
        images = images[: self.n_eval]
        batches = [{"pixel_values": images[i:i + 8]} for i in range(0, len(images), 8)]

        def run(r):
            outs = [r.run_all(b) for b in batches]
            return [o["logits"] for o in outs], np.concatenate([o["pred_boxes"] for o in outs])

        if self._ref_out is None:
            self._ref_out = run(self.reference_runner())
        ref_logits, ref_boxes = self._ref_out
        logits, boxes = run(runner)
        metrics = agreement(ref_logits, logits, None)
        iou = box_iou(ref_boxes, boxes)  # [images, queries]
        scores = np.concatenate(ref_logits)
        if scores.shape[-1] == self.n_labels + 1:  # DETR-style: the last class is "no object"
            scores = scores[..., :-1]
        top = np.argsort(-scores.max(-1), axis=1)[:, :10]
        metrics["box_iou_mean"] = float(iou.mean())
        metrics["box_iou_top10"] = float(np.take_along_axis(iou, top, 1).mean())
        return metrics
