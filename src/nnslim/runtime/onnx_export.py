"""Export a torch module to ONNX (torch.export-based exporter) and convert ONNX graphs to fp16.

The dynamo exporter is used on purpose: the legacy TorchScript exporter silently mis-traces
transformers 5.x BERT. Every export is checked against torch on inputs of another shape.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import NnslimError, first_line
from . import export_cache
from .base import OnnxModel

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a single file at 2 GB
_SHARED_CHOICE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("nnslim_exporter_choice", default=None)


@contextlib.contextmanager
def one_exporter_for_all_parts():
    """Within this block (the graphs of one model's parts): once a part needed the TorchScript exporter
    (torch.export failed), the later parts try it first (still checked at another shape) instead of spending
    a failing torch.export each (about 20 s for a small T5 part)."""
    token = _SHARED_CHOICE.set({"legacy": False})
    try:
        yield
    finally:
        _SHARED_CHOICE.reset(token)


def _quiet_exporter():
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_onnx(module: torch.nn.Module, example_inputs: dict[str, np.ndarray], path: str | Path,
                dynamic_axes: dict[str, dict[int, str]] | None = None, opset: int = 18) -> OnnxModel:
    """Export `module` called as module(**example_inputs) to `path`, written atomically.

    dynamic_axes maps an input name to {axis: symbolic name}, e.g. {"input_ids": {0: "batch", 1: "seq"}}.
    """
    from ..graph.experts import experts_blocks
    from ..graph.modules import deployable_copy
    from ..runtime.base import model_device, model_dtype

    blocks = experts_blocks(module)
    if blocks:
        raise NnslimError(f"ONNX export of mixture-of-experts blocks ({blocks[0]}: data-dependent routing) is not "
                          "supported yet; keep the model in torch (nnslim.load, or transformers for float / pruned "
                          "models)")
    path = Path(path)
    from .export_forms import exportable

    module = exportable(deployable_copy(module)).eval()
    dtype, device = model_dtype(module), model_device(module)
    args = []
    for name, value in example_inputs.items():
        t = torch.as_tensor(np.asarray(value), device=device)
        args.append(t.to(dtype) if t.is_floating_point() else t)
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for name in example_inputs:
        axes = (dynamic_axes or {}).get(name, {})
        shapes.append({axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
                      or None)
    output_names = list(getattr(module, "output_names", None) or [getattr(module, "output_name", "output")])
    if not hasattr(module, "output_names") and not hasattr(module, "output_name"):
        module, output_names = _flat_outputs(module, args, output_names)
    fixed = _fixed_positional(module)
    if fixed is not None and len(shapes) > fixed:  # forward(a, b, *rest): torch.export wants rest's shapes as one tuple
        shapes = shapes[:fixed] + [tuple(shapes[fixed:])]
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    _quiet_exporter()
    from ..io import remove_stale

    parent = path.parent if path.parent.exists() else Path(tempfile.gettempdir())
    remove_stale(parent, ".export-")  # left by a killed run
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=parent))
    try:
        tmp = tmp_dir / path.name
        shared = _SHARED_CHOICE.get()
        cache = export_cache.entry(module, (path.name, list(example_inputs), args, dynamic_axes, opset, output_names))
        if cache is None or not cache.restore(tmp_dir):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                legacy = args, example_inputs, tmp, output_names, dynamic_axes, opset, n_bytes
                with _without_kv_cache(module):
                    if shared and shared["legacy"] and _legacy_export(module, *legacy):
                        by_torch_export = False
                    else:
                        by_torch_export = _export_dynamo_or_legacy(module, legacy, shapes, shared)
            if cache is not None and by_torch_export:
                cache.store(tmp_dir)
        _check_opset(tmp, opset)
        path.parent.mkdir(parents=True, exist_ok=True)
        for produced in tmp_dir.iterdir():  # model.onnx and, for big models, model.onnx.data
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return OnnxModel(path)


class _FlatOutputs(torch.nn.Module):
    """A user module whose output torch.export cannot return as it is (a dataclass) or whose main tensor is not
    its first: exported as the tuple of its output tensors, the main one (the one nnslim measures) first."""

    def __init__(self, inner: torch.nn.Module, order: list[int]):
        super().__init__()
        self.inner, self.order = inner, order

    def forward(self, *args):
        from .base import tensor_leaves

        leaves = tensor_leaves(self.inner(*args))
        return tuple(leaves[i][1] for i in self.order)


def _flat_outputs(module: torch.nn.Module, args: list, output_names: list[str]):
    """(module, output names) to export: the module itself when its output is a tensor, or a tuple / dict whose
    first tensor is its main one; else a _FlatOutputs wrapper, its outputs named by key / field."""
    import dataclasses

    from .base import first_tensor, tensor_leaves

    try:
        with torch.no_grad(), _without_kv_cache(module):
            out = module(*args)
    except Exception:  # noqa: BLE001 - the export's own error says what failed
        return module, output_names
    if isinstance(out, torch.Tensor):
        return module, output_names
    leaves = tensor_leaves(out)
    try:
        main = first_tensor(out)
    except TypeError:
        return module, output_names  # the export's own error says what it could not take

    def has_dataclass(obj) -> bool:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, dict):
            return True
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else []
        return any(has_dataclass(v) for v in values)

    if leaves[0][1] is main and not has_dataclass(out):
        return module, output_names
    first = next(i for i, (_, t) in enumerate(leaves) if t is main)
    order = [first] + [i for i in range(len(leaves)) if i != first]
    names = [leaves[i][0] for i in order]
    if len(set(names)) < len(names):
        names = [f"output_{i}" for i in range(len(names))]
    return _FlatOutputs(module, order), names


@contextlib.contextmanager
def _without_kv_cache(module: torch.nn.Module):
    """A Hugging Face model passed as a plain nn.Module returns its KV cache object unless its config says
    use_cache=False, and torch.export cannot return that object: the graph is exported without it (its outputs:
    logits / hidden states). nnslim's own LM wrappers export the cache as tensors and are not affected."""
    config = getattr(module.inner if isinstance(module, _FlatOutputs) else module, "config", None)
    if config is None or getattr(config, "use_cache", None) is not True:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


_REGISTRIES: dict = {}  # (class, opset) -> torch.onnx's registry of ATen -> ONNX functions, built once per process


@contextlib.contextmanager
def _registry_built_once():
    """torch.onnx.export rebuilds its registry of ~2000 ONNX Script functions on every call (2-4 s of each export
    on a slow CPU; 25% of a small BERT's). nnslim passes no custom translation table, the one thing that changes
    a registry after it is built, so within its own export calls the first registry of each opset is reused.
    Where torch's internals differ from the ones this was written for, exports simply rebuild it."""
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def once(klass, opset_version=None):
        key = (klass, opset_version)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(klass) if opset_version is None else build(klass, opset_version)
        return _REGISTRIES[key]

    cls.from_torchlib = classmethod(once)
    try:
        yield
    finally:
        cls.from_torchlib = original


def _export_dynamo_or_legacy(module, legacy: tuple, shapes: list, shared: dict | None) -> bool:
    """torch.export's exporter (True); when it fails, the TorchScript exporter if it matches torch at another
    shape (False)."""
    args, example_inputs, tmp, output_names, dynamic_axes, opset, n_bytes = legacy
    try:
        with _registry_built_once():
            _torch_export(module, args, example_inputs, tmp, output_names, opset, shapes, n_bytes)
        _dynamic_axes_kept(tmp, dynamic_axes)
    except Exception as e:
        msg = first_line(e)
        if not _legacy_export(module, *legacy):
            hint = ("; for a transformers model, save it with its tokenizer to a folder (save_pretrained) and give "
                    "the folder: nnslim exports decoders with their KV cache and encoder-decoders as Optimum lays "
                    "them out") if hasattr(module, "save_pretrained") else ""
            log = getattr(e, "nnslim_log", None)
            log = f" (torch's full output: {log})" if log else ""
            raise NnslimError(f"ONNX export of {type(module).__name__} failed: {msg}{log}{hint}") from e
        if shared is not None:
            shared["legacy"] = True
        return False
    return True


class AxisFixed(RuntimeError):
    """torch.export made an axis the caller declared dynamic a constant of the graph."""


def _dynamic_axes_kept(path: Path, dynamic_axes: dict | None) -> None:
    """torch.onnx's exporter turns a declared dynamic axis that the model's code fixes (a Python loop over it, a
    branch on its value) into a constant with only a warning; the graph would then fail at any other size."""
    if not dynamic_axes:
        return
    import onnx

    inputs = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path), load_external_data=False).graph.input}
    for name, axes in dynamic_axes.items():
        dims = inputs.get(name)
        for axis, label in (axes or {}).items():
            # (a size-1 example axis is fixed by torch.export's 0/1 specialization, not by the model: left as it was)
            if dims is not None and axis < len(dims) and dims[axis].HasField("dim_value") and dims[axis].dim_value > 1:
                raise AxisFixed(f"torch.export fixed input {name!r} axis {axis} ({label}) to {dims[axis].dim_value}: "
                                "the model's code specializes on that size (a Python loop or branch over it)")


