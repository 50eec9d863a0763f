"""Parameters of a Hugging Face checkpoint read from its safetensors shards when they are needed, for a model
built with its parameters on the meta device: a layer-wise method materialises one layer (or one decoder
block) at a time, so host memory holds one block of float weights plus what is already compressed, never
the whole float model (issue 19).

Every shard is opened and its header checked before any work starts (a missing or mismatched shard is one
error naming the file); tensors are read with plain reads in the checkpoint's own dtype.

With an offload folder (`offload_to`), what a method has finished (a compressed layer or decoder block) goes to
disk through accelerate's offload files and back to the meta device, so host memory holds one block at a
time; whatever reads the model later (the artifact writers, layer-wise evaluation) brings one layer or block
back at a time (`resident`).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from ..errors import NnslimError
from ..io import SafetensorsReader
from ..validate import tensor_finite

ATTR = "nnslim_shards"  # a model built on meta carries its ShardSource under this attribute


class ShardSource:
    def __init__(self, directory: str | Path, prefix: str = ""):
        """`prefix`: what the model's own names add in front of the checkpoint's (nnslim's wrapper, 'lm.')."""
        self.directory, self.prefix = Path(directory), prefix
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise NnslimError(f"{str(index)!r} is not a safetensors index (weight_map): {e}") from None
            files = sorted(set(weight_map.values()))
        else:
            files, weight_map = ["model.safetensors"], None
        self.readers: dict[str, SafetensorsReader] = {}
        self.where: dict[str, str] = {}
        self.offloaded: dict[str, dict] = {}  # full model name -> accelerate's offload index entry
        self.offload_dir: Path | None = None
        self.splits: dict[str, tuple[bool, dict]] = {}  # MoE blocks split per expert (split_block)
        self._renamed: dict[str, str] | None = None
        self.model_type: str | None = None  # the HF model_type, for transformers' conversion mapping
        for name in files:
            path = self.directory / name
            if Path(name).name != name or not path.is_file():
                raise NnslimError(f"shard {str(path)!r} is missing (listed by {index.name if weight_map else 'default'})")
            reader = self.readers[name] = SafetensorsReader(path)
            for key in reader.keys():
                self.where[key] = name
        if weight_map is not None:
            wrong = [k for k, f in weight_map.items() if self.where.get(k) != f]
            if wrong:
                raise NnslimError(f"{str(index)!r} maps {wrong[0]!r} to {weight_map[wrong[0]]!r}, which does not "
                                  "hold it: the shards do not match their index")

    def _key(self, name: str) -> str:
        """The checkpoint's name of a model tensor name (without the wrapper's prefix; through the renamings of
        transformers' conversion mapping for checkpoints that keep older names: Mixtral's block_sparse_moe)."""
        key = name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name
        if key in self.where:
            return key
        return self._renamings().get(key, key)

    def _renamings(self) -> dict[str, str]:
        """Model-space name -> checkpoint key, by the WeightRenaming entries of transformers' conversion mapping
        for `model_type` (set by nnslim.load(stream=True)); built once."""
        if self._renamed is None:
            import re

            from transformers.conversion_mapping import get_checkpoint_conversion_mapping

            mapping = get_checkpoint_conversion_mapping(self.model_type) if self.model_type else None
            renames = [c for c in mapping or [] if type(c).__name__ == "WeightRenaming"]
            self._renamed = {}
            for k in self.where:
                r = k
                for c in renames:
                    for src, tgt in zip(c.source_patterns, c.target_patterns):
                        r = re.sub(src, tgt, r)
                self._renamed[r] = k
        return self._renamed

    def nbytes(self) -> int:
        """The checkpoint's size in bytes (its shards)."""
        return sum(r.path.stat().st_size for r in self.readers.values())

    def offload_to(self, folder: str | Path, need_bytes: int | None = None) -> Path:
        """Send finished layers / blocks to a fresh folder inside `folder` (removed with this source); refused
        before any work when the disk there has less free space than `need_bytes` (default: the checkpoint's
        size, an upper bound of any compressed form of it)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise NnslimError(f"offload_dir={str(folder)!r} is not a directory")
        need = self.nbytes() if need_bytes is None else need_bytes
        free = shutil.disk_usage(folder).free
        if free < need:
            raise NnslimError(f"offload_dir={str(folder)!r} has {free / 2**30:.1f} GiB free; offloading this model "
                              f"needs up to {need / 2**30:.1f} GiB (the checkpoint's size): free space or pick another")
        self.offload_dir = Path(tempfile.mkdtemp(prefix="nnslim-offload-", dir=folder))
        weakref.finalize(self, shutil.rmtree, str(self.offload_dir), True)
        return self.offload_dir

    def offload(self, module: nn.Module, prefix: str) -> None:
        """Without an offload folder nothing; else write every tensor of `module` (named `prefix`) that is in
        memory to it (accelerate.utils.offload_weight) and put the module on the meta device."""
        if self.offload_dir is None:
            return
        from accelerate.utils import offload_weight

        index: dict[str, dict] = {}
        for _, _, full, t in _owned(module, prefix):
            if not t.is_meta:
                offload_weight(t.detach().contiguous(), full, str(self.offload_dir), index)
        self.offloaded.update(index)
        module.to("meta")

    @contextmanager
    def resident(self, module: nn.Module, prefix: str):
        """`module`'s tensors on meta (offloaded, or in the checkpoint) in memory inside the block, back on meta
        after it (nothing is rewritten)."""
        back = [(owner, attr) for owner, attr, full in _meta_tensors(module, prefix) if self.has(full)]
        if back:
            self.materialize(module, prefix)
        try:
            yield module
        finally:
            for owner, attr in back:
                _put(owner, attr, _tensor(owner, attr).to("meta"))

    @contextmanager
    def read_on_call(self, model: nn.Module, skip: nn.Module, device: torch.device):
        """Every module of `model` outside `skip` is read from the shards (onto `device`) only when it is
        first called inside the block, and goes back to meta after it: capturing the first decoder block's
        inputs reads the embeddings, never the head (0.5 GB of a 7B model not held during calibration)."""
        read: list[tuple[nn.Module, str]] = []
        names = {id(m): n for n, m in model.named_modules()}
        inside = {id(m) for m in skip.modules()}

        def hook(mod, _args):
            for attr, t in [*mod._parameters.items(), *mod._buffers.items()]:
                full = ".".join(p for p in (names[id(mod)], attr) if p)
                if t is not None and t.is_meta and self.has(full):
                    self._read_into(mod, attr, full, device)
                    read.append((mod, attr))

        handles = [m.register_forward_pre_hook(hook) for m in model.modules()
                   if id(m) not in inside and any(t is not None and t.is_meta for t in
                                                  [*m._parameters.values(), *m._buffers.values()])]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for owner, attr in read:
                _put(owner, attr, _tensor(owner, attr).to("meta"))

    def stored_dtypes(self, model: nn.Module, prefix: str = "") -> None:
        """Give the meta tensors of `model` (named `prefix` in the whole model) the dtype the checkpoint stores
        them in (what they will hold)."""
        from ..io import _ST_DTYPES

        for owner, attr, full in _meta_tensors(model, prefix):
            part = self._expert_row(full)
            key = part[0][0] if part else self._key(full)
            if key not in self.where:
                merged = self._merged(key)
                if merged is None:
                    continue
                key = merged[0][0]
            dtype = getattr(torch, _ST_DTYPES.get(self.readers[self.where[key]].header[key]["dtype"], ""), None)
            t = _tensor(owner, attr)
            if isinstance(dtype, torch.dtype) and dtype != t.dtype and dtype.is_floating_point == t.is_floating_point():
                _put(owner, attr, t.to(dtype))
        retie(model)

    def settle(self, model: nn.Module) -> None:
        """After a streamed method: without an offload folder, what is still on meta comes into memory (the
        model is whole); with one, the checkpoint's own tensors read along the way go back to meta (read again
        when a writer or an evaluation reaches them), so host memory ends as it began."""
        if self.offload_dir is None:
            self.materialize(model, offloaded=False)
        else:
            for owner, attr, full, t in list(_owned(model)):
                if not t.is_meta and full not in self.offloaded and self._key(full) in self.where:
                    _put(owner, attr, t.to("meta"))
        retie(model)

    def split_block(self, name: str, up_name: str, transposed: bool, model_type: str | None) -> None:
        """The MoE experts block `name` (a model name) was split into per-expert Linears (graph/experts.py).
        Its experts' tensors are rows of the 3D tensors the checkpoint stores, or, in the per-expert layout
        most MoE checkpoints keep (Mixtral's `block_sparse_moe.experts.E.w1`, Qwen-MoE's
        `mlp.experts.E.gate_proj`), the tensors transformers' own conversion mapping merges into them."""
        key = self._key(name)
        sources = {}
        for proj in (up_name, "down_proj"):
            if f"{key}.{proj}" in self.where:
                sources[proj] = None  # rows of the stored 3D tensor
            else:
                sources[proj] = self._per_expert_keys(key, proj, model_type)
        self.splits[name] = (transposed, sources)

    def _per_expert_keys(self, key: str, proj: str, model_type: str | None) -> list[str]:
        """Model-space name templates ("*" for the expert; the checkpoint's keys through the mapping's renamings)
        whose per-expert tensors, concatenated along their first axis, are expert e's rows of `key.proj`
        (transformers' MergeModulelist + Concatenate)."""
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        target = f"{key}.{proj}"
        mapping = get_checkpoint_conversion_mapping(model_type) or []
        self._renamings()
        for c in mapping:
            if type(c).__name__ != "WeightConverter" or len(c.target_patterns) != 1:
                continue
            suffix = c.target_patterns[0].lstrip(".")
            ops = [(type(o).__name__, getattr(o, "dim", None)) for o in c.operations]
            if not target.endswith(suffix) or ops not in ([("MergeModulelist", 0)],
                                                          [("MergeModulelist", 0), ("Concatenate", 1)]):
                continue
            prefix = target[: -len(suffix)]
            templates = [prefix + p.lstrip(".") for p in c.source_patterns]  # model-space names, "*" the expert
            if all(t.replace("*", "0") in self._renamed for t in templates):
                return templates
        raise NnslimError(f"{str(self.directory)!r}: the experts of {target!r} are neither a 3D tensor nor per-expert "
                          f"tensors transformers' conversion mapping for {model_type!r} names; streaming this MoE "
                          "layout is not supported yet (load the model whole)")

    def _expert_row(self, name: str):
        """How a split expert's tensor `BLOCK.E.PROJ.weight|bias` is read: (checkpoint keys, expert, from rows of
        a 3D tensor, transpose), or None for other names."""
        parts = name.rsplit(".", 3)
        if len(parts) != 4 or parts[0] not in self.splits or not parts[1].isdigit():
            return None
        block, e, proj, kind = parts
        transposed, sources = self.splits[block]
        if sources.get(proj) is None or kind == "bias":  # (biases: rows of the stored 3D `PROJ_bias`)
            return [self._key(f"{block}.{proj}" + ("_bias" if kind == "bias" else ""))], int(e), True, \
                transposed and kind == "weight"
        return [self._renamed.get(t.replace("*", e), t.replace("*", e)) for t in sources[proj]], int(e), False, False

    def read(self, name: str) -> torch.Tensor:
        if name in self.offloaded:
            from accelerate.utils.offload import load_offloaded_weight

            return load_offloaded_weight(str(self.offload_dir / f"{name}.dat"), self.offloaded[name])
        part = self._expert_row(name)
        if part is not None:
            keys, e, rows, transpose = part
            for key in keys:
                if key not in self.where:
                    raise NnslimError(f"{str(self.directory)!r}: no tensor {key!r} in the checkpoint's shards")
            if rows:
                t = self.readers[self.where[keys[0]]].get_tensor(keys[0], row=e)
                return t.t().contiguous() if transpose else t
            ts = [self.readers[self.where[k]].get_tensor(k) for k in keys]
            return ts[0] if len(ts) == 1 else torch.cat(ts)
        key = self._key(name)
        if key not in self.where:
            merged = self._merged(key)
            if merged is None:
                raise NnslimError(f"{str(self.directory)!r}: no tensor {key!r} in the checkpoint's shards")
            return torch.stack([torch.cat([self._get(k) for k in keys]) for keys in merged])
        return self.readers[self.where[key]].get_tensor(key)

    def _get(self, key: str) -> torch.Tensor:
        return self.readers[self.where[key]].get_tensor(key)

    def _merged(self, key: str) -> list[list[str]] | None:
        """For a fused MoE tensor (`...experts.gate_up_proj`) the checkpoint stores per expert: each expert's
        checkpoint keys, in order (transformers' conversion mapping); None when it names no such tensor."""
        block, _, proj = key.rpartition(".")
        if not block or proj not in ("gate_up_proj", "up_proj", "down_proj"):
            return None
        try:
            templates = self._per_expert_keys(block, proj, self.model_type)
        except NnslimError:
            return None
        renamed, out = self._renamings(), []
        while all(t.replace("*", str(len(out))) in renamed for t in templates):
            out.append([renamed[t.replace("*", str(len(out)))] for t in templates])
        return out or None

    def __deepcopy__(self, memo):
        """A copied model reads the same shards, but what its methods finish is its own (a fresh offload
        folder beside the original's): compressing a copy never changes what the original reads."""
        import copy

        new = copy.copy(self)
        new.offloaded = dict(self.offloaded)
        new.splits = dict(self.splits)
        if self.offload_dir is not None:
            new.offload_dir = Path(tempfile.mkdtemp(prefix="nnslim-offload-", dir=self.offload_dir.parent))
            weakref.finalize(new, shutil.rmtree, str(new.offload_dir), True)
            for name in self.offloaded:  # (normally none: a streamed model is copied before any work)
                shutil.copyfile(self.offload_dir / f"{name}.dat", new.offload_dir / f"{name}.dat")
        return new

    def has(self, name: str) -> bool:
        part = self._expert_row(name)
        if part is not None:
            return name in self.offloaded or all(k in self.where for k in part[0])
        key = self._key(name)
        return name in self.offloaded or key in self.where or self._merged(key) is not None

    def materialize(self, module: nn.Module, prefix: str = "", skip: nn.Module | None = None,
                    offloaded: bool = True) -> None:
        """Give every meta parameter / buffer of `module` (named `prefix` in the model; `skip`: a submodule
        left on meta; offloaded=False: what was offloaded stays there) its stored values, in the checkpoint's
        dtype (offloaded ones in their own), on the CPU."""
        for owner, attr, full in _meta_tensors(module, prefix, skip):
            if not offloaded and full in self.offloaded:
                continue
            if not self.has(full) and attr in owner._parameters and _tied(module, owner):
                continue  # a tied head, stored once as the embedding: tied again by the caller
            self._read_into(owner, attr, full)

    def _read_into(self, owner: nn.Module, attr: str, full: str, device=None) -> None:
        value = self.read(full)
        if full not in self.offloaded and value.is_floating_point() and not tensor_finite(value):
            raise NnslimError(f"{str(self.directory)!r}: tensor {full!r} holds NaN or Inf; nnslim refuses "
                              "to go on with non-finite weights")  # (offloaded ones were checked when made)
        if tuple(value.shape) != tuple(_tensor(owner, attr).shape):
            raise NnslimError(f"{full}: shape {tuple(value.shape)} in the checkpoint, "
                              f"{tuple(_tensor(owner, attr).shape)} in the config")
        _put(owner, attr, value if device is None else value.to(device))

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


