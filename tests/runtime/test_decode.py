import pytest
import torch

from nnslim import NnslimError
from nnslim import Int4RtnConfig
from nnslim import quantize
from nnslim.runtime.decode import StaticDecoder


def _greedy_reference(lm, prompt, n):
    ids = prompt
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = lm(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


def test_static_decoder_matches_hf_greedy(tiny_llama):
    prompt = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    dec = StaticDecoder(tiny_llama, max_len=40, use_graph=False)
    tokens, rate = dec.generate(prompt, 10)
    assert tokens == _greedy_reference(tiny_llama, prompt, 10)
    assert rate > 0
    with torch.no_grad():  # logits at every step match the full recomputation
        ref = tiny_llama(input_ids=prompt, use_cache=False).logits[:, -1]
    dec2 = StaticDecoder(tiny_llama, max_len=40, use_graph=False)
    got = dec2.forward(prompt, torch.arange(12))
    assert torch.allclose(got, ref, atol=1e-5)


def test_static_decoder_runs_quantized_layers(tiny_llama):
    q = quantize(tiny_llama, Int4RtnConfig(group_size=32))
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(4))
    tokens, _ = StaticDecoder(q, max_len=20, use_graph=False).generate(prompt, 6)
    assert tokens == _greedy_reference(q, prompt, 6)


def _tiny(config_cls, lm_cls, **kw):
    torch.manual_seed(0)
    cfg = config_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)
    return lm_cls(cfg).eval()


def test_static_decoder_refuses_what_it_would_decode_wrong():
    """Llama-shaped modules that compute something else (a window, layers without rotary, extra norms,
    soft-capping, scaled residuals) are refused with the reason, so callers fall back to the model's own cache;
    each of these once decoded wrong tokens or crashed."""
    import transformers as tf

    mistral = _tiny(tf.MistralConfig, tf.MistralForCausalLM, sliding_window=8)
    assert StaticDecoder(mistral, max_len=8, use_graph=False)  # the window covers every position
    with pytest.raises(NnslimError, match="sliding window of 8 positions, fewer than max_len=24"):
        StaticDecoder(mistral, max_len=24, use_graph=False)
    with pytest.raises(NnslimError, match="layer 3 has no rotary embedding"):
        StaticDecoder(_tiny(tf.SmolLM3Config, tf.SmolLM3ForCausalLM), max_len=24, use_graph=False)
    with pytest.raises(NnslimError, match="attn_logit_softcapping"):
        StaticDecoder(_tiny(tf.Gemma2Config, tf.Gemma2ForCausalLM, head_dim=16), max_len=24, use_graph=False)
    with pytest.raises(NnslimError, match=r"post_feedforward_layernorm, self_attn.q_norm over \(64,\) \(not per"):
        StaticDecoder(_tiny(tf.Olmo2Config, tf.Olmo2ForCausalLM), max_len=24, use_graph=False)
    granite = _tiny(tf.GraniteConfig, tf.GraniteForCausalLM, residual_multiplier=0.5, logits_scaling=2.0)
    with pytest.raises(NnslimError, match="does not reproduce GraniteForCausalLM: its prefill logits differ"):
        StaticDecoder(granite, max_len=24, use_graph=False)
    with pytest.raises(NnslimError, match="cannot run StableLmForCausalLM: RuntimeError"):  # partial rotary
        StaticDecoder(_tiny(tf.StableLmConfig, tf.StableLmForCausalLM), max_len=24, use_graph=False)


