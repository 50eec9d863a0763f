"""BENCHMARKS.md section 6: training-time compression (QAT, binary, movement pruning / JPQD, distilled
students), each measured side by side with its fp32 baseline in one run.

  python benchmarks/training.py digits                    # PTQ vs QAT at W4A8 / W2A8, binary, sizes, QAT time
  python benchmarks/training.py minilm-student --steps N  # 3 of 6 layers kept, distilled, int8
  python benchmarks/training.py minilm-jpqd --steps N     # movement pruning + QAT + KD in one loop
  python benchmarks/training.py minilm-structured --steps N  # 50% FFN, 1/3 heads, distilled

Every recipe is also written as YAML next to its report (benchmarks/results/<name>/recipe.yaml), so the
same run is one `nnslim compress --recipe` away. Latency: interleaved rounds at the testbed's batch;
nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import yaml  # noqa: E402

import nnslim  # noqa: E402
from nnslim.recipe import as_recipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "lscpu unavailable"
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    isa = [f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f]
    return f"{model}; {os.cpu_count()} CPUs; int8-relevant flags: {' '.join(isa) or 'none'}"


def _run(testbed: str, name: str, steps: list[dict], repeats: int, report: bool = True, memory: bool = True):
    out = RESULTS / name
    recipe = {"seed": 0, "steps": steps}
    t0 = time.perf_counter()
    res = nnslim.compress(testbed, as_recipe(recipe), out=out / "artifact", overwrite=True, report=report,
                          repeats=repeats, memory=memory)
    took = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return res, took


def digits(args) -> None:
    tb = nnslim.get_testbed("digits-cnn")
    from nnslim.runtime import TorchRunner

    fp32 = tb.evaluate(TorchRunner(tb.load_model()))["accuracy"]
    epochs = args.epochs
    steps = epochs * -(-len(tb.training_data()) // 64)
    train = {"method": "distill", "steps": steps, "batch_size": 64, "lr": 1e-3}
    rows = []
    cases = [("W4A8 per-channel", {"method": "qat", "bits": 4}),
             ("W4A8 per-tensor", {"method": "qat", "bits": 4, "per_channel": False}),
             ("W2A8 per-channel", {"method": "qat", "bits": 2}),
             ("W4A4 per-channel", {"method": "qat", "bits": 4, "act_bits": 4}),
             ("binary weights", {"method": "binary"}),
             ("binary weights + activations", {"method": "binary", "activations": True})]
    for label, quant in cases:
        for trained in (False, True):
            if quant["method"] == "binary" and not trained:
                continue  # binary weights without training are not a method anyone deploys
            name = f"digits_{label.replace(' ', '_').replace('+', '').replace('__', '_')}_{'qat' if trained else 'ptq'}"
            res, took = _run("digits-cnn", name, [quant] + ([train] if trained else []), args.repeats, report=False)
            directory = RESULTS / name / "artifact"
            path = directory / "model.onnx" if (directory / "model.onnx").exists() else directory
            ev = nnslim.evaluate(str(path), testbed="digits-cnn")
            rows.append((label, "QAT" if trained and quant["method"] == "qat" else "trained" if trained else "PTQ",
                         ev["metrics"]["accuracy"], ev["size_bytes"], took))
            print(rows[-1], flush=True)
    size_fp32 = nnslim.evaluate("digits-cnn")["size_bytes"]
    print(f"\n# digits-cnn training-time quantization, {time.strftime('%Y-%m-%d %H:%M')}; {cpu_flags()}")
    print(f"fp32 accuracy {fp32:.4f}, size {size_fp32 / 1e6:.3f} MB; training: {epochs} epochs = {steps} steps of 64 "
          "(KD from fp32 + hard labels)\n")
    print("| variant | training | accuracy | vs fp32 (points) | artifact MB | size x | wall s (incl. calibration, export) |")
    print("|---|---|---|---|---|---|---|")
    for label, how, acc, size, took in rows:
        print(f"| {label} | {how} | {acc:.4f} | {100 * (acc - fp32):+.2f} | {size / 1e6:.3f} | "
              f"{size / size_fp32:.3f} | {took:.0f} |")


def _minilm(args, name: str, steps: list[dict]) -> None:
    res, took = _run("minilm", name, steps, args.repeats, memory=not args.no_memory)
    rep = res.report
    rep.notes.append(f"whole compress (training, export, measurement) {took:.0f} s")
    rep.write(RESULTS / name)
    print(f"# {name}, {time.strftime('%Y-%m-%d %H:%M')}; {cpu_flags()}; torch threads {torch.get_num_threads()}")
    print(rep.to_markdown())


def _kd(args) -> dict:
    return {"method": "distill", "steps": args.steps, "batch_size": 32, "lr": args.lr, "hidden_weight": 1.0,
            "attention_weight": args.attention, "samples": 8192}


def student(args) -> None:
    _minilm(args, "minilm_student", [{"method": "drop-layers", "every": 2},
                                     {"method": "prune-structured", "ratio": args.ffn, "head_ratio": 0.0},
                                     {"method": "qat", "bits": 8}, _kd(args)])


def jpqd(args) -> None:
    _minilm(args, "minilm_jpqd", [{"method": "prune-movement", "sparsity": args.ffn, "head_sparsity": args.heads,
                                   "warmup_start": 0.05, "warmup_end": 0.5},
                                  {"method": "qat", "bits": 8}, _kd(args)])


def structured(args) -> None:
    _minilm(args, "minilm_structured", [{"method": "prune-structured", "ratio": 0.5, "head_ratio": 1 / 3}, _kd(args)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["digits", "minilm-student", "minilm-jpqd", "minilm-structured"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--attention", type=float, default=1.0)
    ap.add_argument("--ffn", type=float, default=0.5, help="fraction of FFN neurons removed")
    ap.add_argument("--heads", type=float, default=1 / 3, help="fraction of heads removed (jpqd)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    {"digits": digits, "minilm-student": student, "minilm-jpqd": jpqd, "minilm-structured": structured}[args.what](args)


if __name__ == "__main__":
    main()