def _torch_export(module, args, example_inputs, tmp, output_names, opset, shapes, n_bytes) -> None:
    """torch.onnx's exporter. What torch prints to stderr while it runs (on a failure, torch.export prints the whole
    partial graph: hundreds of lines before nnslim's one-line error) goes to a log file named in the exception's
    `nnslim_log` instead."""
    import io

    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(out):
            torch.onnx.export(module, tuple(args), str(tmp), input_names=list(example_inputs),
                              output_names=output_names, dynamo=True, opset_version=opset,
                              dynamic_shapes=tuple(shapes), optimize=True, external_data=n_bytes > EXTERNAL_DATA_BYTES,
                              verbose=False)
    except Exception as e:
        if out.getvalue().strip():
            fd, log = tempfile.mkstemp(prefix="nnslim-torch-export-", suffix=".log")
            with os.fdopen(fd, "w") as f:
                f.write(out.getvalue())
            e.nnslim_log = log
        raise
    if out.getvalue():  # a success: torch's warnings go where they would have gone
        sys.stderr.write(out.getvalue())


def _legacy_export(module, args, example_inputs: dict, tmp: Path, output_names: list[str],
                   dynamic_axes: dict | None, opset: int, n_bytes: int) -> bool:
    """When torch.export fails (T5's attention reshapes with dynamic shapes): the TorchScript exporter, kept
    only if ONNX Runtime then matches torch at another shape (every dynamic axis one shorter); that exporter
    mis-traces some models (transformers 5 BERT) at shapes other than the example's."""
    if n_bytes > EXTERNAL_DATA_BYTES or not dynamic_axes:
        return False
    try:
        torch.onnx.export(module, tuple(args), str(tmp), input_names=list(example_inputs),
                          output_names=output_names, dynamo=False, opset_version=opset, dynamic_axes=dynamic_axes)
        other = {}
        for (name, value), t in zip(example_inputs.items(), args):
            for axis in (dynamic_axes.get(name) or {}):
                if t.shape[axis] > 1:
                    t = t.narrow(axis, 0, t.shape[axis] - 1)
            other[name] = t
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 4  # a mismatch is this check's answer, not an error for the user's terminal
        sess = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
        got = sess.run(None, {k: v.cpu().numpy() for k, v in other.items()})[0]
        with torch.no_grad():
            want = module(*other.values())
        want = (want.logits if hasattr(want, "logits") else want[0] if isinstance(want, tuple) else want)
        want = want.float().cpu().numpy()
        return got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-3 * max(float(np.abs(want).max()), 1)
    except Exception:  # noqa: BLE001  (the caller reports the first exporter's error)
        return False


