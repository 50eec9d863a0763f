"""Artifacts in the formats the ecosystem loads.

Weight-only int LLMs are written as a standard Hugging Face checkpoint in the compressed-tensors
"pack-quantized" format, W8A8 ones (int8 / fp8 weights per channel, dynamic per-token activations) in its
"int-quantized" / "float-quantized" formats (what llm-compressor writes and vLLM / transformers load): the HF
model's own weight names, `config.json` with a `quantization_config`, the tokenizer beside it. nnslim reads the
same files back into its packed layers (and so its own kernels). Packing uses the compressed-tensors
library's functions, so the bits are what that library (and the loaders built on it) expects.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import NnslimError
from .graph.streaming import resident, source_of, unique_state, value_of
from .pruned_config import build_meta, pruned_config

FORMAT = "compressed-tensors"


def _hf_root(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The transformers PreTrainedModel inside nnslim's wrapper, and its attribute prefix ('lm.')."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model, ""
    for name, child in model.named_children():
        if isinstance(child, PreTrainedModel):
            return child, name + "."
    return None


def writable(model: nn.Module) -> str | None:
    """None when `model` can be written as compressed-tensors; else the reason it cannot."""
    from .graph.modules import packed_layers

    root = _hf_root(model)
    if root is None:
        return "not a Hugging Face model"
    if getattr(root[0], "nnslim_conv1d", None):
        return "its Conv1D layers (GPT-2 family) have no compressed-tensors form"
    from .pruning.structured import PLAN_ATTR

    if getattr(model, PLAN_ATTR, None):
        return "it is also structurally pruned (its config.json is not rewritten for quantized layers)"
    layers = packed_layers(model)
    if not layers:
        return "no quantized layers"
    from .graph.experts import split_names

    split = split_names(model)
    if split:  # transformers 5's MoE experts are 3D tensors: compressed-tensors' per-Linear layout cannot load
        return (f"its MoE experts ({split[0]}{' and others' if len(split) > 1 else ''}) are quantized per "
                "expert, which transformers' fused experts modules do not load")
    for name, cfg in layers.items():
        if cfg.get("kind") == "weight_only_embedding":
            return (f"embedding {name} is int8 (backup: int8), which transformers does not load from a "
                    "compressed-tensors checkpoint; backup: float keeps a transformers / vLLM checkpoint")
        if cfg.get("kind") == "w8a8":
            if cfg.get("input_scale"):
                return f"layer {name} keeps an unfolded SmoothQuant input scale"
        elif cfg.get("kind") != "weight_only":
            return f"layer {name} is {cfg.get('kind')!r}, not weight-only int or W8A8"
        if not cfg.get("symmetric", True):
            # measured: transformers 5.24 + compressed-tensors 0.20 refuse the packed zero points they define
            return f"layer {name} is asymmetric (zero points); compressed-tensors is written for symmetric int"
        if cfg.get("input_scale"):
            return f"layer {name} keeps an unfolded AWQ input scale"
        if not name.startswith(root[1]):
            return f"layer {name} is outside the Hugging Face model"
    formats = {_format(cfg) for cfg in layers.values()}
    if len(formats) > 1:
        return f"its layers mix compressed-tensors formats ({', '.join(sorted(formats))}), one per checkpoint"
    return _load_fails(root[0], quantization_config({n[len(root[1]):]: c for n, c in layers.items()}))


def _load_fails(hf: nn.Module, qconfig: dict) -> str | None:
    """Why transformers would fail to load this checkpoint, found by running its own loading steps on an empty
    (meta) copy of the architecture: compressed-tensors' layout of the quantized layers, then the model's weight
    init, which in some architectures reads a quantized layer's `.weight` (measured: T5, Falcon; the tensors the
    checkpoint holds are marked loaded first, as from_pretrained marks them). None when it
    passes, or when these steps cannot be run with this transformers (the checkpoint is written then)."""
    import copy

    try:
        from transformers.quantizers.quantizer_compressed_tensors import CompressedTensorsHfQuantizer
        from transformers.utils.quantization_config import CompressedTensorsConfig

        config = copy.deepcopy(hf.config)
        config.quantization_config = None
        built = build_meta(hf, config)
        quantizer = CompressedTensorsHfQuantizer(CompressedTensorsConfig.from_dict(copy.deepcopy(qconfig)))
        quantizer.use_fp8_kernel = False  # int weights only here (set by its environment check otherwise)
        with torch.device("meta"):
            quantizer._process_model_before_weight_loading(built)
    except Exception:  # noqa: BLE001 - a different transformers: the check cannot run, the write goes ahead
        return None
    for t in built.state_dict(keep_vars=True).values():  # as from_pretrained marks what the checkpoint holds:
        t._is_hf_initialized = True  # its init functions skip those tensors (int8 W8A8 weights), not the modules
    try:
        with torch.device("meta"):
            built.initialize_weights()
    except (AttributeError, TypeError, RuntimeError) as e:
        return (f"transformers + compressed-tensors cannot load a quantized {type(hf).__name__} (its weight init "
                f"fails on the quantized layers: {str(e).splitlines()[0][:120]})")
    return None


W8A8_FORMATS = {"int8": ("int", "int-quantized"), "fp8": ("float", "float-quantized")}  # nnslim -> CT type, format


def _format(cfg: dict) -> str | None:
    """The compressed-tensors format of a packed layer: weight-only int packs codes into int32; W8A8 stores
    its int8 / fp8 codes as they are (what llm-compressor writes for W8A8-INT8 and FP8-dynamic)."""
    if cfg.get("kind") == "w8a8":
        return W8A8_FORMATS[cfg["format"]][1]
    return "pack-quantized" if cfg.get("kind") == "weight_only" else None


def _scheme(cfg: dict) -> tuple[dict, dict | None]:
    """(weights, input activations) of a layer: W8A8 is 8-bit per output channel, activations per token at
    run time (dynamic, symmetric); weight-only int has no activation scheme."""
    if cfg.get("kind") == "w8a8":
        kind = W8A8_FORMATS[cfg["format"]][0]
        return ({"num_bits": 8, "type": kind, "symmetric": True, "strategy": "channel", "group_size": None,
                 "dynamic": False},
                {"num_bits": 8, "type": kind, "symmetric": True, "strategy": "token", "group_size": None,
                 "dynamic": True})
    strategy = "channel" if cfg["group"] == cfg["in_features"] else "group"
    return ({"num_bits": cfg["bits"], "type": "int", "symmetric": cfg["symmetric"], "strategy": strategy,
             "group_size": cfg["group"] if strategy == "group" else None, "dynamic": False}, None)


def quantization_config(layers: dict[str, dict]) -> dict[str, Any]:
    """compressed-tensors config: one group per distinct scheme, targeting its layers by name."""
    groups: dict[str, dict] = {}
    for name, cfg in layers.items():
        weights, acts = _scheme(cfg)
        key = json.dumps([weights, acts], sort_keys=True)
        groups.setdefault(key, {"targets": [], "weights": weights, "input_activations": acts,
                                "output_activations": None})["targets"].append(name)
    fmt = _format(next(iter(layers.values()))) if layers else "pack-quantized"
    return {"quant_method": FORMAT, "format": fmt, "quantization_status": "compressed",
            "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())}, "ignore": []}


def iter_tensors(model: nn.Module) -> tuple[Iterator[tuple[str, torch.Tensor]], dict[str, dict]]:
    """(the tensors under the HF model's own names, one at a time, each packed layer converted only when it
    is reached; {layer name: packed config}) of a symmetric weight-only model (writable() refuses the others)."""
    from .graph.modules import packed_layers

    hf, prefix = _hf_root(model)
    layers = {name[len(prefix):]: cfg for name, cfg in packed_layers(model).items()}
    return _tensors(hf, layers, source_of(model), prefix), layers


PACK_ROWS = 1024  # pack_to_int32 works in int32 with temporaries: a few hundred MB for a whole 4096x11008 layer


def _tensors(hf: nn.Module, layers: dict[str, dict], source=None, prefix: str = ""
             ) -> Iterator[tuple[str, torch.Tensor]]:
    """`source`: the ShardSource of a streamed model, whose offloaded tensors are read back one at a time."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from .graph.modules import as_weight_norm, weight_norm_keys

    norms = weight_norm_keys(hf)  # folded weight_norms: stored as transformers stores them (g, v)
    for name, (tensor, _) in unique_state(hf).items():  # a tied head is the embedding: stored once, re-tied on load
        if name.rsplit(".", 1)[0] not in layers:
            value = _own_storage(value_of(source, prefix + name, tensor).contiguous())
            yield from as_weight_norm(name, value, norms[name]) if name in norms else [(name, value)]
    for name in layers:
        layer = hf.get_submodule(name)
        with resident(source, layer, prefix + name):
            if layers[name].get("kind") == "w8a8":  # the codes as they are, scales [out, 1] in fp32
                yield f"{name}.weight", layer.qweight.detach().clone()
                yield f"{name}.weight_scale", layer.wscale.detach().float().clone()[:, None]
            else:
                yield f"{name}.weight_packed", _ct_packed(layer, pack_to_int32)
                yield f"{name}.weight_scale", layer.scales.detach().clone()
                yield f"{name}.weight_shape", torch.tensor([layer.out_features, layer.in_features])
            if layer.bias is not None:
                yield f"{name}.bias", layer.bias.detach().clone()


