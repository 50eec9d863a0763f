"""The one pipeline: check a recipe, run its steps, make the artifact, measure it.

    model + data -> loading.resolve -> check_recipe -> for step: model = method.apply(model, step, ctx)
                 -> artifact (built in a temp dir beside the target, swapped in whole) -> report

nnslim.quantize / prune / distill are one-step recipes run by `run_steps`; nnslim.compress runs any
recipe through the same function and then writes and measures the artifact.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import artifact
from .context import Context
from .errors import NnslimError, first_line
from .eval.compare import Variant, compare, dtype_of, param_count, variants_for
from .eval.report import Report
from .io import StagedDir, check_out_path, find_meta, scratch_dir
from .loading import Resolved, normalize_data, resolve, split_user_data, testbed_arg
from .progress import stage
from .recipe import Recipe, as_recipe, get_method, method_of
from .runtime import OnnxModel, TorchRunner
from .testbeds import Testbed
from .graph.modules import plain_module
from .graph.scope import find_direct_reads
from .validate import check_finite_module
from .graph.streaming import source_of


def check_recipe(recipe: Recipe, model) -> None:
    """Every step must get the kind of model (torch / onnx) it works on, and the steps must compose: each
    step's compression state must survive every later one (STAGES). Checked before any work; an error
    names both steps."""
    kind = "onnx" if isinstance(model, OnnxModel) else "torch"
    last: tuple[int, str, str] | None = None  # (index, method, stage) of the latest non-training step
    producer = None
    for i, step in enumerate(recipe.steps):
        method = get_method(step.method)
        if method.needs != kind:
            after = f" (made by step {producer[0]}, {producer[1]!r})" if producer else ""
            if producer is None and kind == "onnx":  # the input itself is an ONNX graph
                raise NnslimError(f"recipe step {i} ({step.method!r}) needs a torch model, and the input model is "
                                  "an ONNX graph: nnslim compresses PyTorch models (a Hugging Face dir, a testbed, an "
                                  "nn.Module or an nnslim torch artifact) and writes the ONNX itself; an ONNX file "
                                  "can be evaluated and benchmarked (nnslim evaluate / benchmark --model FILE)")
            raise NnslimError(f"recipe step {i} ({step.method!r}) needs a {method.needs} model but gets "
                              f"{kind}{after}" + ("; put ONNX export steps last" if kind == "onnx" else ""))
        if method.produces != kind:
            producer = (i, step.method)
            if method.produces == "onnx":
                _check_exportable(model, i, step.method, "exports to ONNX", getattr(step, "past", True))
        elif method.deploys_as_onnx:
            _check_exportable(model, i, step.method, "is deployed as an ONNX export",
                              all(getattr(s, "past", True) for s in recipe.steps[i + 1:]))
        kind = method.produces
        if last is not None:
            _check_order(last, (i, step.method, method))
        if method.stage is not None:
            last = (i, step.method, method.stage)
        if step.method == "openvino" and isinstance(model, torch.nn.Module) and any(
                s.method in ("int8", "int8-dynamic") and getattr(s, "lstm", False) for s in recipe.steps[:i]) and any(
                isinstance(m, torch.nn.LSTM) for m in model.modules()):
            raise NnslimError(f"recipe step {i} ('openvino') cannot follow int8 / int8-dynamic of a model with LSTM "
                              "layers: their int8 form is an ONNX Runtime op (DynamicQuantizeLSTM) that OpenVINO "
                              "cannot convert; set lstm: false on the int8 step, or drop the openvino step")
        if getattr(step, "gpus", 1) != 1:  # the GPUs asked for must be here before any step runs
            from .context import resolve_devices

            try:
                resolve_devices(step.device, step.gpus)
            except NnslimError as e:
                raise NnslimError(f"recipe step {i} ({step.method!r}): {e}") from None


def _check_exportable(model, index: int, method: str, what: str, past: bool = True) -> None:
    """Refuse before any work what the ONNX export at the end would refuse: vision-language models, mixture-of-experts
    blocks, and a decoder LM exported with its KV cache (`past`) whose cache is not per-layer keys / values (Mamba:
    found by one token)."""
    from .graph.experts import experts_blocks
    from .graph.scope import is_vision_language
    from .runtime.onnx_llm import NoKVCache

    if isinstance(model, torch.nn.Module) and is_vision_language(model):
        raise NnslimError(f"recipe step {index} ({method!r}) {what}, which nnslim cannot do yet for vision-language "
                          "models (Optimum's layout is several graphs: image encoder, embeddings, decoder with its "
                          "KV cache); int4-rtn / int4-gptq / int8-weight-only / fp8 / int8-w8a8 write compressed-"
                          "tensors folders that transformers loads")
    blocks = experts_blocks(model) if isinstance(model, torch.nn.Module) else []
    if blocks:
        raise NnslimError(f"recipe step {index} ({method!r}) {what}, which nnslim cannot do yet for "
                          f"mixture-of-experts blocks ({blocks[0]}: data-dependent routing); without that step the "
                          "model stays in torch (nnslim.load, or transformers for float / pruned models)")
    make = getattr(model, "decoder_with_past", None)
    if past and callable(make) and not any(p.is_meta for p in model.parameters()):
        try:
            make()
        except NoKVCache as e:
            raise NnslimError(f"recipe step {index} ({method!r}) {what} with the KV cache: {e}") from None


def check_trained(recipe: Recipe) -> None:
    """A step whose state is learned (movement scores) must be followed by a training step in a recipe
    that makes an artifact (a user who calls nnslim.prune alone trains the model in their own loop)."""
    for i, step in enumerate(recipe.steps):
        method = get_method(step.method)
        if method.needs_training and not any(get_method(s.method).trains for s in recipe.steps[i + 1:]):
            raise NnslimError(f"recipe step {i} ({step.method!r}) learns its state during training: add a "
                              "training step after it (e.g. {method: distill})")


_WHY = {"structure": "it reshapes layers that the earlier step's state is attached to",
        "sparsity": "the earlier step already quantized the weights it would mask",
        "quantize": "the weights are quantized already"}


def _check_order(last: tuple[int, str, str], step: tuple[int, str, Any]) -> None:
    from .recipe import STAGES

    (i, a, stage_a), (j, b, method) = last, step
    rank_a = STAGES.index(stage_a)
    if method.trains and get_method(a).frozen:
        raise NnslimError(f"recipe step {j} ({b!r}) cannot follow step {i} ({a!r}): {a!r} stores packed codes that "
                          f"training cannot update; put {b!r} before {a!r}, or train through fake quantization "
                          "with 'qat' (then distill) instead")
    if method.trains and method.stage is None:
        if rank_a >= STAGES.index("storage"):
            raise NnslimError(f"recipe step {j} ({b!r}) cannot follow step {i} ({a!r}): training after "
                              f"{stage_a} would not reach the artifact; put {b!r} before {a!r}")
        return
    if method.stage is None:
        return
    rank_b = STAGES.index(method.stage)
    if rank_b < rank_a or (rank_b == rank_a and method.stage in ("quantize", "storage", "export")):
        why = _WHY.get(method.stage, f"{stage_a} comes after {method.stage}")
        raise NnslimError(f"recipe step {j} ({b!r}) cannot follow step {i} ({a!r}): {why}; "
                          f"put {b!r} before {a!r}" if rank_b < rank_a else
                          f"recipe step {j} ({b!r}) cannot follow step {i} ({a!r}): both are {stage_a} steps; "
                          "give one")


def validation_of(testbed: Testbed | None) -> Callable[[torch.nn.Module], float] | None:
    """The testbed's primary metric as a function of a torch model, higher is better."""
    if testbed is None or not testbed.primary_metric:
        return None
    sign = 1.0 if testbed.higher_is_better else -1.0
    return lambda m: sign * float(testbed.evaluate(TorchRunner(m))[testbed.primary_metric])


