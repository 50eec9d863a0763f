"""Accuracy control, as NNCF's quantize_with_accuracy_control(validation_fn=...): rank quantized layers by
measured sensitivity, keep the fewest most sensitive ones in float until the validation metric drop is
within `max_drop`.

It takes a quantize function and a validate function, never evaluation code or a testbed: any
quantized layer that can give back its float self (`float_version()`) takes part. Sensitivity of a
layer = how much the model's output (cosine vs the float model, on probe samples) improves when only
that layer goes back to float (leave-one-out); the stopping test uses `validate`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..graph.modules import replace_everywhere
from ..progress import progress
from ..runtime.base import TorchRunner

DROP_NOISE = 1e-6  # metric differences below this are float rounding, not accuracy


def _cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a = np.asarray(ref, np.float64).reshape(len(ref), -1)
    b = np.asarray(out, np.float64).reshape(len(out), -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def _fidelity(model, probes, refs) -> float:
    runner = TorchRunner(model)
    return float(np.mean([_cosine(r, runner(p)) for p, r in zip(probes, refs)]))


def quantize_with_accuracy_control(model: nn.Module, quantize: Callable[[nn.Module], nn.Module],
                                   validate: Callable[[nn.Module], float], max_drop: float, probes: list[dict],
                                   notes: list, tables: dict | None = None) -> nn.Module:
    """quantize(model) must return a copy whose quantized layers have float_version(); validate(model) is
    the metric to keep (higher is better). Returns the quantized model with the fewest layers in float."""
    qmodel = quantize(model)
    base_metric = validate(model)

    def drop(m) -> float:
        return base_metric - validate(m)

    current = drop(qmodel)
    candidates = {n: m for n, m in qmodel.named_modules() if callable(getattr(m, "float_version", None))}
    fp_runner = TorchRunner(model)
    refs = [fp_runner(p) for p in probes]
    all_q = _fidelity(qmodel, probes, refs)
    gains = {}
    for name in progress(list(candidates), desc="layer sensitivity", total=len(candidates)):
        replace_everywhere(qmodel, name, candidates[name].float_version())
        gains[name] = _fidelity(qmodel, probes, refs) - all_q
        replace_everywhere(qmodel, name, candidates[name])
    ranking = sorted(gains, key=gains.get, reverse=True)
    table = ", ".join(f"{n} {gains[n]:+.2e}" for n in ranking[:10])
    notes.append(f"sensitivity (output-cosine gain when kept float, top 10): {table}")
    kept: list[str] = []
    for name in ranking:
        if current <= max_drop + DROP_NOISE:
            break
        replace_everywhere(qmodel, name, candidates[name].float_version())
        kept.append(name)
        current = drop(qmodel)
    status = "met" if current <= max_drop + DROP_NOISE else "NOT met even with every layer in float"
    notes.append(f"accuracy control: metric drop {current:.4f} vs max_drop={max_drop} ({status}); "
                 f"{len(kept)} of {len(candidates)} layers kept in float: {', '.join(kept) or 'none'}")
    if tables is not None:
        tables["layer sensitivity (output cosine gained when only this layer stays float)"] = [
            {"layer": n, "gain": f"{gains[n]:+.2e}", "kept float": "yes" if n in kept else "no"} for n in ranking]
    with torch.no_grad():
        for m in candidates.values():
            m.forget_float()
    return qmodel
