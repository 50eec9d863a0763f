"""Metrics on numpy arrays: accuracy, embedding fidelity, perplexity, output fidelity."""
from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but labels has {labels.shape[0]}")
    return float((logits.argmax(-1) == labels).mean())


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; two all-zero rows are identical (1.0: a random-init classifier whose logits are all
    zero reported a fidelity of 0 for a model that reproduced them exactly), one all-zero row against another 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    den = na * nb  # (float64: tiny outputs, 1e-9 logits of a random-init LeViT, keep their true cosine)
    return np.where((na == 0) & (nb == 0), 1.0, num / np.where(den > 0, den, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (ties share their mean rank), by scipy."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def topk_overlap(ref: np.ndarray, emb: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each item's k nearest neighbours (cosine, self excluded) under ref vs emb."""
    n = len(ref)
    k = min(k, n - 1)
    if k < 1:
        return float("nan")
    sims = []
    for x in (ref, emb):
        s = _normalize(x) @ _normalize(x).T
        np.fill_diagonal(s, -np.inf)
        sims.append(np.argsort(-s, axis=1, kind="stable")[:, :k])
    return float(np.mean([len(set(r) & set(e)) / k for r, e in zip(*sims)]))


def embedding_fidelity(ref: np.ndarray, emb: np.ndarray, k: int = 10) -> dict[str, float]:
    """How closely embeddings `emb` reproduce reference embeddings `ref` (same rows, same order)."""
    if ref.shape != emb.shape:
        raise ValueError(f"embedding shapes differ: reference {ref.shape} vs {emb.shape}")
    cos = _rowwise_cosine(ref, emb)
    iu = np.triu_indices(len(ref), k=1)
    sim_ref = (_normalize(ref) @ _normalize(ref).T)[iu]
    sim_emb = (_normalize(emb) @ _normalize(emb).T)[iu]
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "spearman": spearman(sim_ref, sim_emb), f"top{k}_overlap": topk_overlap(ref, emb, k)}


def token_nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods of ids[:, 1:] given logits[:, :-1], and the count.
    Per token in float32 (torch's logsumexp: stable; float64 numpy was much slower over a 50k-word
    vocabulary), summed in float64."""
    import torch

    logits = torch.as_tensor(np.asarray(logits))[:, :-1].float()
    target = torch.as_tensor(np.asarray(ids)[:, 1:], dtype=torch.long)
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, target[..., None])[..., 0]
    return float(nll.double().sum()), int(target.numel())


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return float(np.exp(nll_sum / n_tokens))


def sequence_agreement(ref: list[list[int]], out: list[list[int]]) -> float:
    """Share of generated tokens that match the reference, position by position."""
    total = sum(len(r) for r in ref)
    same = sum(int(a == b) for r, o in zip(ref, out) for a, b in zip(r, o))
    return same / total if total else float("nan")


def output_fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Generic fidelity of any model output vs the baseline's: cosine and max abs error."""
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    cos = _rowwise_cosine(ref, out)
    return {"output_cos_mean": float(cos.mean()), "output_cos_min": float(cos.min()),
            "max_abs_err": float(np.abs(ref - out).max())}