def run_steps(model, recipe: Recipe, ctx: Context, inplace: bool = False):
    """Run every step of `recipe` on `model`; the caller's model is untouched unless inplace=True (steps
    work on one copy, and the original stays the distillation teacher)."""
    from .distillation.distributed import pin_local_gpu

    if isinstance(model, torch.jit.ScriptModule):
        raise NnslimError(f"model is a TorchScript module ({type(model).__name__}), which nnslim cannot change; pass "
                          "the nn.Module it was scripted from (nnslim writes ONNX / torch artifacts itself)")
    check_recipe(recipe, model)
    pin_local_gpu()
    check_finite_module(model, "input model")  # the data was checked when it was normalized
    if ctx.teacher is None and isinstance(model, torch.nn.Module):
        ctx.teacher = model
    if isinstance(model, torch.nn.Module) and not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, torch.nn.Module):
        from .graph.modules import fold_foreign_parametrizations, linear_conv1d

        linear_conv1d(model)  # a GPT-2-family object's Conv1D layers are the Linears they compute
        folded = fold_foreign_parametrizations(model)
        if folded:
            ctx.notes.append(f"parametrizations (weight_norm, spectral_norm, ...) of {len(folded)} layers folded into "
                             f"the weights they compute ({', '.join(folded[:3])}{' ...' if len(folded) > 3 else ''})")
    nonfinite = check_model_runs(model, ctx)
    for i, step in enumerate(recipe.steps):
        stage(f"step {i + 1}/{len(recipe.steps)}: {step.method}")
        ctx.run_id = f"{recipe.to_dict()}#{i}"
        ctx.later_stages = tuple(get_method(s.method).stage or "" for s in recipe.steps[i + 1:])
        ctx.later_trains = any(get_method(s.method).trains for s in recipe.steps[i + 1:])
        torch.manual_seed(ctx.seed)
        model = get_method(step.method).apply(model, step, ctx)
        check_finite_module(model, f"after recipe step {i} ({step.method!r})")
        check_output_finite(model, ctx, f"after recipe step {i} ({step.method!r})", nonfinite)
    return model


