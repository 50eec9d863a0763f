"""`make demo`: compress a real model (MiniLM by default) to fp16 and ONNX and report them side by side."""
from __future__ import annotations

from pathlib import Path

from .api import compress
from .eval.compare import Variant, compare, variants_for
from .loading import resolve
from .io import StagedDir


def run_demo(out: str | Path, testbed: str = "minilm", overwrite: bool = False, repeats: int = 15,
             batch: int = 8, seq: int = 128):
    """Writes out/fp16, out/onnx and the report, built beside `out` and swapped in whole."""
    with StagedDir(out, overwrite) as staged:
        base = resolve(testbed)
        variants = [Variant("fp32", base.model, "torch", base.source)]
        for method in ("fp16", "onnx"):
            res = compress(base.model, method, testbed=base.testbed, out=staged.path / method, report=False)
            variants += variants_for(method, res.model, str(staged.path / method))
        report = compare(base.testbed, variants, batch=batch, seq=seq, repeats=repeats, max_seconds=60)
        report.write(staged.path)
        staged.commit()
    return report
