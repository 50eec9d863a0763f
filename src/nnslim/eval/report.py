"""Before/after report: one row per variant (baseline first), as JSON, Markdown, a terminal table
and a PNG of metric vs latency."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .latency import Latency


@dataclass
class VariantResult:
    name: str
    backend: str
    format: str  # "torch" or "onnx"
    dtype: str
    size_bytes: int
    params: int | None
    metrics: dict[str, float]
    latency: Latency | None = None
    peak_mem_bytes: int | None = None
    decode_tok_s: float | None = None  # decoder LMs: greedy decode with the KV cache, batch 1, prefill excluded

    def as_dict(self, baseline: "VariantResult | None") -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "backend": self.backend, "format": self.format,
                             "dtype": self.dtype, "size_bytes": self.size_bytes, "params": self.params,
                             "metrics": dict(self.metrics), "peak_mem_bytes": self.peak_mem_bytes,
                             "decode_tokens_per_s": self.decode_tok_s}
        d.update(self.latency.as_dict() if self.latency else {"latency_ms": None})
        if baseline is not None:
            d["vs_baseline"] = {
                "speedup": _ratio(baseline.latency and baseline.latency.median_ms,
                                  self.latency and self.latency.median_ms),
                "size_ratio": _ratio(self.size_bytes, baseline.size_bytes),
                "peak_mem_ratio": _ratio(self.peak_mem_bytes, baseline.peak_mem_bytes),
                "metric_delta": {k: v - baseline.metrics[k] for k, v in self.metrics.items()
                                 if k in baseline.metrics},
                "decode_speedup": _ratio(self.decode_tok_s, baseline.decode_tok_s),
            }
        return d


def _ratio(a, b):
    return float(a) / float(b) if a and b else None


@dataclass
class Report:
    testbed: str
    primary_metric: str
    higher_is_better: bool
    batch: int
    seq: int | None
    variants: list[VariantResult]
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    date: str = field(default_factory=lambda: _dt.datetime.now().isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        base = self.variants[0] if self.variants else None
        return {"testbed": self.testbed, "primary_metric": self.primary_metric,
                "higher_is_better": self.higher_is_better, "batch": self.batch, "seq": self.seq,
                "date": self.date, "machine": self.machine, "versions": self.versions, "notes": self.render_notes(),
                "tables": self.tables,
                "variants": [self._variant_dict(v, base) for v in self.variants]}

    def _variant_dict(self, v: VariantResult, base: VariantResult | None) -> dict[str, Any]:
        d = v.as_dict(base)
        ref = self.same_runtime_fp32(v)
        if ref is not None:
            d["vs_same_runtime_fp32"] = {"name": ref.name, "speedup": _ratio(
                ref.latency and ref.latency.median_ms, v.latency and v.latency.median_ms)}
        return d

    # -- rendering -------------------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        names: list[str] = []
        for v in self.variants:
            names += [k for k in v.metrics if k not in names]
        return names

    def same_runtime_fp32(self, v: VariantResult) -> VariantResult | None:
        """The float32 row measured in the same runtime as `v` (an ONNX result against the original exported
        to fp32 ONNX), when it is not the first row: it separates the runtime's gain from the method's."""
        for other in self.variants[1:]:
            if other is not v and other.backend == v.backend and other.dtype == "float32" and \
                    other.name.startswith("original"):
                return other
        return None

    def rows(self) -> tuple[list[str], list[list[str]]]:
        metrics = self.metric_names()
        same = any(self.same_runtime_fp32(v) for v in self.variants)
        decode = any(v.decode_tok_s for v in self.variants)
        head = ["variant", "backend", *metrics, "latency ms (p90)", "speed-up",
                *(["vs fp32 same runtime"] if same else []), "throughput/s",
                *(["decode tok/s", "decode x"] if decode else []), "size MB", "size x", "peak mem MB", "params"]
        base = self.variants[0]
        rows = []
        for v in self.variants:
            d = v.as_dict(base)["vs_baseline"]
            lat = f"{v.latency.median_ms:.2f} ({v.latency.p90_ms:.2f})" if v.latency else "-"
            lat += " *" if _noisy(v) else ""
            ref = self.same_runtime_fp32(v)
            extra = [_fmt_x(_ratio(ref.latency and ref.latency.median_ms, v.latency and v.latency.median_ms))
                     if ref is not None else "-"] if same else []
            rows.append([v.name, v.backend, *[_fmt_metric(v.metrics.get(m)) for m in metrics], lat,
                         _fmt_x(d["speedup"]), *extra, f"{v.latency.throughput:.1f}" if v.latency else "-",
                         *([f"{v.decode_tok_s:.1f}" if v.decode_tok_s else "-", _fmt_x(d["decode_speedup"])]
                           if decode else []),
                         f"{v.size_bytes / 1e6:.2f}", _fmt_x(d["size_ratio"]),
                         f"{v.peak_mem_bytes / 1e6:.0f}" if v.peak_mem_bytes else "-",
                         f"{v.params:,}" if v.params else "-"])
        return head, rows

    def render_notes(self) -> list[str]:
        """The notes, plus a warning for each compressed variant that measured no faster than the baseline
        here, and a noise warning when a variant's p90 is far above its median."""
        noisy = [v.name for v in self.variants if _noisy(v)]
        extra = [f"* noisy timing ({', '.join(noisy)}): p90 > {NOISE_RATIO}x the median; something else was "
                 "using the CPU: re-run on a quiet machine before trusting these ratios"] if noisy else []
        return [*self.notes, *self._not_faster(), *extra]

    def _not_faster(self) -> list[str]:
        """'Compressed but not faster' said outright: a variant other than the baseline and its float exports
        whose median latency is not below the baseline's (its other gains, e.g. size, are in the table)."""
        if not self.variants or not self.variants[0].latency:
            return []
        base, out = self.variants[0], []
        for v in self.variants[1:]:
            speedup = _ratio(base.latency.median_ms, v.latency and v.latency.median_ms)
            if v.name.startswith("original") or speedup is None or speedup >= 1.0:
                continue
            ref = self.same_runtime_fp32(v)
            same = _ratio(ref.latency and ref.latency.median_ms, v.latency.median_ms) if ref is not None else None
            out.append(f"{v.name}: not faster than {base.name} on this machine ({speedup:.2f}x"
                       + (f"; {same:.2f}x the float32 graph in {v.backend}" if same else "")
                       + f"); its gain here is size ({_fmt_x(_ratio(v.size_bytes, base.size_bytes))})")
        return out

    def title(self) -> str:
        shape = f"batch {self.batch}" + (f" x seq {self.seq}" if self.seq else "")
        flags = self.machine.get("cpu_flags")
        cpu = self.machine.get("cpu", "?") + (f" ({' '.join(flags)})" if flags else "")
        return f"nnslim report: {self.testbed}, latency at {shape}, {cpu}"

    def to_markdown(self) -> str:
        head, rows = self.rows()
        lines = [f"## {self.title()}", "", f"date {self.date}; baseline = first row; speed-up and size "
                 f"are ratios vs baseline (speed-up > 1 is faster, size x < 1 is smaller).", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if self.render_notes():
            lines += ["", *[f"- {n}" for n in self.render_notes()]]
        for title, rows in self.tables.items():
            if rows:
                cols = list(rows[0])
                lines += ["", f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        return "\n".join(lines) + "\n"

    def to_terminal(self) -> str:
        head, rows = self.rows()
        widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        out = [self.title(), fmt.format(*head), "  ".join("-" * w for w in widths)]
        out += [fmt.format(*r) for r in rows]
        out += [f"note: {n}" for n in self.render_notes()]
        return "\n".join(out)

    def write(self, directory: str | Path) -> dict[str, Path]:
        from ..io import atomic_write_json, atomic_write_text

        directory = Path(directory)
        paths = {"json": atomic_write_json(directory / "report.json", self.to_dict()),
                 "md": atomic_write_text(directory / "report.md", self.to_markdown())}
        if len(self.variants) > 1 and all(v.latency for v in self.variants):
            from .plots import plot_metric_vs_latency

            paths["png"] = plot_metric_vs_latency(self, directory / "plot.png")
        return paths


NOISE_RATIO = 1.25


def _noisy(v) -> bool:
    return bool(v.latency and v.latency.median_ms > 0 and v.latency.p90_ms > NOISE_RATIO * v.latency.median_ms)


def _fmt_metric(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"


def _fmt_x(x) -> str:
    return f"{x:.2f}x" if x else "-"
