"""Save and load compressed models: model.safetensors or model.onnx, plus nnslim.json.

nnslim.json records how to rebuild the architecture (a testbed name or a Hugging Face directory),
the dtype, the recipe, the seed and library versions. Only safe formats are ever read.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import NnslimError, bad_value, short_repr
from .io import (META_FILE, ONNX_FILE, WEIGHTS_FILE, atomic_write, atomic_write_json, big_allocations_mapped,
                 check_onnx, determinism_info, library_versions, onnx_external_files, read_meta, stored_shapes)
from . import hf_objects
from .runtime.base import OnnxModel, model_dtype

_OLD_HF_KINDS = {"hf-causal-lm": "causal-lm", "hf-encoder": "feature-extraction"}  # nnslim_format 1 files
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def architecture_of(testbed, model=None) -> dict[str, Any]:
    """How nnslim.load rebuilds the module: a built-in testbed, the artifact's own copy of an HF config,
    or a user's class (then nnslim.load needs model=; `model` names it when there is no testbed)."""
    from .testbeds import TESTBEDS, HFTestbed, ModuleTestbed

    if testbed is None or isinstance(testbed, ModuleTestbed):
        module = testbed.load_model() if testbed is not None else model if isinstance(model, torch.nn.Module) \
            else None
        cls = type(module) if module is not None else None
        return {"kind": "module", "class": f"{cls.__module__}.{cls.__qualname__}" if cls else None}
    if testbed.name in TESTBEDS:
        return {"kind": "testbed", "name": testbed.name}
    if isinstance(testbed, HFTestbed):
        # "path" is inside the artifact (its copy of config.json and the tokenizer); "source" is the name of
        # the folder it came from, provenance only (no absolute path: the artifact may be copied anywhere).
        return {"kind": "hf", "task": testbed.task, "path": ".", "source": Path(testbed.model_dir).name}
    return {"kind": "module", "class": None}


def _write_hf(model, testbed, sparse, directory: Path) -> list[str] | None:
    """Float / fp16 / pruned HF models are written as transformers writes them (from_pretrained loads them),
    with the config updated to pruned shapes; None (nnslim's own layout) when that cannot be expressed."""
    from .graph.modules import packed_layers
    from .testbeds import HFTestbed

    if sparse is not None or not (isinstance(testbed, HFTestbed) or _hf_object(model, testbed)) or packed_layers(model):
        return None
    from . import ecosystem

    try:
        return ecosystem.write_hf(model, directory)
    except ecosystem.NotExpressible as e:
        from .progress import warn

        warn(f"the artifact is in nnslim's own layout (nnslim.load reads it; transformers does not): the model's "
             f"config cannot express its pruned shapes: {e}")
        return None


def _hf_object(model, testbed) -> bool:
    """A transformers model given as an object (no folder, no testbed of its own): its config is in memory."""
    from .testbeds import HFTestbed

    return not isinstance(testbed, HFTestbed) and hasattr(model, "save_pretrained") and \
        isinstance(getattr(getattr(model, "config", None), "model_type", None), str)


def _compressed_tensors_ok(model, testbed, sparse) -> bool:
    """Weight-only int HF models (a folder's, or a transformers model object) are written as compressed-tensors
    (transformers / vLLM load them)."""
    from .testbeds import HFTestbed

    if sparse is not None or not (isinstance(testbed, HFTestbed) or _hf_object(model, testbed)):
        return False
    from . import ecosystem

    reason = ecosystem.writable(model)
    if reason is not None:
        from .graph.modules import packed_layers

        if packed_layers(model):
            from .progress import warn

            warn(f"the artifact is in nnslim's own layout (nnslim.load reads it; transformers / vLLM do not): "
                 f"compressed-tensors cannot hold it: {reason}")
        return False
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        from .progress import warn

        warn("compressed-tensors is not installed: the int weights are saved in nnslim's own layout, which "
             "transformers / vLLM do not load (pip install compressed-tensors)")
        return False
    return True


def _copy_hf_files(testbed, directory: Path, skip: set[str] = frozenset()) -> list[str]:
    """Copy config.json and the tokenizer files of an HF testbed into the artifact; returns their names."""
    from .testbeds.base import HF_META_FILES

    src = Path(testbed.model_dir)
    copied = []
    for name in HF_META_FILES:
        if name not in skip and (src / name).is_file():
            atomic_write(directory / name, lambda tmp, n=name: shutil.copyfile(src / n, tmp))
            copied.append(name)
    return copied


