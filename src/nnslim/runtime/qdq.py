"""ONNX deployment of int8-quantized torch models.

The float model (dequantized weights) is exported with the dynamo exporter, then each quantized
layer's node (MatMul / Gemm / Conv) is found by the value of its weight initializer (names do not
survive constant folding) and rewritten:
- static: QuantizeLinear/DequantizeLinear (uint8, or symmetric int8) on the activation input, int8 weight +
  DequantizeLinear;
  ONNX Runtime and OpenVINO both execute these as int8 kernels;
- dynamic: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale) (as ONNX Runtime's dynamic quantizer).
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import NnslimError
from .base import OnnxModel
from ..graph.modules import replace_everywhere
from .onnx_export import export_onnx


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes() + str(a.shape).encode()).hexdigest()


def _same_codes(a: dict, b: dict) -> bool:
    """Two layers' quantization specs give the same integer weights and scales (tied layers)."""
    return all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) if a.get(k) is not None else b.get(k) is None
               for k in ("qweight", "w_scale", "w_zp"))


@torch.no_grad()
def _called(model: torch.nn.Module, names: list[str], example_inputs: dict) -> set[str]:
    """Which of the named layers run when the model is called on the example (a graph of one part of a model,
    e.g. an encoder-decoder's encoder, holds only those; the others are deployed by the other parts)."""
    from .base import call_module

    called, hooks = set(), []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(lambda *_, n=name: called.add(n)))
    try:
        call_module(model, _as_model_inputs(model, example_inputs))
    finally:
        for h in hooks:
            h.remove()
    return called


def _as_model_inputs(model: torch.nn.Module, example_inputs: dict, shift: int = 0) -> dict[str, torch.Tensor]:
    """The example as tensors on the model's device, floating ones in its dtype; shift=1: a changed copy (floats
    moved by half their spread, integer ids shifted inside their range)."""
    from .base import model_device, model_dtype

    dtype, device = model_dtype(model), model_device(model)
    feed = {}
    for k, v in example_inputs.items():
        t = torch.as_tensor(np.asarray(v), device=device)
        if t.is_floating_point():
            t = (t + 0.5 * (t.std() if t.numel() > 1 else 1.0) if shift else t).to(dtype)
        elif shift and t.dtype != torch.bool and t.numel():
            t = (t - t.min() + 1) % (t.max() - t.min() + 1) + t.min()
        feed[k] = t
    return feed


def _constant_input(model: torch.nn.Module, names: list[str], example_inputs: dict) -> set[str]:
    """Which of the named layers get the same input whatever the model's inputs (a position-bias MLP over a fixed
    coordinate table: Swin v2's continuous_position_bias_mlp): the exporter folds such a layer into a constant.
    Compared between the example and a changed copy of it (floats moved, integer ids shifted inside their range);
    a model that fails on the copy gives none."""
    from .base import call_module

    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen[n].append(args[0].detach().clone() if args and torch.is_tensor(args[0])
                                             else torch.empty(0))) for n in names]
    try:
        for shift in (0, 1):
            with torch.no_grad():
                call_module(model, _as_model_inputs(model, example_inputs, shift))
    except Exception:  # noqa: BLE001 - the changed copy is no valid input: no layer is called constant
        return set()
    finally:
        for h in hooks:
            h.remove()
    return {n for n, xs in seen.items() if len(xs) >= 2 and xs[0].numel() and xs[0].shape == xs[-1].shape
            and torch.equal(xs[0], xs[-1])}


def _dead_ends(model: torch.nn.Module, names: list[str], example_inputs: dict) -> set[str]:
    """Which of the named layers run but do not reach any output of the model (CANINE's final character encoder
    under a sequence classifier: the exporter drops them as dead code). By autograd: each layer's output is made a
    leaf that needs grad, and the outputs' sum is differentiated; a layer whose leaf gets no gradient path is a
    dead end. None on any failure."""
    from .base import call_module, tensor_leaves

    leaves: dict[str, torch.Tensor] = {}

    def hook(_m, _args, out, n):
        if torch.is_tensor(out) and out.is_floating_point():
            leaves[n] = out.detach().requires_grad_()
            return leaves[n]
        return None

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    try:
        with torch.enable_grad():
            out = call_module(model, _as_model_inputs(model, example_inputs))
            total = sum(t.float().sum() for _, t in tensor_leaves(out) if t.is_floating_point() and t.requires_grad)
            if not leaves or not torch.is_tensor(total):
                return set()
            grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    except Exception:  # noqa: BLE001 - unknown: nothing is called a dead end
        return set()
    finally:
        for h in hooks:
            h.remove()
    return {n for n, g in zip(leaves, grads) if g is None}