def test_self_check_resolution_is_the_models_own_rounding_noise(monkeypatch):
    """A half-precision model whose logits move under one rounding of its input (8 random fp8 layers on an H100:
    0.19, where the fused decoder differed by 0.15 and was refused) is checked to that resolution, with a note;
    beyond twice that noise it is still refused, the noise named. bf16 Granite's scaled residuals stay refused."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    lm = tf.LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    with torch.no_grad():
        for p in lm.parameters():  # 12 layers of large random weights: a model that amplifies every rounding
            p.mul_(4.0)
        ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
        ref = lm(input_ids=ids, use_cache=False).logits[:, -1].float()
    probe = StaticDecoder(lm, max_len=16, use_graph=False)
    noise = probe._rounding_noise(ids, ref)
    assert noise > 0.06, noise  # (0.088 here)
    honest = StaticDecoder.forward
    span = float(ref.abs().max())
    for shift, ok in [(1.5, True), (2.5, False)]:
        def shifted(self, tokens, pos, shift=shift):
            out = honest(self, tokens, pos)
            return out + (shift * noise * max(1.0, span)) * (torch.arange(out.shape[-1]) == 0)
        monkeypatch.setattr(StaticDecoder, "forward", shifted)
        if ok:
            assert "within twice what one rounding of its input moves them" in StaticDecoder(
                lm, max_len=16, use_graph=False).fused_note
        else:
            with pytest.raises(NnslimError, match="one rounding of the input moves them by"):
                StaticDecoder(lm, max_len=16, use_graph=False)
    monkeypatch.setattr(StaticDecoder, "forward", honest)
    granite = _tiny(tf.GraniteConfig, tf.GraniteForCausalLM, residual_multiplier=0.5, logits_scaling=2.0)
    with pytest.raises(NnslimError, match="does not reproduce GraniteForCausalLM"):
        StaticDecoder(granite.to(torch.bfloat16), max_len=24, use_graph=False)


def test_static_decoder_runs_per_head_qk_norms():
    """Qwen3: RMSNorm over each head's queries / keys before rotary (unfused path; the fused one below)."""
    import transformers as tf

    lm = _tiny(tf.Qwen3Config, tf.Qwen3ForCausalLM, head_dim=16)
    prompt = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5))
    dec = StaticDecoder(lm, max_len=24, use_graph=False, fused=False)
    assert dec.generate(prompt, 10)[0] == _greedy_reference(lm, prompt, 10)


def test_static_decoder_bad_input(tiny_llama):
    with pytest.raises(NnslimError, match="Llama-family"):
        StaticDecoder(torch.nn.Linear(2, 2), 8)
    with pytest.raises(NnslimError, match="exceeds max_len=10"):
        StaticDecoder(tiny_llama, 10, use_graph=False).generate(torch.zeros(1, 8, dtype=torch.long), 5)


# --- fused decode path: runs the Triton kernels (interpreter on CPU, compiled on CUDA) ---------------
CUDA = torch.cuda.is_available()


@pytest.fixture
def interpreted():
    import importlib.util

    assert importlib.util.find_spec("triton") is not None, "triton is not installed: run `make test` (test extra)"
    if not CUDA:
        from nnslim.runtime.kernels import interpret

        assert interpret.enable(), "triton is installed but its CPU interpreter cannot be loaded"
    from nnslim.runtime.kernels import triton_int4

    return triton_int4


