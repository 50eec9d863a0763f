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
    from ..data import to_numpy
    from .onnxruntime import as_declared

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    types = {i.name: i.type for i in sess.get_inputs()}
    lo = {t: 0.0 for t in tensors}
    hi = {t: 0.0 for t in tensors}
    for sample in samples:
        feed = with_default_inputs(names, {k: to_numpy(v) for k, v in sample.items()}, shapes)
        outs = sess.run(tensors, {n: as_declared(feed[n], types[n]) for n in names})  # (fp16 samples: float32 graph)
        for t, a in zip(tensors, outs):
            a = a[np.isfinite(a)]
            if a.size:
                lo[t], hi[t] = min(lo[t], float(a.min())), max(hi[t], float(a.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def _insert_qdq(graph, targets: list, qparams, prefix: str, done: dict[str, str] | None = None) -> None:
    """QuantizeLinear -> DequantizeLinear on every input of the target nodes, once per tensor (qparams(tensor) ->
    (scale, zero-point array)); `done` maps tensors that already have a dequantized form to it (reused)."""
    from onnx import helper, numpy_helper

    done = dict(done or {})
    new_inits, nodes = [], []
    ids = {id(n) for n in targets}
    for node in graph.node:
        if id(node) in ids:
            for k, x in enumerate(node.input):
                if x not in done:
                    scale, zp = qparams(x)
                    base = f"{prefix}/{x}"
                    new_inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{base}.scale"),
                                  numpy_helper.from_array(zp, f"{base}.zp")]
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


def quantize_activation_matmuls(proto, samples: list[dict]) -> list[str]:
    """Insert calibrated symmetric QDQ on both inputs of every activation x activation MatMul of the ONNX
    ModelProto (in place). Returns the report notes."""
    if proto.ByteSize() >= 2**31 - 1:
        return ["attention matmuls left float: the graph is over 2 GB, which the in-memory calibration pass "
                "cannot run"]
    graph = proto.graph
    mms = activation_matmuls(graph)
    if not mms:
        return ["attention matmuls: none found (no MatMul of two activations in the graph)"]
    tensors = sorted({i for n in mms for i in n.input})
    ranges = _ranges(proto, tensors, samples)

    # Symmetric, zero point 0 (no compensation terms in the int8 product): int8 for a signed input (Q, K, V),
    # uint8 for a non-negative one (the softmax probabilities).
    _insert_qdq(graph, mms, lambda x: symmetric_qparams(*ranges[x]), "nnslim_mm")
    return [f"attention matmuls: {len(mms)} activation x activation MatMuls as int8 (symmetric QDQ on both inputs, "
            f"ranges from {len(samples)} calibration samples run through the int8 graph)"]


def symmetric_qparams(lo: float, hi: float) -> tuple[float, np.ndarray]:
    """(scale, zero point 0): int8 codes for a range with negative values, uint8 for a non-negative one."""
    signed = lo < 0
    return max(max(-lo, hi), 1e-8) / (127.0 if signed else 255.0), np.array(0, np.int8 if signed else np.uint8)


# A CNN whose int8 step quantizes its residual additions carries this attribute (set by the step): "symmetric"
# or "asymmetric", how the step quantizes activations.
ADDS_ATTR = "nnslim_int8_adds"


def quantize_activation_adds(proto, samples: list[dict], symmetric: bool = False) -> list[str]:
    """QDQ (calibrated by running the graph; uint8 asymmetric, or symmetric: int8 / uint8 with zero point 0) on
    both inputs of every Add of two activations
    (a residual connection), as ONNX Runtime's quantizer and NNCF do for CNNs: a convolution whose output
    feeds such an Add is then followed by QuantizeLinear, the pattern ONNX Runtime fuses into an int8
    QLinearConv (without it, that convolution runs in float on dequantized inputs). An input that is
    already quantized for a convolution reuses that QDQ. Returns the report notes."""
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    adds = [n for n in graph.node if n.op_type == "Add" and len(n.input) == 2 and not any(i in inits for i in n.input)]
    if not adds:  # a CNN without residual connections: nothing to do, nothing to report
        return []
    producer = {o: n for n in graph.node for o in n.output}
    existing = {}  # tensor -> its DequantizeLinear output, where a convolution's input QDQ already exists
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producer:
            q = producer[node.input[0]]
            if q.op_type == "QuantizeLinear":
                existing[q.input[0]] = node.output[0]
    tensors = sorted({i for n in adds for i in n.input if i not in existing})
    ranges = _ranges(proto, tensors, samples) if tensors else {}
    existing = {t: d for t, d in existing.items() if any(t in n.input for n in adds)}
    reused = sum(1 for n in adds for i in n.input if i in existing)

    def qparams(x: str):
        lo, hi = min(ranges[x][0], 0.0), max(ranges[x][1], 0.0)
        if symmetric:
            return symmetric_qparams(lo, hi)
        scale = max(hi - lo, 1e-8) / 255.0
        return scale, np.array(int(np.clip(np.round(-lo / scale), 0, 255)), np.uint8)

    _insert_qdq(graph, adds, qparams, "nnslim_add", existing)
    from .onnx_export import topological_sort

    topological_sort(graph)  # a reused DequantizeLinear may come after the Add that now reads it
    return [f"residual adds: {len(adds)} Adds of two activations with int8 QDQ inputs ({len(tensors)} new, {reused} "
            f"reusing a convolution's; {'symmetric' if symmetric else 'asymmetric'}; ranges from {len(samples)} "
            "calibration samples run through the int8 graph)"]


def quantize_through_maxpools(graph) -> list[str]:
    """A MaxPool whose output is only quantized (every consumer a per-tensor QuantizeLinear with the same scale
    and zero point) gets the same QuantizeLinear -> DequantizeLinear on its input: max commutes with a
    monotonic quantizer, so the values reaching its consumers do not change, while the runtimes now run the
    pooling in uint8 and the convolution before it writes uint8 (NNCF's graph: OpenVINO pooled nnslim's stem
    in fp32 before; ONNX Runtime fuses DequantizeLinear -> MaxPool -> QuantizeLinear). Returns the notes."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}  # converted to arrays only where a quantizer reads them
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def qparams(q):
        if len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
            return None
        scale, zp = (numpy_helper.to_array(inits[n]) for n in q.input[1:3])
        if scale.size != 1:
            return None
        return q.input[1], q.input[2], float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), zp.dtype

    hoisted, nodes = 0, []
    for node in graph.node:
        if node.op_type == "MaxPool" and node.output[0] not in outputs and not any(node.output[1:]):
            x = node.input[0]
            users = consumers.get(node.output[0], [])
            params = [qparams(u) if u.op_type == "QuantizeLinear" else None for u in users]
            src = producer.get(x)
            if (users and all(params) and len({p[2:] for p in params}) == 1
                    and not (src is not None and src.op_type == "DequantizeLinear")):
                scale, zp = params[0][:2]
                base = f"nnslim_pool/{node.name or node.output[0]}"
                nodes += [helper.make_node("QuantizeLinear", [x, scale, zp], [f"{base}.q"], name=f"{base}/q"),
                          helper.make_node("DequantizeLinear", [f"{base}.q", scale, zp], [f"{base}.dq"],
                                           name=f"{base}/dq")]
                node.input[0] = f"{base}.dq"
                hoisted += 1
        nodes.append(node)
    if not hoisted:
        return []
    del graph.node[:]
    graph.node.extend(nodes)
    return [f"max pooling: {hoisted} MaxPool(s) quantized on their input with their consumers' quantizer (8-bit "
            f"pooling, the convolution before writes 8-bit codes; the values reaching the next layers are unchanged)"]


def quantize_gemm_biases(graph) -> list[str]:
    """The float bias of a static QDQ Gemm (input and weight both dequantized) as int32 codes with scale = input
    scale x weight scale and zero point 0, as ONNX Runtime's own quantizer writes it: ONNX Runtime fuses the
    group into one integer QGemm only with such a bias (or none); with a float bias it runs a float Gemm on
    dequantized tensors (digits-cnn's classifier did; runtime/float_fallbacks.py names such layers). The int32
    rounding, at most half an input x weight step, is far below the int8 error. Returns the notes."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1

    def dequantizer(name: str):
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            return None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        return numpy_helper.to_array(inits[node.input[1]]).astype(np.float64).reshape(-1), axis

    nodes, done = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and len(node.input) == 3 and node.input[2] in inits and users[node.input[2]] == 1
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            a, b = dequantizer(node.input[0]), dequantizer(node.input[1])
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            out_axis = 0 if attrs.get("transB", 0) else 1
            if (a is not None and b is not None and a[0].size == 1 and bias.ndim == 1
                    and (b[0].size == 1 or (b[0].size == bias.size and b[1] == out_axis))):
                scale = (a[0][0] * b[0] * np.ones(bias.size)).astype(np.float32)
                codes = np.round(bias / np.maximum(scale.astype(np.float64), 1e-30))
                if np.all(np.abs(codes) < 2 ** 31 - 1):
                    base = f"nnslim_bias/{node.name or node.output[0]}"
                    graph.initializer.extend([numpy_helper.from_array(codes.astype(np.int32), f"{base}.q"),
                                              numpy_helper.from_array(scale, f"{base}.scale")])
                    nodes.append(helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale"], [f"{base}.dq"],
                                                  name=f"{base}/dq", axis=0))
                    graph.initializer.remove(inits[node.input[2]])
                    node.input[2] = f"{base}.dq"
                    done += 1
        nodes.append(node)
    if not done:
        return []
    del graph.node[:]
    graph.node.extend(nodes)
    return [f"gemm biases: {done} as int32 (scale = input x weight scale), so that ONNX Runtime runs those Gemms as "
            "integer QGemm"]


def keep_reduced_dims(proto) -> list[str]:
    """ReduceMean / ReduceSum with keepdims=0 -> keepdims=1 + Squeeze of the same axes (the same values). OpenVINO
    2025's CPU plugin computes a wrong result for ReduceMean(keepdims=0) -> per-channel Div -> QuantizeLinear (a
    mean-pooled classifier head under SmoothQuant: output cosine 0.95 where ONNX Runtime gives 1.0000); with the
    reduced axis kept and squeezed after, it matches. Graphs below opset 13 (Squeeze's axes as an attribute) are
    left as they are."""
    from onnx import helper, numpy_helper

    if max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return []
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    consts = {n.output[0] for n in graph.node if n.op_type == "Constant"}
    nodes, changed = [], 0
    for node in graph.node:
        keep = next((a for a in node.attribute if a.name == "keepdims"), None)
        axes_in = node.input[1] if len(node.input) > 1 and node.input[1] else None
        if node.op_type not in ("ReduceMean", "ReduceSum") or keep is None or keep.i != 0 \
                or (axes_in is not None and axes_in not in inits and axes_in not in consts):
            nodes.append(node)
            continue
        axes_attr = next((a for a in node.attribute if a.name == "axes"), None)
        out = node.output[0]
        keep.i = 1
        node.output[0] = f"{out}/kept"
        squeeze_in = [node.output[0]]
        if axes_in is not None:
            squeeze_in.append(axes_in)
        elif axes_attr is not None:
            name = f"{out}/axes"
            graph.initializer.append(numpy_helper.from_array(np.asarray(list(axes_attr.ints), np.int64), name))
            squeeze_in.append(name)
        nodes += [node, helper.make_node("Squeeze", squeeze_in, [out], name=f"{node.name or out}/squeeze")]
        changed += 1
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return [f"{changed} reductions keep their axis and squeeze it after (OpenVINO computes the keepdims=0 form "
            "wrongly before a per-channel scale)"] if changed else []