def testbed_from_architecture(arch: dict[str, Any], directory: Path | None = None, trust_remote_code: bool = False):
    """The testbed an artifact was made with. HF architectures load only from inside the artifact dir."""
    from .testbeds import TESTBEDS, get_testbed, testbed_for_hf_dir

    if not isinstance(arch, dict):
        raise NnslimError(f"architecture={short_repr(arch)} in nnslim.json is not an object")
    kind = arch.get("kind")
    if kind == "testbed":
        if arch.get("name") not in TESTBEDS:
            raise bad_value("architecture.name", arch.get("name"), list(TESTBEDS))
        return get_testbed(arch["name"])
    if kind in ("hf", *_OLD_HF_KINDS):
        rel = arch.get("path")
        if directory is None or not isinstance(rel, str) or Path(rel).is_absolute():
            raise NnslimError(f"architecture.path={short_repr(rel)} in nnslim.json is not allowed; allowed: a path "
                              "inside the artifact directory (artifacts made before nnslim kept their config "
                              "inside must be made again)")
        root = Path(directory).resolve()
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise NnslimError(f"architecture.path={rel!r} in nnslim.json leaves the artifact directory; refused")
        task = _OLD_HF_KINDS.get(kind) or arch.get("task")
        if not isinstance(task, str):
            raise NnslimError(f"architecture.task={short_repr(task)} in nnslim.json is not a task name")
        return testbed_for_hf_dir(target, trust_remote_code, weights=False, name=f"hf:{Path(directory).name}",
                                  task=task)
    if kind == "module":
        return None
    raise bad_value("architecture.kind", kind, ["testbed", "hf", "module"])


