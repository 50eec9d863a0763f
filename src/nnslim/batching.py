"""Batching of input dicts (calibration, distillation)."""
from __future__ import annotations

import numpy as np
import torch


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples (dicts of arrays with a batch axis) into one batch, zero-padding ragged axes."""
    out = {}
    for key in samples[0]:  # tensors stay tensors (bfloat16 has no numpy dtype)
        arrs = [s[key] if isinstance(s[key], torch.Tensor) else torch.from_numpy(np.asarray(s[key]))
                for s in samples]
        shape = [max(a.shape[d] for a in arrs) for d in range(1, arrs[0].ndim)]
        padded = []
        for a in arrs:
            pad = [p for d in reversed(range(1, a.ndim)) for p in (0, shape[d - 1] - a.shape[d])]
            padded.append(torch.nn.functional.pad(a, pad) if any(pad) else a)
        out[key] = torch.cat(padded)
    return out