def _owned(module: nn.Module, prefix: str = "", skip: nn.Module | None = None):
    """(owner module, attribute, full name, tensor) of every parameter / buffer of `module` named `prefix`
    (`skip`: a submodule left out)."""
    inside = {id(m) for m in skip.modules()} if skip is not None else set()
    for mname, owner in module.named_modules():
        if id(owner) in inside:
            continue
        for attr, t in [*owner._parameters.items(), *owner._buffers.items()]:
            if t is not None:
                yield owner, attr, ".".join(p for p in (prefix, mname, attr) if p), t


def _meta_tensors(module: nn.Module, prefix: str, skip: nn.Module | None = None):
    """(owner module, attribute, full name) of every meta parameter / buffer of `module` named `prefix`."""
    return [(owner, attr, full) for owner, attr, full, t in _owned(module, prefix, skip) if t.is_meta]


def _put(owner: nn.Module, attr: str, value: torch.Tensor) -> None:
    """Set a parameter (frozen) or buffer of `owner` to `value`."""
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attr] = value


def _tensor(owner: nn.Module, attr: str) -> torch.Tensor:
    return owner._parameters[attr] if attr in owner._parameters else owner._buffers[attr]


def _tied(model: nn.Module, owner: nn.Module) -> bool:
    """Is `owner` the output embedding of a Hugging Face model inside `model` whose config ties it?"""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if getattr(cfg, "tie_word_embeddings", False) and hasattr(m, "get_output_embeddings"):
            return m.get_output_embeddings() is owner
    return False