def _runnable_example(model, ctx: Context) -> dict | None:
    """A short example input for a model held in memory, or None (not a torch model, streamed on meta, no
    known inputs)."""
    if not isinstance(model, torch.nn.Module) or any(t.is_meta for t in model.parameters()):
        return None
    try:
        return ctx.small_example()
    except NnslimError:
        return None


def check_output_finite(model, ctx: Context, where: str, before: set[str] | None = None) -> None:
    """One forward on the short example after a step: finite weights can still give NaN/Inf (an overflow in
    a narrow dtype, a layer the model reads in a way the method did not expect); stop there, naming the step,
    instead of writing an artifact that computes nothing. Outputs in `before` (not finite in the input model
    already: a masked score of -inf) are not the step's doing."""
    example = _runnable_example(model, ctx)
    if example is None:
        return
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = TorchRunner(model)(example)
    except Exception:  # noqa: BLE001 - whether a method's model runs is the report's and the tests' matter
        return
    finally:
        for m, training in modes.items():
            m.train(training)
    bad = [k for k in _nonfinite(out) if k not in (before or set())]
    if bad:
        raise NnslimError(f"{where}: the model's output {bad[0]} holds NaN or Inf on an example input; nothing "
                          "was written (list the layers at fault in the step's `ignore`, or use another method)")


def _nonfinite(out) -> list[str]:
    return [k for k, v in _named_outputs(out) if v.dtype.kind in "fc" and not bool(np.isfinite(v).all())]


def _named_outputs(out, prefix: str = "output"):
    """(name, numpy array) of every array in a runner's output (arrays, or dicts / lists of them)."""
    if isinstance(out, torch.Tensor):
        yield prefix, out.detach().float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()
    elif isinstance(out, np.ndarray):
        yield prefix, out
    elif hasattr(out, "items"):  # dicts, transformers' ModelOutput
        for k, v in out.items():
            yield from _named_outputs(v, f"{prefix}[{k!r}]")
    elif isinstance(out, (list, tuple)):
        for i, v in enumerate(out):
            yield from _named_outputs(v, f"{prefix}[{i}]")