def test_fused_kernels_match_torch(interpreted):
    from nnslim.runtime.kernels import triton_decode as K

    dev = "cuda" if CUDA else "cpu"
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 48, generator=g).to(dev)
    d = torch.randn(3, 48, generator=g).to(dev)
    w = torch.rand(48, generator=g).to(dev)
    h2 = h.clone()
    x = K.add_rmsnorm(h2, d, w, 1e-6)
    ref_h = h + d
    assert torch.allclose(h2, ref_h)
    ref = w * (ref_h * torch.rsqrt(ref_h.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert torch.allclose(x, ref, atol=1e-5)
    gu = torch.randn(2, 40, generator=g).to(dev)
    assert torch.allclose(K.silu_mul(gu), torch.nn.functional.silu(gu[:, :20]) * gu[:, 20:], atol=1e-6)
    # rotary + cache write + decode attention against plain torch (GQA: 4 query heads, 2 kv heads)
    heads, kvh, hd, length = 4, 2, 16, 20
    cache_k = torch.randn(1, kvh, length, hd, generator=g).to(dev)
    cache_v = torch.randn(1, kvh, length, hd, generator=g).to(dev)
    qkv = torch.randn(1, (heads + 2 * kvh) * hd, generator=g).to(dev)
    ang = torch.rand(1, hd // 2, generator=g).to(dev) * 3
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    pos = torch.tensor([7], device=dev)
    ck, cv = cache_k.clone(), cache_v.clone()
    q = K.rope_cache(qkv, cos, sin, pos, ck, cv, heads, kvh)

    def rot(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    qr = rot(qkv[:, : heads * hd].view(heads, hd))
    kr = rot(qkv[:, heads * hd:(heads + kvh) * hd].view(kvh, hd))
    assert torch.allclose(q[0, :, 0], qr, atol=1e-5)
    assert torch.allclose(ck[0, :, 7], kr, atol=1e-5)
    assert torch.allclose(cv[0, :, 7], qkv[0, (heads + kvh) * hd:].view(kvh, hd))
    assert torch.equal(ck[:, :, 8:], cache_k[:, :, 8:])  # other positions untouched
    keys, vals = ck[0, :, :8].repeat_interleave(2, 0), cv[0, :, :8].repeat_interleave(2, 0)
    att = torch.softmax((qr[:, None] * keys).sum(-1) * hd ** -0.5, -1)
    for chunk in (64, 4, 2):  # one split, several splits, splits past the position (empty)
        o = K.decode_attention(q, ck, cv, pos, hd ** -0.5, chunk=chunk)
        assert torch.allclose(o.view(heads, hd), (att[..., None] * vals).sum(1), atol=1e-5), chunk


@pytest.mark.parametrize("config", [dict(WORDS=False), dict(WORDS=True), dict(DOT=True)])
def test_decode_attention_over_int8_codes(interpreted, config):
    """Attention over an int8 cache (codes + one scale per head and position) equals attention over the
    dequantized cache, and over a model-dtype cache equals plain attention, for every kernel: WORDS reads the
    codes as 32-bit words (exact byte-to-float without conversions), DOT puts the query heads of a kv head
    (GQA) in the rows of tensor-core products."""
    from nnslim.runtime.kernels import triton_decode as K

    dev = "cuda" if CUDA else "cpu"
    g = torch.Generator().manual_seed(1)
    for b, heads, kvh, length, hd, pos in ((1, 4, 2, 40, 16, 33), (2, 2, 2, 20, 12, 5), (2, 9, 3, 24, 32, 20)):
        q = torch.randn(b, heads, 1, hd, generator=g)
        k, v = torch.randn(b, kvh, length, hd, generator=g), torch.randn(b, kvh, length, hd, generator=g) * 3
        ks, vs = k.abs().amax(-1) / 127, v.abs().amax(-1) / 127
        k8 = (k / ks[..., None]).round().clamp(-128, 127).to(torch.int8)
        v8 = (v / vs[..., None]).round().to(torch.int8)
        k8[0, 0, 0, :4] = torch.tensor([-128, 127, -1, 0], dtype=torch.int8)  # every byte pattern's edge
        rep = heads // kvh
        keys = (k8.float() * ks[..., None]).repeat_interleave(rep, 1)[:, :, :pos + 1]
        vals = (v8.float() * vs[..., None]).repeat_interleave(rep, 1)[:, :, :pos + 1]
        att = torch.softmax((q * keys).sum(-1) * hd ** -0.5, -1)
        ref = (att[..., None] * vals).sum(2).reshape(b, heads * hd)
        keys, vals = k.repeat_interleave(rep, 1)[:, :, :pos + 1], v.repeat_interleave(rep, 1)[:, :, :pos + 1]
        att = torch.softmax((q * keys).sum(-1) * hd ** -0.5, -1)
        ref_model = (att[..., None] * vals).sum(2).reshape(b, heads * hd)
        for chunk in (64, 8):
            o = K.decode_attention(q.to(dev), k8.to(dev), v8.to(dev), torch.tensor([pos], device=dev), hd ** -0.5,
                                   chunk=chunk, k_scale=ks.to(dev), v_scale=vs.to(dev), config=config)
            assert torch.allclose(o.cpu(), ref, atol=1e-5), (hd, chunk)
            o = K.decode_attention(q.to(dev), k.to(dev), v.to(dev), torch.tensor([pos], device=dev), hd ** -0.5,
                                   chunk=chunk, config=config)
            assert torch.allclose(o.cpu(), ref_model, atol=1e-5), (hd, chunk)


def test_fused_decoder_matches_hf_and_keeps_the_model(interpreted, tiny_llama, monkeypatch):
    import copy

    dev = "cuda" if CUDA else "cpu"
    tiny_llama = copy.deepcopy(tiny_llama).to(dev)  # the fixture's model stays where it is
    prompt = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5)).to(dev)
    with torch.no_grad():
        before = tiny_llama(input_ids=prompt).logits
    ref_tokens = _greedy_reference(tiny_llama, prompt, 6)
    dec = StaticDecoder(tiny_llama, max_len=24, use_graph=False, fused=True)
    assert dec.fused is not None and dec.fused_note.startswith("fused")
    with torch.no_grad():  # the model's weights are now views of the fused ones: same outputs
        assert torch.equal(tiny_llama(input_ids=prompt).logits, before)
    got = dec.forward(prompt, torch.arange(9, device=dev))
    assert torch.allclose(got, before[:, -1], atol=1e-4)
    tokens, _ = dec.generate(prompt, 6)
    assert tokens == ref_tokens
    from nnslim.quant.w8a8 import Int8W8A8Config, quantize_w8a8

    if not CUDA:  # one kernel for both paths on a CPU: the measured choice may differ between the fused and the
        # model's own layers (timing), and another float epilogue can flip a near-tie token of this random model
        monkeypatch.setenv("NNSLIM_KERNEL", "dequant")
    for q in (quantize(tiny_llama, Int4RtnConfig(group_size=32)),
              quantize_w8a8(tiny_llama, Int8W8A8Config())):
        tokens, _ = StaticDecoder(q, max_len=24, use_graph=False, fused=True).generate(prompt, 6)
        assert tokens == _greedy_reference(q, prompt, 6)


def test_fused_decoder_refuses_what_it_cannot_fuse(interpreted, tiny_llama):
    import copy

    gelu = copy.deepcopy(tiny_llama)
    for layer in gelu.model.layers:
        layer.mlp.act_fn = torch.nn.GELU()
    with pytest.raises(NnslimError, match="SiLU-gated"):
        StaticDecoder(gelu, max_len=16, use_graph=False, fused=True)
    dec = StaticDecoder(gelu, max_len=16, use_graph=False, fused=None)  # default: falls back, says why
    assert dec.fused is None and "SiLU-gated" in dec.fused_note
    mixed = quantize(tiny_llama, Int4RtnConfig(group_size=32, ignore=("model.layers.0.self_attn.k_proj",)))
    with pytest.raises(NnslimError, match="cannot be concatenated"):
        StaticDecoder(mixed, max_len=16, use_graph=False, fused=True)


def test_concat_linears_w8a8_and_weight_only(tiny_llama):
    from nnslim.quant.w8a8 import Int8W8A8Config, quantize_w8a8
    from nnslim.runtime.fuse import concat_linears

    x = torch.randn(3, 64)
    for q in (quantize_w8a8(tiny_llama, Int8W8A8Config()),
              # (one kernel for all: "auto" picks by timing, and two kernels round differently)
              quantize(tiny_llama, Int4RtnConfig(group_size=32, symmetric=False, kernel="dequant"))):
        a = q.model.layers[0].self_attn
        mods = [a.q_proj, a.k_proj, a.v_proj]
        with torch.no_grad():
            ref = torch.cat([m(x) for m in mods], -1)
            fused = concat_linears(mods)
            assert torch.allclose(fused(x), ref, atol=1e-6)
            assert torch.equal(torch.cat([m(x) for m in mods], -1), ref)  # originals still work
    assert concat_linears([torch.nn.Linear(4, 2), torch.nn.Linear(5, 2)]) is None


@pytest.mark.parametrize("family", ["Qwen2", "Mistral", "Qwen3"])
def test_fused_decoder_other_llama_families(interpreted, family):
    """Qwen2 (q/k/v biases), Mistral and Qwen3 (per-head q/k norms) decode through the fused path token for token
    like HF."""
    import transformers

    extra = {"head_dim": 16} if family == "Qwen3" else {}
    cfg = getattr(transformers, f"{family}Config")(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                                   max_position_embeddings=64, **extra)
    torch.manual_seed(1)
    lm = getattr(transformers, f"{family}ForCausalLM")(cfg).eval().to("cuda" if CUDA else "cpu")
    prompt = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(2)).to(lm.device)
    dec = StaticDecoder(lm, max_len=16, use_graph=False, fused=True)
    tokens, _ = dec.generate(prompt, 5)
    assert tokens == _greedy_reference(lm, prompt, 5)


# --- batched decode and quantized KV caches ------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True])
def test_batched_decode_equals_one_sequence_at_a_time(interpreted, tiny_llama, fused):
    import copy

    dev = "cuda" if CUDA else "cpu"
    lm = copy.deepcopy(tiny_llama).to(dev)
    prompts = torch.randint(0, 256, (3, 8), generator=torch.Generator().manual_seed(7)).to(dev)
    tokens, rate = StaticDecoder(lm, max_len=20, use_graph=False, fused=fused, batch=3).generate(prompts, 5)
    assert len(tokens) == 3 and rate > 0
    for row, got in zip(prompts, tokens):
        assert got == _greedy_reference(lm, row[None], 5)
    with pytest.raises(NnslimError, match="batch=3"):
        StaticDecoder(lm, max_len=20, use_graph=False, fused=fused, batch=3).generate(prompts[:1], 2)


def test_kv_cache_formats_and_bad_input(tiny_llama):
    with pytest.raises(NnslimError, match="kv_cache='int4' is not allowed; allowed: model, int8, fp8"):
        StaticDecoder(tiny_llama, 16, use_graph=False, kv_cache="int4")
    with pytest.raises(NnslimError, match="batch=0"):
        StaticDecoder(tiny_llama, 16, use_graph=False, batch=0)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(8))
    ref = StaticDecoder(tiny_llama, 24, use_graph=False, fused=False, batch=2).score(ids, 8)
    full = tiny_llama(input_ids=ids).logits[:, 7:23]  # teacher forcing through the cache = one full forward
    assert torch.allclose(ref, full, atol=1e-4)
    sizes = {}
    for fmt in ("int8", "fp8"):
        dec = StaticDecoder(tiny_llama, 24, use_graph=False, fused=False, batch=2, kv_cache=fmt)
        got = dec.score(ids, 8)
        err = float((got - ref).norm() / ref.norm())
        assert err < (0.02 if fmt == "int8" else 0.08), (fmt, err)
        assert dec.cache.k[0].dtype == (torch.int8 if fmt == "int8" else torch.float8_e4m3fn)
        sizes[fmt] = dec.cache.nbytes()
    model_bytes = StaticDecoder(tiny_llama, 24, use_graph=False, batch=2).cache.nbytes()
    assert sizes["int8"] < 0.35 * model_bytes  # fp32 model here: 1 byte codes + 4 bytes per 16-value head


