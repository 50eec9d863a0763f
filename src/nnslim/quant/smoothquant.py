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
def smoothing_scales(model: nn.Module, linears: dict[str, nn.Module], data: list[dict], alpha: float
                     ) -> dict[str, torch.Tensor]:
    """Per-layer input-channel scales s (only Linear layers; convolutions are left alone)."""
    targets = {n: m for n, m in linears.items() if isinstance(m, nn.Linear)}
    act_max: dict[str, torch.Tensor] = {}

    def on_input(name, x):
        m = x.detach().abs().float().reshape(-1, x.shape[-1]).amax(0)
        act_max[name] = m if name not in act_max else torch.maximum(act_max[name], m)

    run_with_hooks(model, targets, data, on_input, desc="smoothquant stats")
    scales = {}
    for name, lin in targets.items():
        if name not in act_max:  # never called as a module
            continue
        x_max = act_max[name].clamp(min=1e-5)
        w_max = lin.weight.detach().abs().float().amax(0).clamp(min=1e-5)
        scales[name] = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
    return scales
