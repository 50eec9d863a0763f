"""int8 backup precision for the tables a low-bit weight format leaves out: input embeddings and the output
head, as NNCF's `compress_weights` stores them (its backup mode).

WeightOnlyEmbedding holds an embedding table as int8 codes per row (symmetric, one scale per row): a lookup
dequantizes only the rows it reads. The head becomes an int8 per-channel WeightOnlyLinear; a head tied to a
table gets that table's own codes and scales, so an ONNX export stores one int8 table for both (the lookup
reads it with Gather, the head through a DequantizeLinear -> Transpose that ONNX Runtime folds into its
int8 MatMulNBits).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import NnslimError
from ...graph.modules import register_packed, replace_everywhere, replace_module
from ...graph.scope import output_heads, select_layers
from .formats import WeightSpec, dequantize_codes, group_qparams, quantize_codes
from .modules import WeightOnlyLinear

BACKUP = WeightSpec(8, -1, True)  # int8, one scale per row (per output channel for the head), symmetric


@register_packed("weight_only_embedding")
class WeightOnlyEmbedding(nn.Module):
    """An nn.Embedding whose table is int8 codes [V, D] (unsigned, zero point 128) and one scale per row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, embed_scale: float = 1.0):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.embed_scale = float(embed_scale)  # a scaled word embedding's constant factor (BART, Gemma)
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(num_embeddings, 1, dtype=dtype))
        self.register_buffer("zeros", torch.full((num_embeddings, 1), 128, dtype=torch.uint8))

    @classmethod
    def from_codes(cls, emb: nn.Embedding, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   embed_scale: float = 1.0) -> "WeightOnlyEmbedding":
        """The packed table of `emb` from per-row codes [V, D] (0..255), scale and zero point [V, 1]."""
        mod = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.weight.dtype,
                  embed_scale).to(emb.weight.device)
        mod.qweight.copy_(codes.to(torch.uint8))
        mod.scales.copy_(scale.to(mod.scales.dtype))
        mod.zeros.copy_(zero.to(torch.uint8))
        return mod

    @property
    def weight(self) -> torch.Tensor:
        """Shape and dtype only (meta): code that reads `embedding.weight.dtype` keeps working."""
        return torch.empty((self.num_embeddings, self.embedding_dim), dtype=self.scales.dtype, device="meta")

    def float_dtype(self) -> torch.dtype:
        return self.scales.dtype

    def extra_repr(self) -> str:
        scaled = f", x {self.embed_scale:g}" if self.embed_scale != 1.0 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row{scaled}"

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_codes(self.qweight.to(torch.int32), self.scales, self.zeros, dtype or self.scales.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = F.embedding(flat, self.qweight).to(torch.int32)
        out = dequantize_codes(rows, F.embedding(flat, self.scales), F.embedding(flat, self.zeros),
                               self.scales.dtype)
        return _scaled(out, self.embed_scale).reshape(*ids.shape, self.embedding_dim)

    def onnx_qdq_spec(self) -> dict:
        """The table for an ONNX export (runtime/qdq.py): signed codes, one scale per row, zero point 0."""
        return {"kind": "embedding", "bits": 8, "qweight": (self.qweight.to(torch.int32) - 128).to(torch.int8),
                "w_scale": self.scales.detach().float().reshape(-1),
                "w_zp": (self.zeros.to(torch.int32) - 128).to(torch.int8).reshape(-1), "per_channel": True,
                "dynamic": False, "input_scale": None, "act_scale": None, "act_zp": None, "act_bits": None}

    def unwrapped(self) -> nn.Embedding:
        emb = ScaledEmbedding(self.num_embeddings, self.embedding_dim, self.padding_idx, dtype=self.scales.dtype,
                              device=self.qweight.device)
        emb.embed_scale = self.embed_scale
        with torch.no_grad():
            emb.weight.copy_(self.dequantized_weight())
        return emb

    def packed_config(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "embed_scale": self.embed_scale}

    @classmethod
    def from_packed_config(cls, cfg: dict, dtype: torch.dtype) -> "WeightOnlyEmbedding":
        return cls(int(cfg["num_embeddings"]), int(cfg["embedding_dim"]), cfg.get("padding_idx"), dtype,
                   float(cfg.get("embed_scale", 1.0)))


class ScaledEmbedding(nn.Embedding):
    """A lookup times a constant (what an int8 table with embed_scale exports as: Gather, then Mul)."""
    embed_scale = 1.0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _scaled(super().forward(ids), self.embed_scale)


def _scaled(rows: torch.Tensor, factor: float) -> torch.Tensor:
    """rows times the factor in their own dtype (as Gemma multiplies by embed_scale cast to the table's dtype)."""
    return rows if factor == 1.0 else rows * torch.tensor(factor, dtype=rows.dtype, device=rows.device)


def lookup_scale(emb: nn.Embedding) -> float | None:
    """1.0 for a plain nn.Embedding; the factor of a subclass whose forward is the lookup times a constant
    `embed_scale` (BART's and Gemma's scaled word embeddings), checked on a few rows; None for any other
    subclass (it stays float: its forward is not known to be a lookup)."""
    if type(emb).forward is nn.Embedding.forward:
        return 1.0
    s = getattr(emb, "embed_scale", None)
    if s is None or emb.weight.is_meta or emb.max_norm is not None:
        return None
    try:
        s = float(s)
        ids = torch.arange(min(8, emb.num_embeddings), device=emb.weight.device)
        with torch.no_grad():
            got = emb(ids)
            want = _scaled(F.embedding(ids, emb.weight), s)
    except Exception:  # an unusual signature or scale: not a plain scaled lookup
        return None
    return s if torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-6) else None


