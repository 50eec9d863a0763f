"""Public verbs: compress, evaluate, benchmark, save, load (and export_onnx)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifact
from .errors import NnslimError, bad_value
from .progress import stage, warn
from .validate import check_finite_data, check_finite_module
from .eval.latency import measure_interleaved
from .eval.memory import peak_memory_bytes
from .eval.report import Report, VariantResult
from .io import (META_FILE, StagedDir, check_onnx, check_out_path, find_meta, library_versions, machine_info,
                 scratch_dir)
from .recipe import Context, Recipe, as_recipe, get_method
from .runtime import OnnxModel, make_runner
from .runtime.base import model_dtype
from .testbeds import TESTBEDS, ModuleTestbed, Testbed, get_testbed, testbed_for_hf_dir

save = artifact.save


def load(path: str | Path, model: torch.nn.Module | None = None):
    """Load an nnslim artifact dir, an ONNX file or a Hugging Face model dir (see resolve)."""
    return resolve(path, skeleton=model).model


@dataclass
class Resolved:
    model: Any  # torch.nn.Module or OnnxModel
    testbed: Testbed | None
    source: str | None  # how a fresh process reloads it (for peak-memory measurement)


def resolve(model, testbed: Testbed | str | None = None, example_inputs: dict | None = None,
            calibration: list | None = None, dynamic_axes: dict | None = None,
            skeleton: torch.nn.Module | None = None, trust_remote_code: bool = False) -> Resolved:
    """Turn what the user gave (testbed name, path, nn.Module) into a model plus its testbed.

    `testbed` may be a testbed name or a Hugging Face model dir (its data, metric and reference model).
    A folder's own code (HF auto_map) runs only with trust_remote_code=True.
    """
    if isinstance(testbed, str):
        testbed = _testbed_arg(testbed, trust_remote_code)
    if isinstance(model, torch.nn.Module):
        if testbed is None:
            if example_inputs is None:
                raise NnslimError("example_inputs is required for a torch.nn.Module without a testbed: "
                                  "a dict of named input tensors, e.g. {'x': torch.randn(8, 3, 32, 32)}")
            testbed = ModuleTestbed(model, example_inputs, calibration, dynamic_axes)
        return Resolved(model, testbed, None)
    if isinstance(model, OnnxModel):
        model = model.path
    if not isinstance(model, (str, Path)):
        raise NnslimError(f"model of type {type(model).__name__} is not allowed; allowed: a testbed name "
                          f"({', '.join(TESTBEDS)}), a path (.onnx file, nnslim artifact dir, Hugging Face "
                          "model dir) or a torch.nn.Module")
    text = str(model)
    if text == "":
        raise NnslimError("--model='' is not allowed; give a testbed name, an .onnx file, an nnslim artifact "
                          "dir or a Hugging Face model dir")
    name = text[len("testbed:"):] if text.startswith("testbed:") else text
    if name in TESTBEDS and (text != name or os.sep not in text):
        if text == name and Path(text).exists():
            # A bare testbed name always means the testbed; say so when a path of that name exists too.
            warn(f"--model={text!r} is the testbed {text!r}; a path of that name exists and is not used "
                 f"(write ./{text} for the path)")
        tb = testbed or get_testbed(name)
        return Resolved(tb.load_model(), tb, f"testbed:{name}")
    if text != name:
        raise bad_value("--model", text, [f"testbed:{t}" for t in TESTBEDS])
    path = Path(text)
    if not path.exists():
        raise NnslimError(f"--model={text!r} is neither a testbed ({', '.join(TESTBEDS)}) nor an existing path")
    if path.is_file() and path.suffix == ".onnx":
        check_onnx(path)
        meta = find_meta(path)
        if testbed is None and meta:
            testbed = artifact.testbed_from_architecture(meta.get("architecture", {}), path.parent,
                                                         trust_remote_code)
        if testbed is not None:
            _check_onnx_inputs(path, testbed)
        return Resolved(OnnxModel(path), testbed, str(path))
    if path.is_dir() and (path / META_FILE).is_file():
        loaded = artifact.load(path, model=skeleton, trust_remote_code=trust_remote_code)
        meta = find_meta(path)
        tb = testbed or artifact.testbed_from_architecture(meta.get("architecture", {}), path, trust_remote_code)
        if isinstance(loaded, OnnxModel) and tb is not None:
            _check_onnx_inputs(loaded.path, tb)
        return Resolved(loaded, tb, str(path))
    if path.is_dir() and (path / "config.json").is_file():
        tb = testbed or testbed_for_hf_dir(path, trust_remote_code)
        return Resolved(tb.load_model(), tb, str(path))
    if path.is_file() and path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        raise NnslimError(f"--model={text!r} is a bare weights file with no architecture; give a Hugging Face "
                          "model dir, an nnslim artifact dir, an .onnx file, or pass the module in Python")
    raise NnslimError(f"--model={text!r} is not a model nnslim can read; allowed: a testbed name, an .onnx "
                      "file, an nnslim artifact dir (with nnslim.json), a Hugging Face model dir (with config.json)")


def _testbed_arg(text: str, trust_remote_code: bool) -> Testbed:
    """--testbed: a testbed name, or a Hugging Face model dir whose data and model are the reference."""
    if text in TESTBEDS:
        return get_testbed(text)
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file() and not (path / META_FILE).is_file():
        return testbed_for_hf_dir(path, trust_remote_code)
    raise bad_value("--testbed", text, [*TESTBEDS, "a Hugging Face model dir"])


def _check_onnx_inputs(path: Path, testbed: Testbed) -> None:
    """The testbed must feed exactly the inputs the ONNX graph needs (checked before any run)."""
    if isinstance(testbed, ModuleTestbed) or not testbed.input_names:
        return
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    needed = {i.name: len(i.type.tensor_type.shape.dim) for i in proto.graph.input if i.name not in inits}
    fed = {k: np.ndim(v) for k, v in testbed.export_example().items()}
    if fed != needed:
        raise NnslimError(f"testbed {testbed.name!r} feeds inputs {_ranks(fed)} but {str(path)!r} takes "
                          f"{_ranks(needed)}; pass the --testbed this model was made for")


def _ranks(inputs: dict[str, int]) -> str:
    return ", ".join(f"{k} (rank {r})" for k, r in inputs.items())


def load_for_run(source: str, backend: str | None = None):
    """A runner for a model given by its source string (used by the peak-memory child process).

    ONNX files go straight to the runtime (no checker pass), so only the runtime's memory is measured.
    """
    path = Path(source)
    if path.is_dir() and (path / META_FILE).is_file():
        meta = find_meta(path)
        if meta.get("format") == "onnx":
            path = path / meta.get("file", "model.onnx")
    if path.is_file() and path.suffix == ".onnx":
        return make_runner(OnnxModel(path), backend)
    return make_runner(resolve(source).model, backend)


# ------------------------------------------------------------------------------------------------
def param_count(model) -> int | None:
    if isinstance(model, torch.nn.Module):
        seen, total = set(), 0
        for p in model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel()
        for m in model.modules():  # packed quantized layers hold their weights as buffers
            cfg = getattr(m, "quant_config", None)
            if callable(cfg):
                c = cfg()
                total += c["in_features"] * c["out_features"] + (c["out_features"] if c["bias"] else 0)
        return total
    return _onnx_summary(str(model.path), model.path.stat().st_mtime_ns)[0]


@lru_cache(maxsize=32)
def _onnx_summary(path: str, mtime_ns: int) -> tuple[int | None, str]:
    """(parameter count, dtype label) of an ONNX file, read once per file version."""
    if path.endswith(".xml"):  # an OpenVINO IR (rival tools' output in benchmarks)
        return None, "openvino-ir"
    import onnx

    proto = onnx.load(path, load_external_data=False)
    params = int(sum(int(np.prod(t.dims)) if t.dims else 1 for t in proto.graph.initializer))
    types = {t.data_type for t in proto.graph.initializer}
    if onnx.TensorProto.INT8 in types:
        dtype = "int8"
    elif onnx.TensorProto.FLOAT16 in types:
        dtype = "float16" if onnx.TensorProto.FLOAT not in types else "mixed"
    else:
        dtype = "float32"
    return params, dtype


def size_on_disk(model) -> int:
    """Bytes of the saved file: the ONNX file(s), or the safetensors a torch model saves to."""
    if isinstance(model, OnnxModel):
        return model.size_bytes
    from safetensors.torch import save_model

    from .io import remove_stale

    remove_stale(Path(tempfile.gettempdir()), "nnslim-size-")  # left by a killed run
    with tempfile.TemporaryDirectory(prefix=f"nnslim-size-{os.getpid()}-") as tmp:
        path = os.path.join(tmp, "m.safetensors")
        save_model(model, path)
        return os.path.getsize(path)


@dataclass
class Variant:
    """One model to put in a report: a name, the model, the backend that runs it, how to reload it."""
    name: str
    model: Any
    backend: str | None = None
    source: str | None = None
    size_bytes: int | None = None  # the files as written (artifact rows); else measured from the model


def _dtype_of(model) -> str:
    if isinstance(model, torch.nn.Module):
        return str(model_dtype(model)).replace("torch.", "")
    return _onnx_summary(str(model.path), model.path.stat().st_mtime_ns)[1]


def compare(testbed: Testbed, variants: list[Variant], batch: int | None = None, seq: int | None = None,
            repeats: int = 20, warmup: int = 3, memory: bool = True, metrics: bool = True,
            max_seconds: float | None = 120.0, threads: int | None = None) -> Report:
    """Evaluate every variant, time them interleaved in one run, measure peak memory: one Report."""
    batch = batch or testbed.default_batch
    seq = seq or testbed.default_seq
    inputs = testbed.example_inputs(batch=batch, seq=seq)
    runners = [make_runner(v.model, v.backend, threads=threads) for v in variants]
    results = []
    for v, runner in zip(variants, runners):
        results.append(VariantResult(
            name=v.name, backend=runner.backend, format="onnx" if isinstance(v.model, OnnxModel) else "torch",
            dtype=_dtype_of(v.model),
            size_bytes=v.size_bytes if v.size_bytes is not None else size_on_disk(v.model), params=param_count(v.model),
            metrics=testbed.evaluate(runner) if metrics else {}))
    lat = measure_interleaved({str(i): (lambda r=r: r(inputs)) for i, r in enumerate(runners)}, batch=batch,
                              warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    for i, (v, res) in enumerate(zip(variants, results)):
        res.latency = lat[str(i)]
        if memory and v.source:
            res.peak_mem_bytes = peak_memory_bytes(v.source, res.backend, inputs)
    report = Report(testbed=testbed.name, primary_metric=testbed.primary_metric,
                    higher_is_better=testbed.higher_is_better, batch=batch, seq=seq, variants=results,
                    machine=machine_info(), versions=library_versions())
    for res in results:
        bad = [k for k, x in res.metrics.items() if isinstance(x, float) and not np.isfinite(x)]
        if bad:
            report.notes.append(f"{res.name}: metrics {', '.join(bad)} are not finite (NaN/Inf; written as null)")
    report.notes.append(f"latency: {warmup} warm-up runs, then {lat['0'].runs} interleaved "
                        "rounds; median (p90); throughput = batch / median")
    if memory:
        report.notes.append("peak mem: peak RSS of a fresh process loading the variant and running one batch, "
                            "minus that process's RSS after imports")
    return report


def variants_for(name: str, model, source: str | None, backend: str | None = None) -> list[Variant]:
    """A torch model gives one torch row; an ONNX model gives a row per runtime unless one is named."""
    if isinstance(model, OnnxModel):
        backends = [backend] if backend else ["onnxruntime", "openvino"]
        return [Variant(f"{name}" if len(backends) == 1 else f"{name} ({b})", model, b, source) for b in backends]
    return [Variant(name, model, backend or "torch", source)]


# ------------------------------------------------------------------------------------------------
def evaluate(model, testbed: Testbed | str | None = None, backend: str | None = None,
             example_inputs: dict | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Metrics, size and parameter count of a model (torch, ONNX path, artifact dir, testbed name)."""
    r = resolve(model, testbed, example_inputs, trust_remote_code=trust_remote_code)
    if r.testbed is None:
        raise NnslimError(f"no testbed known for {model!r}: pass --testbed NAME "
                          f"({', '.join(TESTBEDS)}) to choose its data and metric")
    runner = make_runner(r.model, backend)
    return {"testbed": r.testbed.name, "backend": runner.backend, "metrics": r.testbed.evaluate(runner),
            "size_bytes": size_on_disk(r.model), "params": param_count(r.model)}