def check_model_runs(model, ctx: Context) -> set[str]:
    """One forward (eval mode) on a short example before any step: a model that fails on its own inputs (an
    inconsistent config, inputs of the wrong shape) is refused with its error, instead of a traceback from
    inside whichever method first runs it. Models held on the meta device (streamed from shards) and calls
    with no known inputs (the methods that need them say so) are not run. Returns the outputs that are not
    finite already."""
    example = _runnable_example(model, ctx)
    if example is None:
        return set()
    from .graph.layerwise import check_token_ids

    check_token_ids(model, [example], "example input")  # the data's fault, said as such
    modes = {m: m.training for m in model.modules()}
    out = []
    try:
        try:  # watched: Linears whose weight the model reads itself are marked (graph/scope.py)
            find_direct_reads(model, lambda: out.append(TorchRunner(model)(example)))
        except NnslimError:
            raise
        except Exception:  # noqa: BLE001 - a model the watch upsets runs plain, and its own error is said
            out = [TorchRunner(model)(example)]
    except NnslimError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the model raises, named in one line
        shapes = ", ".join(f"{k} {tuple(getattr(v, 'shape', ()))}" for k, v in example.items())
        raise NnslimError(f"the input model fails on an example input ({shapes}) before any step: "
                          f"{first_line(e)}") from e
    finally:
        for m, training in modes.items():
            m.train(training)
    return set(_nonfinite(out[-1])) if out else set()


def run_verb(verb: str, model, config, calibration=None, example_inputs=None, testbed=None, inplace: bool = False,
             teacher=None, validation_fn=None, trust_remote_code: bool = False):
    """nnslim.quantize / prune / distill: a one-step recipe of a config whose method belongs to `verb` (a config,
    a method name, or a {'method': NAME, option: value} mapping as in a recipe)."""
    if isinstance(config, (str, dict)):
        from .recipe import make_step

        config = make_step({"method": config} if isinstance(config, str) else config, "config")
    method = method_of(config)
    if method.verb != verb:
        from .recipe import methods

        allowed = sorted(m.config_cls.__name__ for m in methods().values() if m.verb == verb)
        raise NnslimError(f"config of type {type(config).__name__} is not allowed for nnslim.{verb}; allowed: "
                          f"{', '.join(allowed)}")
    if not isinstance(model, torch.nn.Module):
        raise NnslimError(f"nnslim.{verb} takes a torch.nn.Module, got {type(model).__name__}; use "
                          "nnslim.compress for paths and testbed names")
    model = plain_module(model)
    data = {"example_inputs": example_inputs, "calibration": calibration}
    normalize_data(data, model)
    tb = testbed_arg(testbed, trust_remote_code) if isinstance(testbed, str) else testbed
    ctx = Context(workdir=Path("."), source=tb, user_calibration=data["calibration"],
                  user_example=data["example_inputs"], teacher=teacher,
                  validate=validation_fn if validation_fn is not None else validation_of(tb))
    if teacher is not None:
        check_finite_module(teacher, "teacher")
    return run_steps(model, Recipe((config,)), ctx, inplace=inplace)


@dataclass
class CompressResult:
    model: Any
    out: Path | None
    report: Report | None
    notes: list[str]


