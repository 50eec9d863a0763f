"""What every testbed provides: a model loader, disjoint calibration/evaluation data and a metric."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..graph.modules import linear_conv1d
from ..runtime.base import Runner, TorchRunner




class Testbed(ABC):
    """A real model with its data. Inputs are dicts of named numpy arrays (batch first)."""

    name: str = ""
    description: str = ""
    primary_metric: str = ""
    output_kind: str = "tensor"  # logits | embedding | tensor: picks the distillation loss
    higher_is_better: bool = True
    input_names: tuple[str, ...] = ()
    dynamic_axes: dict[str, dict[int, str]] = {}
    default_batch: int = 1
    default_seq: int | None = None

    @abstractmethod
    def load_model(self) -> torch.nn.Module:
        """The fp32 model in eval mode; called as model(**inputs)."""

    @abstractmethod
    def example_inputs(self, batch: int | None = None, seq: int | None = None) -> dict[str, np.ndarray]:
        """Real inputs of the given shape, from the evaluation split."""

    @abstractmethod
    def calibration(self, n: int | None = None, seq_len: int | None = None) -> list[dict[str, np.ndarray]]:
        """Calibration inputs (one dict per sample, batch 1), never overlapping evaluation data; `seq_len`
        asks text testbeds for fixed-length sequences (others ignore it)."""

    @abstractmethod
    def evaluate(self, runner: Runner) -> dict[str, float]:
        """The testbed metrics for a runner of this model (any backend)."""

    def export_example(self) -> dict[str, np.ndarray]:
        """Inputs for tracing an export: batch 2 (so the batch axis is not specialised to 1), short seq."""
        return self.example_inputs(batch=2, seq=min(self.default_seq, 16) if self.default_seq else None)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "metric": self.primary_metric,
                "inputs": list(self.input_names)}

    def reference_runner(self) -> Runner:
        """A runner of the fp32 model, loaded once per testbed object."""
        if getattr(self, "_reference", None) is None:
            self._reference = TorchRunner(self.load_model())
        return self._reference


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")
# Files that describe an HF model without its weights: copied into artifacts so they load on their own.
HF_META_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                 "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "preprocessor_config.json",
                 "processor_config.json", "chat_template.jinja", "chat_template.json")


def check_hf_dir(path: Path, trust_remote_code: bool = False) -> dict:
    """Refuse what nnslim will not load from an HF folder before transformers sees it: a config that is
    not JSON, code of the folder's own (auto_map) unless trusted, and pickle-only weights. Returns the config."""
    import json

    from ..errors import NnslimError

    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise NnslimError(f"{str(cfg_path)!r} is not a valid JSON config: {str(e)[:200]}") from None
    if not isinstance(config, dict):
        raise NnslimError(f"{str(cfg_path)!r} must hold a JSON object, not {type(config).__name__}")
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = config if name == "config.json" else json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map") and not trust_remote_code:
            raise NnslimError(f"{str(path / name)!r} names code of the folder's own (auto_map); nnslim never runs "
                              "a model folder's code unless asked: pass --trust-remote-code "
                              "(trust_remote_code=True) if you trust this folder")
    return config


