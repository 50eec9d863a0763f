"""W8A8 dynamic quantization of Linear layers: FP8 (e4m3) or INT8 weights per output channel, and
activations quantized per token at run time (no activation calibration).

CUDA: fp8 through torch._scaled_mm with row-wise scales (with `fast_accum`, the default as in torchao's
float8 inference, Hopper's faster accumulation mode, relative error ~1e-3 larger; it is one more
candidate of the measured selector, not forced), and for M <= 128 nnslim's Triton fp8 GEMM
computed as y.T = W x.T with split-K (runtime/kernels/triton_w8a8.py: cuBLAS has no tile for a few rows),
on x quantized per token first or (M <= 16) quantizing x itself per row and K slice as it loads it;
int8 through nnslim's Triton GEMM with the scales fused into its epilogue, or torch._int_mm; each picked
per shape by measurement, after a fused Triton per-token quantization. CPU: int8 through torch._int_mm (oneDNN's
int8 GEMM) after a per-token quantization in torch: with AVX512-VNNI the layer runs 1.4-3.5x the fp32 one at 8-128
rows and 0.7-1.0x at one row, where the eager quantization dominates (BENCHMARKS 8g). Anywhere: a reference path that
quantize-dequantizes both operands and multiplies in float (what the kernels must match). INT8 can first
migrate activation outliers into the weights with SmoothQuant (quant/smoothquant.py, needs calibration data).
"""
from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NnslimError
from ..graph.modules import PackedLinear, register_packed, replace_module
from ..graph.experts import routers_note
from ..graph.scope import direct_reads_note, select_linears
from ..graph.streaming import each_layer, source_of
from ..recipe import StepConfig, register_method
from ..runtime.fuse import value_key
from ..runtime.kernels import select
from ..runtime.rowquant import PreQuantized, quantize_rows_torch, require_fp8  # the first two re-exported
from .primitives import FP8_E4M3, INT8_WEIGHT

FORMATS = {"fp8": FP8_E4M3, "int8": INT8_WEIGHT}
_FP8_DEVICES: set[torch.device] = set()  # CUDA devices that passed require_fp8 (checked once, not per call)


