"""Batching of input dicts (calibration, distillation)."""
from __future__ import annotations

import numpy as np
import torch


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples (dicts of arrays with a batch axis) into one batch, zero-padding ragged axes."""
    out = {}
    for key in samples[0]:
        arrs = [np.asarray(s[key]) for s in samples]
        shape = [max(a.shape[d] for a in arrs) for d in range(1, arrs[0].ndim)]
        padded = [np.pad(a, [(0, 0)] + [(0, m - a.shape[d + 1]) for d, m in enumerate(shape)]) for a in arrs]
        out[key] = torch.from_numpy(np.concatenate(padded))
    return out
