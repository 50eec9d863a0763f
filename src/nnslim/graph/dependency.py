"""Channel dependency graph: which channels of which layers must be removed together.

Every channel a layer produces gets a global id (gid). Tensors carry, along one axis, the gid of each
of their channels, and the traced calls (graph/trace.py) move those labels: elementwise ops unite the
channels they combine (residual adds, SE gates, GLU products), concatenation joins label lists,
reshapes repeat labels (flatten before a Linear), permutes move the axis. Layers consume labels as
members: (module, role, gid per position along the role's dim), e.g. (conv2, "in", [...]).

Channels united by the analysis are one *atom*: removing it removes every position carrying it in
every member. Atoms whose members are the same (module, role) set form a *group* (one layer's output
channels, a residual stream, one attention module's heads), the unit that importance ranks.
Channels that reach the model output, come from an input, or pass an op the analysis does not model
are frozen (kept) and the reason is recorded: nothing is ever pruned on a guess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .trace import Call, Trace

_PASS = {"relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
         "hardsigmoid", "leaky_relu", "leaky_relu_", "elu", "selu", "celu", "mish", "relu6", "hardtanh",
         "hardtanh_", "softplus", "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
         "feature_alpha_dropout", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "erf", "clone", "contiguous", "to",
         "float", "half", "bfloat16", "double", "type", "type_as", "detach", "clamp", "clamp_", "clip", "softmax",
         "log_softmax", "sin", "cos", "square", "reciprocal", "sign", "round", "floor", "gelu_",
         "logsigmoid", "softsign", "tanhshrink", "hardshrink", "softshrink", "threshold"}
_POOL = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3,
         "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1,
         "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2,
         "max_pool2d_with_indices": 2, "interpolate": -1, "upsample": -1, "upsample_nearest": -1,
         "upsample_bilinear": -1, "pixel_shuffle": None, "pixel_unshuffle": None}
_BINARY = {"add", "sub", "mul", "div", "truediv", "floordiv", "iadd", "isub", "imul", "itruediv", "radd",
           "rsub", "rmul", "rtruediv", "add_", "sub_", "mul_", "div_", "where", "maximum", "minimum", "addcmul",
           "addcdiv", "lerp", "masked_fill", "masked_fill_", "pow", "rpow", "fmod", "remainder", "true_divide",
           "multiply", "subtract", "divide", "eq", "ne", "lt", "gt", "le", "ge", "copysign", "hypot", "atan2"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
            "squeeze_", "unsqueeze_"}
_EXPAND = {"expand", "expand_as", "broadcast_to"}
_PERMUTE = {"permute", "transpose", "transpose_", "swapaxes", "swapdims", "t", "movedim", "moveaxis", "mT"}
_REDUCE = {"sum", "mean", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "max", "min", "nansum",
           "nanmean", "argmax", "argmin", "all", "any", "count_nonzero"}
_CAT = {"cat", "concat", "concatenate"}
_SPLIT = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}
# member roles that produce channels (a group needs one): layer outputs, depthwise / grouped conv outputs, recurrent
# hidden units, attention heads, embeddings
_PRODUCERS = ("out", "dw", "gout", "hid", "heads", "emb")


@dataclass
class Member:
    module: str  # module path ("" for the model itself)
    role: str  # in, out, ch, dw, heads, emb, param:<attr>:<axis>
    labels: np.ndarray  # gid per position along the role's dim
    multiple: int = 1  # kept positions must stay a multiple of this (GroupNorm groups)
    chunks: int = 1  # remove equally from this many consecutive chunks (grouped-query heads)


@dataclass
class Group:
    atoms: list[int]  # root gids, in order
    members: list[int]  # indices into graph.members
    positions: dict[int, dict[int, np.ndarray]]  # atom -> member index -> positions
    kind: str  # "channels" or "heads"
    multiple: int = 1
    chunks: int = 1

    def describe(self, graph: "DependencyGraph") -> str:
        roles = [f"{graph.members[i].module or '<model>'}:{graph.members[i].role}" for i in self.members[:4]]
        more = f" +{len(self.members) - 4}" if len(self.members) > 4 else ""
        return f"{self.kind}[{len(self.atoms)}] " + ", ".join(roles) + more


@dataclass
class DependencyGraph:
    parent: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)  # root -> reason
    members: list[Member] = field(default_factory=list)
    labels: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # id(tensor) -> (axis, gids)
    params: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    where: str = ""  # the module whose call is being analysed (for messages)

    # --- union-find over channel ids -------------------------------------------------------
    def new(self, n: int, frozen: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = np.arange(start, start + n)
        if frozen:
            self.freeze(ids, frozen)
        return ids

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if ry in self.frozen:
                    self.frozen.setdefault(rx, self.frozen.pop(ry))

    def freeze(self, gids: np.ndarray, reason: str) -> None:
        for x in set(gids.tolist()):
            self.frozen.setdefault(self.find(x), reason)

    def is_frozen(self, gid: int) -> bool:
        return self.find(gid) in self.frozen

    # --- tensor labels ----------------------------------------------------------------------
    def info(self, t) -> tuple[int, np.ndarray] | None:
        return self.labels.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: torch.Tensor, axis: int, gids: np.ndarray) -> None:
        if t.dim() and 0 <= axis < t.dim() and t.shape[axis] == len(gids):
            self.labels[id(t)] = (axis, gids)
        else:
            self.freeze(gids, f"{self.where}: channel axis lost")
            self.labels.pop(id(t), None)

    def drop(self, t, reason: str) -> None:
        """Freeze a tensor's channels (an op the analysis cannot see through consumed it)."""
        info = self.info(t)
        if info is not None:
            if not all(self.is_frozen(g) for g in info[1][:1]):
                self.warnings.append(reason)
            self.freeze(info[1], reason)

    def member(self, module: str, role: str, gids: np.ndarray, multiple: int = 1, chunks: int = 1) -> None:
        """A layer's role reads/writes these channels; a layer called again (shared weights) unites them."""
        gids = np.asarray(gids)
        for m in self.members:
            if m.module == module and m.role == role:
                if len(m.labels) == len(gids):
                    self.union(m.labels, gids)
                else:
                    self.freeze(np.concatenate([m.labels, gids]), f"{module}: called with different widths")
                return
        self.members.append(Member(module, role, gids, multiple, chunks))

    def consume(self, name: str, role: str, t, axis: int) -> None:
        """Layer `name` reads tensor t's channels along `axis` (negative allowed) with its `role` dim."""
        info = self.info(t)
        if info is None:
            return
        axis = axis % t.dim()
        if info[0] != axis:
            self.drop(t, f"{name}: reads axis {axis} but the channels are on axis {info[0]}")
            return
        self.member(name, role, info[1])

    # --- groups -----------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        by_root: dict[int, dict[int, list[int]]] = {}
        for mi, m in enumerate(self.members):
            for pos, gid in enumerate(m.labels.tolist()):
                r = self.find(gid)
                if r not in self.frozen:
                    by_root.setdefault(r, {}).setdefault(mi, []).append(pos)
        by_sig: dict[tuple, list[int]] = {}
        for r, mems in by_root.items():
            by_sig.setdefault(tuple(sorted(mems)), []).append(r)
        out = []
        for sig, roots in by_sig.items():
            mems = [self.members[i] for i in sig]
            if not any(m.role in _PRODUCERS or m.role.startswith("param") for m in mems):
                continue  # nothing produces these channels here (they come from outside the traced graph)
            positions = {r: {mi: np.asarray(p) for mi, p in by_root[r].items()} for r in roots}
            kind = "heads" if any(m.role == "heads" for m in mems) else "channels"
            multiple = math.lcm(*[m.multiple for m in mems])
            chunks = math.lcm(*[m.chunks for m in mems])
            roots = sorted(roots)
            if chunks > 1:  # chunks are consecutive positions of the members that have them: atoms in that order
                chunked = [i for i in sig if self.members[i].chunks > 1]
                partial = [self.members[i] for i in chunked
                           if sum(len(positions[r][i]) for r in roots) != len(self.members[i].labels)]
                if partial:  # equal removal per chunk needs every position of the layer in this one group
                    self.freeze(np.asarray(roots), f"{partial[0].module}: its {partial[0].chunks} groups' channels "
                                                   "are not one prunable group (some kept or coupled elsewhere)")
                    continue
                roots.sort(key=lambda r: int(positions[r][chunked[0]].min()))
            out.append(Group(roots, list(sig), positions, kind, multiple, chunks))
        return out

    def keep_indices(self, removed: set[int]) -> list[tuple[Member, np.ndarray]]:
        """(member, kept positions) for every member that loses positions."""
        out = []
        for m in self.members:
            roots = np.array([self.find(g) for g in m.labels.tolist()])
            keep = np.array([r not in removed for r in roots.tolist()], dtype=bool)
            if not keep.all():
                out.append((m, np.nonzero(keep)[0]))
        return out


