"""Command line: one subcommand per verb. Bad input -> one-line error on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same one-line format, exit 2
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _int_in(text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; allowed: an integer {lo}..{hi}")
    return value


def _positive(text: str, limit: int = 1 << 20) -> int:
    return _int_in(text, 1, limit)


def _seed(text: str) -> int:
    from .recipe import MAX_SEED

    return _int_in(text, 0, MAX_SEED)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("nnslim")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_model(p, help_extra=""):
    p.add_argument("--model", required=True, help="testbed name (see `nnslim testbeds`), .onnx file, nnslim "
                   "artifact dir, Hugging Face model dir or .gguf file" + help_extra)
    p.add_argument("--testbed", default=None, help="data and metric: a testbed name, or the Hugging Face dir "
                   "a model was compressed from (its reference)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a Hugging Face folder's own Python "
                   "code (auto_map) to run; off by default: nnslim never runs a model folder's code unasked")
    from .testbeds.tasks import SUPPORTED

    p.add_argument("--task", choices=SUPPORTED, default=None, help="the task of a Hugging Face model dir "
                   "(default: read from its config.json)")
    p.add_argument("--eval", dest="eval_data", default=None, metavar="FILE", help="evaluation data of a Hugging "
                   "Face model: .txt (a text per line), .jsonl/.json/.csv/.tsv/.parquet column, a saved `datasets` "
                   "folder; images: a folder or .npz (default: Python's docstrings / sklearn digits)")
    p.add_argument("--text-column", default=None, help="column holding the text (default: text, sentence, ...)")
    p.add_argument("--label-column", default=None, help="column holding the label (default: label, if present)")


def _add_timing(p):
    from .runtime import BACKENDS

    p.add_argument("--backend", "--target", dest="backend", choices=BACKENDS, default=None,
                   help="runtime to measure and tune the artifact for (default: torch for torch models, both ONNX "
                        "runtimes for ONNX, the faster one recorded)")
    p.add_argument("--batch", type=_positive, default=None, help="batch size for latency (testbed default)")
    p.add_argument("--seq", type=_positive, default=None, help="sequence length for latency (text testbeds)")
    p.add_argument("--repeats", type=_positive, default=20, help="timed rounds (default 20)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")


# what --stream runs: the layer-wise methods (one layer or one decoder block read from the shards at a time)
STREAMABLE = ("int4-rtn", "int4-gptq", "int4-awq", "int8-weight-only", "fp8", "int8-w8a8", "prune-magnitude",
              "prune-2of4", "wanda", "sparsegpt")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnslim", description="Compress PyTorch models and measure the result.")
    parser.add_argument("--version", action="version", version=f"nnslim {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("testbeds", help="list the embedded testbeds")
    sub.add_parser("methods", help="list the compression methods and their options")

    p = sub.add_parser("evaluate", help="metrics, size and parameters of a model")
    _add_model(p)
    from .runtime import BACKENDS
    p.add_argument("--backend", "--target", dest="backend", choices=BACKENDS, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("benchmark", help="latency, throughput, size, peak memory and metrics of a model")
    _add_model(p)
    _add_timing(p)
    p.add_argument("--out", default=None, help="also write report.json/report.md here")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("compress", help="apply a method or recipe; write the model and a before/after report")
    _add_model(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--method", help="one method (see `nnslim methods`)")
    group.add_argument("--recipe", help="YAML recipe: a list of steps, each {method: NAME, option: value}")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --method (repeatable; VALUE is read as YAML), e.g. --set group_size=64")
    p.add_argument("--calibration", default=None, metavar="FILE", help="calibration/training data of a Hugging "
                   "Face model, in any form --eval takes")
    p.add_argument("--out", required=True, help="output directory (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    p.add_argument("--seed", type=_seed, default=None, help="random seed (default: the recipe's, else 0)")
    p.add_argument("--no-report", action="store_true", help="skip the evaluation/benchmark report")
    p.add_argument("--stream", action="store_true", help="Hugging Face checkpoints larger than memory: build the "
                   "model on the meta device and read each layer / decoder block from the safetensors shards "
                   "just before it is compressed (one step of: " + ", ".join(STREAMABLE) + "); the report is "
                   "perplexity before/after, block by block, and sizes")
    p.add_argument("--offload-dir", default=None, metavar="DIR", help="with --stream: finished blocks go to disk "
                   "here (needs free space of the checkpoint's size), so memory holds about one block")
    p.add_argument("--threads", type=lambda t: _positive(t, 1024), default=None,
                   help="torch CPU threads (float sums depend on it; nnslim.json records the count used)")
    _add_timing(p)

    p = sub.add_parser("generate", help="greedy text generation from a causal LM, with the measured decode rate")
    _add_model(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch of prompts "
                   "with one token length)")
    p.add_argument("--max-new-tokens", type=lambda t: _int_in(t, 1, 1 << 16), default=64)
    p.add_argument("--kv-cache", choices=("model", "int8", "fp8"), default="model",
                   help="KV cache storage of nnslim's decoder (Llama-family torch models)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    p.add_argument("--dtype", choices=("auto", "model", "bf16", "fp16", "fp32"), default="auto",
                   help="torch models: compute dtype (auto: bf16 on CUDA, the model's own on CPU)")
    from .runtime import BACKENDS
    p.add_argument("--backend", "--target", dest="backend", choices=BACKENDS, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("demo", help="compress MiniLM to int8 (ONNX); print the measured before/after report")
    p.add_argument("--out", default="build/demo")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--testbed", default="minilm")
    p.add_argument("--repeats", type=_positive, default=15)
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                   help="ONNX runtime to measure the ONNX rows in (default: both)")
    return parser


def _cmd_testbeds(args) -> None:
    from .testbeds import TESTBEDS

    for name, cls in TESTBEDS.items():
        tb = cls()
        print(f"{name:<12} metric={tb.primary_metric:<12} {tb.description}")


def _cmd_methods(args) -> None:
    from .recipe import methods

    for name, m in sorted(methods().items()):
        opts = ", ".join(f"{f.name}={f.default!r}" for f in m.config_cls.options()) or "no options"
        print(f"{name:<12} {m.description} [{m.needs} -> {m.produces}] ({opts})")


def _cmd_evaluate(args) -> None:
    from .api import evaluate

    res = evaluate(args.model, testbed=args.testbed, backend=args.backend, trust_remote_code=args.trust_remote_code,
                   **_data_args(args))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"testbed {res['testbed']}  backend {res['backend']}  size {res['size_bytes'] / 1e6:.2f} MB  "
          f"params {res['params']:,}")
    for k, v in res["metrics"].items():
        print(f"  {k:<16} {v:.4f}")


def _cmd_generate(args) -> None:
    from .api import generate

    res = generate(args.model, args.prompt, args.max_new_tokens, testbed=args.testbed, backend=args.backend,
                   kv_cache=args.kv_cache, device=args.device, dtype=args.dtype,
                   trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    for prompt, text in zip(args.prompt, res["texts"]):
        print(f"{prompt}{text}")
    print(f"# {res['new_tokens']} new tokens x {res['batch']} after {res['prompt_tokens']} prompt tokens: "
          f"{res['decode_tokens_per_s']:.1f} tokens/s (prefill excluded); {res['decoder']}", file=sys.stderr)


def _print_report(report, out) -> None:
    print(report.to_terminal())
    if out:
        paths = report.write(out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def _cmd_benchmark(args) -> None:
    from .api import benchmark
    from .io import StagedDir

    staged = StagedDir(args.out, args.overwrite) if args.out is not None else None
    with staged or _nothing():
        report = benchmark(args.model, testbed=args.testbed, backend=args.backend, batch=args.batch,
                           seq=args.seq, repeats=args.repeats, memory=not args.no_memory,
                           trust_remote_code=args.trust_remote_code, **_data_args(args))
        print(report.to_terminal())
        if staged:
            report.write(staged.path)
            print(f"wrote {staged.commit()}")


def _data_args(args) -> dict:
    return {"eval_data": args.eval_data, "task": args.task, "text_column": args.text_column,
            "label_column": args.label_column}


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _parse_options(options: list[str]) -> dict:
    from .errors import NnslimError
    from .recipe import yaml_load

    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NnslimError(f"--set {item!r} is not allowed; expected KEY=VALUE, e.g. --set group_size=64")
        if key == "method":
            raise NnslimError(f"--set {item!r} is not allowed: the method is given by --method")
        if key in out:
            raise NnslimError(f"--set {key}= is given twice; give each option once")
        out[key] = yaml_load(value, f"--set {key}")
    return out


def _cmd_compress(args) -> None:
    from .api import compress

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    recipe = args.recipe if args.recipe else args.method
    if args.recipe and not Path(args.recipe).is_file():
        from .errors import NnslimError
        raise NnslimError(f"--recipe={args.recipe!r}: file not found")
    if args.options and not args.method:
        from .errors import NnslimError
        raise NnslimError("--set is for --method; put options of a --recipe inside the YAML file")
    if args.method:
        from .recipe import Recipe, make_step
        recipe = Recipe((make_step({"method": args.method, **_parse_options(args.options)}, "--method"),))
    model, testbed = args.model, args.testbed
    if args.offload_dir and not args.stream:
        from .errors import bad_value
        raise bad_value("--offload-dir", args.offload_dir, "used with --stream only")
    if args.stream:
        model, testbed = _streamed(args, recipe)
    res = compress(model, recipe, out=args.out, testbed=testbed, seed=args.seed,
                   overwrite=args.overwrite, report=not args.no_report, batch=args.batch, seq=args.seq,
                   repeats=args.repeats, memory=not args.no_memory, backend=args.backend,
                   trust_remote_code=args.trust_remote_code, calibration=args.calibration, **_data_args(args))
    if res.report is not None:
        print(res.report.to_terminal())
    if res.out is not None:  # (under torchrun, rank 0 alone writes the artifact)
        print(f"wrote {res.out}")


def _streamed(args, recipe):
    """--stream: the Hugging Face checkpoint on the meta device, read from its shards layer by layer."""
    from .errors import NnslimError
    from .loading import load_streamed
    from .recipe import as_recipe, method_of

    steps = as_recipe(recipe).steps
    if len(steps) != 1:
        raise NnslimError(f"--stream runs one step; the recipe has {len(steps)} (run them one after another, each "
                          "streamed from the previous artifact, or load the model whole)")
    if method_of(steps[0]).name not in STREAMABLE:
        raise NnslimError(f"--stream works with {', '.join(STREAMABLE)}; the recipe has {method_of(steps[0]).name!r}")
    model = load_streamed(args.model, args.trust_remote_code, args.offload_dir)
    return model, model.nnslim_testbed


def _cmd_demo(args) -> None:
    from .demo import run_demo

    report = run_demo(args.out, testbed=args.testbed, overwrite=args.overwrite, repeats=args.repeats,
                      backend=args.backend)
    _print_report(report, None)
    print(f"wrote {args.out}/report.md, report.json, plot.png")


COMMANDS = {"testbeds": _cmd_testbeds, "methods": _cmd_methods, "evaluate": _cmd_evaluate,
            "benchmark": _cmd_benchmark, "compress": _cmd_compress, "demo": _cmd_demo,
            "generate": _cmd_generate}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    from .errors import NnslimError
    from .errors import Terminated
    from .errors import check_terminated
    from .errors import request_termination
    from .errors import termination_requested

    previous = signal.signal(signal.SIGTERM, request_termination)  # like Ctrl-C: temp dirs go, output stays old
    try:
        COMMANDS[args.command](args)
        check_terminated()  # a SIGTERM that library code swallowed still ends the run as terminated
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except Exception as e:
        if termination_requested():  # a failure that followed a swallowed SIGTERM (e.g. a half-done import)
            print("terminated", file=sys.stderr)
            return 143
        if not isinstance(e, NnslimError):
            raise
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _one_line(message: str, limit: int = 2000) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "..."


if __name__ == "__main__":
    sys.exit(main())
