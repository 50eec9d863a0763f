"""Hugging Face classifiers: text (sequence / token classification, extractive QA, masked-LM heads) and images.

The metric is agreement with the fp32 model (top-1 of every prediction the model makes: per text,
per real token, per answer start/end), the logits' cosine, and accuracy when the evaluation data
carries labels. Default data needs no download: Python's docstrings for text, sklearn's digits
(scaled to the model's image size) for images; the user's own files replace either.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from .base import HFTestbed
from .minilm import PaddedTextTestbed

TEXT_HEADS = {"sequence-classification": "AutoModelForSequenceClassification",
              "token-classification": "AutoModelForTokenClassification",
              "question-answering": "AutoModelForQuestionAnswering",
              "fill-mask": "AutoModelForMaskedLM"}


class HFLogits(nn.Module):
    """An HF head model called with named tensors -> one logits tensor (QA: [batch, seq, 2] start/end)."""

    output_name = "logits"  # the ONNX output, named as Optimum / sentence-transformers name it

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**inputs)
        if self.task == "question-answering":
            return torch.stack([out.start_logits, out.end_logits], dim=-1)
        return out.logits


class TextLogits(HFLogits):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """token_type_ids: the segment ids of sentence pairs (BERT-style models); None for single texts."""
        if token_type_ids is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class ImageLogits(HFLogits):
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return super().forward(pixel_values=pixel_values)


def accuracy(testbed: HFTestbed, outputs: list[np.ndarray], labels: list | None,
             by_folder: bool = False) -> dict[str, float]:
    """{"accuracy": ...} of per-example logits against the data's labels (ids, or names the config maps; image
    sub-folder names that are not label names: their sorted order, as torchvision's ImageFolder numbers them);
    {} when the data has no labels, or labels that name no class of the model (said on stderr)."""
    ids = _label_ids(labels, _read_json(testbed.model_dir / "config.json"), by_folder)
    if ids is None:
        return {}
    pred = np.concatenate([o.argmax(-1) for o in outputs])[: len(ids)]
    return {"accuracy": float((pred == ids[: len(pred)]).mean())}


def _label_ids(labels: list | None, config: dict, by_folder: bool = False) -> np.ndarray | None:
    """Labels as class ids: ints as they are, names through the config's label2id; image sub-folder names that
    are not label names by their sorted order (ImageFolder's numbering); else None, with a warning."""
    from ..progress import warn

    if not labels or any(v is None for v in labels):
        return None
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()}
    n_classes = len(config.get("id2label") or {}) or int(config.get("num_labels") or 0)

    def known(v):
        return isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) \
            or str(v) in label2id

    unknown = sorted({str(v) for v in labels if not known(v)})
    if unknown:
        classes = sorted({str(v) for v in labels})
        if by_folder and 0 < len(classes) <= max(n_classes, 1):
            warn(f"image sub-folders {', '.join(classes[:4])}{' ...' if len(classes) > 4 else ''} are not the model's "
                 "label names: accuracy counts them as class ids in sorted order (torchvision ImageFolder's "
                 "numbering)", once=True)
            return np.asarray([classes.index(str(v)) for v in labels])
        warn(f"label {unknown[0]!r} is neither a class id nor a label name of the model (its names: "
             f"{', '.join(sorted(label2id)[:8]) or 'none'}): accuracy is not computed", once=True)
        return None
    def as_id(v):
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
            return int(v)
        return label2id[str(v)]

    return np.asarray([as_id(v) for v in labels])


def agreement(ref: list[np.ndarray], new: list[np.ndarray], masks: list[np.ndarray] | None) -> dict[str, float]:
    """Top-1 agreement and logits cosine of two lists of [batch, ..., classes] logits."""
    agree, total, cos = 0, 0, []
    for i, (a, b) in enumerate(zip(ref, new)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        same = a.argmax(-1) == b.argmax(-1)  # [batch] or [batch, seq] (QA: [batch, 2])
        keep = np.ones_like(same, bool)
        if masks is not None and same.ndim == 2 and same.shape == masks[i].shape:
            keep = masks[i].astype(bool)
        agree += int(same[keep].sum())
        total += int(keep.sum())
        fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        cos += list((fa * fb).sum(1) / np.maximum(np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1), 1e-12))
    return {"top1_agreement": agree / max(total, 1), "logits_cos_mean": float(np.mean(cos)),
            "logits_cos_min": float(np.min(cos))}


def is_regression(config: dict) -> bool:
    """A regression head (problem_type "regression", or one output: num_labels = 1): no classes to agree on."""
    n = len(config.get("id2label") or {}) or int(config.get("num_labels") or 0)
    return config.get("problem_type") == "regression" or n == 1