def benchmark(model, testbed: Testbed | str | None = None, backend: str | None = None, batch: int | None = None,
              seq: int | None = None, repeats: int = 20, memory: bool = True, metrics: bool = True,
              example_inputs: dict | None = None, trust_remote_code: bool = False) -> Report:
    """Latency (median, p90), throughput, size, peak memory and metrics of one model."""
    r = resolve(model, testbed, example_inputs, trust_remote_code=trust_remote_code)
    if r.testbed is None:
        raise NnslimError(f"no testbed known for {model!r}: pass --testbed NAME ({', '.join(TESTBEDS)})")
    name = r.testbed.name if isinstance(model, torch.nn.Module) else Path(str(model)).name
    return compare(r.testbed, variants_for(name, r.model, r.source, backend), batch, seq, repeats,
                   memory=memory, metrics=metrics)


@dataclass
class CompressResult:
    model: Any
    out: Path | None
    report: Report | None
    notes: list[str]


def check_recipe_fits(recipe: Recipe, model) -> None:
    """Each step must get the kind of model (torch / onnx) it works on; checked before any work."""
    kind = "onnx" if isinstance(model, OnnxModel) else "torch"
    for i, step in enumerate(recipe.steps):
        method = get_method(step.method)
        if method.needs != kind:
            raise NnslimError(f"recipe step {i} ({step.method!r}) needs a {method.needs} model but gets "
                              f"{kind}" + ("; put ONNX export steps last" if kind == "onnx" else ""))
        kind = method.produces