def _fixed_positional(module: torch.nn.Module) -> int | None:
    """How many positional parameters forward() has before a *args parameter (None: it has no *args)."""
    import inspect

    fixed = 0
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return fixed
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            fixed += 1
    return None


def _check_opset(path: Path, opset: int) -> None:
    """The exporter converts below its own opset and keeps its own when that fails: refuse, never mislabel.
    Then drop what only the exporter reads (see strip_exporter_metadata) and write the file back."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise NnslimError(f"opset={opset} was asked for, but this model exported at opset {got} (the converter "
                          f"could not go lower); allowed for this model: {got}..23")
    global_pools(proto)
    strip_exporter_metadata(proto)
    onnx.save(proto, str(path))  # external tensors keep their references (not loaded, not rewritten)


def global_pools(proto) -> None:
    """Rewrite as GlobalAveragePool every AveragePool whose window covers its whole (static) input and gives one
    value per channel: transformers' EfficientNet pools with kernel = hidden_dim (1280) and ceil_mode, which torch
    and ONNX Runtime compute as the mean but OpenVINO refuses (a kernel larger than its input)."""
    import onnx
    from onnx import helper

    pools = [n for n in proto.graph.node if n.op_type == "AveragePool"]
    if not pools:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # noqa: BLE001 - shapes unknown: nothing is rewritten
        return
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    for node in pools:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape_in, shape_out = dims.get(node.input[0]), dims.get(node.output[0])
        kernel = list(attrs.get("kernel_shape", []))
        if (not shape_in or not shape_out or len(shape_in) != len(kernel) + 2 or None in shape_in[2:]
                or any(attrs.get("pads", [])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
                or any(d != 1 for d in attrs.get("dilations", [])) or shape_out[2:] != [1] * len(kernel)
                or any(k < d for k, d in zip(kernel, shape_in[2:]))):
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]


def strip_exporter_metadata(proto) -> None:
    """Remove the exporter's per-node metadata (source stack traces, module paths), doc strings and the
    intermediate value_info: the runtimes do not read them, and in MiniLM they were ~0.9 MB of the file."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    del proto.metadata_props[:]
    proto.graph.doc_string = ""
    proto.doc_string = ""