def regression_agreement(ref: list[np.ndarray], new: list[np.ndarray]) -> dict[str, float]:
    """A regression head's outputs vs fp32's: Pearson and Spearman correlation, RMSE relative to the spread of the
    fp32 outputs (0 = equal) and the largest absolute difference. (Top-1 of one output and the cosine of a 1-element
    vector are always perfect: they would hide any damage.)"""
    from scipy.stats import spearmanr

    a = np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in ref]).ravel()
    b = np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in new]).ravel()
    if np.array_equal(a, b):
        pearson = rho = 1.0
    elif a.std() and b.std():
        pearson, rho = float(np.corrcoef(a, b)[0, 1]), float(spearmanr(a, b).statistic)
    else:  # a constant output: no correlation to speak of
        pearson = rho = 0.0
    return {"pearson_vs_fp32": pearson, "spearman_vs_fp32": rho,
            "rel_rmse_vs_fp32": float(np.sqrt(np.mean((a - b) ** 2)) / (float(a.std()) or 1.0)),
            "max_abs_diff": float(np.abs(a - b).max())}


def multilabel_agreement(ref: list[np.ndarray], new: list[np.ndarray]) -> dict[str, float]:
    """A multi-label head (problem_type multi_label_classification: a sigmoid per label, a label is on where its
    logit > 0): the share of (text, label) decisions equal to fp32's, and of texts whose whole label set is."""
    a = np.concatenate([np.asarray(x) > 0 for x in ref])
    b = np.concatenate([np.asarray(x) > 0 for x in new])
    return {"multilabel_agreement": float((a == b).mean()), "labelset_agreement": float((a == b).all(-1).mean())}


