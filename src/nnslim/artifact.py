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

from .errors import NnslimError
from .io import (META_FILE, ONNX_FILE, WEIGHTS_FILE, atomic_write, atomic_write_json, check_onnx,
                 library_versions, read_meta)
from .runtime.base import OnnxModel, model_dtype

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def architecture_of(testbed) -> dict[str, Any]:
    """How nnslim.load rebuilds the module: a built-in testbed, an HF directory, or a user's class."""
    from .testbeds import TESTBEDS, CausalLMTestbed, ModuleTestbed, TextEncoderTestbed

    if testbed is None or isinstance(testbed, ModuleTestbed):
        module = testbed.load_model() if testbed is not None else None
        cls = type(module) if module is not None else None
        return {"kind": "module", "class": f"{cls.__module__}.{cls.__qualname__}" if cls else None}
    if testbed.name in TESTBEDS:
        return {"kind": "testbed", "name": testbed.name}
    if isinstance(testbed, (CausalLMTestbed, TextEncoderTestbed)):
        kind = "hf-causal-lm" if isinstance(testbed, CausalLMTestbed) else "hf-encoder"
        return {"kind": kind, "path": str(Path(testbed.model_dir).resolve())}
    return {"kind": "module", "class": None}


def testbed_from_architecture(arch: dict[str, Any]):
    from .testbeds import CausalLMTestbed, TextEncoderTestbed, get_testbed

    kind = arch.get("kind")
    if kind == "testbed":
        return get_testbed(arch["name"])
    if kind == "hf-causal-lm":
        return CausalLMTestbed(arch["path"], name=f"hf:{arch['path']}")
    if kind == "hf-encoder":
        return TextEncoderTestbed(arch["path"], name=f"hf:{arch['path']}")
    return None




def quantized_layers(model: torch.nn.Module) -> dict[str, dict]:
    """name -> constructor config of every packed quantized layer (weight-only, W8A8)."""
    from .quant.w8a8 import W8A8Linear
    from .quant.weight_only.modules import WeightOnlyLinear

    from .lowrank.svd import LowRankLinear
    from .prune.sparse24 import SemiSparseLinear

    out = {n: m.quant_config() for n, m in model.named_modules() if isinstance(m, (WeightOnlyLinear, W8A8Linear))}
    out.update({n: m.rebuild_config() for n, m in model.named_modules()
                if isinstance(m, (LowRankLinear, SemiSparseLinear))})
    return out


def _rebuild_quantized(model: torch.nn.Module, layers: dict[str, dict], dtype: torch.dtype, where: Path) -> None:
    """Put empty quantized layers where nnslim.json says they were, so the saved buffers load into them."""
    from .quant.modules import replace_module
    from .quant.w8a8 import W8A8Linear
    from .quant.weight_only.modules import WeightOnlyLinear

    for name, cfg in layers.items():
        try:
            model.get_submodule(name)
            kind = cfg["kind"]
            if kind == "weight_only":
                new = WeightOnlyLinear(cfg["in_features"], cfg["out_features"], cfg["bits"], cfg["group"],
                                       cfg["symmetric"], cfg["bias"], dtype, cfg.get("input_scale", False))
            elif kind == "lowrank":
                from .lowrank.svd import LowRankLinear

                new = LowRankLinear(cfg["in_features"], cfg["out_features"], cfg["rank"], cfg["bias"], dtype)
            elif kind == "semi_sparse":
                from .prune.sparse24 import SemiSparseLinear

                new = SemiSparseLinear(cfg["in_features"], cfg["out_features"], cfg["bias"], dtype)
            elif kind == "w8a8":
                new = W8A8Linear(cfg["in_features"], cfg["out_features"], cfg["format"], cfg["bias"], dtype,
                                 cfg.get("input_scale", False))
                new.fast_accum = bool(cfg.get("fast_accum", False))
            else:
                raise NnslimError(f"quantized layer kind {kind!r} is not allowed; allowed: weight_only, w8a8, lowrank, semi_sparse")
        except (AttributeError, KeyError, TypeError) as e:
            raise NnslimError(f"{where}: quantized layer {name!r} does not fit the architecture: {e}") from None
        replace_module(model, name, new)


