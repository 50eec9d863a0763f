"""Multiple-choice heads (BertForMultipleChoice, RobertaForMultipleChoice, ...: transformers' multiple-choice mapping).

The model takes [batch, choices, seq] token ids (each choice tokenized after the context, as a sentence pair) and
returns one logit per choice [batch, choices]; ONNX keeps the three axes dynamic, as Optimum's multiple-choice
export does. Metrics vs the fp32 model: top-1 agreement of the chosen answer and logits cosine; `choice_accuracy`
against the items' labels.

Data: the user's (--calibration / --eval: a table whose rows give a context, the choices - a list column or
ending0, ending1, ... columns as SWAG lays them out - and the index of the right one: `read_choices`), else the
offline default: sentences of the Python docs split in half, the first half the context, its own second half among
the second halves of the next sentences (the right one placed at a different index per item), so the default data
has labels too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..errors import NnslimError
from .classifier import TextLogits, agreement
from .minilm import PaddedTextTestbed
from .sources import MAX_RECORDS, Records, _read_table

CONTEXT_COLUMNS = ("context", "question", "sent1", "startphrase", "prompt", "text", "goal", "premise")
CHOICE_COLUMNS = ("choices", "endings", "options", "answers")
LABEL_COLUMNS = ("label", "answer", "labels", "target")
CHOICE_FORMATS = ("a .jsonl / .json / .csv / .tsv / .parquet table with a context column (" + " / ".join(
    CONTEXT_COLUMNS[:4]) + " ...), the choices as a list column (" + " / ".join(CHOICE_COLUMNS) + ") or as ending0, "
    "ending1, ... columns, and optionally the right choice's index (label / answer)")


def _choices_of(row: dict, columns: list[str]) -> list | None:
    listed = next((c for c in CHOICE_COLUMNS if c in columns), None)
    if listed is not None:
        return row.get(listed)
    numbered = sorted((c for c in columns if c.startswith("ending") and c[6:].isdigit()), key=lambda c: int(c[6:]))
    return [row.get(c) for c in numbered] if numbered else None


def read_choices(spec: str | Path, what: str, text_column: str | None = None) -> Records:
    """(context, choices, label) items of a user's table: Records with texts = contexts, pairs = the choices of each
    item (a list of texts), labels = the right choice's index (None without a label column)."""
    path = Path(spec)
    if not path.exists():
        raise NnslimError(f"--{what}={str(spec)!r}: file not found; allowed: {CHOICE_FORMATS}")
    if path.is_dir() or path.suffix.lower() not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        raise NnslimError(f"--{what}={str(spec)!r} is not allowed; allowed: {CHOICE_FORMATS}")
    rows = _read_table(path)[:MAX_RECORDS]
    if not rows or not isinstance(rows[0], dict):
        raise NnslimError(f"--{what}={str(spec)!r} holds no records")
    columns = list(rows[0])
    context = text_column if text_column is not None else next((c for c in CONTEXT_COLUMNS if c in columns), None)
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if context not in columns or _choices_of(rows[0], columns) is None:
        raise NnslimError(f"--{what}={str(spec)!r} (columns: {', '.join(map(str, columns))}) has no "
                          f"{'context column' if context not in columns else 'choices'}; allowed: {CHOICE_FORMATS}")
    contexts, choices, labels = [], [], []
    for i, row in enumerate(rows):
        ctx, options, y = row.get(context), _choices_of(row, columns), row.get(label) if label else None
        if not isinstance(ctx, str) or not isinstance(options, list) or len(options) < 2 \
                or not all(isinstance(o, str) for o in options):
            raise NnslimError(f"--{what}={str(spec)!r} record {i}: needs a text {context!r} and at least two text "
                              "choices")
        if choices and len(options) != len(choices[0]):
            raise NnslimError(f"--{what}={str(spec)!r} record {i} has {len(options)} choices, record 0 "
                              f"{len(choices[0])}: every item needs the same number")
        if label is not None:
            try:
                y = int(y)
            except (TypeError, ValueError):
                y = -1
            if not 0 <= y < len(options):
                raise NnslimError(f"--{what}={str(spec)!r} record {i}: {label}={row.get(label)!r} is not the index "
                                  f"of one of its {len(options)} choices")
        contexts.append(ctx)
        choices.append(options)
        labels.append(y)
    return Records(texts=contexts, pairs=choices, labels=labels if label else None,
                   origin=f"{path.name}:{context}+choices")


