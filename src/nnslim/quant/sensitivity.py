"""Accuracy-controlled int8: rank quantized layers by measured sensitivity, keep the fewest most
sensitive ones in float until the testbed metric drop is within `max_drop`.

Sensitivity of a layer = how much the model's output (cosine vs fp32, on calibration samples) improves
when only that layer goes back to float (leave-one-out). The stopping test uses the testbed metric on
its evaluation data, as NNCF's quantize_with_accuracy_control uses the caller's validation set.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..eval.metrics import output_fidelity
from ..progress import progress
from ..runtime.base import TorchRunner
from .modules import QuantEmbedding, QuantWrapper, replace_module


DROP_NOISE = 1e-6  # metric differences below this are float rounding, not accuracy


def float_version(w: QuantWrapper | QuantEmbedding) -> nn.Module:
    """The layer as it was before quantization (after BN folding / SmoothQuant, which are exact)."""
    import copy

    if isinstance(w, QuantEmbedding):
        m = copy.deepcopy(w.embedding)
        with torch.no_grad():
            m.weight.copy_(w.original_weight)
        return m
    m = copy.deepcopy(w.float_module)
    with torch.no_grad():
        weight = w.original_weight
        if w.input_scale is not None:  # undo SmoothQuant in the weight: the same layer, the same module tree
            weight = weight / w.input_scale.to(weight.dtype).reshape(1, -1, *([1] * (weight.dim() - 2)))
        m.weight.copy_(weight)
        if w.original_bias is not None:
            m.bias.copy_(w.original_bias)
        elif m.bias is not None:
            m.bias = None
    return m


def _fidelity(model, probes, refs) -> float:
    runner = TorchRunner(model)
    return float(np.mean([output_fidelity(r, runner(p))["output_cos_mean"] for p, r in zip(probes, refs)]))


def quantize_with_accuracy_control(model: nn.Module, config, data: list[dict], example: dict, testbed,
                                   notes: list, tables: dict | None = None, n_probe: int = 32) -> nn.Module:
    from .ptq import quantize_int8

    max_drop = config.max_drop
    qmodel = quantize_int8(model, dataclasses.replace(config, max_drop=None), data, example, notes=notes,
                           keep_float=True)
    sign = 1.0 if testbed.higher_is_better else -1.0
    metric = testbed.primary_metric
    base_metric = testbed.evaluate(TorchRunner(model))[metric]

    def drop(m) -> float:
        return sign * (base_metric - testbed.evaluate(TorchRunner(m))[metric])

    current = drop(qmodel)
    # Embedding tables are candidates too: with every Linear back in float they may be what is left.
    wrappers = {n: m for n, m in qmodel.named_modules() if isinstance(m, (QuantWrapper, QuantEmbedding))}
    probes = data[:n_probe]
    fp_runner = TorchRunner(model)
    refs = [fp_runner(p) for p in probes]
    all_q = _fidelity(qmodel, probes, refs)
    gains = {}
    for name in progress(list(wrappers), desc="layer sensitivity", total=len(wrappers)):
        replace_module(qmodel, name, float_version(wrappers[name]))
        gains[name] = _fidelity(qmodel, probes, refs) - all_q
        replace_module(qmodel, name, wrappers[name])
    ranking = sorted(gains, key=gains.get, reverse=True)
    table = ", ".join(f"{n} {gains[n]:+.2e}" for n in ranking[:10])
    notes.append(f"sensitivity (output-cosine gain when kept float, top 10): {table}")
    kept: list[str] = []
    for name in ranking:
        if current <= max_drop + DROP_NOISE:
            break
        replace_module(qmodel, name, float_version(wrappers[name]))
        kept.append(name)
        current = drop(qmodel)
    status = "met" if current <= max_drop + DROP_NOISE else "NOT met even with every layer in float"
    notes.append(f"accuracy control: {metric} drop {current:.4f} vs max_drop={max_drop} ({status}); "
                 f"{len(kept)} of {len(wrappers)} layers kept in float: {', '.join(kept) or 'none'}")
    if tables is not None:
        tables["layer sensitivity (output cosine gained when only this layer stays float)"] = [
            {"layer": n, "gain": f"{gains[n]:+.2e}", "kept float": "yes" if n in kept else "no"} for n in ranking]
    for w in wrappers.values():
        del w.original_weight
        if isinstance(w, QuantWrapper):
            del w.original_bias
    return qmodel
