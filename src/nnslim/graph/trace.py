"""Trace a model into a flat list of calls (leaf-module calls and tensor ops) on real example inputs.

Two tracers feed one recorder, so the dependency analysis sees the same records either way:
  fx       torch.fx symbolic trace (chosen leaf modules kept whole), run by an Interpreter on the
           example inputs so every call has concrete arguments and outputs;
  dynamic  fallback for models fx cannot trace (data-dependent control flow, HF models): the model
           runs once under a TorchFunctionMode that records every torch call made outside the leaf
           modules, whose calls are recorded by forward hooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import NnslimError, first_line
from ..runtime.base import call_module


@dataclass
class Call:
    kind: str  # "module" or "op"
    name: str  # module path, or the op's name (add, cat, view, ...)
    module: nn.Module | None
    args: tuple
    kwargs: dict
    outputs: list[torch.Tensor]
    scope: str = ""  # the innermost module running when the op was called (dynamic tracer)


@dataclass
class Trace:
    calls: list[Call]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    params: dict[int, str]  # id(parameter or buffer) -> name
    tracer: str
    keep: list = field(default_factory=list)  # keeps traced tensors alive so their ids stay unique


def tensors_in(obj) -> list[torch.Tensor]:
    """Tensors inside nested tuples / lists / dicts / dataclasses (HF ModelOutputs are dicts), in order."""
    from ..runtime.base import tensor_leaves

    return [t for _, t in tensor_leaves(obj)]


def op_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # Tensor.shape and other properties
        name = getattr(getattr(func, "__self__", None), "__name__", "property")
    return name.strip("_") if name.startswith("__") else name


class _Size(tuple):
    """A tensor's shape that reports which dims the model code reads (torch.Size cannot be subclassed)."""

    def __new__(cls, size, on_read):
        obj = super().__new__(cls, size)
        obj._on_read = on_read
        return obj

    def __getitem__(self, i):
        self._on_read(i)
        return tuple.__getitem__(self, i)

    def __iter__(self):
        self._on_read(slice(None))
        return tuple.__iter__(self)


class _Recorder:
    """Collects calls; shapes handed to the model are watched so reads of a channel count are seen
    (code like `b, n, c = x.shape; y.reshape(b, n, c)` couples channels the labels cannot see)."""

    def __init__(self):
        self.calls: list[Call] = []
        self.keep: list = []
        self.scope: list[str] = [""]
        self.current = ""  # the call being traced (named in errors)

    def size_read(self, t: torch.Tensor, index) -> None:
        self.keep.append(t)
        self.calls.append(Call("op", "size-read", None, (t, index), {}, [], self.scope[-1]))

    def record(self, kind, name, module, args, kwargs, out):
        for a in list(args) + list((kwargs or {}).values()):
            for v in (a if isinstance(a, (list, tuple)) and not isinstance(a, _Size) else [a]):
                if isinstance(v, _Size):
                    v._on_read(slice(None))
        if kind == "op" and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            if name in ("size", "shape") and isinstance(out, torch.Size):
                return _Size(out, lambda i, t=t: self.size_read(t, i))
            if name == "size" and isinstance(out, int):
                self.size_read(t, args[1] if len(args) > 1 else kwargs.get("dim"))
            elif name == "numel":
                self.size_read(t, slice(None))
        outs = tensors_in(out)
        if outs or kind == "module":
            self.keep.append((args, kwargs, out))
            self.calls.append(Call(kind, name, module, tuple(args), dict(kwargs or {}), outs, self.scope[-1]))
        return out


