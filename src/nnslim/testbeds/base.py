"""What every testbed provides: a model loader, disjoint calibration/evaluation data and a metric."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.base import Runner, TorchRunner


def cache_dir() -> Path:
    """Where trained/converted testbed weights are cached ($NNSLIM_CACHE or ~/.cache/nnslim)."""
    root = os.environ.get("NNSLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nnslim")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    def calibration(self, n: int | None = None) -> list[dict[str, np.ndarray]]:
        """Calibration inputs (one dict per sample, batch 1), never overlapping evaluation data."""

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


class HFTestbed(Testbed):
    """A Hugging Face model directory (a packaged default when none is given) and its tokenizer."""

    _dir: Path | None = None
    _tok = None

    def default_dir(self) -> Path:
        from ..errors import NnslimError

        raise NnslimError(f"{type(self).__name__} needs a model directory")

    @property
    def model_dir(self) -> Path:
        return self._dir or self.default_dir()

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._tok = AutoTokenizer.from_pretrained(str(self.model_dir))
        return self._tok

    def load_hf(self, auto_class):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return auto_class.from_pretrained(str(self.model_dir), dtype=torch.float32)


class ModuleTestbed(Testbed):
    """A user's own model with example inputs: the metric is output fidelity vs the original."""

    name = "module"
    description = "any torch.nn.Module; metric: output cosine / max error vs the original model"
    primary_metric = "output_cos_mean"

    def __init__(self, module: torch.nn.Module, example_inputs: dict[str, Any],
                 calibration: list[dict[str, Any]] | None = None,
                 dynamic_axes: dict[str, dict[int, str]] | None = None):
        self._module = module
        self._inputs = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                        for k, v in example_inputs.items()}
        self._calibration = calibration or []
        self.input_names = tuple(self._inputs)
        self.dynamic_axes = dynamic_axes or {name: {0: "batch"} for name in self._inputs}
        self.default_batch = next(iter(self._inputs.values())).shape[0]

    def load_model(self) -> torch.nn.Module:
        return self._module

    def example_inputs(self, batch=None, seq=None):
        return dict(self._inputs)

    def calibration(self, n=None):
        return list(self._calibration)[:n]

    def evaluate(self, runner: Runner) -> dict[str, float]:
        from ..eval.metrics import output_fidelity

        if getattr(self, "_ref_out", None) is None:
            self._ref_out = self.reference_runner()(self._inputs)
        return output_fidelity(self._ref_out, runner(self._inputs))