def _apply_recipe(model, recipe: Recipe, ctx: Context):
    check_finite_module(model, "input model")  # calibration was checked when compress normalized it
    if ctx.teacher is None and isinstance(model, torch.nn.Module):
        ctx.teacher = model  # steps never modify their input, so the original stays the teacher
    for i, step in enumerate(recipe.steps):
        stage(f"step {i + 1}/{len(recipe.steps)}: {step.method}")
        torch.manual_seed(ctx.seed)
        model = get_method(step.method).apply(model, step, ctx)
        check_finite_module(model, f"after recipe step {i} ({step.method!r})")
    return model


def compress(model, recipe, calibration: list | None = None, example_inputs: dict | None = None,
             out: str | Path | None = None, testbed: Testbed | str | None = None, seed: int | None = None,
             overwrite: bool = False, report: bool = True, batch: int | None = None, seq: int | None = None,
             repeats: int = 20, memory: bool = True, backend: str | None = None,
             trust_remote_code: bool = False) -> CompressResult:
    """Apply a recipe (Recipe, StepConfig, list of steps, method name or YAML path) to a model.

    Writes the compressed model, nnslim.json and report.{json,md,png} into `out` when given, built in a
    temp dir beside it and swapped in whole (a kill leaves the old or the new artifact, never a mix).
    The report's compressed row is measured on the artifact as written and reloaded. Returns that
    model (the caller's model is never modified) and the before/after report.
    """
    recipe = as_recipe(recipe, seed)
    if out is not None:
        check_out_path(out, overwrite)  # before any loading or work
    data = {"example_inputs": example_inputs, "calibration": calibration}
    _normalize_data(data, model)
    example_inputs, calibration = data["example_inputs"], data["calibration"]
    r = resolve(model, testbed, example_inputs, calibration, trust_remote_code=trust_remote_code)
    if out is not None and r.source and not r.source.startswith("testbed:") and _inside(Path(r.source), Path(out)):
        raise NnslimError(f"--out={str(out)!r} contains the input model {r.source!r}; nnslim never "
                          "overwrites its input: choose another output directory")
    check_recipe_fits(recipe, r.model)
    staged = StagedDir(out, overwrite) if out is not None else None
    try:
        target = staged.path if staged else scratch_dir()
        work = target / ".work"
        work.mkdir()
        ctx = Context(testbed=r.testbed, workdir=work, seed=recipe.seed, calibration=calibration)
        result = _deployable(_apply_recipe(r.model, recipe, ctx), ctx)
        rep = None
        if staged or report:
            stage("writing the artifact")
            artifact.save(result, target, testbed=r.testbed, recipe=recipe.to_dict(), seed=recipe.seed,
                          extra={"notes": ctx.notes})
            result = _reload(target, r.model)
            shutil.rmtree(work, ignore_errors=True)  # else an ONNX result still lives there (scratch: removed at exit)
        if report:
            stage("measuring baseline and compressed model")
            rep = _report(r, result, target, ctx, batch, seq, repeats, memory, backend)
            if staged:
                rep.write(target)
        if staged:
            staged.commit()
            if isinstance(result, OnnxModel):  # it was read from the staging dir, now renamed to `out`
                result = OnnxModel(staged.out / result.path.relative_to(staged.path))
    except BaseException:
        if staged:
            staged.discard()
        raise
    return CompressResult(result, staged.out if staged else None, rep, ctx.notes)