def save(model, directory: str | Path, testbed=None, recipe: dict | None = None, seed: int = 0,
         extra: dict | None = None) -> Path:
    """Write `model` (nn.Module or OnnxModel) and nnslim.json into `directory` (files written atomically)."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"nnslim_format": 1, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                            "testbed": getattr(testbed, "name", None), "architecture": architecture_of(testbed),
                            "recipe": recipe, "seed": seed, "versions": library_versions()}
    if isinstance(model, torch.nn.Module):
        from .quant.modules import QuantEmbedding, QuantWrapper

        if any(isinstance(m, (QuantWrapper, QuantEmbedding)) for m in model.modules()):
            raise NnslimError("saving a simulated-int8 torch model is not supported yet; save the deployable "
                              "int8 model with nnslim.export_onnx(model, example_inputs, path) or use "
                              "nnslim.compress(..., out=DIR), which writes the int8 ONNX artifact")
        from .prune.storage import STORAGE_ATTR, save_sparse

        sparse = getattr(model, STORAGE_ATTR, None)
        if sparse is not None:
            atomic_write(directory / WEIGHTS_FILE, lambda tmp: meta.update(sparse_storage=save_sparse(model, tmp, sparse)))
        else:
            atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_model(model, tmp))
        meta.update(format="torch", file=WEIGHTS_FILE, dtype=str(model_dtype(model)).replace("torch.", ""))
        layers = quantized_layers(model)
        if layers:
            meta["quantized_layers"] = layers
        from .prune.structured import PLAN_ATTR

        if getattr(model, PLAN_ATTR, None):
            meta["structured_plan"] = getattr(model, PLAN_ATTR)
    elif isinstance(model, OnnxModel):
        target = directory / ONNX_FILE
        if model.path.resolve() != target.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(model.path, tmp))
            data = Path(str(model.path) + ".data")
            if data.exists():
                atomic_write(Path(str(target) + ".data"), lambda tmp: shutil.copyfile(data, tmp))
        meta.update(format="onnx", file=ONNX_FILE)
    else:
        raise NnslimError(f"cannot save a {type(model).__name__}; expected torch.nn.Module or an ONNX model")
    meta.update(extra or {})
    atomic_write_json(directory / META_FILE, meta)
    return directory


def load(directory: str | Path, model: torch.nn.Module | None = None):
    """Load an artifact directory written by save/compress.

    Torch artifacts are rebuilt from their recorded architecture (testbed or HF directory); for a
    user's own class pass `model`, a module of the same architecture whose weights get replaced.
    """
    from safetensors.torch import load_model

    directory = Path(directory)
    meta = read_meta(directory)
    fmt = meta.get("format")
    if fmt == "onnx":
        path = directory / meta.get("file", ONNX_FILE)
        check_onnx(path)
        return OnnxModel(path)
    if fmt != "torch":
        raise NnslimError(f"{directory / META_FILE}: format={fmt!r} is not allowed; allowed: torch, onnx")
    if model is None:
        testbed = testbed_from_architecture(meta.get("architecture", {}))
        if testbed is None:
            raise NnslimError(f"{directory} holds weights of a user-defined module "
                              f"({meta.get('architecture', {}).get('class')}); pass model=<an instance of it> "
                              "to nnslim.load")
        model = testbed.load_model()
    dtype = _DTYPES.get(meta.get("dtype", "float32"))
    if dtype is None:
        raise NnslimError(f"{directory / META_FILE}: dtype={meta.get('dtype')!r} is not allowed; "
                          f"allowed: {', '.join(_DTYPES)}")
    if meta.get("structured_plan"):
        from .prune.structured import apply_plan

        model = apply_plan(model, meta["structured_plan"])
    model = model.to(dtype)  # before packed layers go in: .to() would also cast fp8 codes
    _rebuild_quantized(model, meta.get("quantized_layers") or {}, dtype, directory / META_FILE)
    weights = directory / meta.get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise NnslimError(f"weights file {str(weights)!r} not found")
    try:
        if meta.get("sparse_storage"):
            from .prune.storage import load_sparse

            load_sparse(model, str(weights), meta["sparse_storage"])
        else:
            load_model(model, str(weights), strict=True)
    except NnslimError:
        raise
    except Exception as e:
        raise NnslimError(f"{weights} does not match the architecture: {str(e).splitlines()[0]}") from None
    return model.eval()