def _rebuild_quantized(model: torch.nn.Module, layers: dict[str, dict], dtype: torch.dtype, where: Path,
                       stored: dict[str, tuple[int, ...]], aliases: dict[str, str] | None = None) -> None:
    """Put empty quantized layers where nnslim.json says they were, so the saved buffers load into them; a
    layer the model held at several paths (`aliases`: other path -> its name) goes to all of them.

    Each layer is first built on the meta device and its tensor shapes compared with those stored in
    the weights file (under any of its paths: a tensor held at several is stored once), so sizes in
    nnslim.json can never make nnslim allocate more than the file holds.
    """
    from .graph.modules import build_packed, replace_module
    from .recipe import methods

    methods()  # every packed layer class registers itself when its module is imported
    aliases = aliases or {}
    if not isinstance(layers, dict) or not isinstance(aliases, dict):
        raise NnslimError(f"{where}: quantized_layers / quantized_aliases must be mappings of layer name -> config "
                          "/ layer name")
    bad = [a for a, n in aliases.items() if n not in layers]
    if bad:
        raise NnslimError(f"{where}: quantized_aliases entry {bad[0]!r} names no quantized layer")
    for name, cfg in layers.items():
        paths = [name] + [a for a, n in aliases.items() if n == name]
        try:
            for path in paths:
                model.get_submodule(path)
            if not isinstance(cfg, dict):
                raise TypeError(f"config is a {type(cfg).__name__}, not a mapping")
            with torch.device("meta"):
                probe = build_packed(cfg, dtype)
            for key, t in probe.state_dict().items():
                found = next((stored[f"{p}.{key}"] for p in paths if f"{p}.{key}" in stored), None)
                if found != tuple(t.shape):
                    raise ValueError(f"{name}.{key} has shape {found} in the weights file, the config "
                                     f"implies {tuple(t.shape)}")
            new = build_packed(cfg, dtype)
        except NnslimError:
            raise
        except Exception as e:  # any malformed field: one line naming the layer
            raise NnslimError(f"{where}: quantized layer {name!r} does not fit the architecture: "
                              f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
        for path in paths:
            replace_module(model, path, new)


def save(model, directory: str | Path, testbed=None, recipe: dict | None = None, seed: int = 0,
         extra: dict | None = None) -> Path:
    """Write `model` (nn.Module or OnnxModel) and nnslim.json into `directory` (files written atomically)."""
    from .graph.modules import plain_module
    from .graph.streaming import source_of

    model = plain_module(model)

    if isinstance(model, torch.nn.Module) and source_of(model) is not None:
        with big_allocations_mapped():  # streamed: layers read back and freed one by one, no heap holes
            return _save(model, directory, testbed, recipe, seed, extra)
    return _save(model, directory, testbed, recipe, seed, extra)


def _save(model, directory: str | Path, testbed, recipe, seed, extra) -> Path:
    testbed = testbed if testbed is not None else getattr(model, "nnslim_testbed", None)
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"nnslim_format": 1, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                            "testbed": getattr(testbed, "name", None), "architecture": architecture_of(testbed, model),
                            "recipe": recipe, "seed": seed, "versions": library_versions(),
                            "determinism": determinism_info()}
    if isinstance(model, torch.nn.Module):
        from .graph.modules import deployable_copy
        from .runtime.qdq import has_qdq_layers

        model = deployable_copy(model)  # masks folded into the weights they keep at zero
        from .graph.experts import join_experts

        split = join_experts(model)  # MoE experts still float go back into transformers' fused modules
        if split:
            meta["split_experts"] = split
        from .graph.attention import join_attention

        split = join_attention(model)  # so do float nn.MultiheadAttention blocks
        if split:
            meta["split_attention"] = split

        if has_qdq_layers(model):
            raise NnslimError("saving a simulated-int8 torch model is not supported yet; save the deployable "
                              "int8 model with nnslim.export_onnx(model, example_inputs, path) or use "
                              "nnslim.compress(..., out=DIR), which writes the int8 ONNX artifact")
        from .pruning.storage import STORAGE_ATTR, save_sparse

        sparse = getattr(model, STORAGE_ATTR, None)
        fmt, written = "hf", _write_hf(model, testbed, sparse, directory)
        if not written and _compressed_tensors_ok(model, testbed, sparse):
            from . import ecosystem

            if _hf_object(model, testbed):  # its config from memory; nnslim.load reads it into model=<instance>
                source = directory / "config.json"
                atomic_write(source, lambda tmp: hf_objects.object_config(model).to_json_file(tmp))
            else:
                source = Path(testbed.model_dir) / "config.json"
            fmt, written = ecosystem.FORMAT, ecosystem.write(model, directory, source)
            fast = sorted(n for n, m in model.named_modules() if getattr(m, "fast_accum", False))
            if fast:  # a kernel option compressed-tensors has no field for (fp8 _scaled_mm fast accumulation)
                meta["fast_accum"] = fast
        if not written:
            from .graph.modules import packed_aliases, packed_layers

            if sparse is not None:
                atomic_write(directory / WEIGHTS_FILE,
                             lambda tmp: meta.update(sparse_storage=save_sparse(model, tmp, sparse)))
            else:
                from .graph.streaming import source_of

                if source_of(model) is not None:  # streamed: offloaded layers read back one at a time
                    atomic_write(directory / WEIGHTS_FILE, lambda tmp: _write_streamed(model, tmp))
                else:
                    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_model(model, tmp))
            fmt, written = "torch", [WEIGHTS_FILE]
            if _hf_object(model, testbed):  # the class and config to rebuild it from (nnslim.load needs no model=)
                atomic_write(directory / "config.json",
                             lambda tmp: hf_objects.object_config(model).to_json_file(tmp))
                written.append("config.json")
            layers = packed_layers(model)
            if layers:
                meta["quantized_layers"] = layers
                aliases = packed_aliases(model)
                if aliases:
                    meta["quantized_aliases"] = aliases
        meta.update(format=fmt, file=WEIGHTS_FILE, files=written, dtype=str(model_dtype(model)).replace("torch.", ""))
        from .pruning.structured import PLAN_ATTR

        if getattr(model, PLAN_ATTR, None):
            meta["structured_plan"] = getattr(model, PLAN_ATTR)
    elif isinstance(model, OnnxModel) and (model.is_ir or len(model.graphs) > 1):  # Optimum's file names
        names = [f.name for f in model.files]
        if model.path.parent.resolve() != directory.resolve():
            for name in names:
                atomic_write(directory / name, lambda tmp, n=name: shutil.copyfile(model.path.parent / n, tmp))
        meta.update(format="openvino" if model.is_ir else "onnx", file=model.path.name, files=names)
    elif isinstance(model, OnnxModel):
        target = directory / ONNX_FILE
        data_files = onnx_external_files(model.path)
        if model.path.resolve() != target.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(model.path, tmp))
            for name in data_files:  # external weights keep their names: the graph refers to them
                atomic_write(directory / name, lambda tmp, n=name: shutil.copyfile(model.path.parent / n, tmp))
        meta.update(format="onnx", file=ONNX_FILE, files=[ONNX_FILE, *data_files])
    else:
        raise NnslimError(f"cannot save a {type(model).__name__}; expected torch.nn.Module or an ONNX model")
    if meta["architecture"].get("kind") == "hf":
        meta["files"] += _copy_hf_files(testbed, directory, skip=set(meta["files"]))
    meta.update(extra or {})
    atomic_write_json(directory / META_FILE, meta)
    return directory