def _reload(directory: Path, original):
    """The artifact as written, loaded back (a user's own class reloads into a copy of the original)."""
    meta = find_meta(directory)
    skeleton = None
    if meta.get("format") == "torch" and meta.get("architecture", {}).get("kind") == "module":
        import copy

        skeleton = copy.deepcopy(original)
    return artifact.load(directory, model=skeleton)


def _report(r: Resolved, result, directory: Path, ctx: Context, batch, seq, repeats, memory, backend) -> Report:
    def runtime(model):  # --backend picks the runtime of ONNX rows; torch rows run in torch
        return backend if isinstance(model, OnnxModel) else None

    variants = variants_for("baseline", r.model, r.source, runtime(r.model))
    scratch = None
    if isinstance(result, OnnxModel) and isinstance(r.model, torch.nn.Module) and _dtype_of(result) != "float32":
        # Same runtime, fp32 vs compressed: separates the runtime's gain from the method's.
        scratch = scratch_dir("nnslim-fp32-")
        fp32 = _export_baseline(r, scratch)
        variants += variants_for("baseline fp32 onnx", fp32, str(fp32.path), runtime(fp32))
    size = artifact.artifact_size(directory)
    variants += [dataclasses.replace(v, size_bytes=size)
                 for v in variants_for("compressed", result, str(directory), runtime(result))]
    try:
        rep = compare(r.testbed, variants, batch, seq, repeats, memory=memory)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    rep.notes = ctx.notes + rep.notes
    rep.tables.update(ctx.tables)
    return rep


