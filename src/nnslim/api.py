"""The public verbs. Each is a thin face: quantize / prune / distill run a one-step recipe and compress
runs any recipe, all through pipeline.run_steps; evaluate / benchmark measure through eval.compare.

Data (calibration, example inputs) may be given in any form nnslim.data accepts: tensors, tuples,
dicts, an iterable or DataLoader of those, or nnslim.Dataset(data, transform).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import artifact, pipeline
from .errors import NnslimError
from .eval.compare import compare, param_count, size_on_disk, variants_for
from .eval.report import Report
from .loading import UserData, load, resolve
from .runtime import make_runner
from .testbeds import TESTBEDS, Testbed, get_testbed
from .validate import check_finite_module

save = artifact.save
CompressResult = pipeline.CompressResult

__all__ = ["quantize", "prune", "distill", "compress", "evaluate", "benchmark", "generate", "save", "load",
           "export_onnx"]


def quantize(model: torch.nn.Module, config, calibration=None, example_inputs=None, testbed: Testbed | str | None = None,
             inplace: bool = False, validation_fn: Callable[[torch.nn.Module], float] | None = None) -> torch.nn.Module:
    """Quantize a torch model with a quantization config (Int8Config, Int8DynamicConfig, Int4RtnConfig,
    Int4GptqConfig, Int4AwqConfig, Int8WeightOnlyConfig, Fp8Config, Int8W8A8Config), a method name ("int4-rtn")
    or a mapping as in a recipe ({"method": "int4-gptq", "group_size": 64}); prune and distill take the same.

    calibration: samples in any accepted form (a testbed's split when a testbed is given).
    validation_fn(model) -> float, higher is better: the metric Int8Config(max_drop=...) keeps.
    Returns a new model (the caller's is untouched unless inplace=True). Static int8 runs in torch as
    simulated int8; export_onnx() or compress() deploys it as real int8.
    """
    return _checked(pipeline.run_verb("quantize", model, config, calibration, example_inputs, testbed, inplace,
                                      validation_fn=validation_fn), "quantize")


def prune(model: torch.nn.Module, config, calibration=None, example_inputs=None, testbed: Testbed | str | None = None,
          inplace: bool = False) -> torch.nn.Module:
    """Prune a torch model. StructuredPruneConfig removes channels/neurons/heads and returns a smaller
    model (it traces the model on example_inputs); MagnitudePruneConfig, TwoFourPruneConfig, WandaConfig
    and SparseGptConfig zero weights in place of the shapes. Calibration feeds Wanda/SparseGPT and
    activation/Taylor importance. The caller's model is untouched unless inplace=True."""
    return _checked(pipeline.run_verb("prune", model, config, calibration, example_inputs, testbed, inplace),
                    "prune")


def distill(student: torch.nn.Module, teacher: torch.nn.Module, data=None, config=None,
            testbed: Testbed | str | None = None, inplace: bool = False) -> torch.nn.Module:
    """Fine-tune `student` to reproduce `teacher` (knowledge distillation) on `data` (a testbed's
    calibration split by default). Returns the trained copy (student untouched unless inplace)."""
    if config is None:
        from .distillation.trainer import DistillConfig

        config = DistillConfig()
    if not isinstance(teacher, torch.nn.Module):
        raise NnslimError(f"teacher of type {type(teacher).__name__} is not allowed; allowed: a torch.nn.Module")
    return _checked(pipeline.run_verb("distill", student, config, data, None, testbed, inplace, teacher=teacher),
                    "distill")


def _checked(model, verb: str):
    check_finite_module(model, f"{verb} result")
    return model


def compress(model, recipe, calibration=None, example_inputs=None, out: str | Path | None = None,
             testbed: Testbed | str | None = None, seed: int | None = None, overwrite: bool = False,
             report: bool = True, batch: int | None = None, seq: int | None = None, repeats: int = 20,
             memory: bool = True, backend: str | None = None, trust_remote_code: bool = False,
             eval_data=None, task: str | None = None, text_column: str | None = None,
             label_column: str | None = None) -> pipeline.CompressResult:
    """Apply a recipe (Recipe, a method config, a list of configs, a method name or a YAML path) to a model
    (nn.Module, testbed name, .onnx file, artifact or Hugging Face dir).

    Writes the compressed model, nnslim.json and report.{json,md,png} into `out` when given, built in a
    temp dir beside it and swapped in whole (a kill leaves the old or the new artifact, never a mix).
    The report's compressed row is measured on the artifact as written and reloaded. Returns that
    model (the caller's model is never modified) and the before/after report.

    For a Hugging Face model, `calibration` and `eval_data` may be data files (.txt, .jsonl, .json, .csv,
    .tsv, .parquet, a saved `datasets` folder; images: a folder or .npz) or lists of texts, read through
    `text_column` / `label_column` (auto-detected when None); `task` forces the task read from its config.
    """
    return pipeline.compress(model, recipe, calibration, example_inputs, out, testbed, seed, overwrite, report,
                             batch, seq, repeats, memory, backend, trust_remote_code, eval_data, task,
                             text_column, label_column)


def evaluate(model, testbed: Testbed | str | None = None, backend: str | None = None, example_inputs=None,
             trust_remote_code: bool = False, eval_data=None, task: str | None = None,
             text_column: str | None = None, label_column: str | None = None) -> dict[str, Any]:
    """Metrics, size and parameter count of a model (torch, ONNX path, artifact dir, testbed name);
    `eval_data`, `task` and the columns as in compress. A causal LM streamed from its shards
    (nnslim.load(dir, stream=True), compressed or not) is evaluated block by block: perplexity only."""
    from .graph.streaming import source_of

    if isinstance(model, torch.nn.Module) and source_of(model) is not None:
        from .eval.layerwise import streamed_perplexity

        tb = testbed if testbed is not None else model.nnslim_testbed
        tb = get_testbed(tb) if isinstance(tb, str) else tb
        ppl, device = streamed_perplexity(model, tb)
        return {"testbed": tb.name, "backend": f"torch block by block ({device})", "metrics": {"perplexity": ppl},
                "size_bytes": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
                "params": param_count(model)}
    r = resolve(model, testbed, _inputs(example_inputs, model), trust_remote_code=trust_remote_code, task=task,
                data=UserData(None, eval_data, text_column, label_column))
    if r.testbed is None:
        raise NnslimError(f"no testbed known for {model!r}: pass --testbed NAME "
                          f"({', '.join(TESTBEDS)}) to choose its data and metric")
    runner = make_runner(r.model, backend or recorded_runtime(r))
    return {"testbed": r.testbed.name, "backend": runner.backend, "metrics": r.testbed.evaluate(runner),
            "size_bytes": size_on_disk(r.model), "params": param_count(r.model)}


def benchmark(model, testbed: Testbed | str | None = None, backend: str | None = None, batch: int | None = None,
              seq: int | None = None, repeats: int = 20, memory: bool = True, metrics: bool = True,
              example_inputs=None, trust_remote_code: bool = False, eval_data=None, task: str | None = None,
              text_column: str | None = None, label_column: str | None = None) -> Report:
    """Latency (median, p90), throughput, size, peak memory and metrics of one model (data as in compress)."""
    r = resolve(model, testbed, _inputs(example_inputs, model), trust_remote_code=trust_remote_code, task=task,
                data=UserData(None, eval_data, text_column, label_column))
    if r.testbed is None:
        raise NnslimError(f"no testbed known for {model!r}: pass --testbed NAME ({', '.join(TESTBEDS)})")
    name = r.testbed.name if isinstance(model, torch.nn.Module) else Path(str(model)).name
    return compare(r.testbed, variants_for(name, r.model, r.source, backend), batch, seq, repeats,
                   memory=memory, metrics=metrics)


def generate(model, prompt: str | list[str], max_new_tokens: int = 64, testbed: Testbed | str | None = None,
             backend: str | None = None, kv_cache: str = "model", device: str | None = None, dtype: str = "auto",
             trust_remote_code: bool = False) -> dict[str, Any]:
    """Greedy generation from a causal LM (testbed name, Hugging Face dir, nnslim artifact, torch module):
    the text and tokens of each prompt and the measured decode rate (tokens/s over the batch, prefill
    excluded). Several prompts of one token length decode as one batch. Torch models decode through
    nnslim's StaticDecoder where the architecture allows (Llama family: static KV cache, on CUDA a
    CUDA-graph step and fused kernels; `kv_cache` int8 / fp8 stores the cache quantized), others through
    their own cache; ONNX / OpenVINO artifacts through their exported past/present."""
    from .runtime.kvcache import check_kv_format
    from .runtime.decode import StaticDecoder

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise NnslimError("prompt must be a non-empty string or a list of non-empty strings")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 1 << 16:
        raise NnslimError(f"max_new_tokens={max_new_tokens!r} is not allowed; allowed: an integer 1..65536")
    if dtype not in ("auto", "model", "bf16", "fp16", "fp32"):
        raise NnslimError(f"dtype={dtype!r} is not allowed; allowed: auto, model, bf16, fp16, fp32")
    if device not in (None, "cpu", "cuda"):
        raise NnslimError(f"device={device!r} is not allowed; allowed: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise NnslimError("device='cuda' is not allowed here: no CUDA GPU is visible")
    if isinstance(model, torch.nn.Module) and testbed is None:
        raise NnslimError(f"generate of a {type(model).__name__} object needs its tokenizer, which an object does not "
                          "carry: give its Hugging Face folder (saved with save_pretrained, tokenizer included) as the "
                          "model, or a testbed that has one (testbed=...)")
    r = resolve(model, testbed, None, trust_remote_code=trust_remote_code)
    tok = getattr(r.testbed, "tokenizer", None)
    if tok is None or not hasattr(r.testbed, "decode_prompt"):
        raise NnslimError(f"generate needs a causal language model with a tokenizer; {model!r} is a "
                          f"{getattr(r.testbed, 'name', 'model')} model")
    ids = [tok(p, return_tensors="np")["input_ids"][0].astype(np.int64) for p in prompts]
    if len({len(i) for i in ids}) > 1:
        raise NnslimError(f"the prompts have different token counts ({', '.join(str(len(i)) for i in ids)}); "
                          "batched decode needs one length: give prompts of equal length or one at a time")
    batch = np.stack(ids)
    runner = make_runner(r.model, backend or recorded_runtime(r))
    lm = getattr(r.model, "lm", None) if isinstance(r.model, torch.nn.Module) else None
    decoder, note = None, ""
    if lm is not None:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        check_kv_format(kv_cache, dev)
        want = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
            "bf16" if dtype == "auto" and dev.type == "cuda" else dtype)
        first = next(lm.parameters(), None)
        if isinstance(model, torch.nn.Module) and first is not None and (
                first.device != dev or (want is not None and first.dtype != want)):
            import copy

            lm = copy.deepcopy(lm)  # the caller's model stays on its device, in its dtype
        lm = lm.to(dev) if want is None else lm.to(device=dev, dtype=want)
        try:
            decoder = StaticDecoder(lm, batch.shape[1] + max_new_tokens, batch=len(prompts), kv_cache=kv_cache)
            note = f"StaticDecoder on {dev.type}, {decoder.fused_note}, KV cache {kv_cache}"
        except NnslimError as e:
            note = f"the model's own KV cache on {dev.type} ({e})"
    if decoder is not None:
        tokens, rate = decoder.generate(torch.as_tensor(batch), max_new_tokens)
        tokens = [tokens] if len(prompts) == 1 else tokens
    else:
        if kv_cache != "model" or len(prompts) > 1:
            raise NnslimError(f"kv_cache={kv_cache!r} / {len(prompts)} prompts: only nnslim's StaticDecoder "
                              f"(torch, Llama-family models) quantizes the KV cache or decodes a batch; "
                              f"here {note or runner.backend + ' runs its exported cache'}")
        tok1, rate = runner.decode(batch, max_new_tokens)
        tokens, note = [tok1], note or f"{runner.backend}, the exported graph's past/present"
    return {"texts": [tok.decode(t, skip_special_tokens=True) for t in tokens], "tokens": tokens,
            "prompt_tokens": int(batch.shape[1]), "new_tokens": max_new_tokens, "batch": len(prompts),
            "decode_tokens_per_s": round(float(rate), 2), "backend": runner.backend, "decoder": note}


def recorded_runtime(r) -> str | None:
    """The deploy runtime compress recorded in an ONNX artifact's nnslim.json (None: the default)."""
    from .io import find_meta
    from .runtime import BACKENDS

    if not r.source or r.source.startswith("testbed:") or not Path(r.source).exists():
        return None
    recorded = (find_meta(r.source) or {}).get("runtime")
    name = recorded.get("name") if isinstance(recorded, dict) else None
    return name if name in BACKENDS and name != "torch" else None


def _inputs(example_inputs, model):
    from .data import as_inputs

    return as_inputs(example_inputs, model) if isinstance(model, torch.nn.Module) else example_inputs


def export_onnx(model: torch.nn.Module, example_inputs, path: str | Path, dynamic_axes: dict | None = None,
                opset: int = 18, calibration=None):
    """Export a torch module to ONNX (dynamo exporter). example_inputs: a dict (inputs named by its keys),
    a tensor or a tuple of positional inputs (named by the forward's parameters), as torch.onnx.export.

    A model returned by nnslim.quantize exports as int8 (QDQ for static, MatMulInteger for dynamic). A
    transformer quantized with int8 attention matmuls (Int8Config.matmuls) needs `calibration` (any form
    quantize accepts) to calibrate them in the exported graph.
    """
    from .data import as_inputs, as_samples, to_numpy
    from .runtime.onnx_export import export_onnx as _export
    from .runtime.qdq import export_quantized_onnx, has_integer_onnx_layers

    def numpy(sample: dict) -> dict:
        return {k: to_numpy(v) for k, v in sample.items()}

    inputs = numpy(as_inputs(example_inputs, model))
    axes = dynamic_axes if dynamic_axes is not None else {k: {0: "batch"} for k in inputs}
    if has_integer_onnx_layers(model):
        samples = None
        if calibration is not None:
            data = [numpy(s) for s in as_samples(calibration, model, "calibration", list(inputs))]
            samples = lambda n: data[:n]  # noqa: E731
        return export_quantized_onnx(model, inputs, path, axes, opset, calibration=samples)[0]
    return _export(model, inputs, path, axes, opset)
