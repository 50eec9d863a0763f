"""Low-rank factorization of Linear layers by truncated SVD: W [out, in] ~ U_r S_r V_r^T becomes two
Linears (in -> r, r -> out), by a fixed rank, a rank ratio, or the smallest rank keeping a given share
of the spectral energy (sum of squared singular values). A layer is factored only when that makes it
smaller (r * (in + out) < in * out), otherwise it is kept and the notes say so.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import NnslimError
from ..graph.scope import direct_reads_note, select_linears
from ..graph.modules import register_packed, replace_module
from ..recipe import StepConfig, register_method



@register_packed("lowrank")
class LowRankLinear(nn.Module):
    """x -> up(down(x)) with down: in -> rank (no bias), up: rank -> out (the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, dtype=dtype)

    def forward(self, x):
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """A shape-and-dtype view on the meta device, as a packed layer's (graph/modules.py): code that reads
        a Linear's `weight.dtype` works, and fused fast paths (nn.TransformerEncoderLayer) stand down."""
        return torch.empty((self.out_features, self.in_features), dtype=self.up.weight.dtype, device="meta")

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    @classmethod
    def from_packed_config(cls, cfg: dict, dtype: torch.dtype) -> "LowRankLinear":
        return cls(cfg["in_features"], cfg["out_features"], cfg["rank"], cfg["bias"], dtype)

    def packed_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "rank": self.rank, "bias": self.up.bias is not None}


@dataclass(frozen=True)
class LowRankConfig(StepConfig):
    """Truncated-SVD factorization of every Linear (rank, rank_ratio or energy; exactly one)."""
    ranges = {"rank": (1, 1 << 30), "rank_ratio": (1e-9, 1.0), "energy": (1e-9, 1.0)}
    rank: int | None = None
    rank_ratio: float | None = None  # rank = ratio * min(in, out)
    energy: float | None = None  # keep this share of sum(s^2), e.g. 0.95
    ignore: tuple[str, ...] = ()
    factor_head: bool = False

    def __post_init__(self):
        given = [k for k in ("rank", "rank_ratio", "energy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise NnslimError(f"lowrank: give exactly one of rank (an int), rank_ratio (0-1 of min(in, out)) or "
                              f"energy (0-1 share of the squared singular values kept); got {given or 'none'} "
                              "(e.g. {\"method\": \"lowrank\", \"rank_ratio\": 0.25}; a layer keeps its weight "
                              "where the factors would not be smaller)")


def _rank(s: torch.Tensor, config: LowRankConfig, full: int) -> int:
    if config.rank is not None:
        return min(config.rank, full)
    if config.rank_ratio is not None:
        return max(1, int(round(config.rank_ratio * full)))
    cum = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp(min=1e-30)
    return int(torch.searchsorted(cum, torch.tensor(config.energy, dtype=torch.float64)).item()) + 1


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    w = linear.weight.detach().float()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    mod = LowRankLinear(linear.in_features, linear.out_features, rank, linear.bias is not None,
                        linear.weight.dtype).to(linear.weight.device)
    with torch.no_grad():
        mod.down.weight.copy_((root[:, None] * vh[:rank]).to(mod.down.weight.dtype))
        mod.up.weight.copy_((u[:, :rank] * root[None, :]).to(mod.up.weight.dtype))
        if linear.bias is not None:
            mod.up.bias.copy_(linear.bias.detach())
    return mod


def lowrank(model: nn.Module, config: LowRankConfig, inplace: bool = False, notes: list[str] | None = None
            ) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise NnslimError(f"low-rank factorization needs a torch.nn.Module, got {type(model).__name__}")
    notes = notes if notes is not None else []
    model = model if inplace else copy.deepcopy(model)
    layers = select_linears(model, config.ignore, config.factor_head, "factorize")
    kept, before, after = [], 0, 0
    for name, lin in layers.items():
        s = torch.linalg.svdvals(lin.weight.detach().float())
        r = _rank(s, config, min(lin.in_features, lin.out_features))
        before += lin.weight.numel()
        if r * (lin.in_features + lin.out_features) >= lin.in_features * lin.out_features:
            kept.append(name)
            after += lin.weight.numel()
            continue
        replace_module(model, name, factorize(lin, r))
        after += r * (lin.in_features + lin.out_features)
    notes.append(f"low-rank: {len(layers) - len(kept)} of {len(layers)} Linear layers factored; their weights "
                 f"{before:,} -> {after:,} parameters" + (f"; kept (no saving at that rank): {', '.join(kept[:5])}"
                                                          if kept else "") + direct_reads_note(model))
    return model


@register_method("lowrank", LowRankConfig, "truncated-SVD factorization of Linear layers (rank, ratio or energy)",
                 stage="structure")
def _apply(model, config: LowRankConfig, ctx):
    return lowrank(model, config, inplace=True, notes=ctx.notes)
