"""Int8 post-training quantization (static and dynamic) of Linear/Conv layers.

Weights: int8 symmetric, per output channel (default) or per tensor. Activations (static): uint8
asymmetric per tensor (or, with symmetric_activations, int8 with zero point 0 where a range is signed), ranges
from a calibrator. Only the inputs of weight-bearing layers are
quantized, so numerically fragile ops (attention-mask add, softmax, LayerNorm, GELU) stay in float.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import NnslimError
from ..graph.fold import fold_batchnorm
from ..graph.scope import direct_reads, select_layers, split_mha
from ..recipe import StepConfig, register_method
from .calibration import check_calibration, run_with_hooks
from ..graph.modules import replace_everywhere, replace_module
from .modules import QUANTIZABLE, QuantEmbedding, QuantWrapper
from .observers import TensorStats, make_observer
from .quantizers import ActQuantizer, WeightQuantizer, act_scheme

Preset = Literal["auto", "transformer", "cnn"]
# Measured on minilm (BENCHMARKS.md): alpha 0.5 hurts, 0.7-0.85 best; NNCF uses 0.95 for MatMuls.
DEFAULT_SMOOTHQUANT_ALPHA = 0.85
# What the transformer preset keeps in float besides fragile ops (never quantized here at all):
# the classifier / LM head and embeddings, as NNCF's model_type=transformer and ModelOpt do.
TRANSFORMER_IGNORE = ("re:(^|\\.)(lm_head|classifier|score|pooler)(\\.|$)",)
# ... and, in static int8, 1-D convolutions: the feature encoders of speech transformers (wav2vec2 / HuBERT / WavLM
# on the raw waveform, Whisper's mel convolutions) and wav2vec2's positional convolution. On the test-sized random
# wav2vec2 CTC model static int8 gave logits cosine 0.83 with them quantized, 0.9999 with them float (BENCHMARKS 8i);
# ONNX Runtime's quantizer loses 0.89 on the same front end. preset="cnn" quantizes them.
TRANSFORMER_FLOAT_STATIC = (nn.Conv1d,)


@dataclass(frozen=True)
class Int8Base(StepConfig):
    """What static and dynamic int8 both read."""
    per_channel: bool = True
    preset: Preset = "auto"
    ignore: tuple[str, ...] = ()  # layer names, globs, "re:REGEX" or "type:ClassName"
    # 7-bit weights: u8 x s8 int8 kernels on CPUs without VNNI (AVX2) saturate int16 partial sums in
    # both ONNX Runtime and OpenVINO; "auto" turns it on when this machine lacks VNNI.
    reduce_range: bool | Literal["auto"] = "auto"


@dataclass(frozen=True)
class Int8DynamicConfig(Int8Base):
    """Dynamic int8: int8 weights, activations quantized per tensor at run time (no calibration)."""
    # nn.LSTM layers as ONNX Runtime's DynamicQuantizeLSTM (int8 weights per gate row), as ORT's quantize_dynamic
    # writes them: ~3x the float LSTM on a CPU, but the artifact then loads in ONNX Runtime only (standard ONNX has
    # no integer LSTM); false keeps them float in standard ONNX
    lstm: bool = True


@dataclass(frozen=True)
class StaticBase(Int8Base):
    """What every statically calibrated method reads (int8 PTQ, QAT's initialisation)."""
    ranges = {"percentile": (99.0, 99.99999), "samples": (1, 100_000), "smoothquant": (1e-6, 1 - 1e-6)}
    calibrator: Literal["auto", "minmax", "percentile", "entropy", "mse"] = "auto"  # auto: per model type
    percentile: float = 99.99
    samples: int = 300
    smoothquant: float | Literal["auto"] | None = "auto"  # alpha in (0, 1); "auto": 0.85 for transformers, off for CNNs
    bias_correction: bool = True
    # activations with negative values as int8 with zero point 0 (symmetric, as NNCF does) instead of uint8 with
    # a zero point; non-negative ones stay uint8. "auto": on for the transformer preset on a CPU with AMX unless
    # the artifact is meant for ONNX Runtime (--backend onnxruntime): there OpenVINO ran MiniLM-shaped 10% faster
    # this way (14% ahead of NNCF) and ONNX Runtime 28% slower (BENCHMARKS.md 8b); off elsewhere: a ResNet on that
    # Xeon within noise in OpenVINO, 6-45% slower in ONNX Runtime (8d), MiniLM slower on an AVX2 CPU (8b)
    symmetric_activations: bool | Literal["auto"] = "auto"


@dataclass(frozen=True)
class Int8Config(StaticBase):
    """Static int8: int8 weights and calibrated uint8 activations (deploys as ONNX QDQ)."""
    ranges = {**StaticBase.ranges, "max_drop": (0.0, 1e9)}
    max_drop: float | None = None  # accuracy control: max allowed drop of the validation metric
    # int8 attention products (Q.K^T, probs.V) in the ONNX graph, calibrated at export, as NNCF's transformer
    # preset does. "auto": on for the transformer preset where this CPU has int8 dot products (VNNI / AMX:
    # OpenVINO 2% faster on a Xeon with AMX); off without (no gain on AVX2, cos -0.0004): BENCHMARKS.md 8
    matmuls: bool | Literal["auto"] = "auto"
    # cnn preset: QDQ on the inputs of residual Adds in the ONNX graph (calibrated at export), so the convolutions
    # feeding them run as int8 QLinearConv in ONNX Runtime, as its own quantizer and NNCF do (BENCHMARKS.md 8d)
    residual_adds: bool = True
    # nn.LSTM layers as ONNX Runtime's DynamicQuantizeLSTM beside the static layers (as int8-dynamic: ORT's static
    # quantizer leaves them float; the artifact then needs ONNX Runtime); false keeps them float in standard ONNX
    lstm: bool = True


@dataclass(frozen=True)
class Settings:
    """The quantizers a config asks for."""
    bits: int = 8
    act_bits: int | None = 8  # None: weights only
    weight_mode: str = "minmax"
    act_mode: str = "fixed"  # fixed | lsq | pact | dynamic


def settings_of(config) -> Settings:
    """Quantizer settings of a config; methods with other bit widths or learnable scales override it."""
    own = getattr(config, "quantizer_settings", None)
    if own is not None:
        return own()
    return Settings(act_mode="dynamic" if isinstance(config, Int8DynamicConfig) else "fixed")


def is_transformer(model: nn.Module) -> bool:
    names = {type(m).__name__ for m in model.modules()}
    return any("Attention" in n or "LayerNorm" in n or "RMSNorm" in n for n in names) or isinstance(
        model, nn.TransformerEncoder)


def resolve_preset(config, model: nn.Module) -> str:
    if config.preset != "auto":
        return config.preset
    return "transformer" if is_transformer(model) else "cnn"


def default_calibrator(preset: str) -> str:
    """Activation calibrator by model type, from the calibrator table in BENCHMARKS.md: with SmoothQuant
    flattening transformer activations, minmax is best there; percentile (99.99) for CNNs."""
    return "minmax" if preset == "transformer" else "percentile"


def cpu_has_vnni() -> bool:
    """Does this CPU have int8 dot products (AVX512-VNNI, AVX-VNNI or AMX)? Unknown: assume a modern CPU."""
    from ..io import INT8_DOT_FLAGS, cpu_flags

    flags = cpu_flags()
    return not flags or any(f in flags for f in INT8_DOT_FLAGS)


def cpu_has_amx() -> bool:
    from ..io import cpu_flags

    return "amx_int8" in cpu_flags()


def symmetric_activations(config, preset: str, backend: str | None, act_mode: str) -> tuple[bool, str | None]:
    """(symmetric?, why, when chosen by "auto") for a static config (see StaticBase.symmetric_activations)."""
    value = getattr(config, "symmetric_activations", False)
    if value != "auto":
        return bool(value), None
    if preset == "transformer" and act_mode in ("fixed", "lsq") and backend != "onnxruntime" and cpu_has_amx():
        return True, ("symmetric_activations=auto: on for a transformer on this AMX CPU, where OpenVINO runs signed "
                      "int8 activations faster (ONNX Runtime slower: set it false or pass --backend onnxruntime)")
    return False, None


def _int8_lstms(model: nn.Module, config, backend: str | None, notes: list[str]) -> list[str]:
    """The nn.LSTM layers int8 / int8-dynamic deploy as int8 (runtime/onnx_lstm.py): marked on the model for its
    export."""
    from ..runtime.onnx_lstm import LSTM_ATTR

    found = list(select_layers(model, (nn.LSTM,), config.ignore))
    if found and backend == "openvino":
        notes.append(f"{len(found)} nn.LSTM module(s) stay float: their int8 form is an ONNX Runtime op and the "
                     "backend is openvino")
        found = []
    if found:
        object.__setattr__(model, LSTM_ATTR, True)
        notes.append(f"{len(found)} nn.LSTM module(s) as int8 in the ONNX graph (ONNX Runtime's DynamicQuantizeLSTM: "
                     "dynamic int8 inside the op; the artifact then needs ONNX Runtime; lstm: false keeps them float in "
                     "standard ONNX)")
    return found


def target_layers(model: nn.Module, config, preset: str, dynamic: bool = False,
                  allow_none: bool = False, notes: list | None = None) -> dict[str, nn.Module]:
    """Layers to quantize: the user's `ignore` entries must each match a layer; the preset's may not. allow_none:
    no Linear / Conv left is not an error (int8-dynamic of a model whose LSTMs are what it quantizes). notes: gets
    a line for layers the preset keeps float beyond its heads."""
    import re

    split_mha(model, config.ignore)  # nn.MultiheadAttention: q/k/v/out as called Linears (graph/attention.py)
    layers = select_layers(model, (nn.Linear,) if dynamic else QUANTIZABLE, config.ignore)
    found = len(layers)
    # Linears whose weight the model reads itself (nn.MultiheadAttention's out_proj): a wrapper is never called
    read = direct_reads(model)
    layers = {n: m for n, m in layers.items() if n not in read}
    direct = found - len(layers)
    if preset == "transformer":
        layers = {n: m for n, m in layers.items() if not any(re.search(e[3:], n) for e in TRANSFORMER_IGNORE)}
        front = [n for n, m in layers.items() if isinstance(m, TRANSFORMER_FLOAT_STATIC)]
        if front and len(front) < len(layers):  # (a model of 1-D convolutions only is quantized as it is)
            layers = {n: m for n, m in layers.items() if n not in front}
            if notes is not None:
                notes.append(f"transformer preset: {len(front)} 1-D convolutions kept float ({', '.join(front[:3])}"
                             f"{', ...' if len(front) > 3 else ''}; a speech model's conv front end loses most of "
                             "its fidelity in static int8); preset=cnn quantizes them")
    if not layers and not allow_none:
        convs = sum(isinstance(m, QUANTIZABLE) and not isinstance(m, nn.Linear) for m in model.modules())
        if dynamic and not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise NnslimError(f"int8-dynamic quantizes nn.Linear layers only (dynamic int8 runtimes have no "
                              f"convolution kernels) and {type(model).__name__} has none; use int8 (static)")
        why = [f"{direct} read directly by the model"] if direct else []
        if preset == "transformer" and found - direct:
            why.append(f"{found - direct} kept in float as the transformer preset's head / pooler")
        hint = (f"; int8-dynamic quantizes nn.Linear only and its {convs} convolution(s) need int8 (static)"
                if dynamic and convs else "; check `ignore`")
        raise NnslimError(f"no {'nn.Linear' if dynamic else 'Linear/Conv'} layer left to quantize in "
                          f"{type(model).__name__}: {found} outside `ignore`" + (f" ({', '.join(why)})" if why else "")
                          + hint)
    return layers


def calibrate_activations(model: nn.Module, layers: dict[str, nn.Module], data: list[dict],
                          calibrator: str, percentile: float, smooth: dict[str, torch.Tensor] | None = None,
                          bits: int = 8, channel_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                          ) -> dict[str, tuple[float, float]]:
    """The clipping range (lo, hi) of each layer's input (divided by its SmoothQuant scale, if any).
    channel_ranges: per-input-channel (min, max) already seen over the same data (SmoothQuant's pass); a
    min/max calibration takes those layers' ranges from them (s > 0, and division is monotonic: the same
    numbers as dividing every value) and runs the model only for the others, if any."""
    observer = make_observer(calibrator, percentile)
    stats = {n: TensorStats() for n in layers}
    smooth = smooth or {}

    def seen(n, x):
        return x / smooth[n] if n in smooth else x

    known = {n: r for n, r in (channel_ranges or {}).items() if n in stats} if not observer.needs_histogram else {}
    for name, (lo, hi) in known.items():
        if name in smooth:
            lo, hi = lo / smooth[name], hi / smooth[name]
        stats[name].lo, stats[name].hi, stats[name].count = float(lo.min()), float(hi.max()), len(data)
    rest = {n: m for n, m in layers.items() if n not in known}
    if rest:
        run_with_hooks(model, rest, data, lambda n, x: stats[n].update_range(seen(n, x)), desc="calibrate ranges")
    if observer.needs_histogram:
        run_with_hooks(model, layers, data, lambda n, x: stats[n].update_hist(seen(n, x)),
                       desc="calibrate histograms")
    out = {}
    for name, st in stats.items():
        if st.count == 0:  # never called as a module during calibration: left float by the caller
            continue
        out[name] = observer.range(st, act_scheme(bits))
    return out


@torch.no_grad()  # not inference_mode: what it makes must work in autograd forwards
def correct_biases(model: nn.Module, data: list[dict]) -> int:
    """Fast bias correction of the weight quantization error (Nagel et al. 2019): add to each quantized
    layer's bias the mean per-channel output shift E[(W - W_q) x] over the inputs it sees. Activation
    clipping error is not folded in: its mean is dominated by a few outlier tokens and would shift
    every other token. For a Linear the shift is (W - W_q) E[x]: only the inputs' sum is kept per call
    (no second matmul); a convolution's is summed over its output positions."""
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}
    conv_diffs: dict[str, torch.Tensor] = {}  # a Linear's weight error is needed once, after the pass
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def weight_error(m: QuantWrapper) -> torch.Tensor:
        return m.float_module.weight - m.dequantized_weight()

    def on_input(name, x):
        m = wrappers[name]
        if m.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])
        else:
            if name not in conv_diffs:
                conv_diffs[name] = weight_error(m)
            xs = x / m.input_scale if m.input_scale is not None else x
            out = m.float_module._conv_forward(xs, conv_diffs[name], None)
            rows = out.transpose(0, 1).reshape(out.shape[1], -1).T
        sums[name] = sums.get(name, 0) + rows.double().sum(0)
        counts[name] = counts.get(name, 0) + rows.shape[0]

    run_with_hooks(model, wrappers, data, on_input, desc="bias correction")
    for name, m in wrappers.items():
        if name not in sums:
            continue
        fm = m.float_module
        mean = sums[name] / counts[name]
        if m.kind == "linear":
            if m.input_scale is not None:
                mean = mean / m.input_scale.double().reshape(-1)
            mean = weight_error(m).double() @ mean
        delta = mean.to(fm.weight.dtype)
        if fm.bias is None:
            fm.bias = nn.Parameter(torch.zeros(delta.shape[0], dtype=fm.weight.dtype))
        fm.bias.add_(delta)
    return len(sums)


