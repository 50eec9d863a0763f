"""Quantized layers (simulated in float): int8 weights with per-channel/per-tensor scales and an
optional static uint8 activation quantizer on the input. They hold what the ONNX QDQ export needs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .primitives import INT8_WEIGHT, UINT8_ACT, choose_qparams, dequantize, fake_quantize, quantize

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


class QuantWrapper(_Transparent):
    """Wraps a Linear/Conv: stores int8 weight codes + scales and the input's activation qparams."""
    _inner = "float_module"

    def __init__(self, float_module: nn.Module, w_scale: torch.Tensor, w_zp: torch.Tensor,
                 act: tuple[torch.Tensor, torch.Tensor] | None, dynamic: bool = False,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        self.kind = "linear" if isinstance(float_module, nn.Linear) else "conv"
        self.float_module = float_module  # keeps hyper-parameters (stride, padding, ...) and the bias
        w = float_module.weight.detach()
        self.per_channel = w_scale.dim() > 0
        axis = 0 if self.per_channel else None
        self.register_buffer("qweight", quantize(w.float(), w_scale, w_zp, INT8_WEIGHT, axis).to(torch.int8))
        self.register_buffer("w_scale", w_scale.float())
        self.register_buffer("w_zp", w_zp.to(torch.int32))
        self.dynamic = dynamic
        # SmoothQuant: the input is divided by this per-channel scale before quantization.
        if input_scale is not None:
            self.register_buffer("input_scale", input_scale.float())
        else:
            self.input_scale = None
        if act is not None:
            self.register_buffer("act_scale", act[0].float().reshape(()))
            self.register_buffer("act_zp", act[1].to(torch.int32).reshape(()))
        else:
            self.act_scale = self.act_zp = None
        # The float module keeps its weight for export / bias correction, replaced by the dequantized one.
        with torch.no_grad():
            float_module.weight.copy_(self.dequantized_weight().to(w.dtype))
        # Fused fast paths (nn.TransformerEncoderLayer in inference) read .weight and skip submodule calls,
        # which would skip activation quantization; they stand down when a module carries a hook.
        self.register_forward_pre_hook(_no_op_hook)

    @property
    def weight(self) -> torch.Tensor:
        return self.float_module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.float_module.bias

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.w_scale, self.w_zp, axis=0 if self.per_channel else None)

    def float_version(self) -> nn.Module:
        """The layer as it was before quantization (after BN folding / SmoothQuant, which are exact): for
        accuracy control. Needs the float weights kept at quantization time (keep_float)."""
        import copy

        m = copy.deepcopy(self.float_module)
        with torch.no_grad():
            weight = self.original_weight
            if self.input_scale is not None:  # undo SmoothQuant in the weight: the same layer, the same module tree
                weight = weight / self.input_scale.to(weight.dtype).reshape(1, -1, *([1] * (weight.dim() - 2)))
            m.weight.copy_(weight)
            if self.original_bias is not None:
                m.bias.copy_(self.original_bias)
            elif m.bias is not None:
                m.bias = None
        return m

    def forget_float(self) -> None:
        """Drop the float weights kept for accuracy control."""
        self.__dict__.pop("original_weight", None)
        self.__dict__.pop("original_bias", None)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if self.act_scale is not None:
            return fake_quantize(x, self.act_scale, self.act_zp, UINT8_ACT)
        if self.dynamic:  # per-tensor dynamic range, as ONNX DynamicQuantizeLinear computes it
            scale, zp = choose_qparams(x.detach().min(), x.detach().max(), UINT8_ACT)
            return fake_quantize(x, scale, zp, UINT8_ACT)
        return x

    def qdq_spec(self) -> dict:
        """What the int8 ONNX export (runtime/qdq.py) writes for this layer."""
        return {"kind": self.kind, "qweight": self.qweight, "w_scale": self.w_scale, "w_zp": self.w_zp,
                "per_channel": self.per_channel, "dynamic": self.dynamic,
                "input_scale": None if self.input_scale is None else self.input_scale.detach(),
                "act_scale": None if self.act_scale is None else float(self.act_scale),
                "act_zp": None if self.act_zp is None else int(self.act_zp)}

    def unwrapped(self) -> nn.Module:
        """The float equivalent (dequantized weights) that the export traces."""
        return self.float_module if self.input_scale is None else ScaledInput(self.float_module, self.input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.float_module
        x = self.quantize_input(x)
        if self.kind == "linear":
            return F.linear(x, m.weight, m.bias)
        return m._conv_forward(x, m.weight, m.bias)


class QuantEmbedding(_Transparent):
    """Embedding table stored as int8 per row (weight-only); lookups return the dequantized rows."""
    _inner = "embedding"

    def __init__(self, embedding: nn.Embedding, scale: torch.Tensor):
        super().__init__()
        self.embedding = embedding
        w = embedding.weight.detach().float()
        self.register_buffer("qweight", quantize(w, scale, torch.zeros_like(scale, dtype=torch.int32),
                                                 INT8_WEIGHT, axis=0).to(torch.int8))
        self.register_buffer("w_scale", scale.float())
        with torch.no_grad():
            embedding.weight.copy_(self.dequantized_weight().to(embedding.weight.dtype))

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.w_scale, None, axis=0)

    def float_version(self) -> nn.Module:
        """The table as it was before quantization (kept at quantization time for accuracy control)."""
        import copy

        m = copy.deepcopy(self.embedding)
        with torch.no_grad():
            m.weight.copy_(self.original_weight)
        return m

    def forget_float(self) -> None:
        self.__dict__.pop("original_weight", None)

    def qdq_spec(self) -> dict:
        return {"kind": "embedding", "qweight": self.qweight, "w_scale": self.w_scale,
                "w_zp": torch.zeros_like(self.w_scale, dtype=torch.int32), "per_channel": True,
                "dynamic": False, "input_scale": None, "act_scale": None, "act_zp": None}

    def unwrapped(self) -> nn.Module:
        return self.embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)


class ScaledInput(nn.Module):
    """float_module(x / scale): the float form of a SmoothQuant-ed layer (exports as Div -> MatMul)."""

    def __init__(self, module: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.module = module
        self.register_buffer("scale", scale)

    def forward(self, x):
        return self.module(x / self.scale)
