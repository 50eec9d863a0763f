"""Metrics, interleaved latency, peak memory and before/after reports."""
