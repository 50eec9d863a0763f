"""Semantic segmentation (SegFormer, MobileViT / DPT / UperNet heads: AutoModelForSemanticSegmentation).

The output is the model's per-pixel class logits [batch, classes, h, w] (at the head's resolution, as
transformers returns them). Metrics vs the fp32 model: per-pixel top-1 agreement, the logits' cosine per image,
and `miou_vs_fp32`, the mean over the classes fp32 predicts of the intersection-over-union of the two label maps.
Accuracy against ground-truth masks is not computed (the data sources read image labels, not masks); the images
come from the same sources as image classifiers."""
from __future__ import annotations

import numpy as np
from torch import nn

from .classifier import ImageClassifierTestbed, ImageLogits, agreement


class SegmentationTestbed(ImageClassifierTestbed):
    task = "semantic-segmentation"

    def __init__(self, model_dir, **options):
        super().__init__(model_dir, **options)
        self.default_batch = 4
        self.description = ("semantic segmentation; metrics: per-pixel top-1 agreement, logits cosine and mean "
                            "IoU of the label maps vs fp32")

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForSemanticSegmentation

        return ImageLogits(self.load_hf(AutoModelForSemanticSegmentation), self.task).eval()

    def evaluate(self, runner) -> dict[str, float]:
        images, _ = self._images("eval")
        images = images[: self.n_eval]
        batches = [{"pixel_values": images[i:i + 8]} for i in range(0, len(images), 8)]

        def run(r):  # [batch, h, w, classes]: the class axis last, as agreement() reads it
            return [np.moveaxis(np.asarray(r(b), np.float32), 1, -1) for b in batches]

        if self._ref_out is None:
            self._ref_out = run(self.reference_runner())
        out = run(runner)
        metrics = agreement(self._ref_out, out, None)
        ref_map = np.concatenate([o.argmax(-1) for o in self._ref_out]).ravel()
        new_map = np.concatenate([o.argmax(-1) for o in out]).ravel()
        ious = [np.sum((ref_map == c) & (new_map == c)) / np.sum((ref_map == c) | (new_map == c))
                for c in np.unique(ref_map)]
        metrics["miou_vs_fp32"] = float(np.mean(ious))
        return metrics
