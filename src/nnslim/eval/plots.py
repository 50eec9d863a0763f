"""PNG plot of the primary metric against latency, one point per variant."""
from __future__ import annotations

import math
from pathlib import Path


def plot_metric_vs_latency(report, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    metric = report.primary_metric
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ys = []
    for i, v in enumerate(report.variants):
        if v.latency and isinstance(v.metrics.get(metric), (int, float)) and math.isfinite(v.metrics[metric]):
            ys.append(v.metrics[metric])
            ax.scatter(v.latency.median_ms, v.metrics[metric], s=40)
            # staggered labels so variants with equal metric and similar latency stay readable
            label = v.name if v.backend in v.name else f"{v.name} ({v.backend})"
            ax.annotate(label, (v.latency.median_ms, v.metrics[metric]),
                        textcoords="offset points", xytext=(6, 6 + 10 * (i % 4)), fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)
    if ys:
        lo, hi = min(ys), max(ys)
        pad = max((hi - lo) * 0.15, 1e-3 * max(abs(hi), 1.0))
        ax.set_ylim(lo - pad, hi + 3 * pad)
    ax.set_xlabel(f"median latency, ms (batch {report.batch}" + (f", seq {report.seq})" if report.seq else ")"))
    ax.set_ylabel(metric + (" (higher is better)" if report.higher_is_better else " (lower is better)"))
    ax.set_title(f"{report.testbed}: {metric} vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)
