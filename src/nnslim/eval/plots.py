"""PNG plot of the primary metric against latency, one point per variant."""
from __future__ import annotations

from pathlib import Path


def plot_metric_vs_latency(report, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    metric = report.primary_metric
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for v in report.variants:
        if metric in v.metrics and v.latency:
            ax.scatter(v.latency.median_ms, v.metrics[metric], s=40)
            ax.annotate(f"{v.name} ({v.backend})", (v.latency.median_ms, v.metrics[metric]),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"median latency, ms (batch {report.batch}" + (f", seq {report.seq})" if report.seq else ")"))
    ax.set_ylabel(metric + (" (higher is better)" if report.higher_is_better else " (lower is better)"))
    ax.set_title(f"{report.testbed}: {metric} vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)
