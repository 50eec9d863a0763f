"""Vision-language models that generate text from an image and a prompt (LLaVA, Qwen2-VL, Gemma 3, Idefics, ...:
transformers' image-text-to-text mapping, AutoModelForImageTextToText with its AutoProcessor).

The model is called as one function of the processor's outputs (input_ids, attention_mask, pixel_values and
whatever else the processor gives: image_sizes, image_grid_thw, ...) -> logits [batch, seq, vocab], without a
KV cache. The metric is agreement with the fp32 model on what it generates: for each held-out (image, prompt)
the fp32 model's greedy continuation is computed once, then every variant is teacher-forced on prompt +
continuation and compared at the continuation's positions up to its end-of-sequence token (top-1 agreement of
the next token, logits cosine), plus the continuation's perplexity under the variant (as encoder-decoders are
measured: seq2seq.GreedyTargets). The prompt is the processor's chat template around one image and a text when
the processor has one, else its image token and the text.

Data: the user's (--calibration / --eval: a folder of images, each asked PROMPT, or a table whose rows give an image
path, relative to the table, and a text: `read_image_texts`), else the offline default: the images of the image
classifiers (sklearn digits) paired with sentences of the Python docs (calibration and evaluation disjoint); the
prompt of a default evaluation pair is the first half of its sentence. The compression methods keep the image
encoder and the projector as they are unless asked (graph/scope.VISION): the language model is what is compressed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from .base import HFTestbed
from .classifier import HFLogits
from .seq2seq import answer_metrics
from .sources import IMAGE_SUFFIXES, MAX_RECORDS, TEXT_COLUMNS, Records, _read_table

IMAGE_COLUMNS = ("image", "image_path", "image_file", "file_name", "file", "path")
PROMPT_COLUMNS = TEXT_COLUMNS + ("caption", "instruction")
IMAGE_TEXT_FORMATS = ("a folder of images, or a .jsonl / .json / .csv / .tsv / .parquet table with an image path column "
                      f"({' / '.join(IMAGE_COLUMNS)}) and a text column ({' / '.join(PROMPT_COLUMNS[:5])} ...)")
PROMPT = "Describe the image."  # what each image of a folder is asked


def _open_image(path: Path, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types on a damaged file
        raise NnslimError(f"--{what}: {str(path)!r} is not a readable image: {str(e)[:200]}") from None


def read_image_texts(spec: str | Path, what: str, text_column: str | None = None) -> Records:
    """(image, text) pairs of a user's data: a folder of images (each asked PROMPT: no texts) or a table whose rows
    name an image file (relative to the table's folder) and give a text. Images as [H, W, 3] uint8, each at its size
    (the model's processor resizes them)."""
    path = Path(spec)
    if not path.exists():
        raise NnslimError(f"--{what}={str(spec)!r}: file not found; allowed: {IMAGE_TEXT_FORMATS}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise NnslimError(f"--{what}={str(spec)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return Records(images=[_open_image(p, what) for p in files[:MAX_RECORDS]], origin=f"{path.name} ({PROMPT!r})")
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        raise NnslimError(f"--{what}={str(spec)!r}: suffix {path.suffix!r} is not allowed; allowed: {IMAGE_TEXT_FORMATS}")
    rows = _read_table(path)[:MAX_RECORDS]
    if not rows or not isinstance(rows[0], dict):
        raise NnslimError(f"--{what}={str(spec)!r} holds no records")
    columns = list(rows[0])
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    text_col = text_column if text_column is not None else next((c for c in PROMPT_COLUMNS if c in columns), None)
    if image_col is None or text_col not in columns:
        missing = "image path column" if image_col is None else f"text column {text_col!r}" if text_column else "text column"
        raise NnslimError(f"--{what}={str(spec)!r} has no {missing} (its columns: {', '.join(map(str, columns))}); "
                          f"allowed: {IMAGE_TEXT_FORMATS}; --text-column names the text column")
    images, texts = [], []
    for i, row in enumerate(rows):
        file, text = row.get(image_col), row.get(text_col)
        if not isinstance(file, str) or not isinstance(text, str):
            raise NnslimError(f"--{what}={str(spec)!r} record {i}: {image_col!r} and {text_col!r} must be text (an "
                              f"image path and a prompt), got {type(file).__name__} / {type(text).__name__}")
        image = path.parent / file
        if not image.is_file():
            raise NnslimError(f"--{what}={str(spec)!r} record {i}: image {file!r} not found (paths are relative to "
                              "the table's folder)")
        images.append(_open_image(image, what))
        texts.append(text)
    return Records(images=images, texts=texts, origin=f"{path.name}:{image_col}+{text_col}")


class ImageTextLogits(HFLogits):
    output_name = "logits"

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs, use_cache=False).logits

    @property
    def lm(self) -> nn.Module:
        """The transformers model, whose generate() the report's decode rate runs (TorchRunner.decode)."""
        return self.model

    def decoder_with_past(self) -> nn.Module:
        """No single-graph KV-cache form: decoding goes through the model's own generate() and cache."""
        from ..runtime.onnx_llm import NoKVCache

        raise NoKVCache(f"{type(self.model).__name__} is a vision-language model: it decodes through its own "
                        "generate() and cache")


class ImageTextTestbed(HFTestbed):
    task = "image-text-to-text"
    primary_metric = "top1_agreement"
    output_kind = "logits"
    default_batch = 1
    input_names = ("input_ids", "attention_mask", "pixel_values")  # and what else the processor gives

    def __init__(self, model_dir: str | Path, name: str | None = None, n_eval: int = 16, target_length: int = 16,
                 trust_remote_code: bool = False, weights: bool = True):
        self._dir = Path(model_dir)
        self.name = name or f"hf:{model_dir}"
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.n_eval, self.target_length = n_eval, target_length
        self.description = ("vision-language model (image + prompt -> text); metrics: top-1 agreement and logits "
                            "cosine vs fp32, teacher-forced on the fp32 model's greedy answer, and that answer's "
                            "perplexity")
        self._processor = None
        self._ref_gen = None
        self._user: dict[str, Records | None] = {}

    def use_data(self, calibration=None, evaluation=None) -> None:
        for what, records in (("calibration", calibration), ("eval", evaluation)):
            if records is not None and records.images is None:
                raise NnslimError(f"{what} data for {self.name} needs images: {IMAGE_TEXT_FORMATS}")
        self._user = {"calibration": calibration, "eval": evaluation}
        self._ref_gen = None

    def describe(self) -> dict:
        given = [f"{k} from {r.origin}" for k, r in self._user.items() if r is not None]
        return {**super(HFTestbed, self).describe(), "task": self.task, "data": "; ".join(given) or
                "sklearn digits images with Python-docs sentences as prompts (offline default)"}

    @property
    def processor(self):
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = self._load("loading the processor", lambda: AutoProcessor.from_pretrained(
                str(self.model_dir), trust_remote_code=self.trust_remote_code))
            if getattr(self._processor, "image_processor", None) is None:
                raise NnslimError(f"{str(self.model_dir)!r}: its processor ({type(self._processor).__name__}) has no "
                                  "image processor; save the model's processor beside it (processor.save_pretrained)")
        return self._processor

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", None) or super().tokenizer

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForImageTextToText

        return ImageTextLogits(self.load_hf(AutoModelForImageTextToText), self.task).eval()

    def _prompt(self, text: str) -> str:
        proc = self.processor
        if getattr(proc, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        token = getattr(proc, "image_token", None)
        if not isinstance(token, str) or not token:
            raise NnslimError(f"{str(self.model_dir)!r}: the processor ({type(proc).__name__}) has neither a chat "
                              "template nor an image token: nnslim cannot place the image in a prompt")
        return f"{token}\n{text}"

    def _images(self, split: str) -> np.ndarray:
        """[N, H, W, 3] uint8 RGB images (the processor resizes them)."""
        from .digits import digits_data

        xc, _, xe, _ = digits_data()
        images = torch.as_tensor(xc if split == "calibration" else xe, dtype=torch.float32)
        images = images[:, None] if images.dim() == 3 else images
        images = nn.functional.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
        images = images.clamp(0, 1).expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.clamp(0, 1)
        return (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()

    def _pairs(self, split: str, n: int) -> list[tuple[np.ndarray, str]]:
        records = self._user.get(split)
        if records is not None:  # the user's: each text is the whole prompt
            return list(zip(records.images, records.texts or [PROMPT] * len(records.images)))[:n]
        images, sentences = self._images(split), self.source.sentences(split)
        if not sentences:
            raise NnslimError(f"{self.name}: no {split} sentences to pair with the images")
        n = min(n, len(images), len(sentences))
        if split == "eval":  # a prompt: the first half of the sentence, which the model continues
            return [(images[i], " ".join(sentences[i].split()[: max(3, len(sentences[i].split()) // 2)]))
                    for i in range(n)]
        return [(images[i], sentences[i]) for i in range(n)]

    def _encode(self, pairs: list[tuple[np.ndarray, str]]) -> dict[str, np.ndarray]:
        texts = [self._prompt(t) for _, t in pairs]
        tok = self.tokenizer
        if len(pairs) > 1 and getattr(tok, "pad_token", "") is None:  # Llama-style tokenizers have none
            tok.pad_token = tok.eos_token or tok.unk_token
        out = self._load("running the processor", lambda: self.processor(
            images=[[im] for im, _ in pairs], text=texts, return_tensors="pt", **({"padding": True} if len(pairs) > 1
                                                                                  else {})))
        feed = {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
        self.input_names = tuple(feed)
        return feed

    def example_inputs(self, batch=None, seq=None):
        return self._encode(self._pairs("eval", batch or self.default_batch))

    def export_example(self):
        return self.example_inputs(batch=1)

    decode_tokens = 32  # new tokens per decode-speed run (report column "decode tok/s")

    def decode_prompt(self) -> np.ndarray:
        """The prompt of the decode-speed measurement: a text prompt [1, P] (the rate after the prefill is the
        language model's, whatever the prefill held)."""
        text = " ".join(self.source.sentences("eval")[:4])
        return np.asarray(self.tokenizer(text, return_tensors="np")["input_ids"][:, :64], np.int64)

    def calibration(self, n=None, seq_len=None):
        return [self._encode([p]) for p in self._pairs("calibration", n or 64)]

    @staticmethod
    def _extend(feed: dict[str, np.ndarray], tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs with `tokens` [1, T] appended: the attention mask with ones, other per-token inputs (token
        type ids, ...) with zeros; the image inputs as they are."""
        ids = feed["input_ids"]
        out = dict(feed)
        for key, value in feed.items():
            if key != "input_ids" and value.shape == ids.shape:
                out[key] = np.concatenate([value, np.full(tokens.shape, key == "attention_mask", value.dtype)], 1)
        out["input_ids"] = np.concatenate([ids, tokens.astype(ids.dtype)], 1)
        return out

    def _greedy(self, feed: dict[str, np.ndarray], runner) -> np.ndarray:
        """[1, target_length] tokens the runner generates greedily after the prompt (the whole prefix at each step,
        as the metric's teacher forcing runs it)."""
        new = np.zeros((1, 0), np.int64)
        for _ in range(self.target_length):
            logits = runner(self._extend(feed, new))
            new = np.concatenate([new, np.asarray(logits)[:, -1].argmax(-1)[:, None].astype(np.int64)], 1)
        return new

    def _eos(self) -> list[int]:
        """End-of-sequence ids: the tokenizer's, the config's and its text part's."""
        from .classifier import _read_json

        config = _read_json(self.model_dir / "config.json")
        found = [getattr(self.tokenizer, "eos_token_id", None), config.get("eos_token_id"),
                 (config.get("text_config") or {}).get("eos_token_id")]
        return [i for v in found for i in (v if isinstance(v, list) else [v]) if isinstance(i, int)]

    def evaluate(self, runner) -> dict[str, float]:
        if self._ref_gen is None:
            ref = self.reference_runner()
            feeds = [self._encode([p]) for p in self._pairs("eval", self.n_eval)]
            gens = [self._greedy(f, ref) for f in feeds]
            batches = [self._extend(f, g[:, :-1]) for f, g in zip(feeds, gens)]
            starts = [f["input_ids"].shape[1] - 1 for f in feeds]
            ref_out = [np.asarray(ref(b))[:, s:] for b, s in zip(batches, starts)]
            self._ref_gen = (gens, batches, starts, ref_out, self._eos())
        gens, batches, starts, ref_out, eos = self._ref_gen
        return answer_metrics(ref_out, [np.asarray(runner(b))[:, s:] for b, s in zip(batches, starts)], gens, eos)