def _norm_axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _reshape_axis(shape_in, axis, shape_out) -> tuple[int, int] | None:
    """Where channel `axis` of shape_in lands after a row-major reshape: (out axis, repeat) or None."""
    before = math.prod(shape_in[:axis])
    c = shape_in[axis]
    prod = 1
    for j, size in enumerate(shape_out):
        if prod == before:
            if size == c:
                return j, 1
            if size % c == 0 and size > c:
                rest, r = shape_in[axis + 1:], size // c
                acc = 1
                for s in rest:
                    acc *= s
                    if acc == r:
                        return j, r
        prod *= size
        if prod > before:
            break
    return None


def _dim_arg(call: Call, pos: int, key: str = "dim", default=None):
    if len(call.args) > pos:
        return call.args[pos]
    return call.kwargs.get(key, default)


def _op(g: DependencyGraph, call: Call) -> None:
    name, args, outs = call.name, call.args, call.outputs
    ins = [a for a in args if isinstance(a, torch.Tensor)] + \
          [v for v in call.kwargs.values() if isinstance(v, torch.Tensor)]
    tracked = [t for t in ins if g.info(t) is not None]
    if name in _CAT:
        return _cat(g, call)
    if name == "size-read":
        return _size_read(g, *args)
    if not tracked:
        _param_view(g, call, ins)
        return
    x = tracked[0]
    axis, gids = g.info(x)
    out = outs[0]
    if name in _PASS and len(tracked) == 1 and out.dim() == x.dim():
        g.set(out, axis, gids)
    elif name in _POOL:
        k = _POOL[name]
        k = x.dim() - 2 if k == -1 else k
        if k is not None and axis < x.dim() - k and out.dim() == x.dim():
            g.set(out, axis, gids)
        else:
            g.drop(x, f"{name} mixes channels")
    elif name in _BINARY or (name in ("max", "min") and len(ins) == 2):
        _binary(g, name, ins, out)
    elif name in _RESHAPE:
        found = _reshape_axis(tuple(x.shape), axis, tuple(out.shape))
        if found is None:
            g.drop(x, f"{g.where}: {name}{tuple(out.shape)} splits or merges the channel axis")
        elif _literal_size(call, out, found[0]):
            g.freeze(gids, f"{g.where}: {name} to a size written in the code ({out.shape[found[0]]}) on the "
                           "channel axis")
        else:
            g.set(out, found[0], np.repeat(gids, found[1]))
    elif name in _EXPAND:
        g.set(out, axis + out.dim() - x.dim(), gids) if out.shape[axis + out.dim() - x.dim()] == len(gids) \
            else g.drop(x, f"{name} changed the channel axis")
    elif name in _PERMUTE:
        _permute(g, call, x, axis, gids, out)
    elif name == "getitem":
        _getitem(g, x, axis, gids, args[1], out)
    elif name in _REDUCE:
        dims = _dim_arg(call, 1)
        if dims is None or not isinstance(dims, (int, tuple, list)) or out.dim() == 0:
            return
        dims = {_norm_axis(d, x.dim()) for d in ([dims] if isinstance(dims, int) else dims)}
        keepdim = bool(_dim_arg(call, 2, "keepdim", False))
        if axis not in dims:
            g.set(out, axis if keepdim else axis - sum(d < axis for d in dims), gids)
    elif name in _SPLIT:
        _split(g, call, x, axis, gids)
    else:
        for t in tracked:
            g.drop(t, f"{g.where}: op {name!r} is not modelled by the dependency graph; its input channels are kept")


