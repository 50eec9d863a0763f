"""Speech models: speech-to-text encoder-decoders (Whisper, ...: transformers' speech-seq2seq mapping), CTC
recognizers (wav2vec2, HuBERT, WavLM, ...) and audio classifiers.

Inputs are what the model's own feature extractor (preprocessor_config.json) makes of the clips: Whisper's log-mel
`input_features` padded to its window, wav2vec2's normalized `input_values`. A folder without one gets the
extractor its config implies (Whisper: its mel bins and window; wav2vec2-style: raw 16 kHz audio, normalized), and
anything else is refused with how to save one. Data: testbeds/audio.py (synthetic clips by default, or the user's
.wav / .npz). Metrics, all against the fp32 model: speech-to-text as the text encoder-decoders (top-1 agreement
teacher-forced on the fp32 model's greedy output, logits cosine, that output's perplexity); CTC per-frame top-1
agreement, logits cosine and the share of clips whose greedy CTC output (repeats and blanks collapsed) is the fp32
model's; audio classification top-1 agreement and cosine, and accuracy when the clips carry labels. When every
evaluation clip has a transcript (a .txt beside it) and the model folder a tokenizer, speech-to-text and CTC models
also get `wer`, the word error rate of each variant's own greedy transcription (lower is better; lowercased, words
of letters, digits and apostrophes).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from .base import HFTestbed
from .classifier import HFLogits, _read_json, accuracy, agreement
from .seq2seq import GreedyTargets

AUDIO_HEADS = {"ctc": "AutoModelForCTC", "audio-classification": "AutoModelForAudioClassification"}


class SpeechSeq2SeqLogits(nn.Module):
    """An HF speech encoder-decoder -> decoder logits [batch, target length, vocab] (no cache)."""

    output_name = "logits"
    encoder_inputs = ("input_features",)  # the ONNX layout's encoder input (runtime/onnx_seq2seq.py)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encoder_decoder(self) -> nn.Module:
        return self.model

    def forward(self, input_features: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=input_features, decoder_input_ids=decoder_input_ids, use_cache=False).logits


class AudioLogits(HFLogits):
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            return super().forward(input_values=input_values)
        return super().forward(input_values=input_values, attention_mask=attention_mask)


class AudioTestbed(HFTestbed):
    """Clips and features of an audio model (see the module doc); subclasses give the model and the metric."""

    default_batch = 4
    clip_seconds = 4.0
    n_eval = 32

    def _setup(self, model_dir, name, trust_remote_code, weights, n_eval):
        self._dir = Path(model_dir)
        self.name = name or f"hf:{model_dir}"
        self.trust_remote_code, self.weights, self.n_eval = trust_remote_code, weights, n_eval
        self._splits: dict = {}
        self._fe = None
        self.config = _read_json(self._dir / "config.json")
        self.sampling_rate = int(_read_json(self._dir / "preprocessor_config.json").get("sampling_rate") or 16000)

    def use_data(self, calibration=None, evaluation=None) -> None:
        for what, records in (("calibration", calibration), ("eval", evaluation)):
            if records is not None and records.audio is None:
                raise NnslimError(f"--{what}: {self.task} models take audio; allowed: "
                                  "a folder of .wav files, a .wav file or an .npz of waveforms")
        self._splits = {"calibration": calibration, "eval": evaluation}
        self._ref_cache_clear()

    def describe(self) -> dict:
        given = [f"{k} from {r.origin}" for k, r in self._splits.items() if r is not None]
        default = f"synthetic speech-like clips of {self.clip_seconds:g} s (offline default; not speech)"
        return {**super(HFTestbed, self).describe(), "task": self.task, "data": "; ".join(given) or default}

    def clips(self, split: str) -> tuple[list[np.ndarray], list | None]:
        """The split's clips and labels: the user's, else synthetic (as many as the split uses)."""
        records = self._splits.get(split)
        if records is not None:
            return list(records.audio), records.labels
        from .audio import synthetic_clips

        count = self.n_eval if split == "eval" else 128
        return synthetic_clips(split, count, self.clip_seconds, self.sampling_rate), None

    @property
    def feature_extractor(self):
        if self._fe is None:
            self._fe = self._load("loading the feature extractor", self._make_extractor)
        return self._fe

    def _make_extractor(self):
        import transformers

        if (self.model_dir / "preprocessor_config.json").is_file():
            return transformers.AutoFeatureExtractor.from_pretrained(str(self.model_dir),
                                                                     trust_remote_code=self.trust_remote_code)
        return self._default_extractor(transformers)

    def _default_extractor(self, transformers):
        raise NnslimError(f"{str(self.model_dir)!r} has no preprocessor_config.json: nnslim cannot tell how this "
                          f"{self.config.get('model_type')!r} model turns audio into inputs; save its feature "
                          "extractor beside the model (feature_extractor.save_pretrained(DIR))")

    def features(self, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = self.feature_extractor(clips, sampling_rate=self.sampling_rate, return_tensors="np", **self._padding())
        names = [n for n in self.input_names if n in out]
        return {n: np.ascontiguousarray(out[n], dtype=np.int64 if n == "attention_mask" else np.float32)
                for n in names}

    def _padding(self) -> dict:
        return {"padding": True}

    def _batches(self, split: str, size: int) -> tuple[list[dict[str, np.ndarray]], list | None]:
        clips, labels = self.clips(split)
        clips = clips[: self.n_eval] if split == "eval" else clips
        return [self.features(clips[i:i + size]) for i in range(0, len(clips), size)], \
            (labels[: len(clips)] if labels else None)

    def example_inputs(self, batch=None, seq=None):
        clips, _ = self.clips("eval")
        batch = batch or self.default_batch
        return self.features([clips[i % len(clips)] for i in range(batch)])

    def calibration(self, n=None, seq_len=None):
        clips, _ = self.clips("calibration")
        return [self.features([c]) for c in clips[: n or 128]]

    def transcripts(self) -> list[str] | None:
        """The evaluation clips' transcripts and a tokenizer to compare them with, else None (said once)."""
        records = self._splits.get("eval")
        texts = getattr(records, "texts", None)
        if not texts or len(texts) != len(records.audio):
            return None
        try:
            self.tokenizer
        except NnslimError:
            from ..progress import warn

            warn(f"the clips have transcripts but {str(self.model_dir)!r} has no tokenizer: wer is not computed",
                 once=True)
            return None
        return texts[: self.n_eval]