def _deployable(model, ctx: Context):
    """A torch model holding int8 layers deploys as an int8 ONNX graph (QDQ or dynamic)."""
    from .quant.modules import has_simulated_int8

    if has_simulated_int8(model):
        from .runtime.qdq import export_quantized_onnx

        tb = ctx.testbed
        example = tb.export_example()
        onnx_model, notes = export_quantized_onnx(model, example, ctx.workdir / "model.onnx", tb.dynamic_axes)
        ctx.notes.extend(notes)
        return onnx_model
    return model


def _export_baseline(r: Resolved, directory: Path) -> OnnxModel:
    from .runtime.onnx_export import export_onnx as _export

    tb = r.testbed
    example = tb.export_example()
    return _export(r.model, example, directory / "model.onnx", tb.dynamic_axes)


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def export_onnx(model: torch.nn.Module, example_inputs, path: str | Path,
                dynamic_axes: dict | None = None, opset: int = 18) -> OnnxModel:
    """Export a torch module to ONNX (dynamo exporter). example_inputs: a dict (inputs named by its keys),
    a tensor or a tuple of positional inputs (named by the forward's parameters), as torch.onnx.export.

    A model returned by nnslim.quantize exports as int8 (QDQ for static, MatMulInteger for dynamic).
    """
    from .quant.modules import has_simulated_int8
    from .runtime.onnx_export import export_onnx as _export
    from .runtime.qdq import export_quantized_onnx

    from .data import as_inputs

    inputs = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
              for k, v in as_inputs(example_inputs, model).items()}
    axes = dynamic_axes if dynamic_axes is not None else {k: {0: "batch"} for k in inputs}
    if has_simulated_int8(model):
        return export_quantized_onnx(model, inputs, path, axes, opset)[0]
    return _export(model, inputs, path, axes, opset)