def _literal_size(call: Call, out: torch.Tensor, axis: int) -> bool:
    """Does a view / reshape / unflatten ask for output axis `axis` by a number (not -1, not a size read from a
    tensor, which freezes on its own)? After pruning that number would be wrong."""
    if call.name in ("view", "reshape"):
        sizes = list(call.args[1:]) or list(call.kwargs.get("shape", ()) or call.kwargs.get("size", ()))
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
            sizes = list(sizes[0])
        start = 0
    elif call.name == "unflatten":
        sizes = list(_dim_arg(call, 2, "sizes", ()) or ())
        start = _dim_arg(call, 1, "dim", 0)
        start = start + out.dim() - len(sizes) + 1 if isinstance(start, int) and start < 0 else start
    else:
        return False
    i = axis - start if isinstance(start, int) else -1
    return 0 <= i < len(sizes) and isinstance(sizes[i], int) and sizes[i] == out.shape[axis] and sizes[i] > 1


def _size_read(g: DependencyGraph, t: torch.Tensor, index) -> None:
    info = g.info(t)
    if info is None or index is None:
        return
    dims = range(t.dim())[index] if isinstance(index, slice) else [_norm_axis(index, t.dim())]
    if info[0] in dims:
        g.freeze(info[1], f"{g.where}: the model code reads the channel count (x.shape / x.size())")