def _ct_packed(layer, pack_to_int32) -> torch.Tensor:
    """compressed-tensors' int32 packing of a layer's signed codes, PACK_ROWS rows at a time (rows are packed
    apart, so this is exact; whole layers in int32 would need a few hundred MB of temporaries)."""
    from .quant.weight_only.formats import unpack

    offset = 1 << (layer.bits - 1)
    parts = []
    for r in range(0, layer.out_features, PACK_ROWS):
        codes = (unpack(layer.qweight[r:r + PACK_ROWS], layer.bits, layer.in_features) - offset).to(torch.int8)
        parts.append(pack_to_int32(codes, layer.bits))  # unsigned codes -> the signed ones CT stores
    return torch.cat(parts)


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole else t.clone()


SHARD_BYTES = 1 << 30  # compressed-tensors shards of at most ~1 GiB, written one at a time


def write_shards(directory: Path, items: Iterator[tuple[str, torch.Tensor]], shard_bytes: int | None = None
                 ) -> list[str]:
    """model.safetensors, or shards of at most shard_bytes + model.safetensors.index.json (as transformers
    writes them), from (name, tensor) pairs converted and written one shard at a time; returns the names."""
    from .io import atomic_write, atomic_write_json, write_safetensors

    shard_bytes = shard_bytes or SHARD_BYTES
    shards: list[tuple[str, list[str], int]] = []
    pending: dict[str, torch.Tensor] = {}
    size = 0  # bytes in `pending`

    def flush():
        nonlocal size
        name = f"model-{len(shards) + 1:05d}.safetensors"
        atomic_write(directory / name, lambda tmp: write_safetensors(tmp, pending, metadata={"format": "pt"}))
        shards.append((name, list(pending), size))
        pending.clear()
        size = 0

    for key, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if pending and size + nbytes > shard_bytes:
            flush()
        pending[key] = tensor
        size += nbytes
    flush()
    if len(shards) == 1:
        (directory / shards[0][0]).replace(directory / "model.safetensors")
        return ["model.safetensors"]
    index = {"metadata": {"total_size": sum(b for _, _, b in shards)},
             "weight_map": {k: name for name, keys, _ in shards for k in keys}}
    atomic_write_json(directory / "model.safetensors.index.json", index)
    return [name for name, _, _ in shards] + ["model.safetensors.index.json"]


