"""Experiment for issue 16 (BENCHMARKS 8d): does an int8 graph run faster in OpenVINO / ONNX Runtime when its
activations are quantized symmetrically (int8, zero point 0, as NNCF's CNN preset does) instead of asymmetrically
(uint8 with a zero point)? The per-layer profile (ov_layer_profile.py) showed NNCF's stem convolution, fed a signed
int8 image, 1.5x faster than nnslim's fed uint8 with zero point 128.

  python benchmarks/ov_symmetric_acts.py INT8.onnx [RIVAL.xml|.onnx] [--also MORE.onnx ...] [--batch 8] [--rounds 10]

Writes INT8-sym.onnx beside INT8.onnx: every per-tensor uint8 activation quantizer with a non-zero zero point
becomes int8 with zero point 0 and the scale that covers the same range (max(zp, 255 - zp) / 127 x scale; up to one
bit coarser for a skewed range). Times the original, the symmetric copy and the rival interleaved (3 warm-up runs,
then rounds of 20 runs each, median ms per run) on the same random input, and prints each output's cosine to the
original's.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def symmetric_copy(path: Path) -> tuple[Path, int]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    made: dict[tuple[str, str], tuple[str, str]] = {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale_name, zp_name = node.input[1], node.input[2]
        if zp_name not in inits or scale_name not in inits:
            continue
        zp = numpy_helper.to_array(inits[zp_name])
        if zp.dtype != np.uint8 or zp.size != 1 or int(zp) == 0:
            continue
        key = (scale_name, zp_name)
        if key not in made:
            scale = float(numpy_helper.to_array(inits[scale_name]))
            new_scale = scale * max(int(zp), 255 - int(zp)) / 127
            names = (f"{scale_name}.sym", f"{zp_name}.sym")
            proto.graph.initializer.extend([numpy_helper.from_array(np.array(new_scale, np.float32), names[0]),
                                            numpy_helper.from_array(np.array(0, np.int8), names[1])])
            made[key] = names
        node.input[1], node.input[2] = made[key]
    out = path.with_name(path.stem + "-sym.onnx")
    onnx.save(proto, str(out))
    return out, len(made)


def runner(path: Path, backend: str):
    if backend == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda feed: request.infer(feed)[compiled.outputs[0]]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the symmetric copy leaves the old quantizer constants unused: no warnings
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(None, feed)[0]


def random_feed(inputs, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Inputs of the graph's shapes (first dynamic axis: batch, other dynamic axes: seq): images standard
    normal, token ids in 0..999 (inside any vocabulary of a real model), masks all ones."""
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    feed = {}
    for graph_input in inputs:
        t = graph_input.type.tensor_type
        shape = [d.dim_value or (batch if i == 0 else seq) for i, d in enumerate(t.shape.dim)]
        if t.elem_type in (TensorProto.INT64, TensorProto.INT32):
            dtype = np.int64 if t.elem_type == TensorProto.INT64 else np.int32
            feed[graph_input.name] = (np.ones(shape, dtype) if "mask" in graph_input.name
                                      else rng.integers(0, 1000, shape).astype(dtype))
        else:
            feed[graph_input.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("int8")
    ap.add_argument("rival", nargs="?")
    ap.add_argument("--also", nargs="*", default=[], help="more models to time in OpenVINO beside them")
    ap.add_argument("--also-ort", action="store_true", help="time the --also models in ONNX Runtime too")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seq", type=int, default=128, help="length of a dynamic second axis (token inputs)")
    args = ap.parse_args()
    import onnx

    src = Path(args.int8)
    sym, n = symmetric_copy(src)
    print(f"{n} activation quantizers made symmetric int8 -> {sym}")
    feed = random_feed(onnx.load(str(src), load_external_data=False).graph.input, args.batch, args.seq)
    shape = {k: list(v.shape) for k, v in feed.items()}
    variants = {f"{b} {label}": runner(p, b) for b in ("openvino", "onnxruntime")
                for label, p in (("asymmetric uint8 (nnslim)", src), ("symmetric int8", sym))}
    if args.rival:
        variants["openvino rival"] = runner(Path(args.rival), "openvino")
    for path in args.also:
        variants[f"openvino {path}"] = runner(Path(path), "openvino")
        if args.also_ort:
            variants[f"onnxruntime {path}"] = runner(Path(path), "onnxruntime")
    ref = variants["openvino asymmetric uint8 (nnslim)"](feed)
    times = {k: [] for k in variants}
    for run in variants.values():
        for _ in range(3):
            run(feed)
    for _ in range(args.rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            for _ in range(20):
                run(feed)
            times[name].append((time.perf_counter() - t0) / 20 * 1e3)
    print(f"inputs {shape}; median of {args.rounds} rounds of 20 runs\n\n| variant | ms | cos vs OpenVINO asymmetric |"
          "\n|---|---|---|")
    for name, run in variants.items():
        out = np.asarray(run(feed), np.float64).reshape(len(ref), -1)
        r = np.asarray(ref, np.float64).reshape(len(ref), -1)
        cos = (out * r).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(r, axis=1)
        print(f"| {name} | {statistics.median(times[name]):.2f} | {cos.min():.5f} |")


if __name__ == "__main__":
    main()