def _param_view(g: DependencyGraph, call: Call, ins) -> None:
    """Remember parameters reshaped/expanded by shape-only ops (cls tokens, position embeddings)."""
    if call.name in _EXPAND | {"to", "type_as", "contiguous", "clone", "float", "half"} and ins and \
            id(ins[0]) in g.params and call.outputs[0].dim() == ins[0].dim():
        g.params[id(call.outputs[0])] = g.params[id(ins[0])]


def _binary(g: DependencyGraph, name: str, ins, out) -> None:
    nd = out.dim()
    axes = {g.info(t)[0] + nd - t.dim() for t in ins if g.info(t) is not None}
    if len(axes) != 1:
        for t in ins:
            g.drop(t, f"{g.where}: {name} combines channels on different axes")
        return
    k = axes.pop()
    base = next(g.info(t)[1] for t in ins if g.info(t) is not None)
    for t in ins:
        d = k - (nd - t.dim())
        if d < 0 or t.shape[d] == 1:
            continue
        info = g.info(t)
        if info is not None:
            if len(info[1]) != len(base):
                g.drop(t, f"{g.where}: {name} of unequal channel counts")
                return
            g.union(base, info[1])
        elif id(t) in g.params:
            g.member(g.params[id(t)][0], f"param:{g.params[id(t)][1]}:{d}", base)
        else:
            g.freeze(base, f"{g.where}: {name} with a tensor that has no channel labels (an input or constant)")
    g.set(out, k, base)


def _cat(g: DependencyGraph, call: Call) -> None:
    parts = call.args[0] if call.args else call.kwargs.get("tensors")
    parts = [t for t in parts if isinstance(t, torch.Tensor)]
    out = call.outputs[0]
    infos = [g.info(t) for t in parts]
    if all(i is None for i in infos):
        return
    dim = _norm_axis(_dim_arg(call, 1, "dim", 0), out.dim())
    axes = {i[0] for i in infos if i is not None}
    if len(axes) != 1:
        for t in parts:
            g.drop(t, f"{g.where}: cat of tensors with channels on different axes")
        return
    axis = axes.pop()
    if dim == axis:
        pieces = []
        for t, i in zip(parts, infos):
            if i is not None:
                pieces.append(i[1])
            elif id(t) in g.params:
                gids = g.new(t.shape[axis], frozen=f"{g.where}: parameter concatenated along channels")
                pieces.append(gids)
            else:
                pieces.append(g.new(t.shape[axis], frozen=f"{g.where}: cat with channels from outside the graph"))
        g.set(out, axis, np.concatenate(pieces))
    else:
        _binary(g, "cat", parts, out)


