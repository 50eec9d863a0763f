"""`make demo`: compress a real model (the embedded MiniLM by default) with int8 post-training quantization
and report it against fp32 (torch, and the same model exported to ONNX) side by side, measured here in both ONNX
runtimes: which one runs int8 faster depends on the CPU (OpenVINO with int8 dot products, VNNI / AMX; ONNX Runtime
on some CPUs without them: BENCHMARKS.md 8a / 8b / 8g)."""
from __future__ import annotations

from pathlib import Path

from .api import compress
from .eval.compare import Variant, compare, variants_for
from .io import StagedDir
from .loading import resolve

METHODS = ("onnx", "int8")  # fp32 ONNX: the runtime's own gain; int8: what compression adds on top


def run_demo(out: str | Path, testbed: str = "minilm", overwrite: bool = False, repeats: int = 15,
             batch: int = 8, seq: int = 128, backend: str | None = None):
    """Writes out/onnx, out/int8 and the report, built beside `out` and swapped in whole. The ONNX rows are
    measured in `backend` ("onnxruntime" / "openvino"), or in both when it is None."""
    with StagedDir(out, overwrite) as staged:
        base = resolve(testbed)
        variants = [Variant("fp32 (torch)", base.model, "torch", base.source)]
        for method in METHODS:
            res = compress(base.model, method, testbed=base.testbed, out=staged.path / method, report=False)
            name = "original as fp32 onnx" if method == "onnx" else f"{method} onnx"
            variants += variants_for(name, res.model, str(staged.path / method), backend)
        report = compare(base.testbed, variants, batch=batch, seq=seq, repeats=repeats, max_seconds=60)
        report.notes.append("int8: nnslim static int8 PTQ (SmoothQuant, per-channel weights, calibrated activations) "
                            "deployed as a QDQ ONNX graph (one file for both runtimes); all rows measured in this "
                            "run on this CPU")
        report.write(staged.path)
        staged.commit()
    return report
