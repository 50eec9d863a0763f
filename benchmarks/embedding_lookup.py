"""How an int8 embedding table is looked up in a deployed ONNX graph, before vs after (same run, same file).

  python benchmarks/embedding_lookup.py MODEL.onnx [--testbed minilm] [--shapes 1x16 1x128 32x128] [--rounds 20]

MODEL.onnx is an nnslim int8 graph whose embedding lookups gather int8 rows and dequantize only those
(Gather -> Cast -> Mul, what nnslim writes now). The "before" graph is the same file with each such lookup
rewritten as nnslim wrote it until 2026-12-04: DequantizeLinear of the whole table, then Gather. Both run in
ONNX Runtime and OpenVINO on the testbed's example inputs at each batch x seq shape, interleaved; prints the
median ms per run and the CPU flags.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def whole_table_form(src: Path, dst: Path) -> int:
    """Rewrite every Gather(int8 table) -> Cast -> Mul(Gather(scale)) lookup as DequantizeLinear(table) -> Gather."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    drop, add, count = set(), [], 0
    for n in g.node:
        if n.op_type != "Gather" or n.input[0] not in inits or inits[n.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        cast = users[n.output[0]][0]
        mul = users[cast.output[0]][0]
        scale_gather = next(u for u in g.node if u.op_type == "Gather" and u.output[0] in mul.input and u is not n)
        col = numpy_helper.to_array(inits[scale_gather.input[0]]).reshape(-1)
        name = n.input[0]
        add += [numpy_helper.from_array(col.astype(np.float32), f"{name}.s1"),
                numpy_helper.from_array(np.zeros(col.shape, np.int8), f"{name}.z1")]
        drop |= {id(n), id(cast), id(mul), id(scale_gather)}
        nodes = [helper.make_node("DequantizeLinear", [name, f"{name}.s1", f"{name}.z1"], [f"{name}.dq"], axis=0),
                 helper.make_node("Gather", [f"{name}.dq", n.input[1]], [mul.output[0]])]
        g.node.extend(nodes)
        count += 1
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(add)
    from nnslim.runtime.onnx_export import topological_sort

    topological_sort(g)
    onnx.save(proto, str(dst))
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--testbed", default="minilm")
    ap.add_argument("--shapes", nargs="+", default=["1x16", "1x128", "32x128"])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    from nnslim.io import machine_info
    from nnslim.loading import resolve
    from nnslim.runtime import OnnxModel, make_runner

    info = machine_info()
    print(f"cpu: {info.get('cpu')}; flags: {info.get('cpu_flags')}")
    tb = resolve(args.testbed).testbed
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before.onnx"
        n = whole_table_form(args.model, before)
        print(f"{n} lookup(s) rewritten for the 'before' graph")
        graphs = {"before: DequantizeLinear(table) -> Gather": OnnxModel(before),
                  "after: Gather(int8) -> Cast -> Mul": OnnxModel(args.model)}
        print("| shape | runtime | " + " | ".join(graphs) + " | speed-up |")
        print("|---|---|" + "---|" * len(graphs) + "---|")
        for shape in args.shapes:
            b, s = (int(v) for v in shape.split("x"))
            feed = tb.example_inputs(batch=b, seq=s)
            for backend in ("onnxruntime", "openvino"):
                runners = {k: make_runner(m, backend) for k, m in graphs.items()}
                outs = {k: r(feed) for k, r in runners.items()}
                a, c = outs.values()
                assert np.allclose(a, c, rtol=1e-4, atol=1e-4), "the two forms disagree"
                times = {k: [] for k in runners}
                for _ in range(3):
                    for r in runners.values():
                        r(feed)
                for _ in range(args.rounds):
                    for k, r in runners.items():
                        t = time.perf_counter()
                        r(feed)
                        times[k].append((time.perf_counter() - t) * 1e3)
                med = [statistics.median(v) for v in times.values()]
                print(f"| {shape} | {backend} | " + " | ".join(f"{m:.2f} ms" for m in med) + f" | {med[0] / med[1]:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
