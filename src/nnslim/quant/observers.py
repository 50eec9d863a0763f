"""Activation range calibrators (observers): minmax, percentile, entropy (KL), mse.

Calibration makes two passes when a histogram is needed: pass 1 finds each tensor's min/max, pass 2
fills a fixed-range histogram; every observer then picks a clipping range [lo, hi] from those.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NnslimError
from .primitives import QScheme, choose_qparams

N_BINS = 2048


@dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration set."""
    lo: float = float("inf")
    hi: float = float("-inf")
    hist: np.ndarray | None = None
    edges: tuple[float, float] | None = None
    channel_absmax: torch.Tensor | None = None  # per last-dim channel |x| max (for SmoothQuant)
    count: int = 0

    def update_range(self, x: torch.Tensor, per_channel: bool = False) -> None:
        x = x.detach().float()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.count += 1
        if per_channel:
            amax = x.abs().reshape(-1, x.shape[-1]).amax(0)
            self.channel_absmax = amax if self.channel_absmax is None else torch.maximum(self.channel_absmax, amax)

    def update_hist(self, x: torch.Tensor) -> None:
        if self.edges is None:
            lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
            if hi <= lo:
                hi = lo + 1e-6
            self.edges = (lo, hi)
            self.hist = np.zeros(N_BINS, dtype=np.float64)
        lo, hi = self.edges
        h = torch.histc(x.detach().float().clamp(lo, hi), bins=N_BINS, min=lo, max=hi)
        self.hist += h.double().numpy()


def _centers(stats: TensorStats) -> np.ndarray:
    lo, hi = stats.edges
    width = (hi - lo) / N_BINS
    return lo + width * (np.arange(N_BINS) + 0.5)


class Observer(ABC):
    name = "abstract"
    needs_histogram = False

    @abstractmethod
    def range(self, stats: TensorStats, scheme: QScheme) -> tuple[float, float]:
        """The clipping range [lo, hi] for this tensor."""


class MinMaxObserver(Observer):
    name = "minmax"

    def range(self, stats, scheme):
        return stats.lo, stats.hi


@dataclass
class PercentileObserver(Observer):
    percentile: float = 99.99
    name = "percentile"
    needs_histogram = True

    def __post_init__(self):
        if not 99.0 <= self.percentile < 100.0:
            raise NnslimError(f"percentile={self.percentile} is not allowed; allowed: 99.0 <= p < 100 "
                              "(99.9 to 99.9999 is typical)")

    def range(self, stats, scheme):
        cdf = np.cumsum(stats.hist) / max(stats.hist.sum(), 1.0)
        centers = _centers(stats)
        tail = 1.0 - self.percentile / 100.0
        lo = centers[min(np.searchsorted(cdf, tail), N_BINS - 1)] if stats.lo < 0 else stats.lo
        hi = centers[min(np.searchsorted(cdf, 1.0 - tail), N_BINS - 1)]
        return min(float(lo), 0.0) if stats.lo < 0 else stats.lo, float(hi)


def _quant_error(centers, counts, lo, hi, scheme) -> float:
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), scheme)
    s, z = float(scale), float(zp)
    q = np.clip(np.round(centers / s) + z, scheme.qmin, scheme.qmax)
    return float((counts * (centers - (q - z) * s) ** 2).sum())


class MseObserver(Observer):
    """Clipping range minimising the histogram's expected squared quantization error."""
    name = "mse"
    needs_histogram = True

    def range(self, stats, scheme):
        centers, counts = _centers(stats), stats.hist
        best, best_err = (stats.lo, stats.hi), float("inf")
        for ratio in np.linspace(0.2, 1.0, 81):
            lo, hi = stats.lo * ratio, stats.hi * ratio
            err = _quant_error(centers, counts, lo, hi, scheme)
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


class EntropyObserver(Observer):
    """KL-divergence calibration (TensorRT style) on |x|: the threshold whose clipped, re-binned
    distribution loses least information; the range is [-t, t] intersected with [min, max]."""
    name = "entropy"
    needs_histogram = True

    def range(self, stats, scheme):
        centers, counts = _centers(stats), stats.hist
        amax = max(abs(stats.lo), abs(stats.hi))
        abs_bins = 1024
        hist, _ = np.histogram(np.abs(centers), bins=abs_bins, range=(0, amax), weights=counts)
        levels = (scheme.qmax - scheme.qmin + 1) // (1 if stats.lo >= 0 else 2)
        best_t, best_kl = amax, float("inf")
        for i in range(max(levels, 8), abs_bins + 1, 8):
            p = hist[:i].copy()
            p[i - 1] += hist[i:].sum()
            if p.sum() == 0:
                continue
            # quantize the first i bins into `levels` groups, spread each group's mass over its non-empty bins
            group = (np.arange(i) * levels) // i
            nonzero = hist[:i] > 0
            mass = np.bincount(group, weights=hist[:i], minlength=levels)
            filled = np.bincount(group, weights=nonzero, minlength=levels)
            q = np.where(nonzero, (mass / np.maximum(filled, 1))[group], 0.0)
            pn, qn = p / p.sum(), q / max(q.sum(), 1e-12)
            mask = pn > 0
            kl = float((pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))).sum())
            if kl < best_kl:
                best_kl, best_t = kl, (i / abs_bins) * amax
        return max(stats.lo, -best_t), min(stats.hi, best_t)


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "entropy": EntropyObserver,
             "mse": MseObserver}


def make_observer(name: str, percentile: float = 99.99) -> Observer:
    if name not in OBSERVERS:
        raise NnslimError(f"calibrator={name!r} is not allowed; allowed: {', '.join(OBSERVERS)}")
    return PercentileObserver(percentile) if name == "percentile" else OBSERVERS[name]()