def write(model: nn.Module, directory: Path, source_config: Path, shard_bytes: int | None = None) -> list[str]:
    """The checkpoint (model.safetensors, or shards + model.safetensors.index.json when larger than
    shard_bytes) and config.json with quantization_config in `directory`; returns the file names. Shards
    are converted and written one at a time: writing never holds a second copy of the whole model."""
    from .io import atomic_write_json

    try:
        config = json.loads(Path(source_config).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NnslimError(f"{str(source_config)!r} cannot be read: {e}") from None
    items, layers = iter_tensors(model)
    dtypes: set[torch.dtype] = set()

    def noting_scale_dtypes():
        for key, tensor in items:
            if key.endswith("weight_scale"):
                dtypes.add(tensor.dtype)
            yield key, tensor

    files = write_shards(directory, noting_scale_dtypes(), shard_bytes)
    config["quantization_config"] = quantization_config(layers)
    config["torch_dtype"] = config["dtype"] = str(dtypes.pop() if len(dtypes) == 1 else torch.float32)[6:]
    if any(name == "lm_head" or name.endswith(".lm_head") for name in layers):
        config["tie_word_embeddings"] = False  # the head is stored quantized, the embedding float
    atomic_write_json(directory / "config.json", config)
    return files + ["config.json"]


def read_into(model: nn.Module, weights: Path | list[Path], config: dict) -> nn.Module:
    """Load a compressed-tensors checkpoint into `model` (an nnslim wrapper built from the same config):
    quantized layers become nnslim's packed layers, everything else loads by name (strictly)."""
    from .io import SafetensorsReader

    qc = config.get("quantization_config") or {}
    readable = ("pack-quantized", "int-quantized", "float-quantized")
    if qc.get("quant_method") != FORMAT or qc.get("format") not in readable:
        where = (weights[0] if isinstance(weights, list) else weights).parent
        raise NnslimError(f"quantization_config of {str(where)!r} is {qc.get('quant_method')!r}/"
                          f"{qc.get('format')!r}; nnslim reads compressed-tensors {', '.join(readable)}")
    root = _hf_root(model)
    if root is None:
        raise NnslimError("a compressed-tensors checkpoint needs a Hugging Face model to load into")
    hf, _ = root
    files = weights if isinstance(weights, list) else [weights]
    readers = [SafetensorsReader(w) for w in files]
    try:
        return _read_groups(model, hf, _Lazy(readers), qc, files[0])
    finally:
        for r in readers:
            r.close()


class _Lazy:
    """The tensors of open safetensors files (the shards of one checkpoint), read one at a time when popped:
    converting layer by layer never holds the whole file and the converted model at once."""

    def __init__(self, readers):
        self.where = {k: r for r in readers for k in r.keys()}
        self.left = set(self.where)

    def pop(self, name: str, *default):
        if name not in self.left:
            if default:
                return default[0]
            raise KeyError(name)
        self.left.discard(name)
        return self.where[name].get_tensor(name)

    def rest(self) -> dict[str, torch.Tensor]:
        return {k: self.pop(k) for k in sorted(self.left)}


def _read_groups(model: nn.Module, hf: nn.Module, tensors: _Lazy, qc: dict, weights: Path) -> nn.Module:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from .graph.modules import replace_module
    from .quant.weight_only.formats import WeightSpec
    from .quant.weight_only.modules import WeightOnlyLinear

    replaced: set[str] = set()
    for group in (qc.get("config_groups") or {}).values():
        w = group.get("weights") or {}
        if group.get("input_activations"):
            replaced.update(_read_w8a8_group(hf, tensors, group, weights))
            continue
        if w.get("type") != "int":
            raise NnslimError(f"{str(weights.parent)!r}: only weight-only int and W8A8 groups are read, not {group}")
        spec = WeightSpec(int(w["num_bits"]), int(w.get("group_size") or -1), bool(w.get("symmetric", True)))
        for name in group.get("targets") or []:
            linear = _target_linear(hf, name, weights)
            n, k = linear.out_features, linear.in_features
            offset = 1 << (spec.bits - 1)
            codes = unpack_from_int32(tensors.pop(f"{name}.weight_packed"), spec.bits, torch.Size([n, k]))
            scale = tensors.pop(f"{name}.weight_scale")
            tensors.pop(f"{name}.weight_shape", None)
            zp = tensors.pop(f"{name}.weight_zero_point", None)
            zero = (unpack_from_int32(zp, spec.bits, torch.Size(scale.shape), packed_dim=0).to(torch.int32) + offset
                    if zp is not None else torch.full(scale.shape, offset, dtype=torch.int32))
            codes = (codes.to(torch.int16) + offset).to(torch.uint8)  # small temporaries: 1-2 bytes per weight
            layer = WeightOnlyLinear.from_codes(linear.to(scale.dtype), codes, scale, zero, spec, device=scale.device)
            if linear.bias is not None:
                layer.bias.copy_(tensors.pop(f"{name}.bias"))
            replace_module(hf, name, layer)
            replaced.add(name)
    unexpected, left = assign_state(hf, tensors.rest())
    if unexpected:
        raise NnslimError(f"{str(weights)!r} holds tensors the architecture has no place for: {unexpected[:3]}")
    if left:
        raise NnslimError(f"{str(weights)!r} lacks tensors of the architecture: {left[:3]}")
    return model


def _target_linear(hf: nn.Module, name: str, weights: Path) -> nn.Linear:
    linear = hf.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise NnslimError(f"target {name!r} of {str(weights.parent)!r} is not a Linear layer")
    return linear


def _read_w8a8_group(hf: nn.Module, tensors: _Lazy, group: dict, weights: Path) -> list[str]:
    """A W8A8 group (8-bit weights per channel, dynamic per-token activations of the same type) as W8A8Linear
    layers; any other scheme with activations is refused, naming it."""
    from .graph.modules import replace_module
    from .quant.w8a8 import W8A8Linear

    w, a = group.get("weights") or {}, group.get("input_activations") or {}
    fmt = next((f for f, (kind, _) in W8A8_FORMATS.items() if kind == w.get("type")), None)
    if (fmt is None or w.get("num_bits") != 8 or w.get("strategy") != "channel" or not w.get("symmetric", True)
            or a.get("type") != w.get("type") or a.get("num_bits") != 8 or a.get("strategy") != "token"
            or not a.get("dynamic") or not a.get("symmetric", True)):
        raise NnslimError(f"{str(weights.parent)!r}: a group with activations is read only as W8A8 (8-bit int / "
                          f"float weights per channel, dynamic symmetric per-token activations), not {group}")
    names = list(group.get("targets") or [])
    for name in names:
        linear = _target_linear(hf, name, weights)
        codes, scale = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.weight_scale")
        layer = W8A8Linear(linear.in_features, linear.out_features, fmt, linear.bias is not None,
                           linear.weight.dtype if not linear.weight.is_meta else scale.dtype)
        if codes.dtype != layer.qweight.dtype or tuple(codes.shape) != tuple(layer.qweight.shape):
            raise NnslimError(f"{name}.weight of {str(weights.parent)!r} is {codes.dtype} {tuple(codes.shape)}; "
                              f"{fmt} W8A8 needs {layer.qweight.dtype} {tuple(layer.qweight.shape)}")
        layer.qweight.copy_(codes)
        layer.wscale.copy_(scale.float().reshape(-1))
        if linear.bias is not None:
            layer.bias.copy_(tensors.pop(f"{name}.bias"))
        replace_module(hf, name, layer.to(scale.device))
    return names


def assign_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load `tensors` into a model built on the meta device by assignment: they become its parameters (no
    second copy). Tensors the model ties (a head and its embedding; T5's shared / encoder / decoder embeddings)
    stored once under any of their names are tied again. Returns (unexpected names, names still on meta)."""
    from .graph.modules import is_packed

    root = _hf_root(model)
    if root is not None and hasattr(root[0], "tie_weights"):
        try:
            root[0].tie_weights()  # on meta too: the model's own tied names become one tensor again
        except (AttributeError, KeyError, ValueError):
            # a tied table or head that is packed (int8 codes, no .weight parameter) cannot be tied by
            # transformers; the packed layer is one module at each of its paths (artifact quantized_aliases)
            if not any(is_packed(m) for m in root[0].modules()):
                raise
    tied = [[name, *others] for name, (_, others) in unique_state(model).items() if others]
    _, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    state = model.state_dict(keep_vars=True)
    for names in tied:
        kept = next((state[n] for n in names if not state[n].is_meta), None)
        for n in names:
            if kept is not None and state[n].is_meta:
                owner, _, attr = n.rpartition(".")
                setattr(model.get_submodule(owner) if owner else model, attr, kept)
    return unexpected, [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def _plain_tensors(hf: nn.Module, source, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF model's state under its own names, offloaded tensors read back one at a time, a tied head once."""
    conv1d = {f"{n}.weight" for n in getattr(hf, "nnslim_conv1d", ())}
    for name, (tensor, _) in unique_state(hf).items():
        value = value_of(source, prefix + name, tensor)
        yield name, (value.t() if name in conv1d else value).contiguous()


class NotExpressible(Exception):
    """The model's transformers config cannot describe its (pruned) shapes; the message says why."""


def write_hf(model: nn.Module, directory: Path) -> list[str] | None:
    """A float (or fp16 / pruned) Hugging Face model saved as transformers saves it (save_pretrained),
    with its config updated to pruned shapes; None when it is not a Hugging Face model; NotExpressible when
    its config cannot express the model."""
    root = _hf_root(model)
    if root is None:
        return None
    hf, _ = root
    config, why = pruned_config(hf)
    if config is None:
        raise NotExpressible(why)
    from .runtime.base import model_dtype

    config.dtype = model_dtype(hf)
    before = set(p.name for p in directory.iterdir())
    source = source_of(model)
    if source is not None and source.offloaded:  # streamed, finished blocks on disk: read back one at a time
        config.save_pretrained(str(directory))
        if getattr(hf, "generation_config", None) is not None and hf.can_generate():
            hf.generation_config.save_pretrained(str(directory))
        write_shards(directory, _plain_tensors(hf, source, root[1]))
    else:
        state = hf.state_dict()
        for name in getattr(hf, "nnslim_conv1d", ()):  # back to Conv1D's [in, out] layout
            state[f"{name}.weight"] = state[f"{name}.weight"].t().contiguous()
        from .graph.modules import unfold_weight_norms

        unfold_weight_norms(hf, state)  # weight_norm as transformers stores it (g, v)
        original = hf.config
        hf.config = config
        try:
            hf.save_pretrained(str(directory), state_dict=state, safe_serialization=True)
        finally:
            hf.config = original
    from .io import _umask

    written = sorted(p.name for p in directory.iterdir() if p.name not in before)
    for name in written:  # transformers' writers leave 0600 files: a serving user must be able to read them
        (directory / name).chmod(0o666 & ~_umask())
    return written