def _write_streamed(model: torch.nn.Module, path: str) -> None:
    """The file safetensors.torch.save_model writes (a tensor shared by several names stored under the first
    name in sorted order, the others in the metadata), for a streamed model whose tensors on the meta device
    are read from its shards / offload folder one at a time."""
    from .graph.streaming import source_of, unique_state
    from .io import write_safetensors

    kept, metadata = {}, {}
    for name, (tensor, others) in unique_state(model).items():
        first = min([name, *others])
        kept[first] = tensor.detach()
        metadata.update({n: first for n in [name, *others] if n != first})
    write_safetensors(path, dict(sorted(kept.items())), metadata or None, fetch=source_of(model).read)


def update_meta(directory: str | Path, **fields) -> None:
    """Add fields to an artifact's nnslim.json (rewritten atomically)."""
    meta = read_meta(directory)
    meta.update(fields)
    atomic_write_json(Path(directory) / META_FILE, meta)


def _own_file(meta: dict, default: str, directory: Path) -> str:
    """The model file named in nnslim.json: a plain file name inside the artifact dir, nothing else."""
    name = meta.get("file", default)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise NnslimError(f"{directory / META_FILE}: file={short_repr(name)} is not allowed; allowed: a file name "
                          "inside the artifact directory")
    return name


def _config_only(testbed):
    """The testbed building its model from config.json alone (a packaged testbed loads its weights)."""
    import copy

    skeleton = copy.copy(testbed)
    if getattr(skeleton, "weights", False):
        skeleton.weights = False
    return skeleton


