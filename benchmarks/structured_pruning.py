"""BENCHMARKS.md structural-pruning tables (issue 6), measured side by side in one run per testbed.

  python benchmarks/structured_pruning.py digits [--kd-seconds 120] [--repeats 20]
  python benchmarks/structured_pruning.py minilm [--kd-steps 300] [--repeats 10]
  python benchmarks/structured_pruning.py minilm-ablation   # one-shot quality by importance / refit
  python benchmarks/structured_pruning.py grouped [--kd-seconds 60]

digits-cnn  50% of the channels of every layer removed (nnslim: activation importance + least-squares
            refit), then knowledge distillation from the original on the calibration split for at
            most --kd-seconds; Torch-Pruning (MetaPruner, group L2 magnitude, same ratio) gets the
            same distillation budget when it is installed (pip install -e '.[bench]').
minilm      50% of FFN neurons and a third of the attention heads removed, distilled on calibration
            text (embedding cosine + hidden-state loss), then int8 on top: torch and ONNX Runtime rows
            against fp32, and the int8 of the unpruned model for reference.
grouped     a ResNeXt-style CNN (bottlenecks around grouped 3x3 convolutions, 8 groups) trained here on the
            digits calibration split, 50% of its channels removed one-shot, then the same distillation budget;
            Torch-Pruning on the same model when installed.
Latency: interleaved timing at the testbed's batch (64 images / 32 sentences x 128 tokens) on this CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import nnslim  # noqa: E402
from nnslim import DistillConfig, Int8Config, StructuredPruneConfig  # noqa: E402
from nnslim.eval.compare import Variant, compare  # noqa: E402
from nnslim.runtime import TorchRunner  # noqa: E402
from nnslim.runtime.onnx_export import export_onnx  # noqa: E402


def _tensors(d):
    return {k: torch.as_tensor(v) for k, v in d.items()}


def _metric(tb, model) -> float:
    return tb.evaluate(TorchRunner(model))[tb.primary_metric]


def torch_pruning_rival(model, example, ratio: float, notes: list[str]):
    try:
        import torch_pruning as tp
    except ImportError:
        print("torch-pruning not installed: pip install -e '.[bench]' for the rival row", file=sys.stderr)
        return None
    import copy

    m = copy.deepcopy(model)
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(m, example_inputs=next(iter(example.values())),
                                  importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=[last])
    pruner.step()
    notes.append(f"Torch-Pruning {tp.__version__}: MetaPruner, GroupMagnitudeImportance(p=2), ratio {ratio}")
    return m.eval()


def digits(args) -> None:
    tb = nnslim.get_testbed("digits-cnn")
    base = tb.load_model()
    example = _tensors(tb.export_example())
    calib = tb.calibration(4096)
    notes: list[str] = [f"fp32 accuracy {_metric(tb, base):.4f}"]
    t0 = time.perf_counter()
    pruned = nnslim.prune(base, StructuredPruneConfig(ratio=0.5), calibration=calib[:512], example_inputs=example)
    notes.append(f"nnslim prune 50% in {time.perf_counter() - t0:.1f} s: accuracy before distillation "
                 f"{_metric(tb, pruned):.4f}")
    kd = DistillConfig(steps=100_000, max_seconds=args.kd_seconds, lr=2e-3, batch_size=64, seed=0)
    t0 = time.perf_counter()
    ours = nnslim.distill(pruned, base, calib, kd, testbed=tb)
    notes.append(f"nnslim distillation: {time.perf_counter() - t0:.0f} s (budget {args.kd_seconds:.0f} s)")
    variants = [Variant("fp32", base, "torch"), Variant("nnslim 50% channels + KD", ours, "torch")]
    rival = torch_pruning_rival(base, example, 0.5, notes)
    if rival is not None:
        notes.append(f"Torch-Pruning accuracy before distillation {_metric(tb, rival):.4f}")
        variants.append(Variant("Torch-Pruning 50% + same KD", nnslim.distill(rival, base, calib, kd, testbed=tb),
                                "torch"))
    work = Path(tempfile.mkdtemp(prefix="nnslim-sp-"))
    variants += [Variant("fp32 ONNX", export_onnx(base, tb.export_example(), work / "fp32.onnx", tb.dynamic_axes),
                         "onnxruntime"),
                 Variant("nnslim pruned + KD ONNX",
                         export_onnx(ours, tb.export_example(), work / "ours.onnx", tb.dynamic_axes), "onnxruntime")]
    _report(tb, variants, notes, args, "structured_digits")


class _Bottleneck(torch.nn.Module):
    def __init__(self, c: int, width: int, groups: int):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, c, 1, bias=False),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class ResNeXtDigits(torch.nn.Module):
    """8x8 digits -> 10 logits through ResNeXt bottlenecks (width 128 in 8 groups of 16)."""

    def __init__(self, c: int = 64, width: int = 128, groups: int = 8):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.stage1 = nn.Sequential(_Bottleneck(c, width, groups), _Bottleneck(c, width, groups), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(_Bottleneck(c, width, groups), _Bottleneck(c, width, groups))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem(x))).mean((2, 3)))


def grouped(args) -> None:
    from nnslim.testbeds.digits import fit_digits

    tb = nnslim.get_testbed("digits-cnn")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    base = fit_digits(ResNeXtDigits())
    notes: list[str] = [f"ResNeXtDigits trained in {time.perf_counter() - t0:.0f} s: fp32 accuracy "
                        f"{_metric(tb, base):.4f}"]
    example = _tensors(tb.export_example())
    calib = tb.calibration(4096)
    t0 = time.perf_counter()
    pruned = nnslim.prune(base, StructuredPruneConfig(ratio=0.5), calibration=calib[:512], example_inputs=example)
    grouped_convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    shapes = sorted({(m.in_channels, m.groups) for m in grouped_convs})
    notes.append(f"nnslim prune 50% in {time.perf_counter() - t0:.1f} s: accuracy before distillation "
                 f"{_metric(tb, pruned):.4f}; grouped convs now {shapes} (channels, groups)")
    kd = DistillConfig(steps=100_000, max_seconds=args.kd_seconds, lr=2e-3, batch_size=64, seed=0)
    ours = nnslim.distill(pruned, base, calib, kd, testbed=tb)
    variants = [Variant("fp32", base, "torch"), Variant("nnslim 50% channels + KD", ours, "torch")]
    try:
        rival = torch_pruning_rival(base, example, 0.5, notes)
    except Exception as e:  # noqa: BLE001 - the rival's own failure is a result
        rival = None
        notes.append(f"Torch-Pruning failed on this model: {type(e).__name__}: {str(e)[:160]}")
    if rival is not None:
        notes.append(f"Torch-Pruning accuracy before distillation {_metric(tb, rival):.4f}")
        variants.append(Variant("Torch-Pruning 50% + same KD", nnslim.distill(rival, base, calib, kd, testbed=tb),
                                "torch"))
    _report(tb, variants, notes, args, "structured_grouped")


def minilm(args) -> None:
    tb = nnslim.get_testbed("minilm")
    base = tb.load_model()
    example = _tensors(tb.export_example())
    calib = tb.calibration(4096)
    notes: list[str] = []
    cfg = StructuredPruneConfig(ratio=0.5, head_ratio=1 / 3)
    t0 = time.perf_counter()
    pruned = nnslim.prune(base, cfg, calibration=calib[:1024], example_inputs=example)
    notes.append(f"nnslim prune (50% FFN neurons, 4 of 12 heads per layer) in {time.perf_counter() - t0:.1f} s: "
                 f"cos_mean before distillation {_metric(tb, pruned):.4f}")
    kd = DistillConfig(steps=args.kd_steps, lr=3e-4, batch_size=32, hidden_weight=1.0, seed=0)
    t0 = time.perf_counter()
    ours = nnslim.distill(pruned, base, calib, kd, testbed=tb)
    notes.append(f"nnslim distillation: {args.kd_steps} steps of 32 sentences in {time.perf_counter() - t0:.0f} s")
    work = Path(tempfile.mkdtemp(prefix="nnslim-sp-"))
    fp32 = export_onnx(base, tb.export_example(), work / "fp32.onnx", tb.dynamic_axes)
    onnx_ours = export_onnx(ours, tb.export_example(), work / "ours.onnx", tb.dynamic_axes)
    t0 = time.perf_counter()
    q_ours = nnslim.compress(ours, Int8Config(samples=300), testbed=tb, out=work / "ours-int8", overwrite=True,
                             report=False).model
    q_base = nnslim.compress(base, Int8Config(samples=300), testbed=tb, out=work / "base-int8", overwrite=True,
                             report=False).model
    notes.append(f"int8 PTQ of both models: {time.perf_counter() - t0:.0f} s")
    variants = [Variant("fp32 (torch)", base, "torch"), Variant("pruned + KD (torch)", ours, "torch"),
                Variant("fp32 ONNX", fp32, "onnxruntime"), Variant("pruned + KD ONNX", onnx_ours, "onnxruntime"),
                Variant("int8 (unpruned) ONNX", q_base, "onnxruntime"),
                Variant("pruned + KD + int8 ONNX", q_ours, "onnxruntime")]
    _report(tb, variants, notes, args, "structured_minilm")


def ablation(args) -> None:
    """minilm one-shot quality (before distillation) by importance, refit and what is pruned."""
    tb = nnslim.get_testbed("minilm")
    base = tb.load_model()
    example = _tensors(tb.export_example())
    calib = tb.calibration(1024)
    print(f"# minilm one-shot structural pruning ablation, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| pruned | importance | refit | cos_mean before distillation | prune s |")
    print("|---|---|---|---|---|")
    runs = [(0.5, 1 / 3, "l2", "off"), (0.5, 1 / 3, "activation", "off"), (0.5, 1 / 3, "activation", "independent"),
            (0.5, 1 / 3, "activation", "sequential"), (0.5, 0.0, "activation", "independent"),
            (0.0, 1 / 3, "activation", "independent")]
    for ratio, heads, how, refit in runs:
        t0 = time.perf_counter()
        p = nnslim.prune(base, StructuredPruneConfig(ratio=ratio, head_ratio=heads, importance=how, reconstruct=refit),
                         calibration=calib, example_inputs=example)
        took = time.perf_counter() - t0
        what = f"{ratio:.0%} FFN, {round(heads * 12)}/12 heads"
        print(f"| {what} | {how} | {refit} | {_metric(tb, p):.4f} | {took:.0f} |", flush=True)


def _report(tb, variants, notes, args, name: str) -> None:
    rep = compare(tb, variants, repeats=args.repeats, memory=True)
    rep.notes = notes + rep.notes
    out = Path(__file__).resolve().parent / "results" / name
    rep.write(out)
    print(f"# {name} on {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(rep.to_markdown())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("testbed", choices=["digits", "minilm", "minilm-ablation", "grouped"])
    ap.add_argument("--kd-seconds", type=float, default=120.0)
    ap.add_argument("--kd-steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    {"digits": digits, "minilm": minilm, "minilm-ablation": ablation, "grouped": grouped}[args.testbed](args)


if __name__ == "__main__":
    main()
