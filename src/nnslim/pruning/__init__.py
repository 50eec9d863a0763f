"""Pruning: one-shot LLM pruning (magnitude, Wanda, SparseGPT; unstructured and N:M)."""
