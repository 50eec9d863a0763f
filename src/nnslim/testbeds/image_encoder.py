"""Image backbones without a head (ViTModel, Dinov2Model, ConvNextModel, CLIPVisionModel ...): feature extraction.

The embedding is the model's pooled output where it has one (DINOv2's normalized CLS token, ConvNeXt's pooled
features, CLIP's), else the mean of its last hidden state over tokens (or over the spatial positions of a
feature map), L2-normalized. Metrics compare the embeddings of the evaluation images with the fp32 model's (mean /
min cosine, Spearman correlation of the pairwise similarities, top-10 retrieval overlap), as for text encoders.
Images come from the same sources as image classifiers (sklearn's digits scaled to the model's size by default)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .classifier import ImageClassifierTestbed, _read_json


class PooledImageEncoder(nn.Module):
    output_name = "image_embedding"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(1) if hidden.dim() == 3 else hidden.flatten(2).mean(-1)
        return nn.functional.normalize(pooled.flatten(1), dim=-1)


class ImageEncoderTestbed(ImageClassifierTestbed):
    task = "feature-extraction"
    primary_metric = "cos_mean"
    output_kind = "embedding"

    def __init__(self, model_dir, **options):
        super().__init__(model_dir, **options)
        self.description = ("image encoder (pooled output, L2 norm); metrics: cosine / Spearman / top-10 overlap "
                            "vs fp32")

    def load_model(self) -> nn.Module:
        from .tasks import feature_class

        return PooledImageEncoder(self.load_hf(feature_class(_read_json(self.model_dir / "config.json")))).eval()

    def evaluate(self, runner) -> dict[str, float]:
        from ..eval.metrics import embedding_fidelity

        images, _ = self._images("eval")
        batches = [{"pixel_values": images[i:i + 32]} for i in range(0, min(len(images), self.n_eval), 32)]
        if self._ref_out is None:
            self._ref_out = np.concatenate([self.reference_runner()(b) for b in batches])
        out = np.concatenate([runner(b) for b in batches])
        return embedding_fidelity(self._ref_out, out, k=10)
