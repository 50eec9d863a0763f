"""Per-layer functions of the dependency graph, keyed by layer type: supporting a layer is one class.

A handler says how a layer's call moves channel labels (propagate), which of its tensors hold the
channels of a role (weights, for importance) and how to remove positions of a role (slice). Layers
without a handler are traced through, op by op.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError, first_line

_BY_TYPE: dict[type, "Layer"] = {}
_MATCHERS: list[tuple[Callable[[nn.Module], bool], "Layer"]] = []


def register_layer(*types: type, match: Callable[[nn.Module], bool] | None = None):
    """Class decorator: register a handler for module types (and/or modules a predicate accepts)."""
    def wrap(cls):
        inst = cls()
        for t in types:
            _BY_TYPE[t] = inst
        if match is not None:
            _MATCHERS.append((match, inst))
        return cls
    return wrap


def handler_for(module: nn.Module) -> "Layer | None":
    for t in type(module).__mro__:
        if t in _BY_TYPE:
            return _BY_TYPE[t]
    for match, h in _MATCHERS:
        if match(module):
            return h
    return None


def first_tensor(call, keys=("hidden_states", "query", "input", "x")):
    for a in call.args:
        if isinstance(a, torch.Tensor):
            return a
    for k in keys:
        if isinstance(call.kwargs.get(k), torch.Tensor):
            return call.kwargs[k]
    return next((v for v in call.kwargs.values() if isinstance(v, torch.Tensor)), None)


def slice_param(module: nn.Module, attr: str, dim: int, keep: torch.Tensor) -> None:
    old = getattr(module, attr, None)
    if old is None:
        return
    replace_param(module, attr, old.detach().index_select(dim, keep.to(old.device)).clone())


def replace_param(module: nn.Module, attr: str, new: torch.Tensor) -> None:
    """Put `new` in place of the parameter / buffer `attr`, keeping its kind and requires_grad."""
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = new


def linear_like(m) -> bool:
    """An nn.Linear, or a layer that wraps one (a quantized layer keeps it as `float_module`)."""
    return isinstance(m, nn.Linear) or isinstance(getattr(m, "float_module", None), nn.Linear)


def linear_in(m: nn.Module, keep) -> None:
    if not isinstance(m, nn.Linear):  # a wrapper: its own handler slices the inner layer and its state
        handler_for(m).slice(m, "in", keep)
        return
    slice_param(m, "weight", 1, keep)
    m.in_features = len(keep)


def linear_out(m: nn.Module, keep) -> None:
    if not isinstance(m, nn.Linear):
        handler_for(m).slice(m, "out", keep)
        return
    slice_param(m, "weight", 0, keep)
    slice_param(m, "bias", 0, keep)
    m.out_features = len(keep)


class Layer(ABC):
    """The pruning functions of one layer type (a wrapper layer may register a handler that delegates to
    the layer it wraps and also slices its own per-channel state)."""

    @abstractmethod
    def propagate(self, g, name: str, m: nn.Module, call) -> None:
        """Record the layer's members in graph g and set the labels of its outputs."""

    def weights(self, m: nn.Module, role: str) -> list[tuple[torch.Tensor, int, int]]:
        """(parameter, dim, block): position i of the role owns indices i*block..(i+1)*block-1 of dim."""
        return []

    @abstractmethod
    def slice(self, m: nn.Module, role: str, keep: torch.Tensor) -> nn.Module:
        """Keep only positions `keep` of `role` (tensors and attributes); returns the module."""


@register_layer(nn.Linear)
class LinearLayer(Layer):
    def propagate(self, g, name, m, call):
        g.consume(name, "in", first_tensor(call), -1)
        y = call.outputs[0]
        gids = g.new(m.out_features)
        g.member(name, "out", gids)
        g.set(y, y.dim() - 1, gids)

    def weights(self, m, role):
        return [(m.weight, 1 if role == "in" else 0, 1)]

    def slice(self, m, role, keep):
        (linear_in if role == "in" else linear_out)(m, keep)
        return m


