"""Weight-only quantization of Linear layers: the configs every weight-only method shares and the one
driver that runs them.

Round-to-nearest quantizes every target directly. A calibrated method (GPTQ, AWQ: one file each)
hands the driver a BlockAlgorithm; the driver runs it layer by layer (graph/layerwise.py): one block
on the calibration device at a time, each block fed the outputs of the already-quantized ones.
Targets outside the repeated blocks get round-to-nearest.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
from torch import nn

from ...context import resolve_devices
from ...errors import NnslimError
from ...graph.layerwise import BlockAlgorithm, calibrate_layerwise, check_layerwise_samples, split_by_blocks
from ...graph.modules import replace_module
from ...graph.streaming import each_layer, source_of
from ...graph.experts import routers_note
from ...graph.scope import direct_reads_note
from ...graph.scope import select_linears
from ...recipe import MAX_INT, StepConfig
from .formats import GROUP_SIZES, WeightSpec, group_qparams, quantize_codes
from .modules import Kernel, WeightOnlyLinear

AUTO_GROUPS = (128, 64, 32)
AUTO_FLOAT_SHARE = 0.05  # group_size auto: layers no group divides may stay float if they hold this share at most


@dataclass(frozen=True)
class WeightOnlyConfig(StepConfig):
    """What every weight-only method reads: which Linears, and the kernel their forward uses."""
    bits: ClassVar[int] = 8
    group_size: ClassVar[int | str] = -1
    symmetric: ClassVar[bool] = True
    ignore: tuple[str, ...] = ()  # layer names, globs, "re:REGEX", "type:Class"
    quantize_head: bool = False  # lm_head / classifier stay float by default
    quantize_vision: bool = False  # a vision-language model's image encoder and projector stay float by default
    kernel: Kernel = "auto"  # see WeightOnlyLinear
    # The layers the format leaves out: input embedding tables, and the head unless quantize_head. int8: per row,
    # symmetric (NNCF compress_weights' backup mode; a tied head shares the table's codes). auto: int8 when a
    # later step exports to ONNX / OpenVINO (their lookups and int8 head kernels are fast), else float.
    backup: Literal["auto", "float", "int8"] = "auto"


@dataclass(frozen=True)
class LowBitConfig(WeightOnlyConfig):
    """Grouped low-bit weights."""
    ranges = {"group_size": (-1, MAX_INT)}
    bits: Literal[2, 3, 4, 8] = 4
    group_size: Literal["auto", -1, 32, 64, 128, 256] = "auto"  # auto: 128, else 64/32 where 128 does not divide
    symmetric: bool = True


@dataclass(frozen=True)
class CalibratedConfig(LowBitConfig):
    """Low-bit weights chosen from calibration data, layer by layer."""
    ranges = {**LowBitConfig.ranges, "samples": (1, 100_000), "seq_len": (16, 1 << 20), "gpus": (0, 1024)}
    samples: int = 128  # calibration sequences
    seq_len: int = 512
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where layer-wise calibration runs (auto: cuda if available)
    gpus: int = 1  # GPUs the layer-wise calibration is spread over (0: all present); see graph/spread.py


def _where(devices: list[torch.device]) -> str:
    return devices[0].type if len(devices) == 1 else f"{len(devices)} GPUs"


def target_linears(model: nn.Module, config) -> dict[str, nn.Linear]:
    return select_linears(model, config.ignore, config.quantize_head, "quantize", config.quantize_vision)


def resolve_group(config: WeightOnlyConfig, layers: dict[str, nn.Linear], notes: list[str]) -> WeightSpec:
    """The weight spec of `config` for `layers`. group_size auto: the largest of 128 / 64 / 32 that divides every
    layer's inputs; else the largest whose misfits hold at most AUTO_FLOAT_SHARE of the weights, those layers kept
    float (removed from `layers`, named in a note: torchao skips them likewise); else per-channel for all."""
    size = config.group_size
    if size == "auto":
        size = next((g for g in AUTO_GROUPS if all(m.in_features % g == 0 for m in layers.values())), -1)
        misfits: list[str] = []
        if size == -1:
            total = sum(m.weight.numel() for m in layers.values()) or 1
            for g in AUTO_GROUPS:
                odd = [n for n, m in layers.items() if m.in_features % g]
                if sum(layers[n].weight.numel() for n in odd) <= AUTO_FLOAT_SHARE * total:
                    size, misfits = g, odd
                    break
        if size != AUTO_GROUPS[0] or misfits:
            widths = sorted({m.in_features for m in layers.values() if m.in_features % AUTO_GROUPS[0]})
            kept = (f"; {len(misfits)} layer(s) no such group divides kept float "
                    f"({', '.join(misfits[:3])}{' ...' if len(misfits) > 3 else ''})") if misfits else ""
            notes.append(f"group_size auto: 128 does not divide in_features {widths}; using "
                         f"{size if size > 0 else 'per-channel'}{kept}")
        for n in misfits:
            del layers[n]
    spec = WeightSpec(config.bits, size, config.symmetric)
    for name, m in layers.items():
        spec.group_for(m.in_features, name)  # a clear error naming the first layer that does not fit
    return spec


RTN_CHUNK = 1 << 22  # weights per row chunk: RTN's fp32 temporaries stay ~16 MB each, whatever the layer size


def rtn_layer(linear: nn.Linear, spec: WeightSpec) -> WeightOnlyLinear:
    """Round-to-nearest: the packed layer of `linear`. Rows are quantized in chunks (each row's groups are
    independent, so the codes are those of the whole matrix at once) with the codes kept as bytes."""
    group = spec.group_for(linear.in_features)
    w = linear.weight.detach()
    rows = max(1, RTN_CHUNK // max(1, w.shape[1]))
    parts = []
    for r in range(0, w.shape[0], rows):
        scale, zero = group_qparams(w[r:r + rows], spec, group)
        parts.append((quantize_codes(w[r:r + rows], scale, zero, spec).to(torch.uint8), scale, zero))
    codes, scale, zero = (torch.cat(t) for t in zip(*parts))
    return WeightOnlyLinear.from_codes(linear, codes, scale, zero, spec)


def calibrating(layer: WeightOnlyLinear) -> WeightOnlyLinear:
    """While later blocks are calibrated, run the reference path: no kernel timing, no extra layouts."""
    layer.kernel = "dequant"
    return layer


def resolve_backup(config: WeightOnlyConfig, exports_later: bool) -> str:
    if config.backup != "auto":
        return config.backup
    return "int8" if exports_later else "float"


def quantize_weight_only(model: nn.Module, config: WeightOnlyConfig, calibration=None, inplace: bool = False,
                         notes: list[str] | None = None,
                         algorithm: Callable[[WeightSpec], BlockAlgorithm] | None = None, name: str = "rtn",
                         exports_later: bool = False) -> nn.Module:
    """A copy of `model` (or the model itself if inplace) with Linear weights in low-bit packed form.

    algorithm(spec) makes the per-block object of a calibrated method (None: round-to-nearest only);
    exports_later: a later step exports the model (resolves backup="auto").
    """
    if not isinstance(model, nn.Module):
        raise NnslimError(f"weight-only quantization needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    targets = target_linears(model, config)
    spec = resolve_group(config, targets, notes)
    if algorithm is not None:
        device = resolve_devices(config.device, config.gpus)
        samples = list(calibration) if calibration is not None else []
        check_layerwise_samples(samples, name)
        inside, outside = split_by_blocks(model, targets)
        del targets
        idle: list[str] = []

        def unseen(block, mods):  # layers no calibration token reached: round-to-nearest
            for n, m in mods.items():
                replace_module(block, n, calibrating(rtn_layer(m, spec)))
            idle.extend(mods)

        device = calibrate_layerwise(model, samples, inside, lambda: algorithm(spec), device,
                                     f"{name} int{config.bits}", unseen, notes)
        if idle:
            notes.append(f"{len(idle)} layers received no calibration input and were quantized by RTN: "
                         f"{', '.join(idle[:5])}")
        if outside:
            notes.append(f"{len(outside)} linear layers outside the repeated blocks quantized by RTN: "
                         f"{', '.join(list(outside)[:5])}")
        targets = outside
        notes.append(f"{name}: {len(inside)} layers, {len(samples)} calibration sequences, calibrated on {_where(device)}")
    for layer_name, layer in each_layer(model, targets):  # (streamed: read from the shards one at a time)
        replace_module(model, layer_name, rtn_layer(layer, spec))
    if source_of(model) is not None:  # the float rest (norms, embeddings, head) in memory, or on disk with offload
        source_of(model).settle(model)
    backup = resolve_backup(config, exports_later)
    offloaded = source_of(model) is not None and source_of(model).offload_dir is not None
    if backup == "int8" and offloaded:  # its float tables are back on disk (meta) after the streamed pass
        if config.backup == "int8":
            raise NnslimError("backup='int8' is not supported yet for a model streamed with an offload folder; use "
                              "backup='float', or stream without offload_dir")
        backup = "float"
        notes.append("backup auto: float (streamed with an offload folder, where int8 tables are not supported yet)")
    if backup == "int8":
        from .embedding import quantize_backup

        notes += quantize_backup(model, config.ignore, head=not config.quantize_head)
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.kernel = config.kernel
    g = "per-channel" if spec.group_size == -1 else f"group {spec.group_size}"
    why = f" (backup={config.backup}: {'an export step follows' if exports_later else 'no export step follows'})"
    notes.append(f"weight-only int{spec.bits} {g} {'sym' if spec.symmetric else 'asym'} ({name}); head "
                 f"{'int' + str(spec.bits) if config.quantize_head else backup}, embeddings {backup}"
                 f"{why if config.backup == 'auto' else ''}{routers_note(model)}{direct_reads_note(model)}")
    return model


__all__ = ["GROUP_SIZES", "WeightOnlyConfig", "LowBitConfig", "CalibratedConfig", "quantize_weight_only", "resolve_backup",
           "target_linears", "resolve_group", "rtn_layer", "calibrating"]
