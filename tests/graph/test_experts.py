"""Mixture-of-experts models whose experts are 3D tensors (transformers 5): every Linear method reaches the
experts, the split computes what the fused block computes, and the artifacts hold what was made."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import nnslim
from hf_zoo import _build
from nnslim.errors import NnslimError
from nnslim.graph.experts import SplitExperts, fused_experts, join_experts, split_experts
from nnslim.quant.weight_only.modules import WeightOnlyLinear

IDS = torch.randint(0, 30522, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model, ids=IDS):
    with torch.no_grad():
        out = model(input_ids=ids)
    return getattr(out, "logits", out)  # (nnslim's wrapper of a causal LM returns the logits)


def _lm(model):
    return getattr(model, "lm", model)


def _hf(kind, tmp_path):
    d = _build(kind, tmp_path / "zoo")
    return d, tf.AutoModelForCausalLM.from_pretrained(str(d)).eval()


@pytest.mark.parametrize("kind", ["mixtral", "qwen2moe", "qwen3moe", "gptoss"])
def test_split_computes_the_fused_block_and_joins_back_bit_for_bit(kind, tmp_path):
    _, model = _hf(kind, tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    want = _logits(model)
    names = split_experts(model)
    assert names and not fused_experts(model)
    assert all(isinstance(model.get_submodule(n), SplitExperts) for n in names)
    experts = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".experts." in n]
    assert len(experts) == 2 * 4 * 2  # layers x experts x (first projection, down_proj)
    torch.testing.assert_close(_logits(model), want, rtol=1e-5, atol=1e-5)
    assert join_experts(model) == []
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)


def test_every_token_mode_gives_the_same_output():
    from nnslim.graph.experts import all_experts_see_every_token

    model = tf.MixtralForCausalLM(tf.MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                                   num_local_experts=6, num_experts_per_tok=1)).eval()
    split_experts(model)
    ids = torch.randint(0, 100, (1, 9))
    seen = []
    lin = model.model.layers[0].mlp.experts.expert(5).down_proj
    lin.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    want = _logits(model, ids)
    with all_experts_see_every_token(model):
        torch.testing.assert_close(_logits(model, ids), want)
    assert seen[-1] == 9  # the last call: every token, routed to expert 5 or not


@pytest.mark.parametrize("method", ["int4-rtn", "int8-w8a8"])
def test_quantized_experts_survive_the_artifact(method, tmp_path):
    src, _ = _hf("gptoss", tmp_path)  # transposed experts with biases and their own gating function
    res = nnslim.compress(str(src), [{"method": method}], out=tmp_path / "q", report=False)
    meta = json.loads((tmp_path / "q" / "nnslim.json").read_text())
    assert meta["format"] == "torch" and len(meta["split_experts"]) == 2
    quantized = [n for n in meta["quantized_layers"] if ".experts." in n]
    assert len(quantized) == 2 * 4 * 2
    back = nnslim.load(tmp_path / "q")
    assert torch.equal(_logits(back), _logits(res.model))
    assert isinstance(_lm(back).model.layers[0].mlp.experts, SplitExperts)


def test_gptq_calibrates_experts_no_token_was_routed_to(tmp_path):
    """64 experts, one per token, 128 calibration tokens: experts no token is routed to are still
    calibrated (every expert sees every token while calibrating), none is zeroed."""
    model = tf.MixtralForCausalLM(tf.MixtralConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                                   num_local_experts=64, num_experts_per_tok=1)).eval()
    calib = [{"input_ids": torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(i))}
             for i in range(2)]
    q = nnslim.quantize(model, nnslim.Int4GptqConfig(group_size=32), calibration=calib,
                        example_inputs=calib[0])
    experts = _lm(q).model.layers[0].mlp.experts
    for e in range(64):
        layer = experts.expert(e).down_proj
        assert isinstance(layer, WeightOnlyLinear)
        assert layer.dequantized_weight().abs().sum() > 0, e


def test_a_layer_no_calibration_input_reaches_falls_back_and_is_named(tmp_path):
    """A target that never runs (a branch the samples never take) gets the method's data-free fallback:
    GPTQ -> round-to-nearest, SparseGPT -> magnitude, with a note naming it."""
    from nnslim.pipeline import compress

    def build():
        torch.manual_seed(0)
        m = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=100)).eval()
        m.model.layers[0].mlp.unused = torch.nn.Linear(64, 64)
        return m

    calib = [{"input_ids": torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(i))}
             for i in range(2)]
    for method, fallback in (("int4-gptq", "quantized by RTN"), ("sparsegpt", "pruned by magnitude")):
        res = compress(build(), [{"method": method, "group_size": 32} if method == "int4-gptq" else {"method": method}],
                       calibration=calib, example_inputs=calib[0], report=False)
        note = next(n for n in res.notes if "received no calibration input" in n)
        assert fallback in note and "mlp.unused" in note
        unused = _lm(res.model).model.layers[0].mlp.unused
        if method == "sparsegpt":
            assert float((unused.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
        else:
            assert isinstance(unused, WeightOnlyLinear)


def test_pruned_experts_go_back_into_the_transformers_layout(tmp_path):
    src, _ = _hf("mixtral", tmp_path)
    res = nnslim.compress(str(src), [{"method": "wanda"}], out=tmp_path / "p", report=False)
    meta = json.loads((tmp_path / "p" / "nnslim.json").read_text())
    assert meta["format"] == "hf" and "split_experts" not in meta
    hf = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "p")).eval()
    w = hf.model.layers[0].mlp.experts.gate_up_proj
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    torch.testing.assert_close(_logits(hf), _logits(res.model), rtol=1e-5, atol=1e-5)


def test_ignoring_the_experts_keeps_them_fused_and_float(tmp_path):
    src, _ = _hf("qwen3moe", tmp_path)
    res = nnslim.compress(str(src), [{"method": "int8-weight-only", "ignore": ["re:mlp\\.experts$"]}], report=False)
    assert fused_experts(res.model) and not any(".experts." in n for n, m in res.model.named_modules()
                                                  if isinstance(m, WeightOnlyLinear))


def test_a_block_whose_split_differs_is_refused_with_its_name(monkeypatch):
    model = tf.MixtralForCausalLM(tf.MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                                   num_local_experts=4, num_experts_per_tok=2)).eval()
    cls = type(model.model.layers[0].mlp.experts)
    orig = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, h, i, w: orig(self, h, i, w) * 2)  # not what the split does
    with pytest.raises(NnslimError, match=r"model\.layers\.0\.mlp\.experts: .* list it in `ignore`"):
        split_experts(model)


def test_static_decoder_decodes_quantized_experts_as_the_model_does(tmp_path):
    from nnslim.runtime.decode import StaticDecoder

    src, _ = _hf("qwen3moe", tmp_path)
    lm = _lm(nnslim.compress(str(src), [{"method": "int4-rtn"}], report=False).model)
    prompt = torch.randint(0, 30522, (1, 7), generator=torch.Generator().manual_seed(3))
    want, ids = [], prompt
    with torch.no_grad():
        for _ in range(8):
            nxt = lm(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
            want.append(int(nxt))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    assert StaticDecoder(lm, max_len=24, use_graph=False).generate(prompt, 8)[0] == want


def test_onnx_export_of_experts_is_refused_up_front_and_structural_pruning_says_what_it_left(tmp_path):
    src, _ = _hf("mixtral", tmp_path)
    with pytest.raises(NnslimError, match=r"recipe step 1 \('onnx'\) exports to ONNX.*mixture-of-experts"):
        nnslim.compress(str(src), [{"method": "int4-rtn"}, {"method": "onnx"}], report=False)
    with pytest.raises(NnslimError, match=r"recipe step 0 \(.int8-dynamic.\) is deployed as an ONNX export"):
        nnslim.compress(str(src), [{"method": "int8-dynamic"}], out=tmp_path / "d", report=False)
    res = nnslim.compress(str(src), [{"method": "prune-structured"}], report=False)
    assert any("2 mixture-of-experts blocks" in n and "not structurally pruned yet" in n for n in res.notes)


def test_moe_routers_stay_float_for_every_method():
    """A router that is an nn.Linear (older / remote-code MoE models, Qwen2-MoE's shared_expert_gate) is kept
    float, as llm-compressor keeps it: its error would change which experts run."""
    from nnslim.graph.scope import select_linears

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = torch.nn.Linear(16, 4)
            self.experts = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))
            self.proj = torch.nn.Linear(16, 16)

    model = torch.nn.Sequential(Block(), Block())
    chosen = select_linears(model)
    assert "0.gate" not in chosen and "1.gate" not in chosen and "0.experts.3" in chosen and "1.proj" in chosen
    qwen = tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=64,
        num_experts=4, num_experts_per_tok=2, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100)).eval()
    notes = []
    from nnslim.quant.weight_only.driver import quantize_weight_only

    q = quantize_weight_only(qwen, nnslim.Int4RtnConfig(group_size=32), notes=notes)
    assert type(q.model.layers[0].mlp.shared_expert_gate) is torch.nn.Linear
    assert isinstance(q.model.layers[0].mlp.shared_expert.up_proj, WeightOnlyLinear)
    assert "1 MoE router Linears float" in notes[-1]


@pytest.mark.parametrize("kind", ["mixtral", "qwen3moe", "gptoss"])
def test_streamed_moe_checkpoint_quantizes_expert_by_expert_as_in_memory(kind, tmp_path):
    """A MoE checkpoint streamed from its shards: each expert's Linear reads its row of the stored 3D tensor
    (transposed for gpt-oss; Mixtral's checkpoint keeps per-expert `block_sparse_moe.experts.E.w1/w3/w2`, read
    through transformers' conversion mapping); RTN and GPTQ give bit for bit what they give on the model loaded
    whole, in the stored dtype (bf16)."""
    from nnslim.testbeds import testbed_for_hf_dir

    torch.manual_seed(0)
    d = tmp_path / "ckpt"
    _hf(kind, tmp_path)[1].to(torch.bfloat16).save_pretrained(str(d), max_shard_size="200KB")
    from hf_zoo import _tokenizer_files

    _tokenizer_files(d)
    assert (d / "model.safetensors.index.json").is_file()
    calib = [{"input_ids": torch.randint(0, 30522, (1, 64), generator=torch.Generator().manual_seed(i))}
             for i in range(2)]
    for cfg in (nnslim.Int4RtnConfig(group_size=32), nnslim.Int4GptqConfig(group_size=32, device="cpu")):
        streamed = nnslim.load(d, stream=True)
        q = nnslim.quantize(streamed, cfg, calibration=calib, inplace=True)
        tb = testbed_for_hf_dir(d)
        tb.load_dtype = torch.bfloat16  # (as stored)
        ref = nnslim.quantize(tb.load_model(), cfg, calibration=calib)
        sq, sr = q.state_dict(), ref.state_dict()
        assert sq.keys() == sr.keys() and any(".experts.3.down_proj." in k for k in sq)
        bad = [k for k in sq if sq[k].dtype != sr[k].dtype or not torch.equal(sq[k], sr[k])]
        assert not bad, bad[:3]
    out = nnslim.save(q, tmp_path / "out")
    assert torch.equal(_logits(nnslim.load(out)), _logits(ref))
    from nnslim.graph.streaming import source_of

    whole = tb.load_model()  # the unsplit model streamed (the report's baseline): its 3D tensors from any layout
    source = source_of(nnslim.load(d, stream=True))
    for n, p in whole.named_parameters():
        if ".experts." in n:
            got = source.read(n)
            assert got.dtype == p.dtype and torch.equal(got, p.detach()), n
    with pytest.raises(NnslimError, match="to prune the MoE experts of a checkpoint streamed"):
        nnslim.prune(nnslim.load(d, stream=True), nnslim.MagnitudePruneConfig())
