"""int8 for the activation x activation MatMuls of an exported graph (attention's Q.K^T and probs.V).

Linear layers get their QDQ from the quantized torch layers (qdq.py). The attention products have no
weights, so they are found in the exported graph instead: every MatMul whose two inputs are both
activations. Their input ranges are calibrated by running the graph itself (already int8 elsewhere, so
the ranges are those the deployed graph sees) on calibration samples, then each input gets a
QuantizeLinear/DequantizeLinear pair (per tensor, symmetric: int8 for signed inputs, uint8 for the
non-negative softmax probabilities), as NNCF's transformer preset does: OpenVINO then runs these products as int8 too (with AVX512-VNNI / AMX where the CPU has them).
"""
from __future__ import annotations

import numpy as np

# A model whose int8 step asked for the attention matmuls in int8 carries this attribute (set by the step).
MATMULS_ATTR = "nnslim_int8_matmuls"


def activation_matmuls(graph) -> list:
    """MatMul nodes whose inputs are both computed activations (no initializer, no dequantized weight)."""
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def is_weight(name: str) -> bool:
        node = producer.get(name)
        return name in inits or (node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits)

    return [n for n in graph.node if n.op_type == "MatMul" and not any(is_weight(i) for i in n.input)]


def _ranges(proto, tensors: list[str], samples: list[dict]) -> dict[str, tuple[float, float]]:
    import onnx
    import onnxruntime as ort

    from .base import with_default_inputs

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    lo = {t: 0.0 for t in tensors}
    hi = {t: 0.0 for t in tensors}
    for sample in samples:
        feed = with_default_inputs(names, {k: np.asarray(v) for k, v in sample.items()}, shapes)
        outs = sess.run(tensors, {n: feed[n] for n in names})
        for t, a in zip(tensors, outs):
            a = a[np.isfinite(a)]
            if a.size:
                lo[t], hi[t] = min(lo[t], float(a.min())), max(hi[t], float(a.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def quantize_activation_matmuls(proto, samples: list[dict]) -> list[str]:
    """Insert calibrated symmetric QDQ on both inputs of every activation x activation MatMul of the ONNX
    ModelProto (in place). Returns the report notes."""
    from onnx import helper, numpy_helper

    if proto.ByteSize() >= 2**31 - 1:
        return ["attention matmuls left float: the graph is over 2 GB, which the in-memory calibration pass "
                "cannot run"]
    graph = proto.graph
    mms = activation_matmuls(graph)
    if not mms:
        return ["attention matmuls: none found (no MatMul of two activations in the graph)"]
    tensors = sorted({i for n in mms for i in n.input})
    ranges = _ranges(proto, tensors, samples)
    done: dict[str, str] = {}
    new_inits, nodes = [], []
    targets = {id(n) for n in mms}
    for node in graph.node:
        if id(node) in targets:
            for k, x in enumerate(node.input):
                if x not in done:
                    lo, hi = ranges[x]
                    base = f"nnslim_mm/{x}"
                    # Symmetric, zero point 0 (no compensation terms in the int8 product): int8 for a signed
                    # input (Q, K, V), uint8 for a non-negative one (the softmax probabilities).
                    signed = lo < 0
                    scale = max(max(-lo, hi), 1e-8) / (127.0 if signed else 255.0)
                    new_inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{base}.scale"),
                                  numpy_helper.from_array(np.array(0, np.int8 if signed else np.uint8),
                                                          f"{base}.zp")]
                    nodes += [helper.make_node("QuantizeLinear", [x, f"{base}.scale", f"{base}.zp"], [f"{base}.q"],
                                               name=f"{base}/q"),
                              helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale", f"{base}.zp"],
                                               [f"{base}.dq"], name=f"{base}/dq")]
                    done[x] = f"{base}.dq"
                node.input[k] = done[x]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return [f"attention matmuls: {len(mms)} activation x activation MatMuls as int8 (symmetric QDQ on both inputs, "
            f"ranges from {len(samples)} calibration samples run through the int8 graph)"]
