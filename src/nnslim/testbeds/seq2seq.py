"""Hugging Face encoder-decoder language models (T5, BART, Marian, ...: transformers' seq2seq-LM mapping).

The model is called as one function of (input_ids, attention_mask, decoder_input_ids) -> the decoder's
logits, so every method (quantization, pruning, export) sees both the encoder and the decoder. The metric
is agreement with the fp32 model on what it actually generates: the fp32 model's greedy output for each
held-out text is computed once, then every variant is teacher-forced on it and compared position by
position up to that output's end-of-sequence token (top-1 agreement of the next token; logits cosine per
text), plus the fp32 output's perplexity under the variant (GreedyTargets, shared with speech-to-text models:
testbeds/speech.py). Calibration feeds each text to the encoder and the same text, shifted right, to the decoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from .classifier import agreement
from .minilm import PaddedTextTestbed


class Seq2SeqLogits(nn.Module):
    """An HF encoder-decoder -> decoder logits [batch, target length, vocab] (no cache)."""

    output_name = "logits"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encoder_decoder(self) -> nn.Module:
        """The HF model: its ONNX export is Optimum's encoder / decoder / decoder-with-past layout
        (runtime/onnx_seq2seq.py)."""
        return self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                          use_cache=False).logits


def decoder_logits(runner, enc: dict[str, np.ndarray], with_targets):
    """ids -> decoder logits [batch, len(ids), vocab] for these encoder inputs: the encoder run once where the
    runner allows (a torch encoder-decoder wrapper, an ONNX layout), else the whole model at each call."""
    if callable(getattr(runner, "with_encoder", None)):  # runtime/onnx_seq2seq.Seq2SeqRunner
        return runner.with_encoder(enc)
    module = getattr(runner, "module", None)
    if not callable(getattr(module, "encoder_decoder", None)):
        return lambda ids: runner(with_targets(enc, ids))
    hf = module.encoder_decoder()
    feed = runner.to_tensors(enc)
    mask = {"attention_mask": feed["attention_mask"]} if "attention_mask" in feed else {}
    with torch.inference_mode():
        states = hf.get_encoder()(**feed).last_hidden_state

    @torch.inference_mode()
    def step(ids: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(ids, device=states.device)
        out = hf(encoder_outputs=(states,), decoder_input_ids=ids, use_cache=False, **mask).logits
        return out.float().cpu().numpy()
    return step


class GreedyTargets:
    """The metric of encoder-decoders (text or speech): the fp32 model's greedy output for each held-out input,
    computed once with the encoder run once per batch, then every variant teacher-forced on it. A subclass gives
    `_eval_encodings()` (the encoder's inputs, in batches) and `target_length`."""

    primary_metric = "top1_agreement"
    output_kind = "logits"
    target_length: int = 24
    _ref_gen = None

    @property
    def hf_config(self) -> dict:
        """config.json, read once."""
        if getattr(self, "_config", None) is None:
            from .classifier import _read_json

            self._config = _read_json(self.model_dir / "config.json")
        return self._config

    def _start_id(self) -> int:
        config = self.hf_config
        start = config.get("decoder_start_token_id")
        if start is None:
            start = config.get("pad_token_id")
        if not isinstance(start, int):
            raise NnslimError(f"{str(self.model_dir / 'config.json')!r} gives no decoder_start_token_id (nor "
                              "pad_token_id): the decoder's first input is unknown")
        return start

    def _with_targets(self, enc: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        return {**enc, "decoder_input_ids": targets.astype(np.int64)}

    def _eval_encodings(self) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def _greedy(self, enc: dict[str, np.ndarray], runner=None, steps: int | None = None) -> np.ndarray:
        """[batch, 1 + steps] decoder inputs: the start token, then the runner's greedy tokens (the fp32 model's by
        default; target_length of them by default), the encoder run once and the decoder on the whole prefix at
        each step, as the metric's teacher forcing runs it."""
        step = decoder_logits(runner or self.reference_runner(), enc, self._with_targets)
        ids = np.full((len(next(iter(enc.values()))), 1), self._start_id(), np.int64)
        for _ in range(steps or self.target_length):
            ids = np.concatenate([ids, step(ids)[:, -1].argmax(-1)[:, None].astype(np.int64)], axis=1)
        return ids

    def evaluate(self, runner) -> dict[str, float]:
        if self._ref_gen is None:
            encs = self._eval_encodings()
            gens = [self._greedy(e) for e in encs]
            batches = [self._with_targets(e, g[:, :-1]) for e, g in zip(encs, gens)]
            ref = self.reference_runner()
            self._ref_gen = (encs, gens, batches, [ref(b) for b in batches])
        _, gens, batches, ref_out = self._ref_gen
        eos = self.hf_config.get("eos_token_id")
        return answer_metrics(ref_out, [runner(b) for b in batches], [g[:, 1:] for g in gens], eos)


def until_eos(tokens: np.ndarray, eos) -> np.ndarray:
    """[batch, length] 1 for the positions of `tokens` up to the first end-of-sequence token (an id or a list of
    them; included); what a model generates after it is not part of its output."""
    eos = {i for i in (eos if isinstance(eos, (list, set, tuple)) else [eos]) if isinstance(i, int)}
    ended = np.isin(tokens, list(eos)) if eos else np.zeros_like(tokens, bool)
    before = np.cumsum(ended, axis=1) - ended  # EOS tokens strictly before each position
    return (before == 0).astype(np.int64)


def answer_metrics(ref_out: list, out: list, answers: list[np.ndarray], eos) -> dict[str, float]:
    """A variant's logits `out` teacher-forced on the fp32 model's greedy answers ([batch, length] tokens, logits
    [batch, length, vocab] predicting them) vs fp32's `ref_out`: top-1 agreement and logits cosine up to each
    answer's end-of-sequence token, and the answers' perplexity under the variant."""
    masks = [until_eos(a, eos) for a in answers]
    metrics = agreement(ref_out, out, masks)
    nll, count = 0.0, 0
    for logits, a, m in zip(out, answers, masks):
        lp = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), -1)
        token_lp = lp.gather(-1, torch.as_tensor(a[:, :, None]))[..., 0].numpy()
        nll -= float(token_lp[m.astype(bool)].sum())
        count += int(m.sum())
    metrics["perplexity_of_fp32_output"] = float(np.exp(nll / max(count, 1)))
    return metrics


