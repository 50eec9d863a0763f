"""Weight-only quantization of Linear layers (RTN, GPTQ, AWQ): configs, the driver, registered methods.

RTN quantizes every target directly. GPTQ and AWQ run layer by layer (graph/layerwise.py): one block
on the calibration device at a time, each block fed the outputs of the already-quantized ones.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import NnslimError
from ...graph.layerwise import block_targets, feed_block, find_blocks, run_layerwise
from ...graph.scope import select_linears
from ...recipe import MAX_INT, StepConfig, register_method
from ..modules import replace_module
from .awq import awq_quantize, search_scales
from .formats import BITS, GROUP_SIZES, WeightSpec, group_qparams, quantize_codes
from .gptq import HessianAccumulator, gptq_quantize
from .modules import KERNELS, WeightOnlyLinear

ALGORITHMS = ("rtn", "gptq", "awq")
AUTO_GROUPS = (128, 64, 32)
# Options that only some algorithms read (the registered methods fix the others at their defaults).
CALIBRATION_OPTIONS = ("samples", "seq_len", "device")
GPTQ_OPTIONS = ("damp", "act_order", "block_size")
AWQ_OPTIONS = ("grid", "clip_search")
MIN_TOKENS = 128


@dataclass(frozen=True)
class WeightOnlyConfig(StepConfig):
    """Low-bit weights for every nn.Linear (activations stay in float)."""
    ranges = {"group_size": (-1, MAX_INT)}
    bits: int = 4
    group_size: int | str = "auto"  # 32, 64, 128, 256, -1 (per channel) or auto: 128, else 64/32 if 128 does not divide
    symmetric: bool = True
    algorithm: str = "rtn"  # rtn | gptq | awq
    ignore: tuple[str, ...] = ()  # layer names, "re:REGEX", "type:Class"
    quantize_head: bool = False  # lm_head / classifier stay float by default
    samples: int = 128  # calibration sequences (gptq, awq)
    seq_len: int = 512
    damp: float = 0.01  # gptq: fraction of mean diag(H) added to the diagonal
    act_order: bool = True  # gptq
    block_size: int = 128  # gptq lazy-update block
    grid: int = 20  # awq: scale-search points
    clip_search: bool = True  # awq
    device: str = "auto"  # where layer-wise calibration runs: auto (cuda if available), cpu, cuda
    kernel: str = "auto"  # see WeightOnlyLinear

    def __post_init__(self):
        if self.bits not in BITS:
            raise NnslimError(f"bits={self.bits} is not allowed; allowed: {', '.join(map(str, BITS))}")
        if self.group_size != "auto" and self.group_size not in GROUP_SIZES:
            raise NnslimError(f"group_size={self.group_size!r} is not allowed; allowed: auto, "
                              f"{', '.join(map(str, GROUP_SIZES))} (-1 = per output channel)")
        if self.algorithm not in ALGORITHMS:
            raise NnslimError(f"algorithm={self.algorithm!r} is not allowed; allowed: {', '.join(ALGORITHMS)}")
        if not 1 <= self.samples <= 100_000:
            raise NnslimError(f"samples={self.samples} is not allowed; allowed: 1..100000")
        if not 16 <= self.seq_len <= 1 << 20:
            raise NnslimError(f"seq_len={self.seq_len} is not allowed; allowed: >= 16")
        if not 0 < self.damp < 1:
            raise NnslimError(f"damp={self.damp} is not allowed; allowed: 0 < damp < 1 (0.01 typical)")
        if self.block_size < 1 or self.grid < 1:
            raise NnslimError("block_size and grid must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise NnslimError(f"device={self.device!r} is not allowed; allowed: auto, cpu, cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise NnslimError("device='cuda' was asked for but CUDA is not available here; use auto or cpu")
        if self.kernel not in KERNELS:
            raise NnslimError(f"kernel={self.kernel!r} is not allowed; allowed: {', '.join(KERNELS)}")


@dataclass(frozen=True)
class Int4RtnConfig(WeightOnlyConfig):
    """int4 weights by round-to-nearest (no calibration)."""
    fixed = ("algorithm", *CALIBRATION_OPTIONS, *GPTQ_OPTIONS, *AWQ_OPTIONS)


@dataclass(frozen=True)
class Int4GptqConfig(WeightOnlyConfig):
    """int4 weights by GPTQ (layer-wise, Hessian-based error compensation)."""
    fixed = ("algorithm", *AWQ_OPTIONS)
    algorithm: str = "gptq"


@dataclass(frozen=True)
class Int4AwqConfig(WeightOnlyConfig):
    """int4 weights by AWQ (activation-aware scales + clipping search)."""
    fixed = ("algorithm", *GPTQ_OPTIONS)
    algorithm: str = "awq"


@dataclass(frozen=True)
class Int8WeightOnlyConfig(WeightOnlyConfig):
    """int8 weights, per output channel, round-to-nearest."""
    fixed = ("bits", "group_size", "algorithm", *CALIBRATION_OPTIONS, *GPTQ_OPTIONS, *AWQ_OPTIONS)
    bits: int = 8
    group_size: int | str = -1


def target_linears(model: nn.Module, config) -> dict[str, nn.Linear]:
    return select_linears(model, config.ignore, config.quantize_head, "quantize")


def resolve_group(config: WeightOnlyConfig, layers: dict[str, nn.Linear], notes: list[str]) -> WeightSpec:
    size = config.group_size
    if size == "auto":
        size = next((g for g in AUTO_GROUPS if all(m.in_features % g == 0 for m in layers.values())), -1)
        if size != AUTO_GROUPS[0]:
            widths = sorted({m.in_features for m in layers.values() if m.in_features % AUTO_GROUPS[0]})
            notes.append(f"group_size auto: 128 does not divide in_features {widths}; using "
                         f"{size if size > 0 else 'per-channel'}")
    spec = WeightSpec(config.bits, size, config.symmetric)
    for name, m in layers.items():
        spec.group_for(m.in_features, name)  # a clear error naming the first layer that does not fit
    return spec


def _rtn(linear: nn.Linear, spec: WeightSpec) -> WeightOnlyLinear:
    group = spec.group_for(linear.in_features)
    w = linear.weight.detach()
    scale, zero = group_qparams(w, spec, group)
    return WeightOnlyLinear.from_codes(linear, quantize_codes(w, scale, zero, spec), scale, zero, spec)


def _calibration_device(config: WeightOnlyConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _check_samples(samples: list) -> None:
    if not samples:
        raise NnslimError("calibration is empty; GPTQ/AWQ need calibration sequences (e.g. 128 x 512 tokens)")
    tokens = 0
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise NnslimError(f"calibration[{i}] is a {type(s).__name__}; expected a dict like {{'input_ids': ...}}")
        tokens += int(torch.as_tensor(next(iter(s.values()))).numel())
    if tokens < MIN_TOKENS:
        raise NnslimError(f"calibration has {tokens} tokens; GPTQ/AWQ need at least {MIN_TOKENS} "
                          "(128 sequences x 512 tokens is typical)")


def _calibrating(layer: WeightOnlyLinear) -> WeightOnlyLinear:
    """While later blocks are calibrated, run the reference path: no kernel timing, no extra layouts."""
    layer.kernel = "dequant"
    return layer


def _block_process(config: WeightOnlyConfig, spec: WeightSpec, targets: set[str]):
    """The per-block step of GPTQ / AWQ for run_layerwise. Only names are held: a reference to a
    replaced Linear would keep its weights on the calibration device after the block moves back."""
    def process(index, name, block, inputs, kwargs):
        mods = block_targets(block, name, targets)
        if not mods:
            return
        stats: dict[str, object] = {}
        first_inputs: dict[str, torch.Tensor] = {}  # held so tensor identity is meaningful

        def on_input(n, mod, x):
            if config.algorithm == "gptq":
                stats.setdefault(n, HessianAccumulator(mod.in_features, x.device)).add(x)
            else:
                first_inputs.setdefault(n, x)
                flat = x.reshape(-1, x.shape[-1]).float()
                stats.setdefault(n, []).append(flat[:: max(1, flat.shape[0] // 256)])

        feed_block(block, mods, inputs, kwargs, on_input)
        with torch.no_grad():
            if config.algorithm == "gptq":
                for n, m in mods.items():
                    h = stats.pop(n).h
                    codes, scale, zero = gptq_quantize(m.weight, h, spec, spec.group_for(m.in_features),
                                                       config.damp, config.act_order, config.block_size,
                                                       f"{name}.{n}", inplace=True)
                    del h
                    replace_module(block, n, _calibrating(WeightOnlyLinear.from_codes(m, codes, scale, zero, spec)))
            else:
                groups: list[list[str]] = []  # Linears that read the very same input tensor
                for n in mods:
                    match = next((g for g in groups if first_inputs[g[0]] is first_inputs[n]), None)
                    if match is None:
                        groups.append([n])
                    else:
                        match.append(n)
                first_inputs.clear()
                for members in groups:
                    x = torch.cat(stats[members[0]])
                    ws = [mods[n].weight.float() for n in members]
                    group = spec.group_for(mods[members[0]].in_features)
                    s = search_scales(x, ws, spec, group, config.grid)
                    for n in members:
                        codes, scale, zero = awq_quantize(mods[n].weight, s, x, spec, group, config.clip_search)
                        replace_module(block, n, _calibrating(WeightOnlyLinear.from_codes(
                            mods[n], codes, scale, zero, spec, input_scale=1.0 / s)))
    return process


def quantize_weight_only(model: nn.Module, config: WeightOnlyConfig, calibration=None, inplace: bool = False,
                         notes: list[str] | None = None) -> nn.Module:
    """A copy of `model` (or the model itself if inplace) with Linear weights in low-bit packed form."""
    if not isinstance(model, nn.Module):
        raise NnslimError(f"weight-only quantization needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    targets = target_linears(model, config)
    spec = resolve_group(config, targets, notes)
    if config.algorithm != "rtn":
        samples = list(calibration) if calibration is not None else []
        _check_samples(samples)
        prefix, _ = find_blocks(model)
        inside = {n for n in targets if n.startswith(prefix + ".")}
        outside = {n: m for n, m in targets.items() if n not in inside}
        del targets
        device = _calibration_device(config)
        run_layerwise(model, samples, _block_process(config, spec, inside), device,
                      desc=f"{config.algorithm} int{config.bits}")
        if outside:
            notes.append(f"{len(outside)} linear layers outside the repeated blocks quantized by RTN: "
                         f"{', '.join(list(outside)[:5])}")
        targets = outside
        notes.append(f"{config.algorithm}: {len(inside)} layers, {len(samples)} calibration sequences, "
                     f"calibrated on {device.type}")
    for name, layer in targets.items():
        replace_module(model, name, _rtn(layer, spec))
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.kernel = config.kernel
    g = "per-channel" if spec.group_size == -1 else f"group {spec.group_size}"
    notes.append(f"weight-only int{spec.bits} {g} {'sym' if spec.symmetric else 'asym'} "
                 f"({config.algorithm}); head kept float: {not config.quantize_head}")
    return model


def calibration_for(config: WeightOnlyConfig, ctx) -> list | None:
    if config.algorithm == "rtn":
        return None
    if ctx.calibration is not None:
        return ctx.calibration
    from ...testbeds.smollm2 import CausalLMTestbed

    tb = ctx.testbed
    if isinstance(tb, CausalLMTestbed):
        return tb.calibration(config.samples, seq_len=config.seq_len)
    return tb.calibration(config.samples)


def _apply(model, config: WeightOnlyConfig, ctx):
    return quantize_weight_only(model, config, calibration_for(config, ctx), notes=ctx.notes)


for _name, _cls, _desc in [
        ("int4-rtn", Int4RtnConfig, "int4 weight-only, round to nearest (grouped, packed two per byte)"),
        ("int4-gptq", Int4GptqConfig, "int4 weight-only by GPTQ, layer by layer with calibration text"),
        ("int4-awq", Int4AwqConfig, "int4 weight-only by AWQ (activation-aware scales, clip search)"),
        ("int8-weight-only", Int8WeightOnlyConfig, "int8 weight-only, per output channel")]:
    register_method(_name, _cls, _desc)(_apply)