def regression_labels(outputs: list[np.ndarray], labels: list | None) -> dict[str, float]:
    """RMSE and Pearson correlation of a regression head's outputs against numeric labels ({} without them)."""
    try:
        y = np.asarray([float(v) for v in labels or []], np.float64)
    except (TypeError, ValueError):
        return {}
    if not len(y):
        return {}
    pred = np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1)[:, 0] for o in outputs])[: len(y)]
    y = y[: len(pred)]
    corr = float(np.corrcoef(pred, y)[0, 1]) if pred.std() and y.std() else 0.0
    return {"label_rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "label_pearson": corr}


class TextClassifierTestbed(PaddedTextTestbed):
    primary_metric = "top1_agreement"
    output_kind = "logits"

    def __init__(self, model_dir: str | Path, task: str, name: str | None = None, n_eval: int = 256,
                 max_length: int = 128, trust_remote_code: bool = False, weights: bool = True):
        if task not in TEXT_HEADS:
            raise NnslimError(f"task={task!r} is not a text classification task; allowed: {', '.join(TEXT_HEADS)}")
        self._dir = Path(model_dir)
        self.task, self.name = task, name or f"hf:{model_dir}"
        self.takes_pairs = task in ("sequence-classification", "question-answering")
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.n_eval, self.max_length = n_eval, max_length
        self.description = f"{task}; metrics: top-1 agreement and logits cosine vs fp32 (accuracy with labels)"
        config = _read_json(self._dir / "config.json")
        self.regression = task == "sequence-classification" and is_regression(config)
        self.multilabel = task == "sequence-classification" and config.get("problem_type") == "multi_label_classification"
        if self.multilabel:
            self.primary_metric = "multilabel_agreement"
            self.description += "; multi-label: per-label decisions (logit > 0) vs fp32"
        if self.regression:
            self.primary_metric = "pearson_vs_fp32"
            self.description = (f"{task} (regression head); metrics: Pearson / Spearman correlation and relative RMSE "
                                "vs fp32 (RMSE and correlation with numeric labels)")
        self._ref_out = None

    def load_model(self) -> nn.Module:
        import transformers

        return TextLogits(self.load_hf(getattr(transformers, TEXT_HEADS[self.task])), self.task).eval()

    def evaluate(self, runner) -> dict[str, float]:
        sentences = self.eval_sentences()
        batches = [self._encode(sentences[i:i + 32]) for i in range(0, len(sentences), 32)]
        if self._ref_out is None:
            ref = self.reference_runner()
            self._ref_out = [ref(b) for b in batches]
        out = [runner(b) for b in batches]
        if self.regression:
            return {**regression_agreement(self._ref_out, out),
                    **regression_labels(out, self.source.split_labels("eval"))}
        metrics = agreement(self._ref_out, out, [b["attention_mask"] for b in batches])
        if self.multilabel:
            return {**multilabel_agreement(self._ref_out, out), **metrics}
        if self.task == "sequence-classification":  # one label per text
            metrics.update(accuracy(self, out, self.source.split_labels("eval")))
        return metrics


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _image_size(config: dict, pre: dict) -> tuple[int, int]:
    """(height, width) the model takes: its config's image_size, else its preprocessor's crop / resize size
    (SegFormer's configs have none: 512 x 512 from the preprocessor), else 224."""
    size = config.get("image_size")
    if size is None:
        size = pre.get("crop_size") or pre.get("size") or 224
    if isinstance(size, dict):
        edge = size.get("shortest_edge")
        return (int(size.get("height", edge or 224)), int(size.get("width", edge or 224)))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return int(size), int(size)


class ImageClassifierTestbed(HFTestbed):
    task = "image-classification"
    primary_metric = "top1_agreement"
    output_kind = "logits"
    input_names = ("pixel_values",)
    dynamic_axes = {"pixel_values": {0: "batch"}}
    default_batch = 8

    def __init__(self, model_dir: str | Path, name: str | None = None, n_eval: int = 256,
                 trust_remote_code: bool = False, weights: bool = True):
        self._dir = Path(model_dir)
        self.name = name or f"hf:{model_dir}"
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.n_eval = n_eval
        self.description = "image classifier; metrics: top-1 agreement and logits cosine vs fp32 (accuracy with labels)"
        config = _read_json(self._dir / "config.json")
        pre = _read_json(self._dir / "preprocessor_config.json")
        self.size, self.channels = _image_size(config, pre), int(config.get("num_channels", 3))
        self.regression = is_regression(config)
        if self.regression:
            self.primary_metric = "pearson_vs_fp32"
            self.description = ("image regression head; metrics: Pearson / Spearman correlation and relative RMSE vs "
                                "fp32 (RMSE and correlation with numeric labels)")
        self.mean = np.asarray(pre.get("image_mean", [0.5] * 3), np.float32)[: self.channels]
        self.std = np.asarray(pre.get("image_std", [0.5] * 3), np.float32)[: self.channels]
        self._splits: dict = {}
        self._ref_out = None

    def use_data(self, calibration=None, evaluation=None) -> None:
        self._splits = {"calibration": calibration, "eval": evaluation}
        self._ref_out = None

    def describe(self) -> dict:
        given = [f"{k} from {r.origin}" for k, r in self._splits.items() if r is not None]
        return {**super(HFTestbed, self).describe(), "task": self.task,
                "data": "; ".join(given) or "sklearn digits scaled to the model's size (offline default)"}

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForImageClassification

        return ImageLogits(self.load_hf(AutoModelForImageClassification), self.task).eval()

    def _images(self, split: str) -> tuple[np.ndarray, list | None]:
        records = self._splits.get(split)
        if records is not None:
            images, labels = records.images, records.labels
        else:
            from .digits import digits_data

            xc, yc, xe, ye = digits_data()
            images, labels = (xc, yc.tolist()) if split == "calibration" else (xe, ye.tolist())
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.dim() == 3:
            images = images[:, None]
        if images.shape[1] != self.channels:
            if images.shape[1] not in (1, 3):
                raise NnslimError(f"images have {images.shape[1]} channels; the model takes {self.channels}")
            images = images.mean(1, keepdim=True).expand(-1, self.channels, -1, -1)
        if tuple(images.shape[-2:]) != self.size:
            images = nn.functional.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        pixels = (images.numpy() - self.mean[:, None, None]) / self.std[:, None, None]
        return np.ascontiguousarray(pixels, dtype=np.float32), labels

    def example_inputs(self, batch=None, seq=None):
        images, _ = self._images("eval")
        batch = batch or self.default_batch
        return {"pixel_values": images[np.arange(batch) % len(images)]}

    def calibration(self, n=None, seq_len=None):
        images, _ = self._images("calibration")
        return [{"pixel_values": images[i:i + 1]} for i in range(min(n or 300, len(images)))]

    def evaluate(self, runner) -> dict[str, float]:
        images, labels = self._images("eval")
        images, labels = images[: self.n_eval], (labels or [])[: self.n_eval] or None
        batches = [{"pixel_values": images[i:i + 32]} for i in range(0, len(images), 32)]
        if self._ref_out is None:
            ref = self.reference_runner()
            self._ref_out = [ref(b) for b in batches]
        out = [runner(b) for b in batches]
        records = self._splits.get("eval")
        if self.regression:
            return {**regression_agreement(self._ref_out, out), **(regression_labels(out, labels) if records else {})}
        metrics = agreement(self._ref_out, out, None)
        if records is not None:  # the default digits' labels are not the model's classes
            metrics.update(accuracy(self, out, labels, by_folder=records.labels_from_folders))
        return metrics