@register_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvLayer(Layer):
    @staticmethod
    def _dims(m):
        return (0, 1) if isinstance(m, nn.modules.conv._ConvTransposeNd) else (1, 0)

    def propagate(self, g, name, m, call):
        x, y = first_tensor(call), call.outputs[0]
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        if m.groups == 1:
            g.consume(name, "in", x, 1)
            gids = g.new(m.out_channels)
            g.member(name, "out", gids)
        elif m.groups == m.in_channels and m.out_channels % m.in_channels == 0 and not transposed:
            info = g.info(x)
            if info is not None and info[0] == 1:
                gids = np.repeat(info[1], m.out_channels // m.in_channels)
            else:
                g.drop(x, f"{name}: depthwise conv reads channels off axis 1")
                gids = g.new(m.out_channels, frozen=f"{name}: depthwise conv over channels from outside the graph")
            g.member(name, "dw", gids)
        elif not transposed and (g.info(x) or (None,))[0] == 1:
            # grouped (ResNeXt, RegNet): output group i reads input group i only, so either side may lose channels
            # as long as every group loses as many as the others (the layer stays `groups` equal groups)
            g.member(name, "gin", g.info(x)[1], chunks=m.groups)
            gids = g.new(m.out_channels)
            g.member(name, "gout", gids, chunks=m.groups)
        else:
            why = "transposed" if transposed else "channels read off axis 1"
            g.drop(x, f"{name}: grouped conv (groups={m.groups}, {why}) keeps its channels")
            gids = g.new(m.out_channels, frozen=f"{name}: grouped conv (groups={m.groups}, {why}) keeps its channels")
        g.set(y, 1, gids)

    def weights(self, m, role):
        d_in, d_out = self._dims(m)
        if role == "gin":  # a grouped conv's input j is column j % (in / groups) of group j's rows only: no one
            return []      # axis of the weight holds it (the layers that produce those channels score them)
        return [(m.weight, d_in if role == "in" else d_out if role == "out" else 0, 1)]

    def slice(self, m, role, keep):
        d_in, d_out = self._dims(m)
        if role == "in":
            slice_param(m, "weight", d_in, keep)
            m.in_channels = len(keep)
        elif role == "out":
            slice_param(m, "weight", d_out, keep)
            slice_param(m, "bias", 0, keep)
            m.out_channels = len(keep)
        elif role in ("gin", "gout"):  # grouped: the same number of positions kept in each group
            keep, n = torch.as_tensor(keep), m.in_channels if role == "gin" else m.out_channels
            size = n // m.groups
            per_group = [keep[(keep >= gi * size) & (keep < (gi + 1) * size)] - gi * size for gi in range(m.groups)]
            if len({len(k) for k in per_group}) != 1 or not len(per_group[0]):
                raise ValueError(f"grouped conv: {len(keep)} kept {role[1:]}put channels are not spread equally over "
                                 f"its {m.groups} groups")
            if role == "gout":
                slice_param(m, "weight", 0, keep)
                slice_param(m, "bias", 0, keep)
                m.out_channels = len(keep)
            else:
                rows = m.out_channels // m.groups
                w = m.weight.detach()
                replace_param(m, "weight", torch.cat([w[gi * rows:(gi + 1) * rows][:, k]
                                                      for gi, k in enumerate(per_group)]))
                m.in_channels = len(keep)
        else:  # depthwise: output channel j reads input channel j // multiplier
            mult = m.out_channels // m.in_channels
            slice_param(m, "weight", 0, keep)
            slice_param(m, "bias", 0, keep)
            m.out_channels = len(keep)
            m.in_channels = m.groups = len(keep) // mult
        return m


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def _normalized_axis(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int | None:
    """The one axis a LayerNorm / RMSNorm normalizes: the last, as torch's own do; a subclass with its own
    forward (ConvNeXt's channels-first LayerNorm permutes inside) is checked by recomputing its output."""
    if len(m.normalized_shape) != 1:
        return None
    base = nn.LayerNorm if isinstance(m, nn.LayerNorm) else nn.RMSNorm
    if type(m).forward is base.forward:
        return x.dim() - 1
    if y.shape != x.shape:
        return None
    for axis in range(x.dim() - 1, 0, -1):
        if x.shape[axis] == m.normalized_shape[0]:
            with torch.no_grad():
                ref = base.forward(m, x.movedim(axis, -1)).movedim(-1, axis)
            if torch.allclose(ref, y, rtol=1e-4, atol=1e-5):
                return axis
    return None


def _channels_in(g, call):
    """(input, output, channel axis, channel ids) of a per-channel layer's call; None when its input carries none."""
    x = first_tensor(call)
    info = g.info(x)
    return None if info is None else (x, call.outputs[0], *info)


@register_layer(*_NORMS)
class NormLayer(Layer):
    def propagate(self, g, name, m, call):
        tracked = _channels_in(g, call)
        if tracked is None:
            return
        x, y, axis, gids = tracked
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            over = _normalized_axis(m, x, y)
            if over == axis:
                g.member(name, "ch", gids)
            elif over is None or axis >= x.dim() - len(m.normalized_shape):
                return g.drop(x, f"{name}: normalizes over a multi-dim shape or an axis not identified")
        elif axis != 1:
            return g.drop(x, f"{name}: channels are not on axis 1")
        else:
            g.member(name, "ch", gids, multiple=getattr(m, "num_groups", 1))
        g.set(y, axis, gids)

    def weights(self, m, role):
        return [(m.weight, 0, 1)] if getattr(m, "weight", None) is not None else []

    def slice(self, m, role, keep):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            slice_param(m, attr, 0, keep)
        n = len(keep)
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            m.normalized_shape = (n,)
        elif isinstance(m, nn.GroupNorm):
            m.num_channels = n
        else:
            m.num_features = n
        return m


@register_layer(nn.PReLU)
class PReLULayer(Layer):
    """PReLU: one learned slope (elementwise, channels pass), or one per channel on axis 1 (sliced with them)."""

    def propagate(self, g, name, m, call):
        tracked = _channels_in(g, call)
        if tracked is None:
            return
        x, y, axis, gids = tracked
        if m.num_parameters > 1:
            if axis != (1 if x.dim() > 1 else 0):
                return g.drop(x, f"{name}: per-channel slopes on another axis than the channels")
            g.member(name, "ch", gids)
        g.set(y, axis, gids)

    def weights(self, m, role):
        return [(m.weight, 0, 1)] if m.num_parameters > 1 else []

    def slice(self, m, role, keep):
        slice_param(m, "weight", 0, keep)
        m.num_parameters = len(keep)
        return m


@register_layer(nn.Identity)
class IdentityLayer(Layer):
    """nn.Identity (a BatchNorm folded into its convolution by int8 / qat, a layer a model switched off): channels
    pass through and there is nothing to slice. A channel group recorded before a later step folded its BatchNorm
    (movement pruning's neurons removed after qat + distill) finds the Identity in the norm's place."""

    def propagate(self, g, name, m, call):
        tracked = _channels_in(g, call)
        if tracked is not None:
            x, y, axis, gids = tracked
            g.set(y, axis, gids)

    def slice(self, m, role, keep):
        return m


@register_layer(nn.Embedding)
class EmbeddingLayer(Layer):
    def propagate(self, g, name, m, call):
        y = call.outputs[0]
        frozen = None if g.options.get("prune_embeddings") else "embeddings are kept (prune_embeddings=False)"
        gids = g.new(m.embedding_dim, frozen=frozen)
        g.member(name, "emb", gids)
        g.set(y, y.dim() - 1, gids)

    def weights(self, m, role):
        return [(m.weight, 1, 1)]

    def slice(self, m, role, keep):
        slice_param(m, "weight", 1, keep)
        m.embedding_dim = len(keep)
        return m


class PrunedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention with separate q/k/v/o projections, so heads and the model width can be
    pruned independently; same call signature and outputs (graph/attention.py computes both kinds)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, out_dim: int, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        inner = num_heads * head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(embed_dim, inner, bias=bias) for _ in range(3))
        self.o_proj = nn.Linear(inner, out_dim, bias=bias)
        self.num_heads, self.head_dim, self.dropout, self.batch_first = num_heads, head_dim, dropout, batch_first
        # nn.Transformer*Layer take their fused fast path only for nn.MultiheadAttention; these say "no"
        self._qkv_same_embed_dim, self.in_proj_bias, self.in_proj_weight = False, None, None

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "PrunedMultiheadAttention":
        from .attention import SplitMultiheadAttention

        e, h = mha.embed_dim, mha.num_heads
        new = cls(e, h, e // h, e, mha.in_proj_bias is not None, mha.dropout, mha.batch_first)
        split = SplitMultiheadAttention.from_mha(mha)  # the projections, weights copied (dtype, device kept)
        new.q_proj, new.k_proj, new.v_proj, new.o_proj = split.q_proj, split.k_proj, split.v_proj, split.out_proj
        return new.train(mha.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        from .attention import attend

        return attend(self, self.o_proj, query, key, value, key_padding_mask, need_weights, attn_mask,
                      average_attn_weights, is_causal)


def convertible_mha(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim and m.bias_k is None \
        and not m.add_zero_attn


def _only_projections(m, names, head_dim) -> bool:
    """Every parameter of attention `m` is in its projections `names` or in a norm over one head's features
    (Qwen3's q_norm / k_norm, shared by the heads): no per-head table (Swin's relative position bias, sinks)
    nor layer after the attention (ALBERT's output dense + LayerNorm) that pruning heads would leave wrong."""
    own = {id(p) for a in names for p in getattr(m, a).parameters()}
    for child in m.modules():
        if child is m or any(child is getattr(m, a) for a in names):
            continue
        if any(id(p) not in own and tuple(p.shape) != (head_dim,) for p in child.parameters(recurse=False)):
            return False
    return not any(id(p) not in own for p in m.parameters(recurse=False))


def _out_name(m) -> str:
    """The output projection's name: o_proj (HF, PrunedMultiheadAttention) or out_proj (graph/attention.py)."""
    return "o_proj" if hasattr(m, "o_proj") else "out_proj"


def _qkvo(m):
    names = ("q_proj", "k_proj", "v_proj", _out_name(m))
    return all(linear_like(getattr(m, a, None)) for a in names) \
        and isinstance(getattr(m, "head_dim", None), int) and _only_projections(m, names, m.head_dim)


def _bert(m):
    names = ("query", "key", "value")
    return all(linear_like(getattr(m, a, None)) for a in names) \
        and isinstance(getattr(m, "attention_head_size", None), int) and hasattr(m, "num_attention_heads") \
        and _only_projections(m, names, m.attention_head_size)


def _tie_extra_inputs(g, name: str, x: torch.Tensor, call) -> None:
    """The other tensors of the model's width an attention module is called with (cross-attention's encoder states,
    DETR's position embeddings added to the queries and keys inside it) meet the q/k/v projections' inputs: their
    channels are those of x (united) or, not traced to a layer (a computed position table), x's are kept."""
    info = g.info(x)
    if info is None or info[0] != x.dim() - 1:
        return
    extra = [t for t in (*call.args[1:], *call.kwargs.values()) if isinstance(t, torch.Tensor) and t is not x
             and t.dim() == x.dim() and t.shape[-1] == x.shape[-1]]
    for t in extra:
        other = g.info(t)
        if other is not None and other[0] == t.dim() - 1 and len(other[1]) == len(info[1]):
            g.union(info[1], other[1])
        else:
            g.freeze(info[1], f"{name}: called with another input of its width that has no channel labels")


class AttentionLayer(Layer):
    """Attention with separate q/k/v projections: input features (role in), heads (role heads, pruned
    whole; with grouped-query attention the same number of query heads leaves every kv group and the
    kv heads stay) and, when the output projection is inside, output features (role out)."""

    @staticmethod
    def parts(m):
        if _bert(m):
            return m.query, m.key, m.value, None, m.attention_head_size
        return m.q_proj, m.k_proj, m.v_proj, getattr(m, _out_name(m)), m.head_dim

    def propagate(self, g, name, m, call):
        from .attention import SplitMultiheadAttention

        q, k, v, o, d = self.parts(m)
        x = first_tensor(call)
        others = [t for t in list(call.args[1:3]) + [call.kwargs.get("key"), call.kwargs.get("value")]
                  if isinstance(t, torch.Tensor) and t is not x and t.dim() == x.dim() and t.shape[-1] == x.shape[-1]]
        widths = {lin.in_features for lin in (q, k, v) if hasattr(lin, "in_features")}
        if widths != {x.shape[-1]}:  # projections reading inputs of other widths (MobileBERT's value reads the
            # block's input, its query / key a bottleneck): which tensor feeds which is not seen here, so all keep
            for t in (a for a in (*call.args, *call.kwargs.values()) if isinstance(a, torch.Tensor)):
                g.drop(t, f"{name}: its q/k/v projections read inputs of different widths {sorted(widths)}")
        elif others and isinstance(m, (PrunedMultiheadAttention, SplitMultiheadAttention)):
            for t in (x, *others):
                g.drop(t, f"{name}: cross-attention inputs keep their features")
        else:
            g.consume(name, "in", x, -1)
            _tie_extra_inputs(g, name, x, call)
        heads, kv = q.out_features // d, k.out_features // d
        hgids = g.new(heads)
        g.member(name, "heads", hgids, chunks=kv if heads != kv else 1)
        per_head = [tuple(t.shape) for t in (*call.args, *call.kwargs.values())
                    if isinstance(t, torch.Tensor) and t is not x and t.dim() == 4 and t.shape[1] == heads > 1]
        if per_head:  # a relative-position bias made outside (LayoutLMv3 shares one across layers): not sliced here
            g.freeze(hgids, f"{name}: takes a per-head tensor {per_head[0]} from outside (a position bias), so its "
                            "heads stay")
        y = call.outputs[0]
        if o is not None:
            gids = g.new(o.out_features)
            g.member(name, "out", gids)
            g.set(y, y.dim() - 1, gids)
        else:
            g.set(y, y.dim() - 1, np.repeat(hgids, d))

    def weights(self, m, role):
        q, k, v, o, d = self.parts(m)
        if role == "in":
            return [(q.weight, 1, 1), (k.weight, 1, 1), (v.weight, 1, 1)]
        if role == "out":
            return [(o.weight, 0, 1)]
        out = [(q.weight, 0, d)] + ([(o.weight, 1, d)] if o is not None else [])
        return out + ([(k.weight, 0, d), (v.weight, 0, d)] if q.out_features == k.out_features else [])

    def slice(self, m, role, keep):
        q, k, v, o, d = self.parts(m)
        if role == "in":
            for lin in (q, k, v):
                linear_in(lin, keep)
        elif role == "out":
            linear_out(o, keep)
        else:
            same_kv = q.out_features == k.out_features
            kv, inner = k.out_features // d, q.out_features
            rows = (keep[:, None] * d + torch.arange(d)).flatten()
            linear_out(q, rows)
            if o is not None:
                linear_in(o, rows)
            if same_kv:
                linear_out(k, rows)
                linear_out(v, rows)
                kv = len(keep)
            n = len(keep)
            for attr, value in (("num_heads", n), ("num_attention_heads", n), ("all_head_size", n * d),
                                ("num_key_value_heads", kv), ("num_key_value_groups", n // kv)):
                if hasattr(m, attr) and isinstance(getattr(m, attr), int):
                    setattr(m, attr, value)
            # the width of the heads' concatenation under the names older attention modules reshape to (XGLM,
            # M2M100: attn_output.reshape(bsz, tgt_len, self.embed_dim)), when it was that width
            for attr in ("embed_dim", "inner_dim", "hidden_size"):
                if getattr(m, attr, None) == inner and isinstance(getattr(m, attr), int):
                    setattr(m, attr, n * d)
        return m


register_layer(PrunedMultiheadAttention, match=lambda m: _qkvo(m) or _bert(m))(AttentionLayer)


def keep_blocks(model: nn.Module, module: str, keep: list[int]) -> None:
    """Keep only blocks `keep` (in order) of the nn.ModuleList `module`: a shallower model. Attention
    layers' cache indices (layer_idx) are renumbered and a Hugging Face config's layer count follows."""
    blocks = model.get_submodule(module)
    if not isinstance(blocks, nn.ModuleList):
        raise NnslimError(f"{module!r} is a {type(blocks).__name__}, not a list of blocks")
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < len(blocks) for i in keep):
        raise NnslimError(f"blocks to keep {list(keep)} are not allowed; allowed: distinct indices in 0..{len(blocks) - 1}")
    old = len(blocks)
    counting = [m.config for m in model.modules()  # HF configs (the model's and its submodules') that count the layers
                if getattr(getattr(m, "config", None), "num_hidden_layers", None) == old]
    for cfg in counting:
        try:
            cfg.num_hidden_layers = old  # a config that derives the count (Funnel: block_sizes) refuses any value
        except Exception as e:  # noqa: BLE001 - transformers raises NotImplementedError, others may differ
            raise NnslimError(f"{module!r}: {type(model).__name__}'s config cannot express fewer layers "
                              f"({type(cfg).__name__}.num_hidden_layers cannot be set: {first_line(e)}); "
                              f"drop-layers does not apply to it") from e
    new = nn.ModuleList([blocks[i] for i in keep])
    for j, block in enumerate(new):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j
    parent, _, child = module.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    for cfg in counting:
        if cfg.num_hidden_layers == old:  # (a config shared by several modules is set once)
            cfg.num_hidden_layers = len(keep)
            for attr in ("layer_types",):
                values = getattr(cfg, attr, None)
                if isinstance(values, list) and len(values) == old:
                    setattr(cfg, attr, [values[i] for i in keep])


def apply_slice(model: nn.Module, module: str, role: str, keep) -> None:
    """Remove positions of one member (module path, role); keep: kept indices."""
    if role == "blocks":
        return keep_blocks(model, module, [int(i) for i in keep])
    keep = torch.as_tensor(np.asarray(keep), dtype=torch.long)
    mod = model.get_submodule(module) if module else model
    if role.startswith("param:"):
        _, attr, axis = role.split(":")
        return slice_param(mod, attr, int(axis), keep)
    h = handler_for(mod)
    if h is None:
        raise NnslimError(f"layer {module!r} ({type(mod).__name__}) has no pruning function")
    h.slice(mod, role, keep)