def _quantize(model: torch.nn.Module, config, calibration=None, example_inputs: dict | None = None,
             inplace: bool = False, testbed: Testbed | str | None = None) -> torch.nn.Module:
    """Quantize a torch model: Int8Config (static, needs calibration), Int8DynamicConfig, a weight-only
    config (Int4RtnConfig, Int4GptqConfig, Int4AwqConfig, Int8WeightOnlyConfig) or W8A8 (Fp8Config,
    Int8W8A8Config).

    calibration: an iterable of input dicts (name -> array/tensor, batch first); with a testbed name
    it defaults to the testbed's calibration split. Returns a new model (the caller's is untouched
    unless inplace=True) that runs in torch as simulated int8; export_onnx() deploys it as real int8.
    """
    from .quant.ptq import Int8Config, Int8DynamicConfig, quantize_int8
    from .quant.sensitivity import quantize_with_accuracy_control
    from .quant.w8a8 import W8A8Config, quantize_w8a8
    from .quant.weight_only.methods import WeightOnlyConfig, quantize_weight_only

    allowed = (Int8Config, Int8DynamicConfig, WeightOnlyConfig, W8A8Config)
    if not isinstance(config, allowed):
        raise NnslimError(f"config of type {type(config).__name__} is not allowed; allowed: "
                          f"{', '.join(c.__name__ for c in allowed)} (and their subclasses)")
    tb = get_testbed(testbed) if isinstance(testbed, str) else testbed
    if isinstance(config, (WeightOnlyConfig, W8A8Config)):
        needs_data = getattr(config, "algorithm", "rtn") != "rtn" or getattr(config, "smoothquant", None)
        if calibration is None and tb is not None and needs_data:
            from .recipe import Context
            from .quant.weight_only.methods import calibration_for
            calibration = calibration_for(config, Context(testbed=tb, workdir=Path(".")))
        if isinstance(config, WeightOnlyConfig):
            return quantize_weight_only(model, config, calibration, inplace=inplace)
        return quantize_w8a8(model, config, calibration, inplace=inplace)
    if calibration is None and tb is not None and isinstance(config, Int8Config):
        calibration = tb.calibration(config.samples)
    if example_inputs is None:
        if tb is not None:
            example_inputs = tb.example_inputs(batch=1, seq=8 if tb.default_seq else None)
        elif calibration is not None:
            example_inputs = next(iter(calibration), None)
    if isinstance(example_inputs, dict):
        example_inputs = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                          for k, v in example_inputs.items()}
    notes: list[str] = []
    if isinstance(config, Int8Config) and config.max_drop is not None:
        if tb is None:
            raise NnslimError("max_drop needs a testbed (its metric decides the drop): pass testbed=NAME")
        return quantize_with_accuracy_control(model, config, list(calibration or []), example_inputs, tb, notes)
    return quantize_int8(model, config, calibration, example_inputs, inplace=inplace, notes=notes)