def test_fused_quantized_cache_matches_torch_quantization(interpreted, tiny_llama):
    """The fused kernels write int8 codes + scales as the torch path does and attend over them directly."""
    import copy

    dev = "cuda" if CUDA else "cpu"
    lm = copy.deepcopy(tiny_llama).to(dev)
    ids = torch.randint(0, 256, (2, 14), generator=torch.Generator().manual_seed(9)).to(dev)
    plain = StaticDecoder(lm, 16, use_graph=False, fused=False, batch=2, kv_cache="int8")
    fused = StaticDecoder(lm, 16, use_graph=False, fused=True, batch=2, kv_cache="int8")
    a, b = plain.score(ids, 6), fused.score(ids, 6)
    assert float((a - b).norm() / a.norm()) < 1e-3
    n = 13  # positions written: the codes differ at most by one step (rounding of a tie), scales agree
    for x, y in ((plain.cache.k[1], fused.cache.k[1]), (plain.cache.v[0], fused.cache.v[0])):
        assert int((x[:, :, :n].int() - y[:, :, :n].int()).abs().max()) <= 1
    assert torch.allclose(plain.cache.ks[1][:, :, :n], fused.cache.ks[1][:, :, :n], rtol=1e-5)


def test_rmsnorm_quantizes_for_w8a8_linears(interpreted, tiny_llama):
    """The fused RMSNorm writes the per-token int8 codes the W8A8 linear would compute itself, and the fused
    decoder feeds them to q/k/v and gate/up: same tokens and (near) same logits as quantizing in the linear."""
    import copy

    from nnslim.quant.w8a8 import Int8W8A8Config, PreQuantized, quantize_rows_torch, quantize_w8a8
    from nnslim.runtime.kernels import triton_decode as K

    dev = "cuda" if CUDA else "cpu"
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(5, 48, generator=g).to(dev), torch.rand(48, generator=g).to(dev)
    plain = K.add_rmsnorm(h.clone(), None, w, 1e-6)
    pq = K.add_rmsnorm(h.clone(), None, w, 1e-6, "int8")
    assert isinstance(pq, PreQuantized) and pq.q.dtype == torch.int8 and pq.shape == (5, 48)
    q, s = quantize_rows_torch(plain, "int8")
    assert torch.allclose(pq.scale, s) and int((pq.q.int() - q.int()).abs().max()) <= 1
    lm = quantize_w8a8(copy.deepcopy(tiny_llama), Int8W8A8Config()).to(dev)
    prompt = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5)).to(dev)
    fused = StaticDecoder(lm, 20, use_graph=False, fused=True)
    assert fused._norm_quant[0] == ("int8", "int8")
    unq = StaticDecoder(lm, 20, use_graph=False, fused=True, norm_quant=False)
    assert unq._norm_quant[0] == (None, None)
    a, b = fused.score(torch.cat([prompt, prompt], 1), 9), unq.score(torch.cat([prompt, prompt], 1), 9)
    assert float((a - b).norm() / b.norm()) < 1e-3
    assert fused.generate(prompt, 5)[0] == _greedy_reference(lm, prompt, 5)


