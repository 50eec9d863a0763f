"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights.

Per Linear layer and input channel j: s_j = max|X_j|^a / max|W_j|^(1-a). The weight's input columns
are multiplied by s and the input divided by s, which keeps the layer exact in float while int8 sees a
flatter activation. The division is kept as an explicit per-channel scale on the layer's input (an ONNX
Mul before QuantizeLinear, which OpenVINO fuses into its quantizer), so it works for every Linear,
including post-norm blocks (BERT) whose norm output also feeds the residual path and cannot absorb it.
"""
from __future__ import annotations

import torch
from torch import nn

from .calibration import run_with_hooks


@torch.no_grad()  # not inference_mode: what it makes must work in autograd forwards
def smoothing_scales(model: nn.Module, linears: dict[str, nn.Module], data: list[dict], alpha: float,
                     channel_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                     ) -> dict[str, torch.Tensor]:
    """Per-layer input-channel scales s (only Linear layers; convolutions are left alone). Layers fed the
    same tensor (attention's q/k/v projections) share one scale, from the largest of their weights, so the
    deployed graph divides and quantizes that input once for all of them (as SmoothQuant does).
    channel_ranges, if given, receives each Linear's per-input-channel (min, max) over the same pass (from
    which a min/max calibration of the smoothed inputs follows without another pass)."""
    targets = {n: m for n, m in linears.items() if isinstance(m, nn.Linear)}
    act_max: dict[str, torch.Tensor] = {}
    ranges = channel_ranges if channel_ranges is not None else {}
    parent = {n: n for n in targets}
    last: list = [None, None]  # the previous call's (name, input): held, so its identity cannot be reused

    def root(n):
        while parent[n] != n:
            n = parent[n]
        return n

    def on_input(name, x):
        rows = x.detach().float().reshape(-1, x.shape[-1])
        lo, hi = rows.amin(0), rows.amax(0)
        if name in ranges:
            lo, hi = torch.minimum(ranges[name][0], lo), torch.maximum(ranges[name][1], hi)
        ranges[name] = (lo, hi)
        act_max[name] = torch.maximum(-lo, hi)
        if last[1] is x and last[0] != name:  # the same tensor object feeds consecutive layers
            parent[root(name)] = root(last[0])
        last[0], last[1] = name, x

    run_with_hooks(model, targets, data, on_input, desc="smoothquant stats")
    last[1] = None
    groups: dict[str, list[str]] = {}
    for name in targets:
        if name in act_max:  # never called as a module: no scale
            groups.setdefault(root(name), []).append(name)
    scales = {}
    for members in groups.values():
        x_max = torch.stack([act_max[n] for n in members]).amax(0).clamp(min=1e-5)
        w_max = torch.stack([targets[n].weight.detach().abs().float().amax(0) for n in members]).amax(0)
        s = (x_max.pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
        scales.update({n: s.clone() for n in members})
    return scales