def compress(model, recipe, calibration=None, example_inputs=None, out: str | Path | None = None,
             testbed: Testbed | str | None = None, seed: int | None = None, overwrite: bool = False,
             report: bool = True, batch: int | None = None, seq: int | None = None, repeats: int = 20,
             memory: bool = True, backend: str | None = None, trust_remote_code: bool = False,
             eval_data=None, task: str | None = None, text_column: str | None = None,
             label_column: str | None = None) -> CompressResult:
    """See nnslim.compress."""
    model = plain_module(model)
    recipe = as_recipe(recipe, seed)
    if out is not None:
        check_out_path(out, overwrite)  # before any loading or work
    calibration, files = split_user_data(calibration, eval_data, text_column, label_column)
    data = {"example_inputs": example_inputs, "calibration": calibration}
    normalize_data(data, model)
    r = resolve(model, testbed, data["example_inputs"], data["calibration"], trust_remote_code=trust_remote_code,
                task=task, data=files)
    if out is not None and r.source and not r.source.startswith("testbed:") and _inside(Path(r.source), Path(out)):
        raise NnslimError(f"--out={str(out)!r} contains the input model {r.source!r}; nnslim never "
                          "overwrites its input: choose another output directory")
    check_recipe(recipe, r.model)
    check_trained(recipe)
    from .distillation.distributed import is_main

    if not is_main():  # under torchrun every rank trains; rank 0 alone writes and measures the artifact
        ctx = Context(workdir=scratch_dir(), seed=recipe.seed, source=r.testbed, user_calibration=data["calibration"],
                      user_example=data["example_inputs"], validate=validation_of(r.testbed), backend=backend)
        return CompressResult(run_steps(r.model, recipe, ctx), None, None, ctx.notes)
    staged = StagedDir(out, overwrite) if out is not None else None
    try:
        target = staged.path if staged else scratch_dir()
        work = target / ".work"
        work.mkdir()
        ctx = Context(workdir=work, seed=recipe.seed, source=r.testbed, user_calibration=data["calibration"],
                      user_example=data["example_inputs"], validate=validation_of(r.testbed), backend=backend)
        result = _deployable(run_steps(r.model, recipe, ctx), ctx)
        rep = None
        if staged or report:
            stage("writing the artifact")
            artifact.save(result, target, testbed=r.testbed, recipe=recipe.to_dict(), seed=recipe.seed,
                          extra={"notes": ctx.notes})
            if source_of(result) is None:  # (a streamed result is read back block by block where it is measured)
                result = _reload(target, r.model)
            shutil.rmtree(work, ignore_errors=True)  # else an ONNX result still lives there (scratch: removed at exit)
        if report:
            stage("measuring baseline and compressed model")
            label = " + ".join(step.method for step in recipe.steps)
            rep = (_report(r, result, target, ctx, batch, seq, repeats, memory, backend, label)
                   if source_of(result) is None else _streamed_report(r, result, target, ctx, label))
            runtime = deploy_runtime(rep, label, backend)
            if runtime is not None:  # evaluate / benchmark of the artifact default to it
                rep.notes.append(f"deploy runtime: {runtime['name']} ({runtime['why']}); recorded in nnslim.json")
                artifact.update_meta(target, runtime=runtime)
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


def deploy_runtime(rep: Report, label: str, backend: str | None) -> dict | None:
    """The runtime an ONNX / OpenVINO artifact should run in: the one --backend named, else the faster of
    the runtimes measured for it in this report (on this CPU). None for a torch artifact."""
    rows = [v for v in rep.variants if v.name.startswith(label) and v.format != "torch" and v.latency]
    if not rows:
        return None
    if backend:
        return {"name": backend, "why": "chosen with --backend"}
    flags = " ".join(rep.machine.get("cpu_flags") or []) or "flags unknown"
    timings = ", ".join(f"{v.backend} {v.latency.median_ms:.2f} ms" for v in rows)
    fit, dropped = _accurate_rows(rows, rep.primary_metric, rep.higher_is_better)
    best = min(fit, key=lambda v: v.latency.median_ms)
    return {"name": best.backend, "why": f"measured fastest at batch {rep.batch}: {timings}"
                                         f"{dropped}; {rep.machine.get('cpu', '?')} ({flags})"}


def _accurate_rows(rows: list, metric: str, higher_is_better: bool, tolerance: float = 0.005) -> tuple[list, str]:
    """The runtimes whose primary metric is within `tolerance` (relative, at least absolute) of the best one's
    on the same graph, and a note naming those left out: two runtimes may run one graph differently (a graph
    optimization of one of them), and the faster must not be chosen when it computes something else."""
    values = {id(v): v.metrics.get(metric) for v in rows}
    known = [x for x in values.values() if isinstance(x, (int, float))]
    if len(known) < 2:
        return rows, ""
    best = max(known) if higher_is_better else min(known)
    slack = tolerance * max(1.0, abs(best))
    fit = [v for v in rows if values[id(v)] is None or abs(values[id(v)] - best) <= slack]
    out = [v for v in rows if v not in fit]
    note = "".join(f"; {v.backend} not chosen: its {metric} {values[id(v)]:.4f} vs {best:.4f} on the same graph"
                   for v in out)
    return fit, note


def _reload(directory: Path, original):
    """The artifact as written, loaded back (a user's own class reloads into a copy of the original)."""
    meta = find_meta(directory)
    skeleton = None
    if meta.get("architecture", {}).get("kind") == "module":
        if meta.get("format") in ("torch", "compressed-tensors"):
            skeleton = copy.deepcopy(original)
        elif meta.get("format") == "hf":  # a transformers object's save_pretrained folder: its class reads it
            skeleton = original
    return artifact.load(directory, model=skeleton)