# --- static rotary tables and programmatic dependent launches ------------------------------------------
@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}])
def test_rotary_tables_are_the_per_step_values(interpreted, rope):
    """The fused decoder reads cos / sin from tables built once; they are bit for bit what the model's rotary
    module gives at those positions, and rope types that depend on the length seen keep the per-step call."""
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=32,
                                   rope_parameters={**rope, "rope_theta": 10000.0})
    torch.manual_seed(3)
    lm = transformers.LlamaForCausalLM(cfg).eval().to("cuda" if CUDA else "cpu")
    dec = StaticDecoder(lm, max_len=24, use_graph=False, fused=True)
    if rope["rope_type"] == "dynamic":
        assert dec._rope is None
    else:
        pos = torch.tensor([0, 5, 23], device=lm.device)
        cos, sin = lm.model.rotary_emb(torch.zeros(1, 1, device=lm.device), pos[None])
        assert torch.equal(dec._rope[0][pos], cos[0]) and torch.equal(dec._rope[1][pos], sin[0])
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(4)).to(lm.device)
    tokens, _ = dec.generate(prompt, 5)
    assert tokens == _greedy_reference(lm, prompt, 5)
    with pytest.raises(NnslimError, match="position=24 is not allowed"):
        dec.step(torch.zeros(1, dtype=torch.long, device=lm.device), 24)


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (9, 0),
                    reason="programmatic dependent launch needs an sm_90+ GPU (runs on the device machine)")
