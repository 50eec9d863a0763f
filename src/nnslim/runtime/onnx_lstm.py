"""LSTM layers of an exported ONNX graph as ONNX Runtime's com.microsoft DynamicQuantizeLSTM: int8 weights (W and R,
symmetric per gate row), the input and hidden state quantized inside the op at run time, as ONNX Runtime's own
quantize_dynamic writes them. Standard ONNX has no integer LSTM, so the graph then needs ONNX Runtime (OpenVINO and
other runtimes cannot load that op); on this Zen 4 CPU it ran a 2-layer LSTM 2.8-3.0x faster than the float LSTM
(`benchmarks/lstm_int8_cpu.py`, BENCHMARKS.md 8h).
"""
from __future__ import annotations

import functools

import numpy as np

MS_DOMAIN = "com.microsoft"
LSTM_ATTR = "_nnslim_int8_lstm"  # set on a model by int8 / int8-dynamic (lstm=true): its export rewrites LSTM nodes


def _rows_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[dirs, rows, cols] float -> (codes int8 [dirs, cols, rows] (the op's layout), scales [dirs, rows])."""
    scale = np.maximum(np.abs(w).max(axis=2), 1e-12) / 127.0
    codes = np.clip(np.round(w / scale[:, :, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(codes.transpose(0, 2, 1)), scale.astype(np.float32)


def _constant(graph, name: str, inits: dict, made: dict, opsets):
    """The value of tensor `name` when it is an initializer or computed from initializers only (torch's exporter
    reorders the gates of W / R with Slice / Concat / Unsqueeze nodes), else None. made: output name -> (graph
    position, node)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in inits:
        return numpy_helper.to_array(inits[name])
    nodes: dict[int, object] = {}  # graph position -> node (the subgraph, kept in graph order)
    leaves, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in inits:
            leaves.add(t)
        elif t in made:
            at, n = made[t]
            if at in nodes:
                continue
            if n.op_type in ("Shape", "Size") or n.domain not in ("", "ai.onnx"):
                return None  # a value that depends on the input's shape, or an op the reference does not run
            nodes[at] = n
            todo += [i for i in n.input if i]
        else:
            return None  # a graph input
    order = [nodes[at] for at in sorted(nodes)]
    sub = helper.make_graph(order, "w", [], [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)],
                            [inits[t] for t in leaves])
    model = helper.make_model(sub, opset_imports=[o for o in opsets if o.domain in ("", "ai.onnx")])
    return ReferenceEvaluator(model).run(None, {})[0]


def quantize_lstms(proto) -> int:
    """Rewrite, in place, each LSTM node whose W and R are constants (layout 0, no peepholes); returns how many."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    made = {o: (at, n) for at, n in enumerate(graph.node) for o in n.output}
    done, new_inits = 0, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = list(node.input) + [""] * (8 - len(node.input))
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx") or attrs.get("layout", 0) != 0 or ins[7]:
            continue
        w, r = (_constant(graph, ins[i], inits, made, proto.opset_import) for i in (1, 2))
        if w is None or r is None:
            continue
        base = f"nnslim_lstm/{node.name or done}"
        w_q, w_s = _rows_int8(w.astype(np.float32))
        r_q, r_s = _rows_int8(r.astype(np.float32))
        new_inits += [numpy_helper.from_array(w_q, f"{base}.W_q"), numpy_helper.from_array(w_s, f"{base}.W_scale"),
                      numpy_helper.from_array(np.zeros_like(w_s, np.int8), f"{base}.W_zp"),
                      numpy_helper.from_array(r_q, f"{base}.R_q"), numpy_helper.from_array(r_s, f"{base}.R_scale"),
                      numpy_helper.from_array(np.zeros_like(r_s, np.int8), f"{base}.R_zp")]
        inputs = [ins[0], f"{base}.W_q", f"{base}.R_q", *ins[3:8], f"{base}.W_scale", f"{base}.W_zp",
                  f"{base}.R_scale", f"{base}.R_zp"]
        kwargs = {k: v for k, v in attrs.items() if k != "layout"}
        new = helper.make_node("DynamicQuantizeLSTM", inputs, list(node.output), name=f"{base}/lstm",
                               domain=MS_DOMAIN, **kwargs)
        node.CopyFrom(new)
        done += 1
    if done:
        graph.initializer.extend(new_inits)
        _drop_dead_nodes(graph)
        used = {i for n in graph.node for i in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return done


def _drop_dead_nodes(graph) -> None:
    """Remove nodes whose outputs nothing reads (the float weights' reordering once its LSTM is rewritten)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def needs_onnxruntime(path) -> bool:
    """Whether an ONNX graph uses ONNX Runtime's own ops (com.microsoft domain): no other runtime loads it. Asked
    by the report for every ONNX row and by each OpenVINO runner: answered once per file version."""
    from pathlib import Path

    st = Path(path).stat()
    return _needs_onnxruntime(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _needs_onnxruntime(path: str, mtime_ns: int, size: int) -> bool:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return any(n.domain == MS_DOMAIN for n in proto.graph.node)