class MultipleChoiceTestbed(PaddedTextTestbed):
    task = "multiple-choice"
    primary_metric = "top1_agreement"
    output_kind = "logits"
    default_batch = 8
    n_choices = 4  # of the default data

    def __init__(self, model_dir: str | Path, name: str | None = None, n_eval: int = 128, max_length: int = 128,
                 trust_remote_code: bool = False, weights: bool = True):
        self._dir = Path(model_dir)
        self.name = name or f"hf:{model_dir}"
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.n_eval, self.max_length = n_eval, max_length
        self.description = ("multiple choice; metrics: top-1 agreement of the chosen answer and logits cosine vs fp32, "
                            "choice_accuracy against the items' labels")
        self._user: dict[str, Records | None] = {}
        self._ref_out = None

    def use_data(self, calibration=None, evaluation=None) -> None:
        for what, records in (("calibration", calibration), ("eval", evaluation)):
            if records is not None and not (records.pairs and isinstance(records.pairs[0], list)):
                raise NnslimError(f"{what} data for a multiple-choice model needs items with choices: {CHOICE_FORMATS}")
        self._user = {"calibration": calibration, "eval": evaluation}
        self._ref_out = None

    def describe(self) -> dict:
        given = [f"{k} from {r.origin}" for k, r in self._user.items() if r is not None]
        return {**super().describe(), "data": "; ".join(given) or "Python-docs sentences split in half, the right "
                "ending among the next sentences' (offline default)"}

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("input_ids", "attention_mask")
        return names + ("token_type_ids",) if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()) \
            else names

    @property
    def dynamic_axes(self) -> dict:
        return {name: {0: "batch", 1: "choices", 2: "seq"} for name in self.input_names}

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForMultipleChoice

        return TextLogits(self.load_hf(AutoModelForMultipleChoice), self.task).eval()

    def items(self, split: str) -> list[tuple[str, list[str], int | None]]:
        """(context, choices, right index or None) of a split."""
        records = self._user.get(split)
        if records is not None:
            labels = records.labels or [None] * len(records.texts)
            return list(zip(records.texts, records.pairs, labels))
        out, sentences = [], [s.split() for s in self.source.sentences(split)]
        halves = [(" ".join(w[: len(w) // 2]), " ".join(w[len(w) // 2:])) for w in sentences if len(w) >= 4]
        k = self.n_choices
        for i in range(len(halves) - k + 1):
            endings = [halves[i + j][1] for j in range(k)]
            right = i % k  # the right ending moved to a different place per item
            endings[0], endings[right] = endings[right], endings[0]
            out.append((halves[i][0], endings, right))
        if not out:
            raise NnslimError(f"{self.name}: the {split} text has too few sentences for multiple-choice items")
        return out

    def _encode_items(self, items: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        k = len(items[0][1])
        pairs = [(ctx, choice) for ctx, choices, _ in items for choice in choices]
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding="max_length" if pad_to else True,
                  max_length=pad_to or self.max_length, truncation="longest_first", return_tensors="np")
        return {name: enc[name].astype(np.int64).reshape(len(items), k, -1) for name in self.input_names}

    def example_inputs(self, batch=None, seq=None):
        batch, seq = batch or self.default_batch, seq or self.default_seq
        pool = self.items("eval")
        return self._encode_items([pool[i % len(pool)] for i in range(batch)], pad_to=seq)

    def export_example(self):
        return self.example_inputs(batch=2, seq=16)

    def calibration(self, n=None, seq_len=None):
        return [self._encode_items([item]) for item in self.items("calibration")[: n or 128]]

    def evaluate(self, runner) -> dict[str, float]:
        items = self.items("eval")[: self.n_eval]
        batches = [self._encode_items(items[i:i + 16]) for i in range(0, len(items), 16)]
        if self._ref_out is None:
            ref = self.reference_runner()
            self._ref_out = [np.asarray(ref(b)) for b in batches]
        out = [np.asarray(runner(b)) for b in batches]
        metrics = agreement(self._ref_out, out, None)
        labels = [y for _, _, y in items]
        if all(y is not None for y in labels):
            chosen = np.concatenate([o.argmax(-1) for o in out])
            metrics["choice_accuracy"] = float(np.mean(chosen == np.asarray(labels)))
        return metrics