@register_packed("w8a8")
class W8A8Linear(PackedLinear):
    """y = (q(x) * sx) @ (qw * sw).T + b, with per-token sx and per-channel sw."""
    ROWWISE = ("qweight", "wscale", "bias")  # dim 0 = output features (runtime/fuse.py)

    def __init__(self, in_features: int, out_features: int, fmt: str, bias: bool, dtype=torch.float32,
                 input_scale: bool = False):
        super().__init__()
        if fmt not in FORMATS:
            raise NnslimError(f"format={fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=FORMATS[fmt].storage))
        self.register_buffer("wscale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features, dtype=dtype) if input_scale else None)
        self.kernel = "auto"
        self.fast_accum = False  # fp8 on CUDA: also try _scaled_mm's fast accumulation

    def _apply(self, fn, *args, **kwargs):
        """Moves follow the model; dtype casts (model.to(bfloat16)) do not touch the fp8 / int8 codes and the fp32
        channel scales: only the bias and input scale take the model's dtype."""
        kept = {k: self._buffers.pop(k) for k in ("qweight", "wscale")}
        try:
            super()._apply(fn, *args, **kwargs)
        finally:
            for k, t in kept.items():
                new = fn(t)
                self._buffers[k] = new if new.dtype == t.dtype else t.to(new.device)
        return self

    def concat_key(self) -> tuple:
        """Layers with equal keys can be concatenated along the output features."""
        return (self.in_features, self.fmt, self.bias is None, self.fast_accum, self.qweight.device,
                self.float_dtype(), value_key(self.input_scale))

    def float_dtype(self) -> torch.dtype:
        extra = self.bias if self.bias is not None else self.input_scale
        return torch.float32 if extra is None else extra.dtype

    def empty_like(self, out_features: int) -> "W8A8Linear":
        mod = W8A8Linear(self.in_features, out_features, self.fmt, self.bias is not None, self.float_dtype(),
                         self.input_scale is not None)
        mod.fast_accum = self.fast_accum
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, smooth: torch.Tensor | None = None,
                    fast_accum: bool = False) -> "W8A8Linear":
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth[None, :]
        mod = cls(linear.in_features, linear.out_features, fmt, linear.bias is not None, linear.weight.dtype,
                  smooth is not None).to(linear.weight.device)
        mod.fast_accum = fast_accum
        q, s = quantize_rows_torch(w, fmt)
        mod.qweight.copy_(q)
        mod.wscale.copy_(s)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach())
        if smooth is not None:
            mod.input_scale.copy_((1.0 / smooth).to(mod.input_scale.dtype))
        return mod

    @classmethod
    def from_packed_config(cls, cfg: dict, dtype: torch.dtype) -> "W8A8Linear":
        new = cls(cfg["in_features"], cfg["out_features"], cfg["format"], cfg["bias"], dtype, cfg.get("input_scale", False))
        new.fast_accum = bool(cfg.get("fast_accum", False))
        return new

    def packed_config(self) -> dict:
        return {"format": self.fmt, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None,
                "input_scale": self.input_scale is not None, "fast_accum": self.fast_accum}

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.fmt} W8A8 dynamic, kernel={self.kernel}"

    @property
    def prequantized_input(self) -> str | None:
        """The format in which this layer accepts an already quantized input (PreQuantized; e.g. from the fused
        decoder's RMSNorm), or None when its input must first be scaled (SmoothQuant's input_scale)."""
        return self.fmt if self.input_scale is None else None

    def _reference(self, x: torch.Tensor | PreQuantized) -> torch.Tensor:
        if isinstance(x, PreQuantized):
            q, s = x.q, x.scale
        else:
            q, s = quantize_rows_torch(x, self.fmt)
        xd = (q.float() * s[:, None]).to(x.dtype)
        wd = (self.qweight.float() * self.wscale[:, None]).to(x.dtype)
        return F.linear(xd, wd, None if self.bias is None else self.bias.to(x.dtype))

    def _quantizer(self, x: torch.Tensor | PreQuantized) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        """x's per-token (codes, scales): as given, by the fused Triton kernel on CUDA, else in torch."""
        if isinstance(x, PreQuantized):
            return lambda: (x.q, x.scale)
        if x.device.type == "cuda":
            from ..runtime.kernels import triton_int4, triton_w8a8

            if triton_int4.available():
                return lambda: triton_w8a8.quantize_rows(x, self.fmt)
        return lambda: quantize_rows_torch(x, self.fmt)

    def _candidates(self, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
        """The kernels that can run x here, each as a call of no arguments (the selector times these)."""
        return {n: (lambda f=f: f(self, x)) for n, f in self._candidate_fns(x).items()}

    def _bias_as(self, x) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(x.dtype)

    def _scaled_mm(self, x, fast: bool) -> torch.Tensor:
        q, s = self._quantizer(x)()
        return torch._scaled_mm(q, self.qweight.t(), scale_a=s[:, None], scale_b=self.wscale[None, :],
                                bias=self._bias_as(x), out_dtype=x.dtype, use_fast_accum=fast)

    def _candidate_fns(self, x: torch.Tensor) -> dict[str, Callable[["W8A8Linear", torch.Tensor], torch.Tensor]]:
        """{name: fn(layer, x)} of the kernels that can run x here (depends on x's type, device, dtype, rows)."""
        out: dict[str, Callable] = {}
        k, n = self.in_features, self.out_features
        if x.device.type == "cuda" and k % 16 == 0 and n % 16 == 0:
            from ..runtime.kernels import triton_int4, triton_w8a8

            if self.fmt == "fp8":
                out["scaled_mm"] = lambda m, x: m._scaled_mm(x, False)
                if self.fast_accum:
                    out["scaled_mm-fastacc"] = lambda m, x: m._scaled_mm(x, True)
                if triton_int4.available() and x.shape[0] <= triton_w8a8.FP8_SWAP_MAX_M:
                    for i, cfg in enumerate(triton_w8a8.FP8_SWAP_CONFIGS):
                        if triton_w8a8.fp8_fits(k, cfg):
                            out[f"triton-fp8-{i}"] = lambda m, x, c=cfg: m._triton_fp8(m._quantizer(x), m._bias_as(x),
                                                                                          x.dtype, c)
                if (triton_int4.available() and x.shape[0] <= triton_w8a8.FP8_QUANT_X_MAX_M
                        and not isinstance(x, PreQuantized) and x.dtype in (torch.bfloat16, torch.float16)):
                    for i, cfg in enumerate(triton_w8a8.FP8_QUANT_X_CONFIGS):  # x quantized inside the GEMM
                        if triton_w8a8.fp8_fits(k, cfg):
                            out[f"triton-fp8q-{i}"] = lambda m, x, c=cfg: m._triton_fp8(x, m._bias_as(x), x.dtype, c)
            else:
                if triton_int4.available():
                    for i, cfg in enumerate(triton_w8a8.INT8_GEMM_CONFIGS):
                        out[f"triton-int8-{i}"] = lambda m, x, c=cfg: m._triton_int8(m._quantizer(x), m._bias_as(x),
                                                                                       x.dtype, c)
                if x.shape[0] > 16:
                    out["int_mm"] = lambda m, x: m._int_mm(m._quantizer(x), m._bias_as(x), x.dtype)
        elif x.device.type == "cpu" and self.fmt == "int8" and cpu_int_mm_exact():
            # torch's CPU int8 x int8 -> int32 matmul (oneDNN; with AVX512-VNNI the layer is 1.4-3.5x fp32 at
            # M = 8-128, BENCHMARKS 8g), x quantized per token as the reference does: the same codes, exact sums
            out["cpu-int_mm"] = lambda m, x: m._int_mm(m._quantizer(x), m._bias_as(x), x.dtype)
        out["dequant"] = lambda m, x: m._reference(x)
        return out

    def _triton_int8(self, quant, bias, dtype, cfg):
        from ..runtime.kernels import triton_w8a8

        q, s = quant()
        return triton_w8a8.int8_gemm(q, self.qweight, s, self.wscale, bias, dtype, cfg)

    def _triton_fp8(self, quant, bias, dtype, cfg):
        """quant: a callable giving (fp8 x, token scales), or the bf16 / fp16 x itself, which the GEMM then quantizes
        per row and BLOCK_K slice as it loads it (no separate quantization kernel)."""
        from ..runtime.kernels import triton_w8a8

        q, s = quant() if callable(quant) else (quant, None)
        return triton_w8a8.fp8_gemm_swap(q, self.qweight, s, self.wscale, bias, dtype, cfg, self.fast_accum)

    def _int_mm(self, quant, bias, dtype):
        q, s = quant()
        acc, scale = torch._int_mm(q, self.qweight.t()), s[:, None] * self.wscale[None, :]
        # int32 sums times the fp32 scales, one pass (and the bias in it): fewer kernels for a decode step's one row
        y = acc * scale if bias is None else torch.addcmul(bias.float(), acc, scale)
        return y.to(dtype)

    def forward(self, x: torch.Tensor | PreQuantized) -> torch.Tensor:
        if isinstance(x, PreQuantized):  # quantized by the kernel that produced it ([M, K] rows)
            if x.q.dtype != FORMATS[self.fmt].storage or self.input_scale is not None:
                raise NnslimError(f"a pre-quantized {x.q.dtype} input cannot feed this {self.fmt} layer"
                                  + (" with an input scale" if self.input_scale is not None else ""))
            shape, x2 = x.q.shape, x
        else:
            shape = x.shape
            x2 = x.reshape(-1, self.in_features)
            if self.input_scale is not None:
                x2 = x2 * self.input_scale.to(x2.dtype)
            x2 = x2.contiguous()
        if self.fmt == "fp8" and x2.device.type == "cuda" and x2.device not in _FP8_DEVICES:
            if "dequant" not in (self.kernel, os.environ.get("NNSLIM_KERNEL")):
                require_fp8(x2.device, "an fp8 W8A8 layer", "quantize with int8-w8a8 or int4 for this GPU, or run "
                            "the reference (dequantize, then a float matmul: slower than bf16) with "
                            "NNSLIM_KERNEL=dequant")
                _FP8_DEVICES.add(x2.device)
        if self.kernel == "auto":
            key = ("w8a8", self.fmt, self.fast_accum, x2.device.type, str(x2.dtype), self.out_features, self.in_features,
                   select.m_bucket(x2.shape[0]))
            # fp8 candidates that quantize x per K slice differ from the per-row reference by fp8's own rounding
            fn = select.chosen_fn(self, key, x2, self._candidate_fns, tol=0.08 if self.fmt == "fp8" else 5e-2)
        else:
            fns = self._candidate_fns(x2)
            if self.kernel not in fns:
                raise NnslimError(f"kernel={self.kernel!r} cannot run this layer here; available: {', '.join(fns)}")
            fn = fns[self.kernel]
        return fn(self, x2).reshape(*shape[:-1], self.out_features)


@functools.cache
def cpu_int_mm_exact() -> bool:
    """Whether torch._int_mm on this CPU sums int8 products exactly. Without int8 dot-product instructions
    (VNNI / AMX), int8 GEMMs may pair products in saturating int16 adds (vpmaddubsw); this probe feeds the codes
    that would saturate there (+-127 everywhere, a few shapes) and compares with int64 sums, once per process."""
    try:
        for m, k, n in ((1, 256, 16), (32, 576, 48)):
            a = 127 * torch.tensor([1, -1], dtype=torch.int8).repeat(m * k // 2).view(m, k)
            b = torch.full((n, k), 127, dtype=torch.int8)
            b[n // 2:] = -127
            for aa in (a, a.abs()):
                if not torch.equal(torch._int_mm(aa, b.t()).long(), aa.long() @ b.long().t()):
                    return False
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class W8A8Config(StepConfig):
    """W8A8 with dynamic per-token activation scales (what both formats read)."""
    format: ClassVar[str] = "fp8"
    smoothquant: ClassVar[float | None] = None
    fast_accum: ClassVar[bool] = False
    ignore: tuple[str, ...] = ()
    quantize_head: bool = False


@dataclass(frozen=True)
class Fp8Config(W8A8Config):
    """FP8 e4m3 weights (per channel) and activations (per token, dynamic)."""
    fast_accum: bool = True  # on CUDA: _scaled_mm's fast accumulation is a kernel candidate


@dataclass(frozen=True)
class Int8W8A8Config(W8A8Config):
    """INT8 weights (per channel) and activations (per token, dynamic); optional SmoothQuant."""
    ranges = {"smoothquant": (1e-6, 1 - 1e-6), "samples": (1, 100_000)}
    format: ClassVar[str] = "int8"
    smoothquant: float | None = None  # alpha in (0, 1); needs calibration data
    samples: int = 64


def quantize_w8a8(model: nn.Module, config: W8A8Config, calibration=None, inplace: bool = False,
                  notes: list[str] | None = None) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise NnslimError(f"W8A8 quantization needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    if config.format == "fp8":  # on a GPU without fp8 every layer would fall back to the float reference
        for p in model.parameters():
            require_fp8(p.device, "method='fp8'", "use method='int8-w8a8' (or an int4 method) on this GPU")
            break
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    layers = select_linears(model, config.ignore, config.quantize_head, "quantize")
    smooth = {}
    source = source_of(model)  # streamed from shards: one layer read, quantized and (offload) written at a time
    if source is not None and config.smoothquant is not None:
        raise NnslimError("smoothquant runs the whole model on calibration data; a streamed model is quantized "
                          "one layer at a time: drop smoothquant or load the model whole")
    if config.smoothquant is not None:
        from .calibration import check_calibration
        from .smoothquant import smoothing_scales

        data = list(calibration or [])
        if not data:
            raise NnslimError("smoothquant needs calibration data (an iterable of input dicts)")
        data = check_calibration(data, data[0])[: config.samples]
        smooth = smoothing_scales(model, layers, data, config.smoothquant)
        notes.append(f"smoothquant alpha={config.smoothquant}: {len(smooth)} layers")
    for name, layer in each_layer(model, layers):  # (streamed: read from the shards one at a time)
        replace_module(model, name, W8A8Linear.from_linear(layer, config.format, smooth.get(name), config.fast_accum))
    if source is not None:  # the float rest (norms, embeddings, head) in memory, or all on disk with offload
        source.settle(model)
    notes.append(f"{config.format} W8A8 (per-channel weights, dynamic per-token activations): {len(layers)} layers"
                 f"{routers_note(model)}{direct_reads_note(model)}")
    return model


def _apply(model, config: W8A8Config, ctx):
    data = None
    if config.smoothquant is not None:
        data = ctx.calibration(config.samples, what="SmoothQuant")
    return quantize_w8a8(model, config, data, inplace=True, notes=ctx.notes)


register_method("fp8", Fp8Config, "FP8 e4m3 W8A8, dynamic per-token activations (CUDA: torch._scaled_mm)",
                verb="quantize", frozen=True)(_apply)
register_method("int8-w8a8", Int8W8A8Config, "INT8 W8A8, dynamic per-token activations, optional SmoothQuant",
                verb="quantize", frozen=True)(_apply)
