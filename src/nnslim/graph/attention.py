"""nn.MultiheadAttention with its projections as layers the model calls.

torch's MultiheadAttention keeps q/k/v in one `in_proj_weight` Parameter and passes it, and `out_proj.weight`, to
F.multi_head_attention_forward: no method that works on nn.Linear layers (weight-only int4/int8, W8A8, static int8,
QAT, pruning masks, low-rank) reaches them, and a replaced `out_proj` is never called. `SplitMultiheadAttention`
computes the same function with `q_proj`, `k_proj`, `v_proj` and `out_proj` as nn.Linear children, so every such
method reaches all four (torchvision's ViT, CLIP-style and custom nn.Transformer models). Each split is checked
against the module it replaces on random inputs; one that differs (or uses add_bias_kv / add_zero_attn) is kept
whole. At save, blocks whose projections are still plain Linears go back to nn.MultiheadAttention; the others
stay split, listed in nnslim.json (`split_attention`) so that loading splits the skeleton the same way.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NnslimError


class SplitMultiheadAttention(nn.Module):
    """The function of nn.MultiheadAttention (same call signature and outputs), projections as nn.Linear."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, bias: bool, out_bias: bool,
                 batch_first: bool, dropout: float, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim, self.batch_first, self.dropout = kdim, vdim, batch_first, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=out_bias, **kw)
        # torch's fused encoder fast paths test these before running; meta views make them stand down
        self._qkv_same_embed_dim = kdim == embed_dim and vdim == embed_dim

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return torch.empty((3 * self.embed_dim, self.embed_dim), device="meta")

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return torch.empty(3 * self.embed_dim, device="meta") if self.q_proj.bias is not None else None

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, copy_weights: bool = True) -> "SplitMultiheadAttention":
        w = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, mha.in_proj_bias is not None,
                  mha.out_proj.bias is not None, mha.batch_first, mha.dropout, w.dtype, w.device)
        new.train(mha.training)
        if not copy_weights:
            return new
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
            for lin, wt, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                lin.weight.copy_(wt)
                if b is not None:
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def to_mha(self) -> nn.MultiheadAttention:
        """The equivalent nn.MultiheadAttention (its projections must be plain nn.Linear layers)."""
        w = self.out_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout,
                                    bias=self.q_proj.bias is not None, kdim=self.kdim, vdim=self.vdim,
                                    batch_first=self.batch_first, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            q, k, v = self.q_proj.weight, self.k_proj.weight, self.v_proj.weight
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(torch.cat([q, k, v]))
            else:
                mha.q_proj_weight.copy_(q)
                mha.k_proj_weight.copy_(k)
                mha.v_proj_weight.copy_(v)
            if mha.in_proj_bias is not None:
                mha.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
            mha.out_proj.weight.copy_(self.out_proj.weight)
            if self.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.out_proj.bias)
            elif mha.out_proj.bias is not None:
                mha.out_proj.bias = None
        mha.train(self.training)
        return mha

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        return attend(self, self.out_proj, query, key, value, key_padding_mask, need_weights, attn_mask,
                      average_attn_weights, is_causal)