def retie(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(getattr(m, "config", None), "tie_word_embeddings", False) and hasattr(m, "tie_weights"):
            m.tie_weights()
            return


def source_of(model: nn.Module) -> ShardSource | None:
    return getattr(model, ATTR, None)


def each_layer(model: nn.Module, layers: dict[str, nn.Module]):
    """(name, layer) of `layers` one at a time. For a streamed model each is read from the shards first, and
    once the caller has changed or replaced it, what sits at that name goes to the offload folder (if any) and
    a replaced float layer is dropped; big allocations are mmapped meanwhile (freed layers leave no heap holes)."""
    source = source_of(model)
    if source is None:
        yield from layers.items()
        return
    from ..io import big_allocations_mapped

    with big_allocations_mapped():
        for name, layer in layers.items():
            source.materialize(layer, name)
            yield name, layer
            current = model.get_submodule(name)
            source.offload(current, name)
            if current is not layer:
                layer.to("meta")


def unique_state(module: nn.Module) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """{name: (tensor, the other names of the same tensor)} of `module`'s state: a tensor shared by several
    names (a tied head) once, under its first name; tensors on the meta device are compared by identity."""
    state = module.state_dict(keep_vars=True)
    first: dict[tuple, str] = {}
    out: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for name, t in state.items():
        key = (id(t),) if t.is_meta else (t.data_ptr(), tuple(t.shape), t.dtype)
        if key in first:
            out[first[key]][1].append(name)
        else:
            first[key] = name
            out[name] = (t, [])
    return out


def value_of(source: ShardSource | None, name: str, t: torch.Tensor) -> torch.Tensor:
    """The values of tensor `t` (named `name` in the model): read from the source when it is on meta."""
    return source.read(name) if t.is_meta else t.detach()


def resident(source: ShardSource | None, module: nn.Module, prefix: str):
    """A context in which `module` (named `prefix`) has its tensors on meta (offloaded, or in the checkpoint) in
    memory (nothing to do without a source)."""
    return source.resident(module, prefix) if source is not None else nullcontext(module)
