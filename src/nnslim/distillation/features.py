"""Intermediate features a student learns from its teacher: hidden states of the repeated blocks and
attention maps, matched through a layer map when the depths differ and a learned projection when the
widths differ (TinyBERT / MiniLM-style distillation).

Layer map: student block i learns from teacher block map[i]; by default the blocks spread evenly,
map[i] = round((i + 1) * T / S) - 1, so the last student block always matches the last teacher block
(a 3-layer student of a 6-layer teacher: 1, 3, 5).
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NnslimError
from ..graph.layerwise import find_blocks
from ..runtime.base import first_tensor


def block_names(model: nn.Module, pattern: str | None = None) -> list[str]:
    """The repeated blocks (or the modules matching `pattern`), in order; [] when there are none."""
    if pattern is not None:
        return [n for n, _ in model.named_modules() if n and re.fullmatch(pattern, n)]
    try:
        prefix, blocks = find_blocks(model)
    except NnslimError:
        return []
    return [f"{prefix}.{i}" for i in range(len(blocks))]


def layer_map(n_student: int, n_teacher: int, given: tuple[int, ...] | None = None) -> list[int]:
    """Teacher block index for each student block."""
    if given is not None:
        if len(given) != n_student or any(not 0 <= t < n_teacher for t in given):
            raise NnslimError(f"layer_map={list(given)} is not allowed; allowed: {n_student} teacher block indices "
                              f"in 0..{n_teacher - 1} (one per student block)")
        return list(given)
    return [max(0, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def attention_modules(model: nn.Module, blocks: list[str]) -> list[nn.Module | None]:
    """The self-attention module with separate query/key projections inside each block (None if absent)."""
    out = []
    for b in blocks:
        found = None
        for _, m in model.get_submodule(b).named_modules():
            q = getattr(m, "query", None) or getattr(m, "q_proj", None)
            k = getattr(m, "key", None) or getattr(m, "k_proj", None)
            d = getattr(m, "attention_head_size", None) or getattr(m, "head_dim", None)
            if isinstance(q, nn.Module) and isinstance(k, nn.Module) and isinstance(d, int):
                found = m
                break
        out.append(found)
    return out


class _Tap:
    """Forward hooks that record what a model's blocks produce during one forward pass."""

    def __init__(self, model: nn.Module, blocks: list[str], hidden: bool, attention: bool):
        self.hidden: list[torch.Tensor] = []
        self.qk: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.handles = []
        if hidden:
            for b in blocks:
                self.handles.append(model.get_submodule(b).register_forward_hook(
                    lambda mod, args, out: self.hidden.append(first_tensor(out))))
        if attention:
            for att in attention_modules(model, blocks):
                if att is None:
                    continue
                q = getattr(att, "query", None) or getattr(att, "q_proj")
                k = getattr(att, "key", None) or getattr(att, "k_proj")
                d = getattr(att, "attention_head_size", None) or getattr(att, "head_dim")
                slot: dict = {}
                self.handles.append(q.register_forward_hook(lambda mod, a, out, s=slot: s.__setitem__("q", out)))
                self.handles.append(k.register_forward_hook(
                    lambda mod, a, out, s=slot, d=d: self.qk.append((s.pop("q"), out, d))))

    def clear(self) -> None:
        self.hidden.clear()
        self.qk.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def attention_probs(q: torch.Tensor, k: torch.Tensor, head_dim: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax(q k^T / sqrt(d)) per head, averaged over heads: [B, Lq, Lk] (head counts may differ)."""
    b, lq, _ = q.shape
    qh = q.float().reshape(b, lq, -1, head_dim).transpose(1, 2)
    kh = k.float().reshape(b, k.shape[1], -1, head_dim).transpose(1, 2)
    if kh.shape[1] != qh.shape[1]:  # grouped-query attention: each kv head serves several query heads
        kh = kh.repeat_interleave(qh.shape[1] // kh.shape[1], dim=1)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(head_dim)
    if mask is not None and mask.dim() == 2 and mask.shape == (b, kh.shape[2]):
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1).mean(1)


class FeatureMatcher(nn.Module):
    """Hidden-state and attention-map losses between a student and its teacher. Holds the learned
    projections (student width -> teacher width), trained with the student."""

    def __init__(self, student: nn.Module, teacher: nn.Module, hidden: bool, attention: bool,
                 pattern: str | None = None, given_map: tuple[int, ...] | None = None, hidden_kind: str = "mse"):
        super().__init__()
        s_blocks, t_blocks = block_names(student, pattern), block_names(teacher, pattern)
        self.active = bool(s_blocks and t_blocks and (hidden or attention))
        self.map = layer_map(len(s_blocks), len(t_blocks), given_map) if self.active else []
        self.hidden_kind = hidden_kind
        self.proj = nn.ModuleDict()
        self._s = _Tap(student, s_blocks, hidden, attention) if self.active else None
        self._t = _Tap(teacher, t_blocks, hidden, attention) if self.active else None

    def describe(self) -> str:
        return f"student blocks -> teacher blocks {self.map}" + (f", {len(self.proj)} projections" if self.proj else "")

    def clear(self) -> None:
        if self.active:
            self._s.clear()
            self._t.clear()

    def remove(self) -> None:
        if self.active:
            self._s.remove()
            self._t.remove()

    def prepare(self, sample_forward) -> None:
        """Run one forward of both models (no grad) on a probe batch: creates the projections the widths need
        and measures each teacher block's output variance (the MSE scale, fixed for the whole run)."""
        with torch.no_grad():
            sample_forward()
        if not self.active:
            return
        self.variance = [float(t.float().var()) for t in self._t.hidden]
        for i, (s, t) in enumerate(zip(self._s.hidden, [self._t.hidden[j] for j in self.map])):
            if s.shape[-1] != t.shape[-1]:
                proj = nn.Linear(s.shape[-1], t.shape[-1], bias=False).to(s.device)
                nn.init.normal_(proj.weight, std=1.0 / math.sqrt(s.shape[-1]))
                self.proj[str(i)] = proj
        self.clear()

    def hidden_loss(self) -> torch.Tensor:
        terms = []
        t_all = self._t.hidden
        for i, s in enumerate(self._s.hidden):
            t = t_all[self.map[i]]
            if str(i) in self.proj:
                s = self.proj[str(i)](s)
            if s.shape != t.shape:
                continue
            if self.hidden_kind == "cosine":
                terms.append((1 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean())
            else:
                terms.append(F.mse_loss(s.float(), t.float()) / max(self.variance[self.map[i]], 1e-8))
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def attention_loss(self, mask: torch.Tensor | None) -> torch.Tensor:
        terms = []
        t_all = self._t.qk
        for i, (q, k, d) in enumerate(self._s.qk):
            if self.map[i] >= len(t_all):
                continue
            tq, tk, td = t_all[self.map[i]]
            ps = attention_probs(q, k, d, mask)
            with torch.no_grad():
                pt = attention_probs(tq, tk, td, mask)
            if ps.shape != pt.shape:
                continue
            terms.append(F.kl_div(ps.clamp(min=1e-12).log(), pt, reduction="none").sum(-1).mean())
        return torch.stack(terms).mean() if terms else torch.zeros(())