def _prune(model: torch.nn.Module, config, calibration=None, inplace: bool = False,
          testbed: Testbed | str | None = None, example_inputs=None) -> torch.nn.Module:
    """Prune a torch model. StructuredPruneConfig removes channels/neurons/heads and returns a smaller
    model (needs example_inputs, or a testbed); MagnitudePruneConfig, TwoFourPruneConfig, WandaConfig and
    SparseGptConfig zero weights in place of the shapes. Calibration (input dicts; a testbed's split by
    default) feeds Wanda/SparseGPT and activation/Taylor importance. The caller's model is untouched
    unless inplace=True."""
    from .prune.oneshot import PruneConfig, prune_oneshot
    from .prune.structured import StructuredPruneConfig, prune_structured
    from .quant.weight_only.methods import calibration_for
    from .recipe import Context

    tb = get_testbed(testbed) if isinstance(testbed, str) else testbed
    if isinstance(config, StructuredPruneConfig):
        if example_inputs is None:
            if tb is None:
                raise NnslimError("structural pruning traces the model: pass example_inputs={name: tensor} "
                                  "(or a testbed)")
            example_inputs = tb.export_example()
        if calibration is None and tb is not None and config.importance in ("auto", "activation", "taylor"):
            calibration = tb.calibration(config.samples)
        return prune_structured(model, config, example_inputs, calibration, inplace=inplace)
    if not isinstance(config, PruneConfig):
        raise NnslimError(f"config of type {type(config).__name__} is not allowed; allowed: StructuredPruneConfig, "
                          "PruneConfig and its subclasses (MagnitudePruneConfig, TwoFourPruneConfig, WandaConfig, "
                          "SparseGptConfig)")
    if calibration is None and tb is not None and config.algorithm != "magnitude":
        calibration = calibration_for(config, Context(testbed=tb, workdir=Path(".")))
    return prune_oneshot(model, config, calibration, inplace=inplace)


def _distill(student: torch.nn.Module, teacher: torch.nn.Module, data=None, config=None,
            testbed: Testbed | str | None = None, inplace: bool = False) -> torch.nn.Module:
    """Fine-tune `student` to reproduce `teacher` (knowledge distillation) on `data` (input dicts; a
    testbed's calibration split by default). Returns the trained copy (student untouched unless inplace)."""
    from .distill.trainer import DistillConfig, distill as _distill

    config = config or DistillConfig()
    tb = get_testbed(testbed) if isinstance(testbed, str) else testbed
    if data is None:
        if tb is None:
            raise NnslimError("distill needs data (a list of input dicts) or a testbed")
        data = tb.calibration(config.samples)
    return _distill(student, teacher, data, config, getattr(tb, "output_kind", "tensor"), inplace=inplace)


def _normalize_data(arguments: dict, model) -> None:
    """Example inputs and calibration/training data in any accepted form (nnslim.data) -> input dicts."""
    from .data import as_inputs, as_samples

    if not isinstance(model, torch.nn.Module):
        return
    if arguments.get("example_inputs") is not None:
        arguments["example_inputs"] = as_inputs(arguments["example_inputs"], model)
    example = arguments.get("example_inputs")
    names = list(example) if isinstance(example, dict) else None
    for key in ("calibration", "data"):
        if arguments.get(key) is not None:
            arguments[key] = as_samples(arguments[key], model, key, names)
            check_finite_data(arguments[key], key)


def _checked(impl, what: str):
    """A public verb with the pipeline's checks: finite weights and data in, finite weights out."""
    import functools

    import inspect

    signature = inspect.signature(impl)

    @functools.wraps(impl)
    def verb(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        model = next(iter(bound.arguments.values()))
        check_finite_module(model, what)
        _normalize_data(bound.arguments, model)
        result = impl(*bound.args, **bound.kwargs)
        check_finite_module(result, f"{impl.__name__.strip('_')} result")
        return result
    verb.__name__ = verb.__qualname__ = impl.__name__.strip("_")
    return verb


quantize = _checked(_quantize, "model")
prune = _checked(_prune, "model")
distill = _checked(_distill, "student")