def _empty_model(testbed) -> torch.nn.Module:
    """The testbed's model with its parameters on the meta device (buffers such as rotary tables real):
    what an artifact's tensors are assigned into, so loading never holds a float copy of the model."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return _config_only(testbed).load_model()


def meta_dtype(meta: dict, directory: Path) -> torch.dtype:
    """The dtype nnslim.json records for the weights, checked against those nnslim writes."""
    dtype = _DTYPES.get(meta.get("dtype", "float32"))
    if dtype is None:
        raise NnslimError(f"{directory / META_FILE}: dtype={meta.get('dtype')!r} is not allowed; "
                          f"allowed: {', '.join(_DTYPES)}")
    return dtype


def _as_saved(model: torch.nn.Module | None) -> torch.nn.Module | None:
    """A skeleton whose weights a torch / compressed-tensors artifact replaces, in the form compress saved: Conv1D
    as Linear, weight_norm & co. folded (pipeline.run_steps), changed in place."""
    if model is None:
        return None
    from .graph.modules import fold_foreign_parametrizations, linear_conv1d

    fold_foreign_parametrizations(linear_conv1d(model))
    return model


def _check_config_size(testbed, weights: Path | list[Path], build=None) -> None:
    """Build the config's model on the meta device first: its size must be within reach of the tensors the
    weights files store, so a crafted config.json cannot make nnslim allocate more than the files hold
    (`build()` makes the model instead of the testbed)."""
    import math

    files = weights if isinstance(weights, list) else [weights]
    for w in files:
        if not w.is_file():
            raise NnslimError(f"weights file {str(w)!r} not found")
    stored = sum(math.prod(shape) for w in files for shape in stored_shapes(w).values())
    with torch.device("meta"):
        probe = build() if build is not None else _config_only(testbed).load_model()
    params = sum(p.numel() for p in probe.parameters())
    # Packed int4 holds two weights per stored element, int2 four; scales and pruning only shrink the ratio.
    if params > 8 * stored + 1_000_000:
        raise NnslimError(f"{getattr(testbed, 'name', 'config.json')}: config.json describes {params:,} parameters "
                          f"but {str(weights)!r} stores {stored:,} values; the config does not belong to these weights")


def artifact_size(directory: str | Path) -> int:
    """Bytes of the model files of an artifact as written (what nnslim.json lists), reports excluded."""
    directory = Path(directory)
    meta = read_meta(directory)
    return sum((directory / name).stat().st_size for name in meta.get("files", [meta.get("file", WEIGHTS_FILE)]))


def load(directory: str | Path, model: torch.nn.Module | None = None, trust_remote_code: bool = False):
    """Load an artifact directory written by save/compress.

    Torch artifacts are rebuilt from their recorded architecture (testbed or HF directory); for a
    user's own class pass `model`, a module of the same architecture whose weights get replaced.
    """
    from safetensors.torch import load_model

    from .graph.modules import plain_module

    model = plain_module(model)
    directory = Path(directory)
    meta = read_meta(directory)
    fmt = meta.get("format")
    if fmt == "onnx":
        model = OnnxModel(directory / _own_file(meta, ONNX_FILE, directory))
        for graph in model.graphs:
            check_onnx(graph)
        return model
    if fmt == "openvino":
        path = directory / _own_file(meta, "openvino_model.xml", directory)
        for p in OnnxModel(path).files if path.suffix == ".xml" else [path]:
            if path.suffix != ".xml" or not p.is_file():
                raise NnslimError(f"{str(p)!r}: OpenVINO IR file not found (an openvino artifact holds "
                                  "openvino_model.xml and openvino_model.bin)")
        return OnnxModel(path)
    if fmt == "compressed-tensors":
        with big_allocations_mapped():
            return _load_compressed_tensors(directory, meta, trust_remote_code, _as_saved(model))
    if fmt == "hf":  # (only the class of `model` is used: it stays as it is)
        return _load_hf(directory, meta, trust_remote_code, model)
    if fmt != "torch":
        raise NnslimError(f"{directory / META_FILE}: format={fmt!r} is not allowed; allowed: torch, onnx, "
                          "openvino, compressed-tensors, hf")
    model = _as_saved(model)
    if model is None:
        testbed = testbed_from_architecture(meta.get("architecture", {}), directory, trust_remote_code)
        if testbed is None and "config.json" in (meta.get("files") or []):  # saved from a transformers object
            model = hf_objects.object_skeleton(directory, directory / _own_file(meta, WEIGHTS_FILE, directory))
        elif testbed is None:
            raise NnslimError(f"{directory} holds weights of a user-defined module "
                              f"({meta.get('architecture', {}).get('class')}); pass model=<an instance of it> "
                              "to nnslim.load")
        else:
            if not getattr(testbed, "weights", True):  # built from the artifact's own config.json
                _check_config_size(testbed, directory / _own_file(meta, WEIGHTS_FILE, directory))
            empty = hasattr(testbed, "weights") and not meta.get("structured_plan") and not meta.get("sparse_storage")
            # a Hugging Face architecture is built with its parameters on meta: the file's tensors are assigned
            model = _as_saved(_empty_model(testbed) if empty else testbed.load_model())
    dtype = meta_dtype(meta, directory)
    if meta.get("split_attention"):  # before the plan: a split block's heads may have been removed
        from .graph.attention import split_attention

        names = meta["split_attention"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise NnslimError(f"{directory / META_FILE}: split_attention must be a list of module names")
        split_attention(model, meta["split_attention"], check=False)
    if meta.get("structured_plan"):
        from .pruning.structured import apply_plan

        model = apply_plan(model, meta["structured_plan"])
    weights = directory / _own_file(meta, WEIGHTS_FILE, directory)
    if not weights.is_file():
        raise NnslimError(f"weights file {str(weights)!r} not found")
    _cast(model, dtype)  # before packed layers go in: .to() would also cast fp8 codes
    if meta.get("split_experts"):
        from .graph.experts import split_experts

        if not isinstance(meta["split_experts"], list):
            raise NnslimError(f"{directory / META_FILE}: split_experts must be a list of module names")
        split_experts(model, meta["split_experts"], check=False)
    _rebuild_quantized(model, meta.get("quantized_layers") or {}, dtype, directory / META_FILE,
                       stored_shapes(weights), meta.get("quantized_aliases"))
    try:
        if meta.get("sparse_storage"):
            from .pruning.storage import load_sparse

            load_sparse(model, str(weights), meta["sparse_storage"])
        elif any(t.is_meta for t in model.parameters()):
            with big_allocations_mapped():
                _assign(model, weights)
        else:
            load_model(model, str(weights), strict=True)
    except NnslimError:
        raise
    except Exception as e:
        raise NnslimError(f"{weights} does not match the architecture: {str(e).splitlines()[0]}") from None
    return model.eval()


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """model.to(dtype) for what the artifact stores; buffers it does not store (non-persistent: rotary
    frequency tables) keep the dtype the model computed them in, as transformers keeps them."""
    kept = [(m, k, b) for m in model.modules() for k, b in m._buffers.items()
            if b is not None and k in m._non_persistent_buffers_set]
    model.to(dtype)
    for m, k, b in kept:
        m._buffers[k] = b


def _assign(model: torch.nn.Module, weights: Path) -> None:
    """Load a safetensors file into a model built on the meta device (ecosystem.assign_state)."""
    from .ecosystem import assign_state
    from .io import SafetensorsReader

    with SafetensorsReader(weights) as f:
        unexpected, left = assign_state(model, {k: f.get_tensor(k) for k in f.keys()})
    if unexpected or left:
        raise ValueError(f"unexpected tensors {unexpected[:3]}" if unexpected else f"missing tensors {left[:3]}")


def _load_compressed_tensors(directory: Path, meta: dict, trust_remote_code: bool, skeleton=None):
    """A compressed-tensors checkpoint into nnslim's layers: the artifact's own HF architecture, or `skeleton` (an
    instance of the transformers class it was saved from as an object)."""
    import json

    from . import ecosystem

    testbed = testbed_from_architecture(meta.get("architecture", {}), directory, trust_remote_code)
    if testbed is None and skeleton is None:  # saved from a transformers object: the class its config names
        from accelerate import init_empty_weights
        from transformers import AutoConfig

        cls = hf_objects.transformers_class(directory)
        with init_empty_weights():
            skeleton = cls(AutoConfig.from_pretrained(str(directory), trust_remote_code=False))
    shards = [directory / _plain_name(f, directory) for f in meta.get("files", [])
              if str(f).endswith(".safetensors")]
    weights = shards if len(shards) > 1 else directory / _own_file(meta, WEIGHTS_FILE, directory)
    if testbed is not None:
        _check_config_size(testbed, weights)
    # parameters on meta: the checkpoint's tensors are assigned, not copied
    model = _empty_model(testbed) if skeleton is None else skeleton
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    try:
        model = ecosystem.read_into(model, weights, config).eval()
        fast = meta.get("fast_accum") or []
        if not isinstance(fast, list) or not all(isinstance(n, str) for n in fast):
            raise NnslimError(f"{directory / META_FILE}: fast_accum must be a list of layer names")
        modules = dict(model.named_modules()) if fast else {}
        for name in fast:
            if hasattr(modules.get(name), "fast_accum"):
                modules[name].fast_accum = True
        return model
    except NnslimError:
        raise
    except Exception as e:  # malformed tensors or config fields: one line naming the artifact
        raise NnslimError(f"{directory}: the compressed-tensors checkpoint does not load: "
                          f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None


def _load_hf(directory: Path, meta: dict, trust_remote_code: bool, model: torch.nn.Module | None = None):
    """A Hugging Face checkpoint written by save_pretrained: loaded as any HF model dir is."""
    from .testbeds import testbed_for_hf_dir

    arch = meta.get("architecture", {})
    if not isinstance(arch, dict):
        raise NnslimError(f"architecture={short_repr(arch)} in nnslim.json is not an object")
    if arch.get("kind") == "module":  # made from a transformers model object: its class reads the folder
        return hf_objects.load_hf_object(directory, meta, model)
    if arch.get("kind") != "testbed":
        testbed_from_architecture(arch, directory, trust_remote_code)  # checks path and task
    task = _OLD_HF_KINDS.get(arch.get("kind")) or arch.get("task")  # None (a testbed): read from config.json
    files = [directory / _plain_name(f, directory) for f in meta.get("files", []) if str(f).endswith(".safetensors")]
    skeleton = testbed_for_hf_dir(directory, trust_remote_code, weights=False, task=task)
    _check_config_size(skeleton, files or [directory / WEIGHTS_FILE])
    testbed = testbed_for_hf_dir(directory, trust_remote_code, name=f"hf:{directory.name}", task=task)
    dtype = meta_dtype(meta, directory)
    testbed.load_dtype = dtype
    return testbed.load_model()


def _plain_name(name, directory: Path) -> str:
    if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
        raise NnslimError(f"{directory / META_FILE}: files entry {short_repr(name)} is not a file name inside "
                          "the artifact directory")
    return name