def _report(r: Resolved, result, directory: Path, ctx: Context, batch, seq, repeats, memory, backend,
            label: str) -> Report:
    """Rows: the original model (and, for a lower-precision ONNX result, the original exported as float32 ONNX
    in the same runtime, which separates the runtime's gain from the method's), then the result, named by
    its recipe's methods."""
    def runtime(model):  # --backend picks the runtime of ONNX rows; torch rows run in torch
        return backend if isinstance(model, OnnxModel) else None

    original = f"original {dtype_of(r.model)}" if isinstance(r.model, torch.nn.Module) else "original"
    variants = variants_for(original, r.model, r.source, runtime(r.model))
    scratch = None
    if isinstance(result, OnnxModel) and isinstance(r.model, torch.nn.Module) and dtype_of(result) != "float32":
        # Same runtime, fp32 vs compressed: separates the runtime's gain from the method's.
        scratch = scratch_dir("nnslim-fp32-")
        fp32 = _export_baseline(r, scratch)
        variants += variants_for("original as float32 onnx", fp32, str(fp32.path), runtime(fp32))
    size = artifact.artifact_size(directory)
    variants += [dataclasses.replace(v, size_bytes=size)
                 for v in variants_for(label, result, str(directory), runtime(result))]
    try:
        rep = compare(r.testbed, variants, batch, seq, repeats, memory=memory)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    rep.notes = ctx.notes + rep.notes
    rep.tables.update(ctx.tables)
    return rep


def _streamed_report(r: Resolved, result, directory: Path, ctx: Context, label: str) -> Report:
    """A model streamed from its shards never fits in memory here: perplexity before and after, block by block
    (the compressed blocks as written: the artifact's writer read the same offloaded / in-memory tensors),
    and sizes; latency, throughput and peak memory are not measured."""
    from .eval.layerwise import streamed_perplexity
    from .eval.report import VariantResult
    from .io import library_versions, machine_info

    rows = []
    for name, model, size in ((f"original {dtype_of(r.model)}", r.model, source_of(r.model).nbytes()),
                              (label, result, artifact.artifact_size(directory))):
        stage(f"perplexity of {name}, block by block")
        ppl, device = streamed_perplexity(model, r.testbed)
        rows.append(VariantResult(name=name, backend=f"torch block by block ({device})", format="torch",
                                  dtype=dtype_of(model), size_bytes=size, params=param_count(model),
                                  metrics={"perplexity": ppl}))
    windows = r.testbed.eval_windows()
    return Report(testbed=r.testbed.name, primary_metric="perplexity", higher_is_better=False, batch=1,
                  seq=int(windows.shape[1]), variants=rows, machine=machine_info(), versions=library_versions(),
                  notes=ctx.notes + [f"streamed from the checkpoint's shards: perplexity on {len(windows)} windows of "
                                     f"{windows.shape[1]} tokens, one decoder block at a time; latency, throughput "
                                     "and peak memory are not measured (load the artifact where it fits to time "
                                     "it: nnslim benchmark DIR)"])


def _deployable(model, ctx: Context):
    """A torch model holding int8 layers deploys as an int8 ONNX graph (QDQ or dynamic)."""
    from .runtime.onnx_methods import export_graphs
    from .runtime.qdq import has_qdq_layers

    if has_qdq_layers(model):  # exported as the onnx step would (a causal LM with its KV cache)
        onnx_model, notes = export_graphs(model, ctx.export_example(), ctx.dynamic_axes, ctx.workdir,
                                          calibration=ctx.calibration if ctx.has_data else None, quantized=True)
        ctx.notes.extend(notes)
        return onnx_model
    return model


def _export_baseline(r: Resolved, directory: Path) -> OnnxModel:
    from .runtime.onnx_methods import export_graphs

    model = r.model
    if isinstance(model, torch.nn.Module) and dtype_of(model) != "float32":  # a bf16 / fp16 model: the row is float32
        model = copy.deepcopy(model).float()
    return export_graphs(model, r.testbed.export_example(), r.testbed.dynamic_axes, directory, quantized=False)[0]


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


__all__ = ["Variant", "CompressResult", "check_recipe", "compress", "run_steps", "run_verb", "validation_of"]
