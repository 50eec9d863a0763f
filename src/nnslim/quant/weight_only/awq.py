"""AWQ (Lin et al. 2023): activation-aware weight quantization.

For Linears that read the same input x (e.g. q/k/v, or gate/up), search a per-input-channel scale
s = mean|x|^alpha (normalised) over a grid of alpha, minimising || x W^T - (x/s) Q(W s)^T || on
calibration tokens; then search, per weight group, the clipping ratio of the range that minimises the
group's output error. The 1/s is applied to x by the quantized layer (input_scale), so it works for
any producer of x; folding it into a preceding norm is a later optimisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...graph.modules import replace_module
from ...recipe import register_method
from .driver import CalibratedConfig, calibrating, quantize_weight_only
from .formats import WeightSpec, dequantize_codes, fake_quantize_weight, group_qparams, quantize_codes
from .modules import WeightOnlyLinear


@dataclass(frozen=True)
class Int4AwqConfig(CalibratedConfig):
    """int4 weights by AWQ (activation-aware scales + clipping search)."""
    ranges = {**CalibratedConfig.ranges, "grid": (1, 10_000)}
    grid: int = 20  # scale-search points
    clip_search: bool = True


def _outputs(x: torch.Tensor, ws: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x @ w.t() for w in ws], dim=1)


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], spec: WeightSpec, group: int,
                  grid: int = 20, max_tokens: int = 2048) -> torch.Tensor:
    """Best per-input-channel scale s [K] for Linears sharing input x [T, K] (fp32)."""
    x = x[:: max(1, x.shape[0] // max_tokens)]
    x_mean = x.abs().mean(dim=0)
    ref = _outputs(x, weights)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for i in range(grid):
        alpha = i / grid
        s = x_mean.clamp(min=1e-4) ** alpha
        s = s / (s.max() * s.min()).sqrt()
        qs = [fake_quantize_weight(w * s[None, :], spec, group) / s[None, :] for w in weights]
        loss = (ref - _outputs(x, qs)).pow(2).mean().item()
        if loss < best:
            best, best_s = loss, s
    return best_s


def search_clip(x: torch.Tensor, w: torch.Tensor, spec: WeightSpec, group: int, steps: int = 10,
                min_ratio: float = 0.5, max_tokens: int = 256) -> torch.Tensor:
    """Per-(output channel, group) clip ratio [N, G] of the weight range minimising the group's output error."""
    n, k = w.shape
    g_count = k // group
    xs = x[:: max(1, x.shape[0] // max_tokens)][:max_tokens]  # [T, K]
    xg = xs.reshape(xs.shape[0], g_count, group)  # [T, G, g]
    wg = w.reshape(n, g_count, group)
    ref = torch.einsum("tgi,ngi->ngt", xg, wg)  # per-group partial outputs
    best_err = torch.full((n, g_count), float("inf"), device=w.device)
    best_ratio = torch.ones(n, g_count, device=w.device)
    for i in range(steps + 1):
        ratio = 1.0 - (1.0 - min_ratio) * i / steps
        scale, zero = group_qparams(w, spec, group, clip=ratio)
        q = dequantize_codes(quantize_codes(w, scale, zero, spec), scale, zero).reshape(n, g_count, group)
        err = (torch.einsum("tgi,ngi->ngt", xg, q) - ref).pow(2).mean(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def awq_quantize(w: torch.Tensor, s: torch.Tensor, x: torch.Tensor | None, spec: WeightSpec, group: int,
                 clip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, scale, zero of W diag(s) (the layer multiplies its input by 1/s), with clip search."""
    ws = w.float() * s[None, :]
    ratio = search_clip(x / s[None, :], ws, spec, group) if clip and x is not None else 1.0
    scale, zero = group_qparams(ws, spec, group, clip=ratio)
    return quantize_codes(ws, scale, zero, spec), scale, zero


class Awq:
    """The per-block step: Linears that read the very same input tensor share one scale search."""

    def __init__(self, config: Int4AwqConfig, spec: WeightSpec):
        self.config, self.spec = config, spec
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.first: dict[str, torch.Tensor] = {}  # held so that tensor identity is meaningful

    def observe(self, name, module, x):
        self.first.setdefault(name, x)
        flat = x.reshape(-1, x.shape[-1]).float()
        self.samples.setdefault(name, []).append(flat[:: max(1, flat.shape[0] // 256)])

    def merge(self, others: list["Awq"]) -> None:
        """Add the input samples the other devices' copies of the block saw (spread calibration: sample j
        was on device j mod D), in the order one device would have seen them."""
        device = next(iter(self.first.values())).device
        for n in self.samples:
            shards = [self.samples[n]] + [o.samples.pop(n, []) for o in others]
            self.samples[n] = [shard[j].to(device) for j in range(max(map(len, shards)))
                               for shard in shards if j < len(shard)]

    def subset(self, names: list[str], device) -> "Awq":
        """The samples of `names` on `device`; targets that shared an input still share it."""
        part = Awq(self.config, self.spec)
        moved: dict[int, torch.Tensor] = {}
        for n in names:
            x = self.first.pop(n)
            if id(x) not in moved:
                moved[id(x)] = x.to(device)
            part.first[n] = moved[id(x)]
            part.samples[n] = [t.to(device) for t in self.samples.pop(n)]
        return part

    def finish(self, block, modules, prefix):
        groups: list[list[str]] = []
        for n in modules:
            match = next((g for g in groups if self.first[g[0]] is self.first[n]), None)
            if match is None:
                groups.append([n])
            else:
                match.append(n)
        self.first.clear()
        for members in groups:
            x = torch.cat(self.samples[members[0]])
            group = self.spec.group_for(modules[members[0]].in_features)
            s = search_scales(x, [modules[n].weight.float() for n in members], self.spec, group, self.config.grid)
            for n in members:
                codes, scale, zero = awq_quantize(modules[n].weight, s, x, self.spec, group, self.config.clip_search)
                replace_module(block, n, calibrating(WeightOnlyLinear.from_codes(
                    modules[n], codes, scale, zero, self.spec, input_scale=1.0 / s)))


@register_method("int4-awq", Int4AwqConfig, "int4 weight-only by AWQ (activation-aware scales, clip search)",
                 verb="quantize", frozen=True)
def _apply(model, config: Int4AwqConfig, ctx):
    data = ctx.calibration(config.samples, seq_len=config.seq_len, what="AWQ")
    return quantize_weight_only(model, config, data, inplace=True, notes=ctx.notes,
                                algorithm=lambda spec: Awq(config, spec), name="awq", exports_later="export" in ctx.later_stages)
