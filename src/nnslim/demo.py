"""`make demo`: compress a real model (the embedded MiniLM by default) with int8 post-training quantization
and report it against fp32 (torch, and the same model exported to ONNX) side by side, measured here."""
from __future__ import annotations

from pathlib import Path

from .api import compress
from .eval.compare import Variant, compare, variants_for
from .io import StagedDir
from .loading import resolve

METHODS = ("onnx", "int8")  # fp32 ONNX: the runtime's own gain; int8: what compression adds on top


def run_demo(out: str | Path, testbed: str = "minilm", overwrite: bool = False, repeats: int = 15,
             batch: int = 8, seq: int = 128):
    """Writes out/onnx, out/int8 and the report, built beside `out` and swapped in whole."""
    with StagedDir(out, overwrite) as staged:
        base = resolve(testbed)
        variants = [Variant("fp32 (torch)", base.model, "torch", base.source)]
        for method in METHODS:
            res = compress(base.model, method, testbed=base.testbed, out=staged.path / method, report=False)
            name = "original as fp32 onnx" if method == "onnx" else f"{method} onnx"
            variants += variants_for(name, res.model, str(staged.path / method), "onnxruntime")
        report = compare(base.testbed, variants, batch=batch, seq=seq, repeats=repeats, max_seconds=60)
        report.notes.append("int8: nnslim static int8 PTQ (SmoothQuant, per-channel weights, calibrated activations) "
                            "deployed as a QDQ ONNX graph; all rows measured in this run on this CPU")
        report.write(staged.path)
        staged.commit()
    return report
