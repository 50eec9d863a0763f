"""Round-to-nearest weight-only quantization (no calibration): int4 grouped and int8 per channel."""
from __future__ import annotations

from dataclasses import dataclass

from ...recipe import register_method
from .driver import LowBitConfig, WeightOnlyConfig, quantize_weight_only


@dataclass(frozen=True)
class Int4RtnConfig(LowBitConfig):
    """int4 (or 2/3/8-bit) grouped weights by round-to-nearest (no calibration)."""


@dataclass(frozen=True)
class Int8WeightOnlyConfig(WeightOnlyConfig):
    """int8 weights, per output channel, symmetric, round-to-nearest."""


def _apply(model, config, ctx):
    return quantize_weight_only(model, config, inplace=True, notes=ctx.notes, exports_later="export" in ctx.later_stages)


register_method("int4-rtn", Int4RtnConfig, "int4 weight-only, round to nearest (grouped, packed two per byte)",
                verb="quantize", frozen=True)(_apply)
register_method("int8-weight-only", Int8WeightOnlyConfig, "int8 weight-only, per output channel",
                verb="quantize", frozen=True)(_apply)
