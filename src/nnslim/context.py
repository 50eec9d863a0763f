"""What a recipe step gets besides the model: its data, the teacher, the device, the seed, a work dir.

Steps (algorithms) read data only through a Context: they never import testbeds, evaluation code or
the public API. The pipeline builds one Context per run from what the user gave (their own
calibration data and example inputs, or a data source such as a testbed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from .errors import NnslimError

ACCEPTED_DATA = ("a dict of named inputs, a tensor or array, a tuple of positional inputs, an iterable of "
                 "those (list, DataLoader, generator), or nnslim.Dataset(data, transform)")


class DataSource(Protocol):
    """What a testbed offers a step: calibration samples, example inputs of a shape, the output kind."""
    output_kind: str
    dynamic_axes: dict[str, dict[int, str]]
    default_seq: int | None

    def calibration(self, n: int | None = None, seq_len: int | None = None) -> list[dict]: ...

    def example_inputs(self, batch: int | None = None, seq: int | None = None) -> dict: ...

    def export_example(self) -> dict: ...


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu' or 'cuda'; CUDA asked for where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NnslimError("device='cuda' was asked for but CUDA is not available here; use auto or cpu")
    return torch.device(name)


def resolve_devices(name: str, gpus: int = 1) -> list[torch.device]:
    """The devices of a layer-wise calibration: [resolve_device(name)], or `gpus` GPUs (0: all present)."""
    if gpus == 1:
        return [resolve_device(name)]
    from .distillation.distributed import world_size_from_env

    if world_size_from_env() > 1:
        raise NnslimError(f"gpus={gpus} under torchrun ({world_size_from_env()} processes): every process "
                          "already has its GPU; use gpus=1, or run one process to spread a layer-wise method")
    if name == "cpu" or not torch.cuda.is_available():
        why = "device=cpu was asked for" if name == "cpu" else "CUDA is not available here"
        raise NnslimError(f"gpus={gpus} needs CUDA GPUs, but {why}; use gpus=1")
    present = torch.cuda.device_count()
    if gpus > present:
        raise NnslimError(f"gpus={gpus} but this machine has {present} GPU(s); allowed: 0 (all) or 1..{present}")
    return [torch.device("cuda", k) for k in range(gpus or present)]


@dataclass
class Context:
    """Data and settings for the steps of one run. `validate(model) -> float` (higher is better) is the
    metric accuracy-controlled methods keep, given by the caller (a testbed's metric or the user's)."""
    workdir: Path
    seed: int = 0
    source: DataSource | None = None
    user_calibration: list[dict] | None = None
    user_example: dict | None = None
    teacher: Any = None  # the recipe's input model (distillation teacher); steps never modify it
    validate: Callable[[torch.nn.Module], float] | None = None
    run_id: str = ""  # names the recipe step being run (a training checkpoint must come from the same one)
    later_stages: tuple[str, ...] = ()  # stages of the recipe's steps after the one being run (e.g. "export")
    later_trains: bool = False  # a training step comes after the one being run
    backend: str | None = None  # the runtime the user named for the artifact (--backend), if any
    notes: list[str] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)  # extra report tables, e.g. sensitivity

    def calibration(self, n: int | None = None, seq_len: int | None = None, what: str = "this method") -> list[dict]:
        """Up to n calibration samples (input dicts): the user's, else the data source's."""
        if self.user_calibration is not None:
            if not self.user_calibration:
                raise NnslimError(f"calibration is empty (no data); {what} needs at least one sample (100-1000 is typical)")
            return list(self.user_calibration[:n] if n else self.user_calibration)
        if self.source is not None:
            return self.source.calibration(n, seq_len=seq_len)
        raise NnslimError(f"{what} needs calibration data: pass calibration= ({ACCEPTED_DATA}), or a testbed")

    def training_data(self, n: int | None = None, what: str = "training") -> list[dict]:
        """Up to n training samples: the user's data, else the data source's training split (with hard
        labels under `labels` where it has them), else its calibration split."""
        if self.user_calibration is None and self.source is not None and hasattr(self.source, "training_data"):
            return self.source.training_data(n)
        return self.calibration(n, what=what)

    @property
    def has_data(self) -> bool:
        return bool(self.user_calibration) or self.source is not None

    def example_inputs(self, batch: int | None = None, seq: int | None = None) -> dict[str, np.ndarray]:
        """Example inputs: the data source's at the given shape, else the user's, else a calibration sample."""
        if self.source is not None:
            return self.source.example_inputs(batch=batch, seq=seq)
        if self.user_example is not None:
            return dict(self.user_example)
        if self.user_calibration:
            return dict(self.user_calibration[0])
        raise NnslimError("this method needs example inputs: pass example_inputs= (a dict of named tensors, a "
                          "tensor or a tuple of positional inputs), calibration data, or a testbed")

    def small_example(self) -> dict[str, np.ndarray]:
        """One short sample (batch 1; 8 tokens for sequence inputs): enough to trace or probe a model."""
        if self.source is not None:
            return self.source.example_inputs(batch=1, seq=8 if self.source.default_seq else None)
        return self.example_inputs()

    def export_example(self) -> dict[str, np.ndarray]:
        """Inputs to trace an export with (batch 2 so the batch axis stays symbolic)."""
        if self.source is not None:
            return self.source.export_example()
        return self.example_inputs()

    def check_example(self) -> dict[str, np.ndarray]:
        """Inputs of another shape than the export example (batch 3, another sequence length)."""
        if self.source is not None:
            seq = self.source.default_seq
            return self.source.example_inputs(batch=3, seq=(seq // 2 + 3) if seq else None)
        return self.example_inputs()

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        if self.source is not None and self.source.dynamic_axes:
            return dict(self.source.dynamic_axes)
        return {k: {0: "batch"} for k in self.export_example()}

    @property
    def output_kind(self) -> str:
        """logits | embedding | tensor: what the model outputs (picks the distillation loss)."""
        return getattr(self.source, "output_kind", "tensor") if self.source is not None else "tensor"