def attend(m: nn.Module, out_proj: nn.Module, query, key, value, key_padding_mask=None, need_weights: bool = True,
           attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
    """nn.MultiheadAttention's computation through called projections: `m` has q_proj / k_proj / v_proj, head_dim,
    batch_first and dropout (the heads are as many as the projections' outputs hold: pruned blocks have fewer)."""
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
    elif not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    n, length, _ = query.shape
    source = key.shape[1]
    d = m.head_dim
    q = m.q_proj(query).view(n, length, -1, d).transpose(1, 2)
    k = m.k_proj(key).view(n, source, -1, d).transpose(1, 2)
    v = m.v_proj(value).view(n, source, -1, d).transpose(1, 2)
    mask = _additive_mask(attn_mask, key_padding_mask, is_causal, n, q.shape[1], length, source, q.dtype, q.device)
    p = m.dropout if m.training else 0.0
    weights = None
    if need_weights:
        scores = torch.matmul(q * d ** -0.5, k.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        weights = attn.mean(1) if average_attn_weights else attn
        out = torch.matmul(F.dropout(attn, p) if p else attn, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    out = out_proj(out.transpose(1, 2).reshape(n, length, -1))
    if unbatched:
        return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
    if not m.batch_first:
        out = out.transpose(0, 1)
    return out, weights


def _additive_mask(attn_mask, key_padding_mask, is_causal, n, h, length, source, dtype, device):
    """torch's MultiheadAttention masks as one float mask broadcast to [n, h, L, S]: boolean True = not attended
    (-inf), float masks added; is_causal with no attn_mask is the causal mask."""
    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    out = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        a = additive(attn_mask)
        out = a.view(1, 1, length, source) if a.dim() == 2 else a.view(n, -1, length, source)
    if key_padding_mask is not None:
        kp = additive(key_padding_mask).view(n, 1, 1, source)
        out = kp if out is None else out + kp
    return out


def _splittable(mha: nn.MultiheadAttention) -> bool:
    return mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn


def _same_function(mha: nn.MultiheadAttention, split: SplitMultiheadAttention) -> bool:
    """Both modules on random inputs (with and without attention weights, with a padding mask), in eval mode."""
    w = mha.out_proj.weight
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (2, 5) if mha.batch_first else (5, 2)
    q = torch.randn(*shape, mha.embed_dim, generator=g).to(w.device, w.dtype)
    k = torch.randn(*shape, mha.kdim, generator=g).to(w.device, w.dtype)
    v = torch.randn(*shape, mha.vdim, generator=g).to(w.device, w.dtype)
    pad = torch.zeros(2, 5, dtype=torch.bool, device=w.device)
    pad[1, 3:] = True
    modes = (mha.training, split.training)
    mha.eval()
    split.eval()
    try:
        with torch.no_grad():
            for kwargs in ({"need_weights": True}, {"need_weights": False, "key_padding_mask": pad}):
                a, wa = mha(q, k, v, **kwargs)
                b, wb = split(q, k, v, **kwargs)
                tol = 1e-4 if w.dtype == torch.float32 else 2e-2
                if not torch.allclose(a.float(), b.float(), atol=tol * max(1.0, float(a.abs().max())), rtol=tol):
                    return False
                if (wa is None) != (wb is None) or (wa is not None and not torch.allclose(wa.float(), wb.float(),
                                                                                           atol=tol)):
                    return False
    finally:
        mha.train(modes[0])
        split.train(modes[1])
    return True


def replace_attention(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put a split / pruned attention block at `name` (every path holding the old one). nn.TransformerEncoder
    decides when built to pack padded batches into nested tensors, which only nn.MultiheadAttention runs: that
    path is turned off for encoders whose layers no longer hold one (else eval with a padding mask fails)."""
    from .modules import replace_everywhere

    replace_everywhere(model, name, new)
    for m in model.modules():
        first = m.layers[0] if isinstance(m, nn.TransformerEncoder) and len(m.layers) else None
        if first is not None and not isinstance(getattr(first, "self_attn", None), nn.MultiheadAttention):
            m.use_nested_tensor = False


def split_attention(model: nn.Module, names: list[str] | None = None, check: bool = True) -> list[str]:
    """Replace nn.MultiheadAttention modules (all, or those named) by SplitMultiheadAttention in place; returns the
    names split. With check, a split that does not compute what the module did is undone (the module stays)."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and n}
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise NnslimError(f"split_attention entry {missing[0]!r} is no nn.MultiheadAttention of the model")
        found = {n: found[n] for n in names}
    done = []
    for name, mha in found.items():
        if not _splittable(mha) or (check and any(p.is_meta for p in mha.parameters())):
            continue
        split = SplitMultiheadAttention.from_mha(mha, copy_weights=check)
        if check and not _same_function(mha, split):
            continue
        replace_attention(model, name, split)
        done.append(name)
    return done


def _whole(m: SplitMultiheadAttention) -> bool:
    """No head or feature removed (structured pruning slices split blocks in place): it fits nn.MultiheadAttention."""
    e = m.out_proj.out_features
    return m.out_proj.in_features == e == m.q_proj.in_features == m.q_proj.out_features == m.k_proj.out_features \
        == m.v_proj.out_features and m.num_heads * m.head_dim == e and e == m.embed_dim \
        and (m.k_proj.in_features, m.v_proj.in_features) == (m.kdim, m.vdim)


def join_attention(model: nn.Module) -> list[str]:
    """Put nn.MultiheadAttention back where a split block's four projections are plain nn.Linear layers; returns
    the names of the blocks that stay split (their projections were replaced by a method)."""
    from .modules import replace_everywhere

    kept = []
    for name, m in list(model.named_modules()):
        if not isinstance(m, SplitMultiheadAttention):
            continue
        if all(type(lin) is nn.Linear for lin in (m.q_proj, m.k_proj, m.v_proj, m.out_proj)) and _whole(m):
            replace_everywhere(model, name, m.to_mha())
        else:
            kept.append(name)
    return kept