class HFTestbed(Testbed):
    """A Hugging Face model directory (a packaged default when none is given) and its tokenizer.

    Only safetensors weights are loaded (a folder with only pickle .bin weights is refused), and the
    folder's own code (auto_map) runs only with trust_remote_code=True. `weights=False` builds the
    architecture from config.json alone (an nnslim artifact's copy), with no reference model.
    """

    _dir: Path | None = None
    _tok = None
    trust_remote_code: bool = False
    weights: bool = True
    task: str = ""
    _source = None
    load_dtype: torch.dtype = torch.float32  # an artifact in HF layout loads in the dtype it was saved in

    @property
    def source(self):
        """Where texts come from: the user's files (use_data) or the offline default."""
        if self._source is None:
            from .sources import TextSource

            self._source = TextSource()
        return self._source

    def use_data(self, calibration=None, evaluation=None) -> None:
        """Calibrate and/or evaluate on the user's records (sources.read_texts) instead of the default."""
        from .sources import UserText

        self._source = UserText(calibration, evaluation)
        self._ref_cache_clear()

    def _ref_cache_clear(self) -> None:
        for attr in ("_ref_emb", "_ref_gen", "_ref_out"):
            if hasattr(self, attr):
                setattr(self, attr, None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "task": self.task, "data": self.source.description}

    def default_dir(self) -> Path:
        from ..errors import NnslimError

        raise NnslimError(f"{type(self).__name__} needs a model directory")

    @property
    def model_dir(self) -> Path:
        return self._dir or self.default_dir()

    def _load(self, what: str, fn):
        from ..errors import NnslimError

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        check_hf_dir(self.model_dir, self.trust_remote_code)
        try:
            return fn()
        except NnslimError:
            raise
        except Exception as e:  # transformers' errors on a malformed folder: one line naming it
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            raise NnslimError(f"{what} of {str(self.model_dir)!r} failed: {msg}") from None

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            from ..errors import NnslimError

            if not any((self.model_dir / n).is_file() for n in TOKENIZER_FILES):
                raise NnslimError(f"{str(self.model_dir)!r} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                                  "nnslim needs one to turn text into inputs: save the tokenizer beside the "
                                  "model (tokenizer.save_pretrained(DIR)); compress with a method that needs no "
                                  "data (int4-rtn, fp16, prune-magnitude) runs without one when its report is "
                                  "skipped (--no-report, report=False)")

            self._tok = self._load("loading the tokenizer", lambda: AutoTokenizer.from_pretrained(
                str(self.model_dir), trust_remote_code=self.trust_remote_code))
        return self._tok

    def load_hf(self, auto_class):
        from ..errors import NnslimError

        if not self.weights:
            from transformers import AutoConfig

            def build():
                config = AutoConfig.from_pretrained(str(self.model_dir), trust_remote_code=self.trust_remote_code)
                if not hasattr(auto_class, "from_config"):  # a concrete class (T5EncoderModel, CLIPVisionModel)
                    return auto_class._from_config(config, dtype=torch.float32)
                return auto_class.from_config(config, trust_remote_code=self.trust_remote_code,
                                              dtype=torch.float32)
            return linear_conv1d(self._load("building the model from config.json", build))
        if not any(self.model_dir.glob("*.safetensors")):
            pickles = sorted(p.name for p in self.model_dir.glob("*.bin"))
            if pickles:
                raise NnslimError(f"{str(self.model_dir)!r} holds pickle weights only ({pickles[0]}); nnslim loads "
                                  "safetensors only (pickle can run code): convert them with save_pretrained(..., "
                                  "safe_serialization=True) where you trust the file")
        return linear_conv1d(self._load("loading the model", lambda: auto_class.from_pretrained(
            str(self.model_dir), dtype=self.load_dtype, use_safetensors=True,
            trust_remote_code=self.trust_remote_code)))

    def reference_runner(self) -> Runner:
        from ..errors import NnslimError

        if not self.weights:
            raise NnslimError(f"{self.name}: metrics against the original model need that model; pass "
                              "--testbed DIR (the Hugging Face dir it was compressed from)")
        return super().reference_runner()


_TOKEN_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids", "decoder_input_ids",
                 "decoder_attention_mask"}


def _default_axes(module, name: str, value) -> dict[int, str]:
    """The batch axis; for a transformers model object's token inputs also the sequence axis (a graph exported at
    one fixed length would fold its position lookups into constants and take no other length)."""
    is_hf = isinstance(getattr(getattr(module, "config", None), "model_type", None), str)
    if is_hf and name in _TOKEN_INPUTS and np.ndim(value) == 2:
        return {0: "batch", 1: "seq" if not name.startswith("decoder_") else "decoder_seq"}
    return {0: "batch"}


class ModuleTestbed(Testbed):
    """A user's own model with example inputs: the metric is output fidelity vs the original."""

    name = "module"
    description = "any torch.nn.Module; metric: output cosine / max error vs the original model"
    primary_metric = "output_cos_mean"

    def __init__(self, module: torch.nn.Module, example_inputs: dict[str, Any],
                 calibration: list[dict[str, Any]] | None = None,
                 dynamic_axes: dict[str, dict[int, str]] | None = None):
        self._module = module
        from ..data import to_numpy

        self._inputs = {k: to_numpy(v) for k, v in example_inputs.items()}
        self._calibration = calibration or []
        self.input_names = tuple(self._inputs)
        self.dynamic_axes = dynamic_axes or {name: _default_axes(module, name, v) for name, v in self._inputs.items()}
        self.default_batch = next(iter(self._inputs.values())).shape[0]

    def load_model(self) -> torch.nn.Module:
        return self._module

    def example_inputs(self, batch=None, seq=None):
        return dict(self._inputs)

    def calibration(self, n=None, seq_len=None):
        return list(self._calibration)[:n]

    def evaluate(self, runner: Runner) -> dict[str, float]:
        from ..eval.metrics import output_fidelity

        if getattr(self, "_ref_out", None) is None:
            self._ref_out = self.reference_runner()(self._inputs)
        return output_fidelity(self._ref_out, runner(self._inputs))