class SpeechSeq2SeqTestbed(GreedyTargets, AudioTestbed):
    task = "speech-seq2seq"
    input_names = ("input_features", "decoder_input_ids")
    dynamic_axes = {"input_features": {0: "batch"}, "decoder_input_ids": {0: "batch", 1: "target"}}
    clip_seconds = 8.0

    def __init__(self, model_dir: str | Path, name: str | None = None, n_eval: int = 32, target_length: int = 32,
                 trust_remote_code: bool = False, weights: bool = True):
        self._setup(model_dir, name, trust_remote_code, weights, n_eval)
        self.target_length = target_length
        self.description = ("speech-to-text encoder-decoder; metrics: top-1 agreement and logits cosine vs fp32, "
                            "teacher-forced on the fp32 model's greedy output, and that output's perplexity")

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForSpeechSeq2Seq

        return SpeechSeq2SeqLogits(self.load_hf(AutoModelForSpeechSeq2Seq)).eval()

    def _frames(self) -> int | None:
        """The frames a Whisper-style encoder takes (2 x its positions: its convolutions halve them), else None."""
        positions = self.config.get("max_source_positions")
        return 2 * int(positions) if self.config.get("model_type") == "whisper" and positions else None

    def _default_extractor(self, transformers):
        frames = self._frames()
        if frames is None:
            return super()._default_extractor(transformers)
        fe = transformers.WhisperFeatureExtractor(feature_size=int(self.config.get("num_mel_bins", 80)))
        fe.n_samples, fe.nb_max_frames = frames * fe.hop_length, frames  # the window this model takes
        fe.chunk_length = fe.n_samples / fe.sampling_rate
        return fe

    def features(self, clips):
        frames = self._frames()
        if frames is not None:  # the window: longer clips are cut, as Whisper's own pipeline cuts 30 s chunks
            limit = frames * self.feature_extractor.hop_length
            clips = [c[:limit] for c in clips]
        return super().features(clips)

    def _padding(self) -> dict:
        return {"padding": "max_length"} if self._frames() is not None else {"padding": True}

    def _targets(self, batch: int, length: int) -> np.ndarray:
        """Decoder inputs for shapes (export, benchmarks): the start token, then the next token ids in turn."""
        vocab = int(self.config.get("vocab_size") or 2)
        start = self._start_id()
        return ((start + np.arange(length)) % vocab)[None].repeat(batch, 0).astype(np.int64)

    def example_inputs(self, batch=None, seq=None):
        enc = super().example_inputs(batch, seq)
        return self._with_targets(enc, self._targets(len(next(iter(enc.values()))), max(2, min(seq or 16, 64))))

    def calibration(self, n=None, seq_len=None):
        """Each clip with the fp32 model's own greedy transcript as the decoder's input (what it will decode)."""
        clips, _ = self.clips("calibration")
        clips = clips[: n or 128]
        out = []
        for i in range(0, len(clips), 16):
            enc = self.features(clips[i:i + 16])
            gen = self._greedy(enc)
            out += [self._with_targets({k: v[j:j + 1] for k, v in enc.items()}, gen[j:j + 1])
                    for j in range(len(gen))]
        return out

    def _eval_encodings(self):
        return self._batches("eval", 8)[0]

    def evaluate(self, runner) -> dict[str, float]:
        metrics = super().evaluate(runner)
        refs = self.transcripts()
        if refs:
            tok = self.tokenizer
            limit = int(self.config.get("max_target_positions") or 448) - 1
            steps = min(limit, max(len(tok(r).input_ids) for r in refs) + 8)
            eos = self.hf_config.get("eos_token_id")
            hyps = []
            for enc in self._ref_gen[0]:  # the encoder inputs the metric above made (features made once)
                for row in self._greedy(enc, runner, steps)[:, 1:]:
                    ends = np.flatnonzero(row == eos) if isinstance(eos, int) else []
                    hyps.append(tok.decode(row[: ends[0]] if len(ends) else row, skip_special_tokens=True))
            metrics["wer"] = word_error_rate(refs, hyps)
        return metrics


