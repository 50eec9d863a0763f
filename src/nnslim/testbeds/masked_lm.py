"""Masked-language-model checkpoints (BertForMaskedLM, RobertaForMaskedLM, DeBERTa, ModernBERT ...): most BERT-style
checkpoints are saved with their MLM head (bert-base-uncased, roberta-base, xlm-roberta-base, distilbert).

The data's texts get a seeded 15% of their real tokens replaced by the tokenizer's mask token (calibration too: the
mask embedding is among the activations the model is deployed on). Metrics at the masked positions only: top-1
agreement and logits cosine vs fp32, and `masked_token_accuracy`, the share of masked tokens predicted as the text's
own token (a real accuracy: the labels are the texts themselves), with `masked_lm_loss` (its cross-entropy)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import NnslimError
from .classifier import TextClassifierTestbed, agreement

MASK_SHARE = 0.15


class MaskedLMTestbed(TextClassifierTestbed):
    default_batch = 8  # the logits are [batch, seq, vocab]

    def __init__(self, model_dir, seed: int = 0, **options):
        super().__init__(model_dir, "fill-mask", **options)
        self.seed = seed
        self.description = ("fill-mask; 15% of each text's tokens masked; metrics at the masked tokens: top-1 "
                            "agreement and logits cosine vs fp32, masked_token_accuracy (the text's own token)")

    def _masked(self, sentences: list, offset: int, pad_to: int | None = None) -> tuple[dict, np.ndarray]:
        """Token ids with a seeded 15% (at least one) of every text's real tokens masked, and the original ids there
        (-1 elsewhere). A text's mask depends on its position in the split and the seed, not on the batch."""
        enc = self._encode(sentences, pad_to)
        tok = self.tokenizer
        if tok.mask_token_id is None:
            raise NnslimError(f"{self.model_dir}: the tokenizer has no mask token, which a fill-mask model needs "
                              "(mask_token in tokenizer_config.json / special_tokens_map.json)")
        ids = enc["input_ids"]
        special = np.isin(ids, np.asarray(tok.all_special_ids, np.int64)) | (enc["attention_mask"] == 0)
        labels = np.full_like(ids, -1)
        for row in range(ids.shape[0]):
            real = np.flatnonzero(~special[row])
            if not len(real):
                continue
            rng = np.random.default_rng([self.seed, offset + row])
            pick = rng.choice(real, max(1, round(MASK_SHARE * len(real))), replace=False)
            labels[row, pick] = ids[row, pick]
            ids[row, pick] = tok.mask_token_id
        return enc, labels

    def example_inputs(self, batch=None, seq=None):
        batch, seq = batch or self.default_batch, seq or self.default_seq
        pool = self.texts("eval")
        return self._masked([pool[i % len(pool)] for i in range(batch)], 0, pad_to=seq)[0]

    def calibration(self, n=None, seq_len=None):
        texts = self.texts("calibration")[: n or 300]
        return [self._masked([s], i)[0] for i, s in enumerate(texts)]

    def evaluate(self, runner) -> dict[str, float]:
        sentences = self.eval_sentences()
        step = self.default_batch
        batches = [self._masked(sentences[i:i + step], i) for i in range(0, len(sentences), step)]

        def at_masks(run) -> list[np.ndarray]:  # [masked tokens, vocab] per batch: the full logits are not kept
            return [np.asarray(run(enc), np.float32)[labels >= 0] for enc, labels in batches]

        if self._ref_out is None:
            self._ref_out = at_masks(self.reference_runner())
        out = at_masks(runner)
        metrics = agreement(self._ref_out, out, None)
        truth = np.concatenate([labels[labels >= 0] for _, labels in batches])
        logits = torch.from_numpy(np.concatenate(out)).double()
        metrics["masked_token_accuracy"] = float((logits.argmax(-1).numpy() == truth).mean())
        metrics["masked_lm_loss"] = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(truth)))
        return metrics
