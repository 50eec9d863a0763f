"""Decoder LLMs deployed as ONNX with a KV cache (Optimum's names), decoded token by token in ONNX Runtime and
OpenVINO; the OpenVINO IR artifact; the CPU flags in every report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nnslim
from nnslim.errors import NnslimError

from hf_zoo import _build  # noqa: E402


@pytest.fixture(scope="module")
def llms(tmp_path_factory):
    root = tmp_path_factory.mktemp("llms")
    return {kind: _build(kind, root) for kind in ("llama", "gpt2", "gemma2")}


@pytest.fixture(scope="module")
def llama_onnx(llms, tmp_path_factory):
    """The llama model compressed to ONNX with its KV cache, shared by the tests that only read it."""
    return nnslim.compress(str(llms["llama"]), "onnx", out=tmp_path_factory.mktemp("llama-onnx") / "a", report=False)


def _hf_greedy(model_dir, prompt, n):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = lm.generate(torch.as_tensor(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    return out[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2"])
def test_onnx_with_past_decodes_as_transformers_generate(llms, kind, tmp_path, request):
    """gemma2's sliding window is 8 tokens: its decode goes past it (a sliding cache traced at small sizes once
    made ONNX Runtime fail there)."""
    from nnslim.runtime import make_runner
    from nnslim.runtime.onnx_llm import greedy_decode

    res = request.getfixturevalue("llama_onnx") if kind == "llama" else \
        nnslim.compress(str(llms[kind]), "onnx", out=tmp_path / "a", report=False)
    import onnx

    proto = onnx.load(str(res.model.path), load_external_data=False)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"] and len(inputs) == 3 + 2 * 2
    assert outputs[0] == "logits" and outputs[1:3] == ["present.0.key", "present.0.value"]
    assert any("decode step with past" in n for n in res.notes)
    prompt = np.random.default_rng(0).integers(0, 30522, (1, 7))
    new = 12 if kind == "gemma2" else 6
    want = _hf_greedy(llms[kind], prompt, new)
    for backend in ("onnxruntime", "openvino"):
        runner = make_runner(res.model, backend)
        assert runner.decodes
        tokens, _, rate = greedy_decode(runner.run_all, prompt, new)
        assert tokens == want, backend
        assert rate > 0


def test_past_false_exports_logits_only(llms, tmp_path):
    from nnslim.runtime.onnx_methods import OnnxConfig

    res = nnslim.compress(str(llms["llama"]), OnnxConfig(past=False), out=tmp_path / "a", report=False)
    import onnx

    assert [i.name for i in onnx.load(str(res.model.path), load_external_data=False).graph.input] == ["input_ids"]


def test_int4_onnx_with_past_reports_decode_rate_and_cpu_flags(llms, tmp_path):
    res = nnslim.compress(str(llms["llama"]), "examples/int4_onnx_llm.yaml", out=tmp_path / "a", repeats=1,
                          memory=False)
    rows = json.loads((tmp_path / "a" / "report.json").read_text())
    by_name = {v["name"]: v for v in rows["variants"]}
    assert by_name["original float32"]["decode_tokens_per_s"] > 0
    onnx_rows = [v for n, v in by_name.items() if n.startswith("int4-rtn + onnx")]
    assert len(onnx_rows) == 2 and all(v["decode_tokens_per_s"] > 0 for v in onnx_rows)
    assert all(v["vs_baseline"]["decode_speedup"] > 0 for v in onnx_rows)
    assert "cpu_flags" in rows["machine"] and isinstance(rows["machine"]["int8_dot_product"], bool)
    assert any(n.startswith("decode: greedy, batch 1") for n in rows["notes"])
    assert "decode tok/s" in (tmp_path / "a" / "report.md").read_text()
    assert res.model.path.name == "model.onnx"
    # the faster runtime of the two measured is recorded, and evaluate of the artifact runs in it
    runtime = json.loads((tmp_path / "a" / "nnslim.json").read_text())["runtime"]
    fastest = min(onnx_rows, key=lambda v: v["latency_ms"])["backend"]
    assert runtime["name"] == fastest and "measured fastest" in runtime["why"]
    assert nnslim.evaluate(str(tmp_path / "a"), testbed=str(llms["llama"]))["backend"] == fastest
    assert nnslim.evaluate(str(tmp_path / "a"), testbed=str(llms["llama"]), backend="onnxruntime")["backend"] == \
        "onnxruntime"


def test_openvino_ir_artifact_loads_in_nnslim_and_plain_openvino(llms, tmp_path):
    import openvino as ov

    out = tmp_path / "ir"
    res = nnslim.compress(str(llms["llama"]), [{"method": "int8-weight-only"}, {"method": "openvino"}], out=out, report=False)
    meta = json.loads((out / "nnslim.json").read_text())
    assert meta["format"] == "openvino" and meta["files"][:2] == ["openvino_model.xml", "openvino_model.bin"]
    assert "config.json" in meta["files"] and "tokenizer.json" in meta["files"]  # as optimum-intel reads it
    assert not (out / "model.onnx").exists()
    loaded = nnslim.load(out)
    assert loaded.path.name == "openvino_model.xml"
    compiled = ov.Core().compile_model(str(out / "openvino_model.xml"), "CPU")
    names = {n for p in compiled.inputs for n in p.get_names()}
    assert "past_key_values.0.key" in names
    # the int8 weights stay int8 constants in the IR (OpenVINO's compressed-weight form), one per layer
    ir = ov.Core().read_model(str(out / "openvino_model.xml"))
    int8 = [op for op in ir.get_ops() if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8]
    assert len(int8) >= 14  # 2 layers x (q, k, v, o, gate, up, down)
    metrics = nnslim.evaluate(str(out))["metrics"]
    assert np.isfinite(metrics["perplexity"])
    with pytest.raises(NnslimError, match="openvino for an OpenVINO IR"):
        nnslim.evaluate(str(out), backend="onnxruntime")
    assert res.model.path.suffix == ".xml"


def test_openvino_ir_weights_decompress_without_zero_point_subtracts(llms, tmp_path):
    """nnslim's ONNX keeps explicit zero zero points (ONNX Runtime's choice); its IR drops them, as NNCF's IRs
    have none (OpenVINO would subtract the zeros in every int4 decompression)."""
    import openvino as ov

    from nnslim.runtime.openvino import drop_zero_weight_offsets, onnx_to_ir

    int4 = [{"method": "int4-rtn", "group_size": 32}]
    onnx_res = nnslim.compress(str(llms["llama"]), int4 + [{"method": "onnx"}], out=tmp_path / "o", report=False)
    assert drop_zero_weight_offsets(ov.convert_model(str(onnx_res.model.path))) >= 14  # 2 layers x 7
    # read_model keeps the blocked codes' Reshape between the Constant and its Convert: still found
    assert drop_zero_weight_offsets(ov.Core().read_model(str(onnx_res.model.path))) >= 14
    # the conversion the openvino method runs (its artifact: test_openvino_ir_artifact_loads_in_nnslim_and_plain_openvino)
    ir = onnx_to_ir(onnx_res.model.path, tmp_path / "ir" / "openvino_model.xml")
    assert drop_zero_weight_offsets(ov.Core().read_model(str(ir.path))) == 0
    from nnslim.runtime import make_runner

    logits = make_runner(ir, "openvino")({"input_ids": np.arange(1, 9, dtype=np.int64)[None]})
    assert logits.shape[:2] == (1, 8) and np.isfinite(logits).all()


def test_openvino_ir_keeps_the_onnx_graph_names_of_inputs_and_outputs(tmp_path):
    """An input passed through an op the converter folds (a one-input Concat, as in T5's decoder with past)
    must not carry that op's output name too: optimum-intel names inputs by get_any_name() and missed T5's
    past_key_values.*."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper

    from nnslim.runtime.openvino import onnx_to_ir

    x = helper.make_tensor_value_info("past_key_values.0.decoder.key", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("present.0.decoder.key", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Concat", [x.name], ["/Concat_output_0"], axis=0),
                               helper.make_node("Relu", ["/Concat_output_0"], [y.name])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    assert len(ov.convert_model(str(tmp_path / "m.onnx")).inputs[0].get_names()) > 1  # what the converter does
    onnx_to_ir(tmp_path / "m.onnx", tmp_path / "m.xml")
    model = ov.Core().read_model(str(tmp_path / "m.xml"))
    assert [p.get_names() for p in model.inputs] == [{x.name}] and [p.get_names() for p in model.outputs] == [{y.name}]


def test_int8_attention_matmuls_get_calibrated_qdq(tmp_path):
    import onnx

    from nnslim.quant.ptq import Int8Config
    from nnslim.runtime.qdq_matmul import activation_matmuls
    from hf_zoo import _build as build

    bert = build("bert", tmp_path / "zoo")
    on = nnslim.compress(str(bert), Int8Config(samples=16, matmuls=True), out=tmp_path / "on", report=False)
    auto = nnslim.compress(str(bert), Int8Config(samples=16), out=tmp_path / "auto", report=False)
    from nnslim.quant.ptq import cpu_has_vnni  # auto: on where the CPU has int8 dot products

    assert any("attention matmuls" in n for n in auto.notes) == cpu_has_vnni()
    # without VNNI auto is off: its graph serves as the float-matmul one (one compress fewer)
    off = nnslim.compress(str(bert), Int8Config(samples=16, matmuls=False), out=tmp_path / "off", report=False) \
        if cpu_has_vnni() else auto
    g_on = onnx.load(str(on.model.path)).graph
    g_off = onnx.load(str(off.model.path)).graph
    assert len(activation_matmuls(g_off)) == 4  # 2 layers x (Q.K^T, probs.V), float
    # q/k/v share one SmoothQuant scale: per layer, one scaled and quantized input feeds all three
    qkv = [n for n in g_off.node if n.op_type in ("MatMul", "Gemm")
           and any(f"attention.self.{w}" in i for i in n.input for w in ("query", "key", "value"))]
    assert len(qkv) == 6 and len({n.input[0] for n in qkv}) == 2
    producers = {o: n.op_type for n in g_on.node for o in n.output}
    mms = [n for n in g_on.node if n.op_type == "MatMul" and all(i.startswith("nnslim_mm/") for i in n.input)]
    assert len(mms) == 4 and all(producers[i] == "DequantizeLinear" for n in mms for i in n.input)
    assert any("4 activation x activation MatMuls as int8" in n for n in on.notes)
    # the deployed graph still matches the float model closely
    tb_metrics = nnslim.evaluate(str(tmp_path / "on"), testbed=str(bert))["metrics"]
    assert tb_metrics["cos_mean"] > 0.95
    # the API export needs calibration for them, and says so
    q = nnslim.quantize(_hf_model(bert), Int8Config(samples=4, matmuls=True),
                        calibration=[{"input_ids": np.ones((1, 8), np.int64), "attention_mask": np.ones((1, 8), np.int64)}] * 4)
    with pytest.raises(NnslimError, match="matmuls"):
        nnslim.export_onnx(q, {"input_ids": np.ones((2, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)},
                           tmp_path / "x.onnx", {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})


def _hf_model(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path)).eval()


def test_int8_llm_deploys_with_its_kv_cache_without_an_onnx_step(llms, tmp_path):
    import onnx

    from nnslim.quant.ptq import Int8Config
    from nnslim.runtime import make_runner

    res = nnslim.compress(str(llms["llama"]), Int8Config(samples=8), out=tmp_path / "a", report=False)
    names = [i.name for i in onnx.load(str(res.model.path), load_external_data=False).graph.input]
    assert "past_key_values.1.value" in names
    tokens, rate = make_runner(res.model, "onnxruntime").decode(np.arange(1, 9)[None], 4)
    assert len(tokens) == 4 and rate > 0


def test_generate_api_and_cli(llms, llama_onnx, tmp_path):
    """`nnslim generate`: HF dirs and ONNX artifacts give transformers' greedy tokens; a batch of prompts and a
    quantized KV cache go through StaticDecoder; what cannot run is one clear error (exit 2)."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llms["llama"]))
    text = "the quick brown fox"
    ids = tok(text, return_tensors="np")["input_ids"]
    want = _hf_greedy(llms["llama"], ids, 5)
    res = nnslim.generate(str(llms["llama"]), text, 5, device="cpu")
    assert res["tokens"] == [want] and res["decode_tokens_per_s"] > 0 and "StaticDecoder" in res["decoder"]
    assert res["texts"][0] == tok.decode(want, skip_special_tokens=True)
    mine = nnslim.load(str(llms["llama"]))  # a module of the caller's: generated from a cast copy, left as it is
    assert nnslim.generate(mine, text, 5, device="cpu", dtype="bf16", testbed=str(llms["llama"]))["tokens"][0]
    assert next(mine.parameters()).dtype == torch.float32
    two = nnslim.generate(str(llms["llama"]), [text, "a lazy dog jumps"], 5, device="cpu", kv_cache="int8")
    assert two["batch"] == 2 and len(two["tokens"]) == 2 and "KV cache int8" in two["decoder"]
    gpt2 = nnslim.generate(str(llms["gpt2"]), text, 4, device="cpu")  # not Llama-family: the model's own cache
    assert gpt2["tokens"] == [_hf_greedy(llms["gpt2"], ids, 4)] and "own KV cache" in gpt2["decoder"]
    gemma2 = nnslim.generate(str(llms["gemma2"]), text, 12, device="cpu")  # Llama-shaped, soft-capped, windowed
    assert gemma2["tokens"] == [_hf_greedy(llms["gemma2"], ids, 12)]
    assert "own KV cache" in gemma2["decoder"] and "softcapping" in gemma2["decoder"]
    onnx_res = nnslim.generate(str(llama_onnx.model.path.parent), text, 5)
    assert onnx_res["tokens"] == [want] and onnx_res["backend"] == "onnxruntime"
    with pytest.raises(NnslimError, match="different token counts"):
        nnslim.generate(str(llms["llama"]), [text, "one"], 3, device="cpu")
    cli = [sys.executable, "-m", "nnslim.cli", "generate", "--model", str(llms["gpt2"]), "--prompt", text]
    proc = subprocess.run(cli + ["--kv-cache", "int8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "kv_cache='int8'" in proc.stderr.strip().splitlines()[-1], proc.stderr
    proc = subprocess.run(cli + ["--max-new-tokens", "3", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tokens"] == [_hf_greedy(llms["gpt2"], ids, 3)]
    proc = subprocess.run(cli + ["--max-new-tokens", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "--max-new-tokens" in proc.stderr


def test_int4_onnx_stores_one_int8_table_for_the_tied_embedding_and_head(tmp_path):
    """backup auto before an export: the tied embedding / lm_head is one int8 table; lookups gather int8 rows
    (no DequantizeLinear of the whole table per run) and ONNX Runtime runs the head as MatMulNBits too."""
    import onnx
    import onnxruntime as ort
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_zoo import _tokenizer_files
    from nnslim.runtime import make_runner
    from nnslim.runtime.onnx_llm import greedy_decode

    torch.manual_seed(0)
    d = tmp_path / "tied"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=30522, tie_word_embeddings=True)).save_pretrained(d)
    _tokenizer_files(d)
    res = nnslim.compress(str(d), "examples/int4_onnx_llm.yaml", out=tmp_path / "a", report=False)
    assert any("the tied head reads the same table" in n for n in res.notes)
    proto = onnx.load(str(res.model.path))
    big = [i for i in proto.graph.initializer if 30522 * 64 in (np.prod(i.dims),)]
    assert [i.data_type for i in big] == [onnx.TensorProto.INT8]  # one table, int8: no float copy
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] == big[0].name]
    assert gathers and all(producer.get(n.input[0]) is None for n in gathers)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(res.model.path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 15 and "DequantizeLinear" not in ops  # 2 x 7 layers + the head
    prompt = np.random.default_rng(0).integers(0, 30522, (1, 7))
    for backend in ("onnxruntime", "openvino"):
        tokens, _, _ = greedy_decode(make_runner(res.model, backend).run_all, prompt, 4)
        assert len(tokens) == 4
