"""BENCHMARKS.md int8 tables: nnslim int8 PTQ vs ONNX Runtime's quantizer and NNCF (ONNX and OpenVINO
paths), measured side by side in one run (same calibration and held-out data, interleaved latency),
plus a calibrator x weight-granularity table.

usage: python benchmarks/int8_cpu.py [--testbeds minilm digits-cnn] [--samples 300] [--repeats 10]
       [--calibrator-table]
Rivals need the bench extra: pip install -e '.[bench]' (nncf); ONNX Runtime is a core dependency.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


import nnslim  # noqa: E402
from nnslim.eval.compare import Variant, compare  # noqa: E402
from nnslim.loading import resolve  # noqa: E402
from nnslim.quant.ptq import Int8Config, quantize_int8  # noqa: E402
from nnslim.runtime import OnnxModel, TorchRunner  # noqa: E402
from nnslim.runtime.onnx_export import export_onnx  # noqa: E402


NOTES: list[str] = []  # rival timings for the report
FP32_EXPORT_S = [0.0]


def ort_rivals(fp32: Path, calib: list[dict], work: Path, transformer: bool) -> list[Variant]:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "ort_pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    out = []
    dyn = work / "ort_dynamic.onnx"
    quantize_dynamic(str(pre), str(dyn), per_channel=True, weight_type=QuantType.QInt8)
    out.append(Variant("ORT quantize_dynamic per-channel", OnnxModel(dyn), "onnxruntime"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    st = work / "ort_static.onnx"
    quantize_static(str(pre), str(st), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out.append(Variant("ORT quantize_static QDQ (defaults)", OnnxModel(st), "onnxruntime"))
    return out


def nncf_rivals(fp32: Path, calib: list[dict], work: Path, transformer: bool) -> list[Variant]:
    try:
        import nncf
        import openvino as ov
    except ImportError:
        print("nncf not installed: pip install -e '.[bench]' to include NNCF rows", file=sys.stderr)
        return []
    model_type = nncf.ModelType.TRANSFORMER if transformer else None
    ov_model = ov.Core().read_model(str(fp32))
    t0 = time.perf_counter()
    q = nncf.quantize(ov_model, nncf.Dataset(calib), model_type=model_type, subset_size=len(calib))
    NOTES.append(f"NNCF quantize wall time with {len(calib)} calibration samples (from the exported fp32 graph, "
                 f"whose export took {FP32_EXPORT_S[0]:.1f} s): {time.perf_counter() - t0:.1f} s")
    work.mkdir(parents=True, exist_ok=True)
    xml = work / "nncf_ov.xml"
    ov.save_model(q, str(xml))
    return [Variant("NNCF (OpenVINO IR)", OnnxModel(xml), "openvino")]


def run(testbed: str, samples: int, repeats: int, out: Path, max_drop: float) -> str:
    base = resolve(testbed)
    tb = base.testbed
    work = Path(tempfile.mkdtemp(prefix=f"int8-{Path(testbed).name}-"))
    t0 = time.perf_counter()
    fp32 = export_onnx(base.model, tb.export_example(), work / "fp32.onnx", tb.dynamic_axes)
    FP32_EXPORT_S[0] = time.perf_counter() - t0
    NOTES.clear()
    calib = tb.calibration(samples)
    t0 = time.perf_counter()
    res = nnslim.compress(base.model, Int8Config(samples=samples), testbed=tb, out=out / "nnslim-int8",
                          overwrite=True, report=False)
    ptq_s = time.perf_counter() - t0
    dyn = nnslim.compress(base.model, "int8-dynamic", testbed=tb, out=out / "nnslim-int8-dynamic",
                          overwrite=True, report=False)
    ctl = nnslim.compress(base.model, Int8Config(samples=samples, max_drop=max_drop), testbed=tb,
                          out=out / "nnslim-int8-max-drop", overwrite=True, report=False)
    transformer = tb.default_seq is not None
    float_mm = None
    if transformer:  # the attention matmuls' int8 (on by default for transformers) against leaving them float
        float_mm = nnslim.compress(base.model, Int8Config(samples=samples, matmuls=False), testbed=tb,
                                   out=out / "nnslim-int8-float-matmuls", overwrite=True, report=False)
    other_acts = None
    if not transformer:  # a CNN: symmetric int8 activations (NNCF's CNN form) beside the default uint8 + zero points
        other_acts = nnslim.compress(base.model, Int8Config(samples=samples, symmetric_activations=True), testbed=tb,
                                     out=out / "nnslim-int8-symmetric", overwrite=True, report=False)
    variants = [Variant("fp32 ONNX", fp32, "onnxruntime"), Variant("fp32 ONNX", fp32, "openvino"),
                Variant("nnslim int8", res.model, "onnxruntime"), Variant("nnslim int8", res.model, "openvino"),
                Variant(f"nnslim int8 max_drop={max_drop}", ctl.model, "onnxruntime"),
                Variant(f"nnslim int8 max_drop={max_drop}", ctl.model, "openvino"),
                Variant("nnslim int8-dynamic", dyn.model, "onnxruntime")]
    if float_mm is not None:
        variants[4:4] = [Variant("nnslim int8 matmuls=false", float_mm.model, b) for b in ("onnxruntime", "openvino")]
    if other_acts is not None:
        label = "nnslim int8 symmetric_activations=true"
        variants[4:4] = [Variant(label, other_acts.model, b) for b in ("onnxruntime", "openvino")]
    variants += ort_rivals(fp32.path, calib, work, transformer)
    variants += nncf_rivals(fp32.path, calib, out / "nncf-int8", transformer)  # kept: ov_layer_profile.py
    report = compare(tb, variants, repeats=repeats, memory=False, max_seconds=600)
    report.notes = [f"nnslim int8 PTQ wall time with {samples} calibration samples (incl. ONNX export): "
                    f"{ptq_s:.1f} s", *NOTES, *res.notes, *[f"max_drop run: {n}" for n in ctl.notes
                                                    if n.startswith(("accuracy control", "sensitivity"))]
                    ] + report.notes
    report.write(out)
    return report.to_markdown()


def calibrator_table(testbed: str, samples: int) -> str:
    base = resolve(testbed)
    tb = base.testbed
    calib = tb.calibration(samples)
    example = tb.example_inputs(batch=1, seq=8 if tb.default_seq else None)
    metric = tb.primary_metric
    rows = [f"### {testbed}: {metric} of the int8 model (torch simulation) by calibrator and weight "
            f"granularity ({samples} calibration samples; other options at their defaults)", "",
            "| calibrator | per-channel weights | per-tensor weights |", "|---|---|---|"]
    for cal in ("minmax", "percentile", "entropy", "mse"):
        cells = []
        for per_channel in (True, False):
            q = quantize_int8(base.model, Int8Config(calibrator=cal, per_channel=per_channel), calib, example)
            m = tb.evaluate(TorchRunner(q))
            extra = f" (min {m['cos_min']:.4f})" if "cos_min" in m else ""
            cells.append(f"{m[metric]:.4f}{extra}")
        rows.append(f"| {cal} | {cells[0]} | {cells[1]} |")
    fp32 = tb.evaluate(TorchRunner(base.model))[metric]
    rows.append(f"\nfp32 {metric}: {fp32:.4f}")
    return "\n".join(rows) + "\n"


def reduce_range_check(testbed: str, samples: int) -> str:
    """Fidelity of 8-bit vs 7-bit weights: torch simulation vs what ORT and OpenVINO deliver."""
    from nnslim.runtime import make_runner

    base = resolve(testbed)
    tb = base.testbed
    metric = tb.primary_metric
    rows = [f"### {testbed}: {metric} with 8-bit vs 7-bit (reduce_range) weights", "",
            "| weights | torch simulation | onnxruntime | openvino |", "|---|---|---|---|"]
    for rr in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            q = nnslim.quantize(base.model, Int8Config(samples=samples, reduce_range=rr), testbed=tb)
            onnx_model = nnslim.export_onnx(q, tb.export_example(), Path(tmp) / "q.onnx", tb.dynamic_axes,
                                             calibration=tb.calibration(64))
            cells = [tb.evaluate(TorchRunner(q))[metric]] + [tb.evaluate(make_runner(onnx_model, b))[metric]
                                                             for b in ("onnxruntime", "openvino")]
        rows.append(f"| {'7-bit' if rr else '8-bit'} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join(rows) + "\n"


def llm_w8a8(testbed: str, samples: int) -> str:
    """W8A8 int8 on a decoder LM's Linear layers (torch simulation): perplexity and generation agreement."""
    base = resolve(testbed)
    tb = base.testbed
    t0 = time.perf_counter()
    q = nnslim.quantize(base.model, Int8Config(samples=samples), testbed=tb)
    ptq_s = time.perf_counter() - t0
    fp32, int8 = tb.evaluate(TorchRunner(base.model)), tb.evaluate(TorchRunner(q))
    rows = [f"### {testbed}: W8A8 int8 (Linear layers, lm_head kept float), torch simulation, "
            f"{samples} calibration sequences of {tb.seq_len} tokens; PTQ {ptq_s:.0f} s", "",
            "| model | perplexity | generation agreement |", "|---|---|---|",
            f"| fp32 | {fp32['perplexity']:.3f} | {fp32['gen_agreement']:.3f} |",
            f"| int8 W8A8 | {int8['perplexity']:.3f} | {int8['gen_agreement']:.3f} |"]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbeds", nargs="+", default=["minilm", "digits-cnn"])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="build/bench-int8")
    parser.add_argument("--calibrator-table", action="store_true")
    parser.add_argument("--reduce-range-check", action="store_true")
    parser.add_argument("--llm-w8a8", action="store_true", help="decoder LM W8A8 accuracy (torch simulation)")
    parser.add_argument("--max-drop", type=float, default=0.001, help="budget for the accuracy-control row")
    args = parser.parse_args()
    print(f"command: python benchmarks/int8_cpu.py {' '.join(sys.argv[1:])}")
    for name in args.testbeds:
        t0 = time.time()
        if args.llm_w8a8:
            print(llm_w8a8(name, args.samples), flush=True)
        elif args.reduce_range_check:
            print(reduce_range_check(name, args.samples), flush=True)
        elif args.calibrator_table:
            print(calibrator_table(name, args.samples), flush=True)
        else:
            print(run(name, args.samples, args.repeats, Path(args.out) / Path(name).name, args.max_drop), flush=True)
        print(f"({name}: {time.time() - t0:.0f} s wall)\n", flush=True)


if __name__ == "__main__":
    main()
