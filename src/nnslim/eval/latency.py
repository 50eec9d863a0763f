"""Latency measured interleaved: every round runs each variant once, so machine noise hits all alike."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..progress import progress


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    batch: int

    @property
    def throughput(self) -> float:
        """Samples per second at the measured batch size."""
        return self.batch * 1000.0 / self.median_ms if self.median_ms > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"latency_ms": self.median_ms, "latency_p90_ms": self.p90_ms, "latency_mean_ms": self.mean_ms,
                "runs": self.runs, "batch": self.batch, "throughput_per_s": self.throughput}


def measure_interleaved(calls: Mapping[str, Callable[[], object]], batch: int, warmup: int = 3,
                        repeats: int = 20, max_seconds: float | None = None) -> dict[str, Latency]:
    """Median/p90 latency of each zero-argument call, measured round-robin in rotating order.

    max_seconds caps the total timing phase (at least 3 rounds are always run).
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in progress(range(repeats), desc="latency", total=repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
        if max_seconds is not None and r >= 2 and time.perf_counter() - start > max_seconds:
            break
    out = {}
    for name, ts in times.items():
        arr = np.asarray(ts)
        out[name] = Latency(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.mean()),
                            len(ts), batch)
    return out