def topological_sort(graph) -> None:
    """Order graph.node so every node comes after the producers of its inputs (in place, stable)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or an input from an outer scope: keep the rest as they were
            ordered += rest
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def convert_onnx_fp16(src: str | Path, dst: str | Path) -> OnnxModel:
    """fp16 weights and compute, fp32 inputs/outputs (so callers feed the same arrays)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ..io import atomic_write

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True)
    topological_sort(half.graph)  # the converter appends its input casts last: invalid for strict readers
    atomic_write(dst, lambda tmp: onnx.save(half, tmp))
    return OnnxModel(Path(dst))


def share_transposed_initializers(proto) -> list[str]:
    """A 2-D initializer that is exactly another's transpose (a tied embedding and LM head as the TorchScript
    exporter writes them: the table for Gather, its transpose for MatMul) becomes a Transpose node of the other,
    so the file holds the weight once; the runtimes fold the Transpose when they load the graph. Only
    non-square float / 8-bit weights stored in the file are compared (a tied vocabulary table is never square;
    4-bit codes are packed two to a byte). Returns the names replaced."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inputs = {i.name for i in graph.input}
    types = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.UINT8)
    candidates = [i for i in graph.initializer if len(i.dims) == 2 and i.dims[0] != i.dims[1]
                  and i.data_type in types and i.data_location != TensorProto.EXTERNAL and i.name not in inputs]
    by_shape: dict[tuple, list] = {}
    for init in candidates:
        by_shape.setdefault((tuple(init.dims), init.data_type), []).append(init)
    arrays: dict[str, np.ndarray] = {}

    def array(init) -> np.ndarray:  # a view of the stored bytes where they are raw (no copy of a big weight)
        if init.name not in arrays:
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            arrays[init.name] = (np.frombuffer(init.raw_data, dtype).reshape(tuple(init.dims)) if init.raw_data
                                 else numpy_helper.to_array(init))
        return arrays[init.name]

    rows, cols = np.random.default_rng(0).integers(0, 1 << 30, (2, 16))
    replaced: dict[str, str] = {}
    for init in candidates:
        if init.name in replaced:
            continue
        for other in by_shape.get(((init.dims[1], init.dims[0]), init.data_type), []):
            if other.name in replaced or other.name in replaced.values():
                continue
            a, b = array(init), array(other)
            i, j = rows % a.shape[0], cols % a.shape[1]
            if np.array_equal(a[i, j], b[j, i]) and np.array_equal(a.T, b):  # 16 samples first: FFN up / down
                replaced[other.name] = init.name                               # pairs of every layer meet here
    if not replaced:
        return []
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [helper.make_node("Transpose", [src], [name], perm=[1, 0], name=f"{name}/shared_transpose")
             for name, src in replaced.items()]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    return sorted(replaced)


def share_transposed_initializers_in_file(path: str | Path) -> list[str]:
    """share_transposed_initializers on a written ONNX file (rewritten atomically when something was shared;
    files with external data are left as they are)."""
    import onnx

    path = Path(path)
    if any(p.name.startswith(path.name + ".") for p in path.parent.iterdir()):
        return []  # weights in an external data file beside it
    proto = onnx.load(str(path))
    shared = share_transposed_initializers(proto)
    if shared:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    return shared