class Seq2SeqTestbed(GreedyTargets, PaddedTextTestbed):
    task = "seq2seq"
    input_names = ("input_ids", "attention_mask", "decoder_input_ids")
    dynamic_axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                    "decoder_input_ids": {0: "batch", 1: "target"}}

    def __init__(self, model_dir: str | Path, name: str | None = None, n_eval: int = 64, max_length: int = 64,
                 target_length: int = 24, trust_remote_code: bool = False, weights: bool = True):
        self._dir = Path(model_dir)
        self.name = name or f"hf:{model_dir}"
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.n_eval, self.max_length, self.target_length = n_eval, max_length, target_length
        self.description = ("encoder-decoder LM; metrics: top-1 agreement and logits cosine vs fp32, teacher-forced "
                            "on the fp32 model's greedy output, and that output's perplexity")

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForSeq2SeqLM

        return Seq2SeqLogits(self.load_hf(AutoModelForSeq2SeqLM)).eval()

    def _shifted(self, enc: dict[str, np.ndarray], length: int) -> np.ndarray:
        """The encoder's own text, shifted right behind the start token, as the decoder's input."""
        ids = enc["input_ids"][:, : length - 1]
        start = np.full((ids.shape[0], 1), self._start_id(), np.int64)
        return np.concatenate([start, ids], axis=1)

    def example_inputs(self, batch=None, seq=None):
        enc = super().example_inputs(batch, seq)
        return self._with_targets(enc, self._shifted(enc, max(2, enc["input_ids"].shape[1] // 2)))

    def calibration(self, n=None, seq_len=None):
        out = []
        for s in self.texts("calibration")[: n or 128]:
            enc = self._encode([s])
            out.append(self._with_targets(enc, self._shifted(enc, self.target_length)))
        return out

    def _eval_encodings(self) -> list[dict[str, np.ndarray]]:
        sentences = self.eval_sentences()
        return [self._encode(sentences[i:i + 16]) for i in range(0, len(sentences), 16)]