def _spec_fn(m):
    """qdq_spec of a layer simulated in float (QuantWrapper), or onnx_qdq_spec of a packed layer (weight-only
    int) that deploys as torch but exports to ONNX as integer weights too."""
    fn = getattr(m, "qdq_spec", None) or getattr(m, "onnx_qdq_spec", None)
    return fn if callable(fn) else None


def quant_spec(model: torch.nn.Module) -> dict[str, dict]:
    """name -> weight/activation quantization parameters of every layer that exports as integers (a layer
    says so by having qdq_spec() / onnx_qdq_spec(); runtime code never imports the quantizers)."""
    return {n: _spec_fn(m)() for n, m in model.named_modules() if _spec_fn(m) is not None}


def _marked_lstms(model) -> bool:
    from .onnx_lstm import LSTM_ATTR

    return bool(getattr(model, LSTM_ATTR, False))


def has_integer_onnx_layers(model) -> bool:
    """Does the model hold layers that an ONNX export must write as integer weights (or LSTMs int8-dynamic marked)?"""
    return isinstance(model, torch.nn.Module) and (_marked_lstms(model) or any(_spec_fn(m) is not None
                                                                              for m in model.modules()))


def has_qdq_layers(model) -> bool:
    """Does the model hold int8 layers simulated in float (deployed as int8 ONNX, not saved as torch)?"""
    return isinstance(model, torch.nn.Module) and (_marked_lstms(model) or any(
        callable(getattr(m, "qdq_spec", None)) for m in model.modules()))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Every int8 layer replaced by its float equivalent (dequantized weights), in place; returns model."""
    for name, module in list(model.named_modules()):
        if _spec_fn(module) is not None:  # one float module wherever the model holds this one (T5's tables)
            replace_everywhere(model, name, module.unwrapped())
    return model


def _weight_init(codes: np.ndarray, bits: int, name: str):
    """Integer weight codes as an ONNX initializer: INT4 (packed two per byte, opset 21) for <= 4 bits,
    else INT8 (codes of 5-7 bits use part of its range)."""
    from onnx import TensorProto, helper, numpy_helper

    codes = np.ascontiguousarray(codes).astype(np.int8)
    if bits <= 4:
        flat = codes.reshape(-1).astype(np.uint8) & 0x0F
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, np.uint8)])
        packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)  # two codes per byte, the first in the low nibble
        return helper.make_tensor(name, TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)
    return numpy_helper.from_array(codes, name)


def _zero_init(shape, bits: int, name: str):
    from onnx import numpy_helper

    if bits <= 4:
        return _weight_init(np.zeros(shape, np.int8), bits, name)
    return numpy_helper.from_array(np.zeros(shape, np.int8), name)


def _tied_heads(spec: dict[str, dict]) -> dict[str, str]:
    """Linear layer -> the embedding whose int8 table holds its codes and scales (a head tied to the input
    embedding): its export reads that table instead of storing a second one."""
    tables = {n: s for n, s in spec.items() if s["kind"] == "embedding" and int(s.get("bits", 8)) == 8}
    out = {}
    for name, s in spec.items():
        if s["kind"] == "embedding" or int(s.get("bits", 8)) != 8 or s["dynamic"] or s["act_scale"] is not None:
            continue
        for emb, t in tables.items():
            if (s["qweight"].shape == t["qweight"].shape and torch.equal(s["qweight"], t["qweight"])
                    and torch.equal(s["w_scale"].float().reshape(-1), t["w_scale"].float().reshape(-1))
                    and torch.equal(s["w_zp"].to(torch.int32).reshape(-1), t["w_zp"].to(torch.int32).reshape(-1))):
                out[name] = emb
                break
    return out


def _lookup(node, t: dict[str, str], use: int = 0) -> list:
    """An embedding Gather on the int8 table: gather the rows, then dequantize only them (Cast, minus the
    gathered zero point, times the gathered row scale). A DequantizeLinear of the whole table before the Gather
    would dequantize every row on every run in ONNX Runtime (BENCHMARKS 8f: int8 MiniLM 2.2x at batch 1).
    use: how many lookups of this table came before (LayoutLM reads its x / y tables twice): each gets its own
    node and value names, all reading the one int8 table."""
    from onnx import TensorProto, helper

    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if axis != 0:
        raise NnslimError(f"embedding lookup {node.name!r} gathers along axis {axis}; int8 tables are looked up "
                          "along axis 0")
    ids, out, b = node.input[1], node.output[0], t["base"] + (f"/use{use}" if use else "")
    nodes = [helper.make_node("Gather", [t["q"], ids], [f"{b}.rows_q"], name=f"{b}/rows"),
             helper.make_node("Cast", [f"{b}.rows_q"], [f"{b}.rows_f"], to=TensorProto.FLOAT, name=f"{b}/cast"),
             helper.make_node("Gather", [t["scale_col"], ids], [f"{b}.rows_s"], name=f"{b}/rows_s")]
    rows = f"{b}.rows_f"
    if t["zp_col"]:
        nodes += [helper.make_node("Gather", [t["zp_col"], ids], [f"{b}.rows_z"], name=f"{b}/rows_z"),
                  helper.make_node("Sub", [rows, f"{b}.rows_z"], [f"{b}.rows_c"], name=f"{b}/center")]
        rows = f"{b}.rows_c"
    return nodes + [helper.make_node("Mul", [rows, f"{b}.rows_s"], [out], name=f"{b}/scale")]


MATMUL_SAMPLES = 64  # calibration samples for the attention matmuls' input ranges


def _merge_duplicate_scalings(graph, inits) -> None:
    """One node for several Mul/Div of the same tensor by equal constants (the shared SmoothQuant scale of
    q/k/v, exported once per layer): the layers then share one scaled input and one QuantizeLinear."""
    from onnx import numpy_helper

    outputs = {o.name for o in graph.output}
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for k, x in enumerate(node.input):
            node.input[k] = rename.get(x, x)
        if (node.op_type in ("Mul", "Div") and len(node.input) == 2 and node.input[1] in inits
                and node.output[0] not in outputs):
            key = (node.op_type, node.input[0], _digest(numpy_helper.to_array(inits[node.input[1]])))
            if key in seen:
                rename[node.output[0]] = seen[key]
                continue
            seen[key] = node.output[0]
        kept.append(node)
    if rename:
        del graph.node[:]
        graph.node.extend(kept)


def export_quantized_onnx(qmodel: torch.nn.Module, example_inputs: dict, path: str | Path,
                          dynamic_axes: dict | None = None, opset: int = 18,
                          calibration=None, matmuls: bool = True) -> tuple[OnnxModel, list[str]]:
    """Export a model holding QuantWrapper layers to an int8 ONNX graph. Returns (model, notes).

    calibration(n) -> samples: data for the activation x activation MatMuls when the int8 step asked for
    them in int8 (qdq_matmul.py)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..io import atomic_write

    from .onnx_lstm import quantize_lstms

    spec = quant_spec(qmodel)
    lstms = _marked_lstms(qmodel)
    if not spec and not lstms:
        raise NnslimError("the model has no quantized layers to export as int8")
    spec = {n: s for n, s in spec.items() if n in _called(qmodel, list(spec), example_inputs)}
    float_model = unwrap(copy.deepcopy(qmodel)).float()  # int8 graphs compute in float32 (a bf16 model too)
    path = Path(path)
    export_onnx(float_model, example_inputs, path, dynamic_axes, opset)
    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    _merge_duplicate_scalings(graph, inits)

    by_digest: dict[str, list[tuple[str, bool]]] = {}  # weight values -> (layer, transposed): tied layers share one
    for name, s in spec.items():
        w = qmodel.get_submodule(name).dequantized_weight().float().numpy()
        by_digest.setdefault(_digest(w), []).append((name, False))
        if w.ndim == 2:
            by_digest.setdefault(_digest(w.T), []).append((name, True))

    def match_of(weight_init, lookup: bool) -> tuple[str, bool] | None:
        """The quantized layer whose weight this initializer holds, for a lookup (Gather: an embedding, not
        transposed) or a product (any other kind); every tied layer with the same codes is deployed by it."""
        cands = [(n, t) for n, t in by_digest.get(_digest(numpy_helper.to_array(weight_init)), [])
                 if (spec[n]["kind"] == "embedding") == lookup and not (lookup and t)]
        if not cands:
            return None
        first = spec[cands[0][0]]
        found.update(n for n, _ in cands if _same_codes(spec[n], first))
        return cands[0]

    new_inits, notes, found = [], [], set()
    tied_to = _tied_heads(spec)
    tables: dict[str, dict[str, str]] = {}
    added: set[str] = set()  # table initializers already in new_inits

    def table(lname: str, per_axis: bool = False) -> dict[str, str]:
        """The int8 table of embedding `lname`, its initializers added once: codes [V, D], and the row scale and
        zero point as columns [V, 1] for a lookup or (per_axis) vectors [V] for a DequantizeLinear."""
        s, base = spec[lname], f"nnslim_q/{lname}"
        scale = s["w_scale"].numpy().astype(np.float32).reshape(-1)
        zp = (s["w_zp"].numpy().astype(np.int8).reshape(-1) if s.get("w_zp") is not None
              else np.zeros(scale.shape, np.int8))
        t = tables.setdefault(lname, {"base": base, "q": f"{base}.table_q"})
        wanted = {"q": lambda: numpy_helper.from_array(s["qweight"].numpy().astype(np.int8), t["q"])}
        if per_axis:
            t.update(scale=f"{base}.t_scale", zp=f"{base}.t_zp")
            wanted.update(scale=lambda: numpy_helper.from_array(scale, t["scale"]),
                          zp=lambda: numpy_helper.from_array(zp, t["zp"]))
        else:
            t.update(scale_col=f"{base}.t_scale_col", zp_col=f"{base}.t_zp_col" if zp.any() else "")
            wanted["scale_col"] = lambda: numpy_helper.from_array(scale[:, None], t["scale_col"])
            if zp.any():
                wanted["zp_col"] = lambda: numpy_helper.from_array(zp.astype(np.float32)[:, None], t["zp_col"])
        for key, make in wanted.items():
            if t[key] not in added:
                added.add(t[key])
                new_inits.append(make())
        return t

    low_bits = False  # INT4 initializers need opset 21
    act_qdq: dict[str, str] = {}  # activation tensor -> its dequantized name
    uses: dict[str, int] = {}  # layer -> nodes already rewritten for it (one layer shared across depth: ALBERT)
    weights_made: set[str] = set()  # weight initializers written (once per layer and orientation)
    rewritten = []
    for node in graph.node:
        pre = []
        match = None
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1 and node.input[1] in inits:
            match = match_of(inits[node.input[1]], lookup=False)
        elif node.op_type == "Gather" and node.input[0] in inits:
            match = match_of(inits[node.input[0]], lookup=True)
            if match is not None:
                n_use = uses.get(match[0], 0)
                uses[match[0]] = n_use + 1
                rewritten += _lookup(node, table(match[0]), n_use)
                continue
            rewritten.append(node)
            continue
        if match is None:
            rewritten.append(node)
            continue
        lname, transposed = match
        s = spec[lname]
        if lname in tied_to and node.op_type == "MatMul":  # a head tied to an embedding: the table's own codes
            t = table(tied_to[lname], per_axis=True)
            pre.append(helper.make_node("DequantizeLinear", [t["q"], t["scale"], t["zp"]], [f"{t['base']}.dq"],
                                        name=f"{t['base']}/dq", axis=0))
            w = f"{t['base']}.dq"
            if transposed:  # [V, D] -> the [D, V] the MatMul reads; ONNX Runtime folds it into MatMulNBits
                pre.append(helper.make_node("Transpose", [w], [f"{t['base']}.dqT"], name=f"{t['base']}/T",
                                            perm=[1, 0]))
                w = f"{t['base']}.dqT"
            node.input[1] = w
            rewritten += pre + [node]
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            transposed = not trans_b
        axis = 1 if transposed else 0
        q = s["qweight"].numpy()
        q = q.T if transposed else q
        n_use = uses.get(lname, 0)
        uses[lname] = n_use + 1
        base = f"nnslim_q/{lname}" + (f"/use{n_use}" if n_use else "")  # this node's own names
        wbase = f"nnslim_q/{lname}" + (".kn" if s["dynamic"] else ".t" if transposed else "")  # the shared weight
        bits = s.get("bits", 8)
        low_bits = low_bits or bits <= 4
        w_scale = s["w_scale"].numpy().astype(np.float32)
        w_zp = s["w_zp"].numpy().astype(np.int8) if s.get("w_zp") is not None else None
        group = s.get("group")
        blocked = group is not None and w_scale.ndim == 2 and w_scale.shape[1] > 1
        dq_attrs = {"axis": axis} if s["per_channel"] else {}
        if blocked:  # group-wise (weight-only int4/int8): opset 21 blocked DequantizeLinear along K
            low_bits = True
            w_scale = w_scale.T if transposed else w_scale
            w_zp = (w_zp.T if transposed else w_zp) if w_zp is not None else None
            dq_attrs = {"axis": 0 if transposed else 1, "block_size": int(group)}
        elif w_scale.ndim == 2:  # one group per output channel: per-channel
            w_scale, w_zp = w_scale.reshape(-1), (w_zp.reshape(-1) if w_zp is not None else None)
        if wbase not in weights_made:
            weights_made.add(wbase)
            zp_init = (_weight_init(w_zp, bits, f"{wbase}.w_zp") if w_zp is not None and w_zp.any() else
                       _zero_init(w_scale.shape, bits, f"{wbase}.w_zp"))
            # MatMulInteger (dynamic) needs the weight as [in, out]: a Gemm with transB=1 holds it as [out, in]
            q_init = (numpy_helper.from_array(np.ascontiguousarray(s["qweight"].numpy().T).astype(np.int8),
                                              f"{wbase}.weight_q") if s["dynamic"]
                      else _weight_init(q, bits, f"{wbase}.weight_q"))
            new_inits += [q_init, numpy_helper.from_array(np.ascontiguousarray(w_scale), f"{wbase}.w_scale"), zp_init]
        if s["dynamic"]:
            if node.op_type == "Conv":
                raise NnslimError(f"{lname}: dynamic int8 covers Linear layers only, but it exported as Conv")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Gemm" and attrs.get("transA", 0):
                raise NnslimError(f"{lname}: a Gemm with transA=1 is not supported by dynamic int8")
            x = node.input[0]
            y = f"{base}.y" if node.op_type == "Gemm" else node.output[0]
            pre += [helper.make_node("DynamicQuantizeLinear", [x], [f"{base}.xq", f"{base}.xs", f"{base}.xzp"],
                                     name=f"{base}/dql"),
                    helper.make_node("MatMulInteger", [f"{base}.xq", f"{wbase}.weight_q", f"{base}.xzp",
                                                       f"{wbase}.w_zp"], [f"{base}.acc"], name=f"{base}/mmi"),
                    helper.make_node("Cast", [f"{base}.acc"], [f"{base}.accf"], to=TensorProto.FLOAT,
                                     name=f"{base}/cast"),
                    helper.make_node("Mul", [f"{base}.xs", f"{wbase}.w_scale"], [f"{base}.s"], name=f"{base}/sc"),
                    helper.make_node("Mul", [f"{base}.accf", f"{base}.s"], [y], name=f"{base}/mul")]
            if node.op_type == "Gemm":  # Y = alpha * A @ B + beta * C
                alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
                if alpha != 1.0:
                    new_inits.append(numpy_helper.from_array(np.array(alpha, np.float32), f"{base}.alpha"))
                    pre.append(helper.make_node("Mul", [y, f"{base}.alpha"], [f"{base}.ya"], name=f"{base}/alpha"))
                    y = f"{base}.ya"
                if len(node.input) > 2 and node.input[2]:
                    c = node.input[2]
                    if beta != 1.0:
                        new_inits.append(numpy_helper.from_array(np.array(beta, np.float32), f"{base}.beta"))
                        pre.append(helper.make_node("Mul", [c, f"{base}.beta"], [f"{base}.cb"], name=f"{base}/beta"))
                        c = f"{base}.cb"
                    pre.append(helper.make_node("Add", [y, c], list(node.output), name=f"{base}/bias"))
                else:
                    pre.append(helper.make_node("Identity", [y], list(node.output), name=f"{base}/out"))
            rewritten += pre
            continue
        pre.append(helper.make_node("DequantizeLinear", [f"{wbase}.weight_q", f"{wbase}.w_scale", f"{wbase}.w_zp"],
                                    [f"{base}.weight_dq"], name=f"{base}/wdq", **dq_attrs))
        node.input[1] = f"{base}.weight_dq"
        if (node.op_type == "Conv" and s["act_scale"] is not None and len(node.input) > 2
                and node.input[2] in inits):
            # int32 bias with scale = input scale x weight scale: the form ONNX Runtime needs to fuse
            # DQ -> Conv -> Q into QLinearConv (a float bias blocks the fusion).
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            b_scale = (float(s["act_scale"]) * s["w_scale"].numpy().astype(np.float64)).reshape(-1)
            b_scale = np.broadcast_to(b_scale, bias.shape) if b_scale.size == 1 else b_scale
            b_q = np.clip(np.round(bias / b_scale), -2**31, 2**31 - 1).astype(np.int32)
            new_inits += [numpy_helper.from_array(b_q, f"{base}.bias_q"),
                          numpy_helper.from_array(b_scale.astype(np.float32), f"{base}.b_scale"),
                          numpy_helper.from_array(np.zeros(b_q.shape, np.int32), f"{base}.b_zp")]
            pre.append(helper.make_node("DequantizeLinear", [f"{base}.bias_q", f"{base}.b_scale", f"{base}.b_zp"],
                                        [f"{base}.bias_dq"], name=f"{base}/bdq", axis=0))
            node.input[2] = f"{base}.bias_dq"
        x = node.input[0]
        if s["act_scale"] is not None:
            if x not in act_qdq:
                a = f"nnslim_act/{x}"
                signed = bool(s.get("act_signed"))  # symmetric int8 (zero point 0) or uint8
                new_inits += [numpy_helper.from_array(np.array(s["act_scale"], np.float32), f"{a}.scale"),
                              numpy_helper.from_array(np.array(s["act_zp"], np.int8 if signed else np.uint8),
                                                      f"{a}.zp")]
                src = x
                act_bits = s.get("act_bits") or 8
                if act_bits < 8:  # 8-bit codes limited to the narrower range: clip to it before quantizing
                    qmin, qmax = (-2 ** (act_bits - 1), 2 ** (act_bits - 1) - 1) if signed else (0, 2 ** act_bits - 1)
                    lo = (qmin - s["act_zp"]) * s["act_scale"]
                    hi = (qmax - s["act_zp"]) * s["act_scale"]
                    new_inits += [numpy_helper.from_array(np.array(lo, np.float32), f"{a}.lo"),
                                  numpy_helper.from_array(np.array(hi, np.float32), f"{a}.hi")]
                    pre.append(helper.make_node("Clip", [x, f"{a}.lo", f"{a}.hi"], [f"{a}.c"], name=f"{a}/clip"))
                    src = f"{a}.c"
                pre += [helper.make_node("QuantizeLinear", [src, f"{a}.scale", f"{a}.zp"], [f"{a}.q"], name=f"{a}/q"),
                        helper.make_node("DequantizeLinear", [f"{a}.q", f"{a}.scale", f"{a}.zp"], [f"{a}.dq"],
                                         name=f"{a}/dq")]
                act_qdq[x] = f"{a}.dq"
            node.input[0] = act_qdq[x]
        rewritten += pre + [node]
    missing = sorted(set(spec) - found)
    folded = [n for n in missing if spec[n]["kind"] == "embedding"]
    if folded:  # looked up at fixed indices (positions of a fixed-size image): the exporter folds the lookup away
        notes.append(f"{', '.join(folded[:4])}: looked up at fixed indices, so the exporter folded the lookup into a "
                     "float constant (the dequantized rows: the int8 model's values, stored in float)")
        missing = [n for n in missing if n not in folded]
    constant = _constant_input(qmodel, missing, example_inputs) if missing else set()
    if constant:  # a layer over a fixed table (Swin v2's position-bias MLP): the exporter computed it once
        notes.append(f"{len(constant)} layers whose input is the same for every model input "
                     f"({', '.join(sorted(constant)[:3])}{' ...' if len(constant) > 3 else ''}): the exporter folded "
                     "their output into a float constant, computed with their int8 weights")
        missing = [n for n in missing if n not in constant]
    dead = _dead_ends(qmodel, missing, example_inputs) if missing else set()
    if dead:  # computed by the model but reaching none of its outputs: the exporter leaves them out
        notes.append(f"{len(dead)} quantized layers reach none of the model's outputs "
                     f"({', '.join(sorted(dead)[:3])}{' ...' if len(dead) > 3 else ''}): not in the exported graph")
        missing = [n for n in missing if n not in dead]
    if missing:  # what was quantized must deploy quantized: never a silently float artifact
        raise NnslimError(f"int8 ONNX export: {len(found)}/{len(spec)} quantized layers were found in the exported "
                          f"graph; not found (they would run in float): {', '.join(missing[:8])}")
    del graph.node[:]
    graph.node.extend(rewritten)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if low_bits:
        for op in proto.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 21:
                op.version = 21
    from .qdq_matmul import (ADDS_ATTR, MATMULS_ATTR, keep_reduced_dims, quantize_activation_adds,
                             quantize_activation_matmuls, quantize_gemm_biases, quantize_through_maxpools)

    if not matmuls and any(getattr(m, MATMULS_ATTR, False) for m in qmodel.modules()):
        notes.append("attention matmuls left float in this graph (the caller's choice, said in its notes)")
    elif any(getattr(m, MATMULS_ATTR, False) for m in qmodel.modules()):
        if calibration is None:
            raise NnslimError("the int8 step asked for int8 attention matmuls (matmuls option), which need "
                              "calibration data at export; pass calibration data or set matmuls: false")
        notes += quantize_activation_matmuls(proto, calibration(MATMUL_SAMPLES))
    adds = {getattr(m, ADDS_ATTR, None) for m in qmodel.modules()} - {None, False}
    if adds and calibration is not None:
        notes += quantize_activation_adds(proto, calibration(MATMUL_SAMPLES), symmetric="symmetric" in adds)
    notes += quantize_through_maxpools(graph)
    notes += quantize_gemm_biases(graph)
    notes += keep_reduced_dims(proto)
    if lstms:
        n_lstm = quantize_lstms(proto)
        if not n_lstm:  # what was quantized must deploy quantized
            raise NnslimError("int8 ONNX export: the model's LSTM layers were to run as int8, but the exported graph "
                              "has no ONNX LSTM node to rewrite; quantize with lstm: false")
        notes.append(f"{n_lstm} ONNX LSTM nodes as ONNX Runtime's DynamicQuantizeLSTM (int8 weights per gate row)")
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    containers = sorted({"int4" if int(s.get("bits", 8)) <= 4 else "int8" for s in spec.values()} | (
        {"int8"} if lstms else set()), reverse=True)
    products = [s for s in spec.values() if s["kind"] != "embedding"]
    if products and all(s.get("group") is not None for s in products):
        form = "weight-only, group-wise blocked DequantizeLinear"
    elif any(s["dynamic"] for s in spec.values()) or (lstms and not products):
        form = "dynamic"
    else:
        form = "static QDQ"
    kind = "/".join(containers)  # the storage type: 5-7 bit codes live in INT8, 2-4 bit in INT4
    notes.append(f"{kind} ONNX: {len(found)}/{len(spec)} layers as {kind} ({form})")
    if tables:
        notes.append(f"embedding tables as int8 ({len(tables)}): each lookup gathers int8 rows and dequantizes only "
                     f"those{'; the tied head reads the same table' if tied_to else ''}")
    return OnnxModel(path), notes
