"""BENCHMARKS.md 7c: a decoder LLM (smollm2) deployed on this CPU with weight compression, against NNCF's
`compress_weights` on the same model in the same run.

  python benchmarks/llm_cpu_deploy.py [--testbed smollm2] [--repeats 5] [--gptq-samples 32] [--out build/llm_cpu]

Every ONNX row is one graph with a KV cache (past_key_values.* in, present.* out, as Optimum exports
text-generation-with-past), so the same file gives the perplexity, the prefill latency (batch 1 x 128)
and the greedy decode tokens/s (batch 1, prompt 64 + 32 tokens, prefill excluded). Rows:
- torch fp32 (the HF model with its DynamicCache), ONNX fp32 in ONNX Runtime and OpenVINO;
- nnslim int8 weight-only and int4 RTN kept in torch (torch's packed CPU kernels, picked by the selector), and
  written as nnslim's OpenVINO IR (method `openvino`), measured in OpenVINO;
- nnslim int8 weight-only (per channel) and int4 (RTN g64, GPTQ g64) exported as blocked DequantizeLinear
  (ONNX Runtime fuses them into MatMulNBits), in both runtimes; their embedding table and tied lm_head in int8
  (backup="auto" before an export: one int8 table), and one int4 row with them float (backup="float");
- NNCF `compress_weights` on the fp32 graph read into OpenVINO: INT8_ASYM (its default) and INT4_SYM g64
  (ratio 1.0, data-free, its defaults otherwise: the embedding / lm_head stay 8-bit).
Prints the CPU flags it saw. Needs the bench extra (nncf) for the NNCF rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import nnslim  # noqa: E402
from nnslim import Int4GptqConfig, Int4RtnConfig, Int8WeightOnlyConfig  # noqa: E402
from nnslim.eval.compare import Variant, compare  # noqa: E402
from nnslim.io import machine_info  # noqa: E402
from nnslim.loading import resolve  # noqa: E402
from nnslim.runtime import OnnxModel  # noqa: E402
from nnslim.runtime.onnx_methods import OnnxConfig, OpenVinoConfig  # noqa: E402


def nncf_rows(fp32: Path, work: Path, group: int) -> tuple[list[Variant], list[str]]:
    try:
        import nncf
        import openvino as ov
    except ImportError:
        print("nncf not installed: pip install -e '.[bench]' to include the NNCF rows", file=sys.stderr)
        return [], ["NNCF rows missing: nncf is not installed"]
    rows, notes = [], []
    for label, kwargs in (("NNCF compress_weights INT8_ASYM", {"mode": nncf.CompressWeightsMode.INT8_ASYM}),
                          (f"NNCF compress_weights INT4_SYM g{group}",
                           {"mode": nncf.CompressWeightsMode.INT4_SYM, "group_size": group, "ratio": 1.0})):
        t0 = time.perf_counter()
        model = nncf.compress_weights(ov.Core().read_model(str(fp32)), **kwargs)
        xml = work / (label.split()[-1].lower() + ".xml")
        ov.save_model(model, str(xml))
        notes.append(f"{label}: {time.perf_counter() - t0:.1f} s")
        rows.append(Variant(label, OnnxModel(xml), "openvino", size_bytes=OnnxModel(xml).size_bytes))
    return rows, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbed", default="smollm2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--gptq-samples", type=int, default=32, help="0 leaves the GPTQ rows out")
    ap.add_argument("--out", type=Path, default=Path("build/llm_cpu"))
    ap.add_argument("--no-ir-rows", dest="ir_rows", action="store_false",
                    help="leave out nnslim's OpenVINO IR (method openvino) of int8 / int4 RTN")
    ap.add_argument("--no-torch-rows", dest="torch_rows", action="store_false",
                    help="leave out int8 / int4 RTN kept in torch (its packed CPU kernels, no export)")
    args = ap.parse_args()
    info = machine_info()
    print(f"cpu: {info.get('cpu')}; flags: {info.get('cpu_flags')}", flush=True)
    base = resolve(args.testbed)
    tb = base.testbed
    args.out.mkdir(parents=True, exist_ok=True)
    recipes = {"fp32": [OnnxConfig()],
               "int8 weight-only": [Int8WeightOnlyConfig(), OnnxConfig()],
               f"int4 RTN g{args.group}": [Int4RtnConfig(group_size=args.group), OnnxConfig()],
               # what every int4 row was before the int8 backup (the embedding / head table kept fp32)
               f"int4 RTN g{args.group} float backup": [Int4RtnConfig(group_size=args.group, backup="float"),
                                                        OnnxConfig()]}
    if args.gptq_samples:
        recipes[f"int4 GPTQ g{args.group}"] = [Int4GptqConfig(group_size=args.group, samples=args.gptq_samples),
                                               OnnxConfig()]
    variants = [Variant("torch fp32", base.model, "torch")]
    notes = []
    for label, recipe in recipes.items():
        t0 = time.perf_counter()
        res = nnslim.compress(base.model, recipe, testbed=tb, out=args.out / label.replace(" ", "-"),
                              overwrite=True, report=False)
        notes.append(f"nnslim {label}: {time.perf_counter() - t0:.1f} s (incl. export and checks)")
        notes += [f"nnslim {label}: {n}" for n in res.notes if "check" in n or "layers as" in n]
        name = "original float32 ONNX" if label == "fp32" else f"nnslim {label}"
        variants += [Variant(name, res.model, b, size_bytes=res.model.size_bytes) for b in ("onnxruntime", "openvino")]
    for label, recipe in (("int8 weight-only", [Int8WeightOnlyConfig()]),
                          (f"int4 RTN g{args.group}", [Int4RtnConfig(group_size=args.group)])):
        if args.torch_rows:  # the same compression left in torch: its packed CPU kernels (no export)
            res = nnslim.compress(base.model, recipe, testbed=tb, out=args.out / ("torch-" + label.replace(" ", "-")),
                                  overwrite=True, report=False)
            variants.append(Variant(f"nnslim {label} (torch)", res.model, "torch"))
    if args.ir_rows:  # nnslim's OpenVINO IR (method `openvino`: zero zero points removed), what OpenVINO users deploy
        for label, recipe in (("int8 weight-only", [Int8WeightOnlyConfig(), OpenVinoConfig()]),
                              (f"int4 RTN g{args.group}", [Int4RtnConfig(group_size=args.group), OpenVinoConfig()])):
            res = nnslim.compress(base.model, recipe, testbed=tb, out=args.out / ("ir-" + label.replace(" ", "-")),
                                  overwrite=True, report=False)
            variants.append(Variant(f"nnslim {label} (OpenVINO IR)", res.model, "openvino",
                                    size_bytes=res.model.size_bytes))
    fp32_path = variants[1].model.path
    rivals, rival_notes = nncf_rows(fp32_path, args.out, args.group)
    variants += rivals
    report = compare(tb, variants, repeats=args.repeats, memory=False, max_seconds=900)
    report.notes = [f"cpu flags seen: {info.get('cpu_flags')}", *notes, *rival_notes, *report.notes]
    report.write(args.out)
    print(report.to_markdown())


if __name__ == "__main__":
    main()