def _row_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale, zero = group_qparams(w, BACKUP, w.shape[1])
    return quantize_codes(w, scale, zero, BACKUP).to(torch.uint8), scale, zero


def quantize_backup(model: nn.Module, ignore=(), head: bool = True) -> list[str]:
    """Input embedding tables (nn.Embedding lookups, scaled ones included (lookup_scale), minus `ignore`) to int8
    per row and, when `head`,
    the float output head (lm_head / classifier / score) to int8 per channel, in place; a head tied to a
    table shares its codes. Returns the report notes."""
    # name -> (table, its lookup factor); BART's learned positions have their own forward: they stay float
    tables = {n: (m, f) for n, m in select_layers(model, (nn.Embedding,), ignore).items()
              if (f := lookup_scale(m)) is not None}
    names = output_heads(model) if head else set()
    heads = {n: m for n, m in select_layers(model, (nn.Linear,), ignore).items() if n in names}
    for name, (emb, _) in tables.items():
        if emb.max_norm is not None:
            raise NnslimError(f"embedding {name} renormalizes its rows (max_norm={emb.max_norm}); an int8 table "
                              "cannot: add it to `ignore` or set backup: float")
    codes: dict[int, tuple] = {}  # data_ptr of a float table -> its codes (a tied head reuses them)
    made: dict[tuple, WeightOnlyEmbedding] = {}  # one int8 table per float table and factor, wherever it is held
    for name, (emb, factor) in tables.items():
        ptr = emb.weight.data_ptr()
        key = (ptr, factor)  # (T5's shared / encoder / decoder embeddings: three modules, one weight)
        if ptr not in codes:
            codes[ptr] = _row_codes(emb.weight.detach())
        if key not in made:
            made[key] = WeightOnlyEmbedding.from_codes(emb, *codes[ptr], embed_scale=key[1])
        replace_everywhere(model, name, made[key])
    tied = 0
    for name, lin in heads.items():
        ptr = lin.weight.data_ptr()
        tied += ptr in codes
        q = codes.get(ptr) or _row_codes(lin.weight.detach())
        replace_module(model, name, WeightOnlyLinear.from_codes(lin, *q, BACKUP))
    if not tables and not heads:
        return []
    what = [f"{len(made)} embedding table(s)"] + ([f"{len(heads)} head(s) ({tied} tied to a table, sharing "
                                                     f"its codes)"] if heads else [])
    return [f"backup int8 (per row, symmetric): {' and '.join(what)}"]


__all__ = ["BACKUP", "ScaledEmbedding", "WeightOnlyEmbedding", "lookup_scale", "quantize_backup"]