def test_pdl_decode_is_bitwise_the_plain_one(monkeypatch):
    """An int4 decode captured in a CUDA graph with its Triton kernels launched as programmatic dependents gives
    the same logits, bit for bit, as with ordinary launches (same kernels chosen, waits before every read)."""
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                                   num_key_value_heads=4, vocab_size=512, max_position_embeddings=128)
    torch.manual_seed(5)
    lm = quantize(transformers.LlamaForCausalLM(cfg).eval().to("cuda", torch.bfloat16), Int4RtnConfig(group_size=128))
    prompt = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(6)).cuda()
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("NNSLIM_PDL", flag)
        dec = StaticDecoder(lm, max_len=64, use_graph=True, fused=True, batch=2)
        assert ("programmatic dependents" in dec.fused_note) == (flag == "1")
        tokens, _ = dec.generate(prompt, 12)
        runs[flag] = (tokens, dec.step(torch.tensor(tokens, device="cuda")[:, -1], 28).clone())
    assert runs["0"][0] == runs["1"][0]
    assert torch.equal(runs["0"][1], runs["1"][1])


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 W8A8 needs a CUDA GPU of sm_89 or newer (runs on the device machine)")
@pytest.mark.parametrize("pdl", ["0", "1"])
def test_fused_fp8_decoder_matches_the_models_forward(monkeypatch, pdl):
    """The 8-layer random-weight fp8 benchmark model was refused by StaticDecoder's self-check on an H100 (prefill
    logits 0.144-0.176 from the model's own forward; bf16 and int4 pass). This pins the fused fp8 path against the
    model's forward and the unfused decoder, with programmatic dependent launches off and on, on a bf16 model of
    Llama-7B-like widths (2 layers), so a GPU run says which part differs."""
    import transformers as tf

    from nnslim.quant.w8a8 import Fp8Config, quantize_w8a8

    monkeypatch.setenv("NNSLIM_PDL", pdl)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=512)
    lm = quantize_w8a8(tf.LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval(), Fp8Config(), inplace=True)
    prompt = torch.randint(0, 512, (1, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad():
        ref = lm(input_ids=prompt, use_cache=False).logits[:, -1].float()
        unfused = StaticDecoder(lm, 48, use_graph=False, fused=False).forward(prompt, torch.arange(16, device="cuda"))
        fused = StaticDecoder(lm, 48, use_graph=False, fused=True, norm_quant=False).forward(
            prompt, torch.arange(16, device="cuda"))
        normq = StaticDecoder(lm, 48, use_graph=False, fused=True).forward(prompt, torch.arange(16, device="cuda"))

    def rel(a):
        return float((a.float() - ref).abs().max() / ref.abs().max())

    assert rel(unfused) < 0.05, rel(unfused)
    assert rel(fused) < 0.05, rel(fused)
    assert rel(normq) < 0.05, rel(normq)


def test_state_space_model_decodes_through_its_own_generate(tmp_path):
    """Mamba's cache is not per-layer keys / values: the torch runner decodes it with the model's generate() (the
    report of every method needs a decode rate) and the ONNX with-past form is refused with the reason."""
    import numpy as np
    from transformers import MambaConfig, MambaForCausalLM

    from nnslim.runtime.base import TorchRunner
    from nnslim.runtime.onnx_llm import CausalLMWithPast, NoKVCache
    from nnslim.testbeds.smollm2 import CausalLMLogits

    torch.manual_seed(0)
    lm = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8)).eval()
    prompt = np.random.default_rng(0).integers(0, 64, (1, 9))
    runner = TorchRunner(CausalLMLogits(lm))
    tokens, rate = runner.decode(prompt, 6)
    assert tokens == _greedy_reference(lm, torch.as_tensor(prompt), 6) and rate > 0
    assert runner.decode(prompt, 6)[0] == tokens  # later calls go straight to generate()
    with pytest.raises(NoKVCache, match="not a per-layer key/value cache"):
        CausalLMWithPast(lm)
    # a recipe whose ONNX export needs that cache is refused before any work (not after calibration)
    import nnslim

    with pytest.raises(NnslimError, match=r"step 0 \('int8-dynamic'\) is deployed as an ONNX export with the KV cache"):
        nnslim.compress(CausalLMLogits(lm), "int8-dynamic", example_inputs={"input_ids": torch.as_tensor(prompt)},
                        out=tmp_path / "q", report=False)
    assert not (tmp_path / "q").exists()