def quantize_embeddings(model: nn.Module, ignore=()) -> int:
    """Int8 per-row weight-only storage of embedding tables (they dominate small encoders' size)."""
    # A subclass with its own forward (BART's learned positions: called with the ids and the past length) does
    # not look up what it is given: it stays float.
    tables = {n: m for n, m in select_layers(model, (nn.Embedding,), ignore).items()
              if type(m).forward is nn.Embedding.forward}
    for name, emb in tables.items():
        replace_everywhere(model, name, QuantEmbedding(emb))
    return len(tables)


def _stored_weight(layer: nn.Module) -> torch.Tensor:
    """The weight tensor a layer stores (a parametrized weight, e.g. a pruning mask's, is computed)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters held by more than one module (tied weights)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def _untie(layer: nn.Module, param: nn.Parameter) -> nn.Parameter:
    """Give `layer` its own copy of a parameter it shares, in the place it holds it; returns the copy."""
    for m in layer.modules():
        for key, p in m._parameters.items():
            if p is param:
                m._parameters[key] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                return m._parameters[key]
    raise NnslimError("internal: the shared weight is not held by the layer")


def quantize_int8(model: nn.Module, config: Int8Config | Int8DynamicConfig, calibration=None,
                  example_inputs: dict | None = None, inplace: bool = False, notes: list | None = None,
                  keep_float: bool = False, backend: str | None = None) -> nn.Module:
    """A copy of `model` (or the model itself if inplace) with Linear/Conv layers fake-quantized: int8 for
    Int8Config / Int8DynamicConfig, the bit widths and learnable quantizers of a QAT config."""
    if not isinstance(model, nn.Module):
        raise NnslimError(f"int8 quantization needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    qs = settings_of(config)
    dynamic = qs.act_mode == "dynamic"
    static = qs.act_bits is not None and not dynamic
    if static and getattr(config, "symmetric_activations", False) is True and qs.act_mode not in ("fixed", "lsq"):
        raise NnslimError(f"symmetric_activations=true is not allowed with act_mode={qs.act_mode!r}; allowed with: "
                          "fixed, lsq (pact learns an asymmetric range)")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    calibration = list(calibration) if calibration is not None else None
    example = example_inputs if example_inputs is not None else (
        calibration[0] if calibration and isinstance(calibration[0], dict) else None)
    folded = fold_batchnorm(model, example)
    if folded:
        notes.append(f"folded {folded} BatchNorm layers into their convolutions")
    preset = resolve_preset(config, model)
    symmetric, why = symmetric_activations(config, preset, backend, qs.act_mode) if static else (False, None)
    if why:
        notes.append(why)
    lstms = _int8_lstms(model, config, backend, notes) if getattr(config, "lstm", False) else []
    layers = target_layers(model, config, preset, dynamic, allow_none=bool(lstms), notes=notes)
    data = []
    acts: dict[str, tuple[float, float]] = {}
    smooth: dict[str, torch.Tensor] = {}
    channel_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # filled by SmoothQuant's pass
    if static:
        data = check_calibration(calibration, example_inputs or {})[: config.samples]
        alpha = config.smoothquant
        if alpha == "auto":
            alpha = DEFAULT_SMOOTHQUANT_ALPHA if preset == "transformer" else None
        if alpha is not None:
            from .smoothquant import smoothing_scales

            smooth = smoothing_scales(model, layers, data, alpha, channel_ranges)
            notes.append(f"smoothquant alpha={alpha}: {len(smooth)} layers smoothed")
        calibrator = config.calibrator if config.calibrator != "auto" else default_calibrator(preset)
        acts = calibrate_activations(model, layers, data, calibrator, config.percentile, smooth, qs.act_bits,
                                     channel_ranges)
        unused = sorted(set(layers) - set(acts))
        if unused:
            notes.append(f"{len(unused)} layers never called during calibration, left float: {', '.join(unused[:8])}")
            layers = {n: m for n, m in layers.items() if n in acts}
        smooth = {n: v for n, v in smooth.items() if n in layers}
        tied = _shared_parameters(model)
        for name, scale in smooth.items():  # into the stored weight (under a pruning mask, its original)
            stored = _stored_weight(layers[name])
            if id(stored) in tied:  # a tied head / embedding: the other user keeps the unscaled weight
                stored = _untie(layers[name], stored)
                notes.append(f"smoothquant: {name} shares its weight with another layer (tied); it now has its "
                             "own scaled copy")
            stored.data.mul_(scale.to(stored.dtype))
        notes.append(f"W{qs.bits}A{qs.act_bits} static: {len(layers)} layers, preset={preset}, calibrator="
                     f"{calibrator}, {len(data)} calibration samples, weights per-"
                     f"{'channel' if config.per_channel else 'tensor'} ({qs.weight_mode}), activations {qs.act_mode}")
    bits = qs.bits
    reduce_range = config.reduce_range if config.reduce_range != "auto" else not cpu_has_vnni()
    if reduce_range and bits == 8:
        bits = 7
        notes.append("weights 7-bit (reduce_range): this CPU has no VNNI, where 8-bit u8 x s8 kernels saturate")
    if symmetric:
        notes.append("activations: symmetric (int8 with zero point 0 where a range has negative values, uint8 "
                     "where not)")
    for name, layer in layers.items():
        act = None
        if dynamic:
            act = ActQuantizer(8, "dynamic")
        elif static:
            act = ActQuantizer(qs.act_bits, qs.act_mode, *acts[name], symmetric=symmetric)
        wrapper = QuantWrapper(layer, WeightQuantizer(layer.weight, bits, config.per_channel, qs.weight_mode), act,
                               input_scale=smooth.get(name))
        if keep_float:  # for accuracy control, which may put the layer back in float
            wrapper.original_bias = None if layer.bias is None else layer.bias.detach().clone()
        replace_module(model, name, wrapper)
    matmuls = getattr(config, "matmuls", False)
    if static and (matmuls is True or (matmuls == "auto" and preset == "transformer" and cpu_has_vnni())):
        from ..runtime.qdq_matmul import MATMULS_ATTR

        # read by the ONNX export, which calibrates and quantizes them; set on every quantized layer too, since
        # the export may see only part of the model (a decoder with its KV cache, an encoder-decoder's graphs)
        for m in [model, *(m for m in model.modules() if isinstance(m, QuantWrapper))]:
            setattr(m, MATMULS_ATTR, True)
        notes.append("attention matmuls: int8 in the deployed ONNX graph (matmuls option)")
    if static and preset == "cnn" and getattr(config, "residual_adds", False):
        from ..runtime.qdq_matmul import ADDS_ATTR

        for m in [model, *(m for m in model.modules() if isinstance(m, QuantWrapper))]:
            setattr(m, ADDS_ATTR, "symmetric" if symmetric else "asymmetric")  # read by the ONNX export
    if preset == "transformer":
        n_emb = quantize_embeddings(model, config.ignore)
        if n_emb:
            notes.append(f"{n_emb} embedding tables stored as int8 per row (weight-only)")
    if static and getattr(config, "bias_correction", False):
        notes.append(f"bias correction: {correct_biases(model, data)} layers")
    if not keep_float:
        for m in model.modules():
            if isinstance(m, QuantWrapper):
                m.forget_float()
    return model


@register_method("int8", Int8Config, "static int8 PTQ (per-channel weights, calibrated activations), ONNX QDQ",
                 verb="quantize", deploys_as_onnx=True)
def apply_int8(model, config: Int8Config, ctx):
    data = ctx.calibration(config.samples, what="static int8")
    example = ctx.small_example()
    if config.max_drop is None:
        return quantize_int8(model, config, data, example, inplace=True, notes=ctx.notes, backend=ctx.backend)
    if ctx.validate is None:
        raise NnslimError("max_drop needs a metric to keep: pass validation_fn=(model -> float, higher is better) "
                          "or a testbed")
    from .sensitivity import quantize_with_accuracy_control

    plain = dataclasses.replace(config, max_drop=None)
    return quantize_with_accuracy_control(
        model, lambda m: quantize_int8(m, plain, data, example, notes=ctx.notes, keep_float=True, backend=ctx.backend),
        ctx.validate,
        config.max_drop, data[:32], ctx.notes, ctx.tables)


@register_method("int8-dynamic", Int8DynamicConfig, "dynamic int8 (int8 weights, run-time activation ranges)",
                 verb="quantize", deploys_as_onnx=True)
def apply_int8_dynamic(model, config: Int8DynamicConfig, ctx):
    return quantize_int8(model, config, inplace=True, notes=ctx.notes, backend=ctx.backend)