def _permute(g, call, x, axis, gids, out) -> None:
    nd = x.dim()
    name = call.name
    if name == "permute":
        dims = call.args[1:] if len(call.args) > 2 else call.args[1] if len(call.args) > 1 else call.kwargs["dims"]
        dims = [_norm_axis(d, nd) for d in dims]
        new = dims.index(axis)
    elif name in ("t", "mT"):
        a, b = (0, 1) if name == "t" else (nd - 2, nd - 1)
        new = b if axis == a else a if axis == b else axis
    elif name in ("movedim", "moveaxis"):
        src, dst = _norm_axis(call.args[1], nd), _norm_axis(call.args[2], nd)
        order = [d for d in range(nd) if d != src]
        order.insert(dst, src)
        new = order.index(axis)
    else:
        a, b = _norm_axis(_dim_arg(call, 1, "dim0"), nd), _norm_axis(_dim_arg(call, 2, "dim1"), nd)
        new = b if axis == a else a if axis == b else axis
    g.set(out, new, gids)


def _getitem(g, x, axis, gids, idx, out) -> None:
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (torch.Tensor, list)) for i in idx):
        return g.drop(x, f"{g.where}: advanced indexing over a tensor with channels")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        expanded.extend([slice(None)] * (x.dim() - n_real) if i is Ellipsis else [i])
    expanded.extend([slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None)))
    d = o = 0
    for i in expanded:
        if i is None:
            o += 1
            continue
        if d == axis:
            if isinstance(i, slice) and i == slice(None):
                return g.set(out, o, gids)
            return g.drop(x, f"{g.where}: indexing selects some channels")
        if isinstance(i, slice):
            o += 1
        d += 1


def _split(g, call, x, axis, gids) -> None:
    dim = _norm_axis(_dim_arg(call, 2 if call.name != "unbind" else 1, "dim", 0), x.dim())
    outs = call.outputs
    if dim != axis:
        for t in outs:
            g.set(t, axis if t.dim() == x.dim() else axis - (dim < axis), gids)
        return
    sizes = [t.shape[axis] for t in outs if t.dim() == x.dim()]
    if call.name != "chunk" or len(set(sizes)) != 1:
        return g.drop(x, f"{g.where}: {call.name} of channels into fixed sizes")
    n = sizes[0]
    for j, t in enumerate(outs):
        g.union(gids[:n], gids[j * n:(j + 1) * n])
        g.set(t, axis, gids[j * n:(j + 1) * n])


def _freeze_tied(g: DependencyGraph, modules: dict, handler_for) -> None:
    """A weight two layers share (a masked-LM / LM head tied to the token embedding) keeps the channels each reads:
    slicing it for one would untie it, and the model would store two tables instead of one (bigger, not smaller)."""
    users: dict[int, list[tuple[str, np.ndarray]]] = {}
    for m in g.members:
        mod = modules.get(m.module)
        if mod is None or m.role.startswith("param:"):
            continue
        handler = handler_for(mod)
        for w, _, _ in (handler.weights(mod, m.role) if handler is not None else []):
            users.setdefault(id(w), []).append((m.module, m.labels))
    for found in users.values():
        if len({name for name, _ in found}) > 1:
            names = sorted({name for name, _ in found})
            g.freeze(np.concatenate([labels for _, labels in found]),
                     f"weight shared by {', '.join(names[:3])} (tied)")


def build(trace: Trace, handler_for, options: dict | None = None) -> DependencyGraph:
    """Run the channel analysis over a trace. handler_for(module) -> layer handler or None."""
    g = DependencyGraph(params=dict((k, (v.rpartition(".")[0], v.rpartition(".")[2]))
                                    for k, v in trace.params.items()), options=options or {})
    modules = {}
    for call in trace.calls:
        g.where = call.name if call.kind == "module" else (call.scope or "<model>") + f" ({call.name})"
        if call.kind == "module":
            modules[call.name] = call.module
            handler_for(call.module).propagate(g, call.name, call.module, call)
        else:
            _op(g, call)
    _freeze_tied(g, modules, handler_for)
    for t in trace.outputs:
        info = g.info(t)
        if info is not None:
            g.freeze(info[1], "reaches the model output")
    return g
