"""Quantization and precision conversion."""