class AudioEncoderTestbed(AudioTestbed):
    """CTC recognizers and audio classifiers: waveform in, logits out."""

    primary_metric = "top1_agreement"
    output_kind = "logits"

    def __init__(self, model_dir: str | Path, task: str, name: str | None = None, n_eval: int = 32,
                 trust_remote_code: bool = False, weights: bool = True):
        if task not in AUDIO_HEADS:
            raise NnslimError(f"task={task!r} is not an audio encoder task; allowed: {', '.join(AUDIO_HEADS)}")
        self.task = task
        self._setup(model_dir, name, trust_remote_code, weights, n_eval)
        what = "per-frame top-1 agreement, greedy CTC output match" if task == "ctc" else "top-1 agreement"
        self.description = f"{task}; metrics: {what} and logits cosine vs fp32 (accuracy with labels)"
        self._ref_out = None
        fe = _read_json(self._dir / "preprocessor_config.json")
        self.input_names = ("input_values", "attention_mask") if fe.get("return_attention_mask") else ("input_values",)
        self.dynamic_axes = {n: {0: "batch", 1: "samples"} for n in self.input_names}

    def load_model(self) -> nn.Module:
        import transformers

        return AudioLogits(self.load_hf(getattr(transformers, AUDIO_HEADS[self.task])), self.task).eval()

    def _default_extractor(self, transformers):
        if self.config.get("feat_extract_norm") is None:  # not a wav2vec2-style raw-waveform model
            return super()._default_extractor(transformers)
        return transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=self.sampling_rate,
                                                     do_normalize=True, return_attention_mask=False)

    def evaluate(self, runner) -> dict[str, float]:
        if self._ref_out is None:  # features and the fp32 outputs made once per data
            batches, labels = self._batches("eval", 8)
            ref = self.reference_runner()
            self._ref_out = (batches, labels, [ref(b) for b in batches])
        batches, labels, ref_out = self._ref_out
        out = [runner(b) for b in batches]
        metrics = agreement(ref_out, out, None)
        if self.task == "ctc":
            refs = self.transcripts()
            if refs:  # the tokenizer merges repeats and drops blanks itself
                hyps = [t for o in out for t in self.tokenizer.batch_decode(np.asarray(o).argmax(-1),
                                                                             skip_special_tokens=True)]
                metrics["wer"] = word_error_rate(refs, hyps)
            blank = int(self.config.get("pad_token_id") or 0)
            metrics["ctc_output_match"] = float(np.mean([a == b for r, o in zip(ref_out, out)
                                                          for a, b in zip(ctc_greedy(r, blank), ctc_greedy(o, blank))]))
        elif self._splits.get("eval") is not None:
            metrics.update(accuracy(self, out, labels, by_folder=self._splits["eval"].labels_from_folders))
        return metrics


def ctc_greedy(logits: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [batch, frames, vocab] logits: the best token per frame, repeats merged, blanks
    (id `blank`, the pad token of wav2vec2-style vocabularies) dropped."""
    out = []
    for best in np.asarray(logits).argmax(-1):
        keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != blank)
        out.append(tuple(int(t) for t in best[keep]))
    return out


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w']+", " ", text.lower()).split()


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Word edits (substitutions, insertions, deletions) over reference words, summed over the clips."""
    errors = words = 0
    for ref, hyp in zip(refs, hyps):
        r, h = _words(ref), _words(hyp)
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors += row[-1]
        words += len(r)
    return errors / max(words, 1)
