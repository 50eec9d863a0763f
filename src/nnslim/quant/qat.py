"""Quantization-aware training: fake-quantized weights (2-8 bits, per channel) and activations, with
straight-through rounding, learnable scales (LSQ) or learnable clipping (PACT), initialised from PTQ
calibration (the same ranges, SmoothQuant and BatchNorm folding as `int8`).

`qat` inserts the quantizers; a later training step (`distill`, or the user's own loop on the model
nnslim.quantize returns) trains the weights and the quantizer parameters through them. Without a
training step it is post-training quantization at those bit widths. The artifact is the same as
PTQ's: a QDQ ONNX graph with int8 weights (5-8 bits) or int4 weights (2-4 bits).

BatchNorm is folded into the preceding convolution before the quantizers go in (exact at that
moment), so training updates the folded weight the deployed graph will use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..recipe import register_method
from .ptq import Settings, StaticBase, quantize_int8


@dataclass(frozen=True)
class QatConfig(StaticBase):
    """Fake-quantized weights and activations to train through (QAT), initialised by PTQ calibration."""
    ranges = {**StaticBase.ranges, "bits": (2, 8), "act_bits": (2, 8)}
    bits: int = 8  # weight bits (symmetric, per channel unless per_channel=false)
    act_bits: int | None = 8  # activation bits (asymmetric, per tensor); null: weights only
    weight_mode: Literal["minmax", "lsq"] = "lsq"  # lsq: learnable per-channel scales
    act_mode: Literal["fixed", "lsq", "pact"] = "lsq"  # lsq: learnable scale; pact: learnable clipping range

    def quantizer_settings(self) -> Settings:
        return Settings(self.bits, self.act_bits, self.weight_mode, self.act_mode)


@register_method("qat", QatConfig, "quantization-aware training state: 2-8 bit fake-quantized weights and "
                 "activations (STE, LSQ or PACT), trained by a following distill step; QDQ ONNX", verb="quantize",
                 deploys_as_onnx=True)
def _apply(model, config: QatConfig, ctx):
    data = ctx.calibration(config.samples, what="QAT initialisation")
    if not ctx.later_trains:
        ctx.notes.append("qat: no training step follows, so the quantizers keep their calibrated initial values "
                         "(int8 PTQ's result); add {method: distill} after it, or train the returned model")
    return quantize_int8(model, config, data, ctx.small_example(), inplace=True, notes=ctx.notes, backend=ctx.backend)
