"""OpenVINO prefill of an int4 weight-only ONNX read as is, the same graph with its all-zero zero points removed
(drop_zero_weight_offsets, what nnslim's IR export does), and optionally another model (e.g. NNCF's IR), side by
side on this CPU (BENCHMARKS 8g).

  python benchmarks/ov_zero_points.py MODEL.onnx [--other NNCF.xml] [--precision f32] [--seq 128] [--rounds 5]

Batch 1 x seq tokens, empty past; each round times 3 inferences of each model in turn; prints the median ms per
inference and how many zero-point subtractions were removed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def feed(compiled, seq: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for port in compiled.inputs:
        name = port.get_any_name()
        if name == "input_ids":
            out[name] = rng.integers(0, 32000, (1, seq)).astype(np.int64)
        elif name == "attention_mask":
            out[name] = np.ones((1, seq), np.int64)
        elif name == "position_ids":
            out[name] = np.arange(seq)[None].astype(np.int64)
        else:  # an empty past
            out[name] = np.zeros([1 if i == 0 else (0 if d.is_dynamic else d.get_length())
                                  for i, d in enumerate(port.get_partial_shape())], np.float32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--other", default=None)
    ap.add_argument("--precision", default="f32", help="INFERENCE_PRECISION_HINT (nnslim's runner uses f32)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import openvino as ov

    from nnslim.io import machine_info
    from nnslim.runtime.openvino import drop_zero_weight_offsets

    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": args.precision, "PERFORMANCE_HINT": "LATENCY"}
    dropped = core.read_model(args.model)
    n = drop_zero_weight_offsets(dropped)
    models = {"as written": core.read_model(args.model), f"zero points removed ({n})": dropped}
    if args.other:
        models[args.other] = core.read_model(args.other)
    compiled = {k: core.compile_model(m, "CPU", cfg) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in compiled}
    for _ in range(args.rounds):
        for k, c in compiled.items():
            req, f = c.create_infer_request(), feed(c, args.seq)
            req.infer(f)
            t = time.perf_counter()
            for _ in range(3):
                req.infer(f)
            times[k].append((time.perf_counter() - t) / 3 * 1e3)
    print(f"# {machine_info()}; openvino {ov.__version__}; precision {args.precision}; batch 1 x {args.seq}")
    for k, v in times.items():
        print(f"{k}: {statistics.median(v):.1f} ms")


if __name__ == "__main__":
    main()