def _fx_trace(model, inputs: dict, is_leaf: Callable[[nn.Module], bool], rec: _Recorder):
    import torch.fx as fx

    class Tracer(fx.Tracer):
        nn_scope = [""]  # (fx.Tracer has its own `scope`)

        def is_leaf_module(self, m, qualname):
            return is_leaf(m)

        def call_module(self, m, forward, args, kwargs):
            self.nn_scope.append(self.path_of_module(m))
            try:
                return super().call_module(m, forward, args, kwargs)
            finally:
                self.nn_scope.pop()

        def create_node(self, *args, **kwargs):
            node = super().create_node(*args, **kwargs)
            node.meta["nnslim_scope"] = self.nn_scope[-1]
            return node

    graph = Tracer().trace(model, concrete_args=None)
    gm = fx.GraphModule(model, graph)
    names = [n.target for n in graph.nodes if n.op == "placeholder"]
    missing = [n for n in names if n not in inputs]
    if missing and len(names) == len(inputs):  # unnamed inputs: by position
        inputs = dict(zip(names, inputs.values()))
    elif missing:
        raise NnslimError(f"fx: example_inputs lack {missing}")

    class Run(fx.Interpreter):
        def run_node(self, n):
            rec.scope.append(n.meta.get("nnslim_scope", ""))
            rec.current = f"node {n.name!r} ({n.op} {n.target}) in {rec.scope[-1] or '<model>'}"
            try:
                return super().run_node(n)
            finally:
                rec.scope.pop()

        def call_module(self, target, args, kwargs):
            out = super().call_module(target, args, kwargs)
            rec.record("module", target, self.module.get_submodule(target), args, kwargs, out)
            return out

        def call_function(self, target, args, kwargs):
            out = super().call_function(target, args, kwargs)
            name = args[1] if target is getattr and len(args) > 1 and args[1] == "shape" else op_name(target)
            return rec.record("op", name, None, args, kwargs, out)

        def call_method(self, target, args, kwargs):
            out = super().call_method(target, args, kwargs)
            return rec.record("op", target, None, args, kwargs, out)

    with torch.no_grad():
        return Run(gm).run(*[inputs[n] for n in names])


def _dynamic_trace(model, inputs: dict, is_leaf: Callable[[nn.Module], bool], rec: _Recorder):
    depth = [0]

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            rec.current = f"op {op_name(func)!r} in {rec.scope[-1] or '<model>'}"
            out = func(*args, **kwargs)
            if depth[0] == 0:
                out = rec.record("op", op_name(func), None, args, kwargs, out)
            return out

    def enter(mod, args, name):
        rec.scope.append(name)

    def leave(mod, args, out):
        rec.scope.pop()  # returns None: a forward hook's return value would replace the output

    handles = []
    for name, m in model.named_modules():
        if name and not is_leaf(m):
            handles.append(m.register_forward_pre_hook(lambda mod, a, name=name: enter(mod, a, name)))
            handles.append(m.register_forward_hook(leave, always_call=True))
        if name and is_leaf(m):
            def pre(mod, args, kwargs, name=name):
                depth[0] += 1

            def post(mod, args, kwargs, out, name=name):
                depth[0] -= 1
                if depth[0] == 0:
                    rec.record("module", name, mod, args, kwargs, out)
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True, always_call=True))
    try:
        with torch.no_grad(), Mode():
            return call_module(model, inputs)
    finally:
        for h in handles:
            h.remove()


def trace(model: nn.Module, inputs: dict[str, torch.Tensor], is_leaf: Callable[[nn.Module], bool],
          tracer: str = "auto") -> Trace:
    """Record the calls of one forward pass of model(**inputs). tracer: auto (fx, then dynamic) | fx | dynamic."""
    errors = []
    for which in (("fx", "dynamic") if tracer == "auto" else (tracer,)):
        rec = _Recorder()
        try:
            out = (_fx_trace if which == "fx" else _dynamic_trace)(model, inputs, is_leaf, rec)
        except NnslimError:
            raise
        except Exception as e:  # noqa: BLE001 - reported below with the op that stopped tracing
            at = f" (stopped at {rec.current})" if rec.current else ""
            errors.append(f"{which}: {first_line(e)}{at}")
            continue
        outputs = tensors_in(out)
        if not outputs:  # what reaches the output must be kept: with none found, nothing would be
            raise NnslimError(f"the model's output ({type(out).__name__}) holds no tensor nnslim can find; "
                              "allowed: a tensor, or tensors in a tuple / list / dict / dataclass / HF ModelOutput")
        params = {id(p): n for n, p in model.named_parameters()}
        params.update({id(b): n for n, b in model.named_buffers()})
        return Trace(rec.calls, list(inputs.values()), outputs, params, which, rec.keep)
    raise NnslimError("the model could not be traced with its example inputs; " + " | ".join(errors))
