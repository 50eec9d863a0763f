"""Quantized layers simulated in float, with their fake-quantizers as trainable state.

A QuantWrapper keeps the float Linear/Conv (its weight stays a trainable parameter) and applies a
WeightQuantizer to the weight and, for static quantization, an ActQuantizer to the input at every
call. So PTQ (`int8`), QAT (`qat`) and any later training step (`distill`) see and keep the same
quantizers, and the export writes the integer codes of the weight as it is at that moment (int8 QDQ,
int4 QDQ for <= 4 bits, MatMulInteger for dynamic).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..graph.layers import Layer, handler_for, register_layer
from ..graph.modules import strip_parametrizations
from .quantizers import ActQuantizer, WeightQuantizer

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _no_op_hook(module, args):
    return None


class _Transparent(nn.Module):
    """Attributes of the wrapped layer (stride, padding, in_features, num_embeddings, ...) read through,
    so models that inspect their layers (Whisper's conv1.stride) keep working once wrapped."""
    _inner = ""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get(self._inner)
            if inner is None:
                raise
            return getattr(inner, name)


def _versions(w: torch.Tensor, s: torch.Tensor, training: bool) -> tuple:
    return (w.data_ptr(), w._version, s.data_ptr(), s._version, training)


class _CachedWeight:
    """The fake-quantized weight of a frozen layer computed once per weight/scale version (evaluation
    runs many forwards); recomputed whenever gradients are on or the tensors changed."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, key, compute):
        """key() names the tensors' versions; it is read again after compute(), which may itself refresh a
        min-max scale in place (else every call would see a new version and recompute)."""
        if torch.is_grad_enabled():
            return compute()
        if key() != self.key:
            self.value = compute()
            self.key = key()
        return self.value


class QuantWrapper(_Transparent):
    """A Linear/Conv whose weight and (optionally) input are fake-quantized."""
    _inner = "float_module"

    def __init__(self, float_module: nn.Module, weight_quantizer: WeightQuantizer,
                 act_quantizer: ActQuantizer | None = None, input_scale: torch.Tensor | None = None):
        super().__init__()
        self.kind = "linear" if isinstance(float_module, nn.Linear) else "conv"
        self.float_module = float_module  # the float weight (trainable), bias and hyper-parameters
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer
        # SmoothQuant: the input is divided by this per-channel scale before quantization.
        if input_scale is not None:
            self.register_buffer("input_scale", input_scale.float())
        else:
            self.input_scale = None
        self._cache = _CachedWeight()
        # Fused fast paths (nn.TransformerEncoderLayer in inference) read .weight and skip submodule calls,
        # which would skip activation quantization; they stand down when a module carries a hook.
        self.register_forward_pre_hook(_no_op_hook)

    def __deepcopy__(self, memo):
        new = nn.Module.__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = _CachedWeight() if k == "_cache" else copy.deepcopy(v, memo)
        return new

    @property
    def weight(self) -> torch.Tensor:
        return self.float_module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.float_module.bias

    @property
    def dynamic(self) -> bool:
        return self.act_quantizer is not None and self.act_quantizer.mode == "dynamic"

    @property
    def per_channel(self) -> bool:
        return self.weight_quantizer.per_channel

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight (differentiable)."""
        w = self.float_module.weight
        return self._cache.get(lambda: _versions(w, self.weight_quantizer.scale, self.training),
                               lambda: self.weight_quantizer(w))

    def dequantized_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.quantized_weight().detach()

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        return self.act_quantizer(x) if self.act_quantizer is not None else x

    def float_version(self) -> nn.Module:
        """The layer as it was before quantization (SmoothQuant undone in the weight, the bias before bias
        correction): for accuracy control. Needs keep_float at quantization time."""
        m = copy.deepcopy(self.float_module)
        with torch.no_grad():
            if self.input_scale is not None:  # the same layer, the same module tree
                shape = (1, -1, *([1] * (m.weight.dim() - 2)))
                m.weight.div_(self.input_scale.to(m.weight.dtype).reshape(shape))
            original_bias = self.__dict__.get("original_bias", "absent")
            if original_bias is None and m.bias is not None:
                m.bias = None
            elif isinstance(original_bias, torch.Tensor):
                m.bias.copy_(original_bias)
        return m

    def forget_float(self) -> None:
        """Drop the float state kept for accuracy control."""
        self.__dict__.pop("original_bias", None)

    def qdq_spec(self) -> dict:
        """What the integer ONNX export (runtime/qdq.py) writes for this layer."""
        act = None if self.act_quantizer is None else self.act_quantizer.export_qparams()
        w = self.float_module.weight
        return {"kind": self.kind, "bits": self.weight_quantizer.bits,
                "qweight": self.weight_quantizer.codes(w).to(torch.int8),
                "w_scale": self.weight_quantizer.current_scale(w).detach().float(),
                "w_zp": torch.zeros_like(self.weight_quantizer.scale, dtype=torch.int32),
                "per_channel": self.per_channel, "dynamic": self.dynamic,
                "input_scale": None if self.input_scale is None else self.input_scale.detach(),
                "act_scale": None if act is None else act[0], "act_zp": None if act is None else act[1],
                "act_bits": None if self.act_quantizer is None else self.act_quantizer.bits,
                "act_signed": self.act_quantizer is not None and self.act_quantizer.signed}

    def unwrapped(self) -> nn.Module:
        """The float equivalent (dequantized weights) that the export traces."""
        m = copy.deepcopy(self.float_module)
        strip_parametrizations(m)  # a pruning mask is already in the weight that was quantized
        with torch.no_grad():
            m.weight.copy_(self.dequantized_weight().to(m.weight.dtype))
        return m if self.input_scale is None else ScaledInput(m, self.input_scale)

    def slice_channels(self, role: str, keep: torch.Tensor) -> None:
        """After the float layer lost positions of `role` (in / out, a grouped convolution's gin / gout, or a
        depthwise convolution's channels, which are its outputs and, in groups of out / in, its inputs): the
        quantization state follows."""
        if role not in ("in", "gin"):  # per output channel
            self.weight_quantizer.slice_(keep)
        inputs = keep if role in ("in", "gin") else None
        if role == "dw":  # depthwise: output channel j reads input channel j // (out / in)
            inputs = torch.unique(keep // (len(keep) // self.float_module.in_channels))
        if inputs is not None and self.input_scale is not None:
            self.input_scale = self.input_scale.index_select(0, inputs.to(self.input_scale.device)).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.float_module
        x = self.quantize_input(x)
        w = self.quantized_weight().to(x.dtype)
        if self.kind == "linear":
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)


@register_layer(QuantWrapper)
class QuantWrapperLayer(Layer):
    """Structural pruning of a quantized layer: the float layer's handler does the work, the quantizer
    state (per-channel scales, SmoothQuant input scales) follows the kept channels."""

    def propagate(self, g, name, m, call):
        handler_for(m.float_module).propagate(g, name, m.float_module, call)

    def weights(self, m, role):
        return handler_for(m.float_module).weights(m.float_module, role)

    def slice(self, m, role, keep):
        handler_for(m.float_module).slice(m.float_module, role, keep)
        m.slice_channels(role, keep)
        return m


class QuantEmbedding(_Transparent):
    """Embedding table quantized per row (weight-only int8); lookups read the fake-quantized table."""
    _inner = "embedding"

    def __init__(self, embedding: nn.Embedding, bits: int = 8):
        super().__init__()
        self.embedding = embedding
        self.weight_quantizer = WeightQuantizer(embedding.weight, bits, per_channel=True)
        self._cache = _CachedWeight()

    __deepcopy__ = QuantWrapper.__deepcopy__

    def quantized_weight(self) -> torch.Tensor:
        w = self.embedding.weight
        return self._cache.get(lambda: _versions(w, self.weight_quantizer.scale, self.training),
                               lambda: self.weight_quantizer(w))

    def dequantized_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.quantized_weight().detach()

    def float_version(self) -> nn.Module:
        """The float table (for accuracy control, which may put it back)."""
        return copy.deepcopy(self.embedding)

    def forget_float(self) -> None:
        return None

    def qdq_spec(self) -> dict:
        w = self.embedding.weight
        return {"kind": "embedding", "bits": self.weight_quantizer.bits,
                "qweight": self.weight_quantizer.codes(w).to(torch.int8),
                "w_scale": self.weight_quantizer.current_scale(w).detach().float(),
                "w_zp": torch.zeros_like(self.weight_quantizer.scale, dtype=torch.int32), "per_channel": True,
                "dynamic": False, "input_scale": None, "act_scale": None, "act_zp": None, "act_bits": None,
                "act_signed": False}

    def unwrapped(self) -> nn.Module:
        m = copy.deepcopy(self.embedding)
        strip_parametrizations(m)
        with torch.no_grad():
            m.weight.copy_(self.dequantized_weight().to(m.weight.dtype))
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embedding
        return F.embedding(ids, self.quantized_weight(), e.padding_idx, e.max_norm, e.norm_type,
                           e.scale_grad_by_freq, e.sparse)


class ScaledInput(nn.Module):
    """module(x / scale): the float form of a SmoothQuant-ed layer (exports as Div -> MatMul)."""

    def __init__(self, module: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.module = module
        self.register_buffer("scale", scale)

    @property
    def weight(self) -> torch.Tensor:
        """A shape-and-dtype view (meta): model code reads `layer.weight.dtype` (T5's feed-forward); the inner
        layer's values are of the scaled weight, not the layer's."""
        w = self.module.weight
        return torch.empty(w.shape, dtype=w.dtype, device="meta")

    @property
    def bias(self) -> torch.Tensor | None:  # read beside `weight` by fused fast paths' checks, which then stand down
        return self.module.bias

    def forward(self, x):
        return self.module(x / self.scale)
