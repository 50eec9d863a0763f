"""Training checkpoints in safe formats only: every tensor (model, projections, optimizer moments, torch
RNG) in one safetensors file, everything else (step, data order, numpy RNG, what the run was) in JSON.

A checkpoint is a folder `step-NNNNNNNN` written in a temp folder beside it and renamed into place, so a
kill at any moment leaves the previous checkpoint intact. Resuming checks that the run is the same one
(options, data, model, recipe): a checkpoint of another run is an error naming what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NnslimError

PREFIX = "step-"
STATE = "state.safetensors"
META = "trainer.json"
KEEP = 2  # checkpoints kept on disk (the newest ones)


def fingerprint(config: dict, data: list[dict], model: torch.nn.Module, extra: str = "") -> dict[str, str]:
    """Short hashes of what must not change between a run and its resume."""
    h_data = hashlib.sha256(str(len(data)).encode())
    for item in data[:: max(1, len(data) // 64)]:  # a spread of samples: enough to see other data
        for k in sorted(item):
            h_data.update(k.encode())
            h_data.update(np.ascontiguousarray(np.asarray(item[k])).tobytes())
    h_model = hashlib.sha256(";".join(f"{n}:{tuple(p.shape)}" for n, p in model.state_dict().items()).encode())
    opts = json.dumps(config, sort_keys=True, default=str)
    return {"options": hashlib.sha256(opts.encode()).hexdigest()[:16], "data": h_data.hexdigest()[:16],
            "model": h_model.hexdigest()[:16], "recipe": hashlib.sha256(extra.encode()).hexdigest()[:16]}


def latest(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                   and (p / META).is_file() and (p / STATE).is_file())
    return found[-1] if found else None


def save(directory: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{os.getpid()}-", dir=directory))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE))
        (tmp / META).write_text(json.dumps(meta, default=str))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    for p in old[:-KEEP]:
        shutil.rmtree(p, ignore_errors=True)
    return target


def load(path: Path, expected: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from ..io import load_safetensors

    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
        raise NnslimError(f"checkpoint {str(path)!r} cannot be read: {str(e)[:200]}") from None
    got = meta.get("fingerprint", {}) if isinstance(meta, dict) else {}
    for key in ("model", "options", "data", "recipe"):  # the most specific difference first
        if got.get(key) != expected[key]:
            what = {"recipe": "another recipe", "model": "another model (other layers or shapes)",
                    "options": "other training options", "data": "other training data"}[key]
            raise NnslimError(f"checkpoint {str(path)!r} was written by a run with {what}; resume only the same "
                              "run, or give a new checkpoint_dir")
    return load_safetensors(str(path / STATE)), meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as flat tensors plus its JSON-able rest."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
