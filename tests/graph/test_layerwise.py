import pytest
import torch
from torch import nn

from conftest import apply_step, llama_samples
from nnslim import NnslimError
from nnslim.graph.layerwise import find_blocks, run_layerwise


def test_blocks_chain_reproduces_the_model(tiny_llama):
    name, blocks = find_blocks(tiny_llama)
    assert name == "model.layers" and len(blocks) == 2
    samples = llama_samples(3, 16)
    seen = []

    def process(i, block_name, block, inputs, kwargs):
        seen.append((i, block_name, len(inputs)))

    outs = []
    handle = tiny_llama.model.norm.register_forward_pre_hook(lambda m, a: outs.append(a[0]))
    try:
        with torch.no_grad():
            for s in samples:
                tiny_llama(**s)
    finally:
        handle.remove()
    captured = []

    def last(i, block_name, block, inputs, kwargs):
        process(i, block_name, block, inputs, kwargs)
        if i == len(blocks) - 1:
            from nnslim.graph.layerwise import call_block
            captured.extend(call_block(block, h, kw) for h, kw in zip(inputs, kwargs))

    run_layerwise(tiny_llama, samples, last)
    assert seen == [(0, "model.layers.0", 3), (1, "model.layers.1", 3)]
    for a, b in zip(captured, outs):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_blocks_is_a_clear_error():
    with pytest.raises(NnslimError, match="no list of repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_cpu_calibration_of_a_16bit_model_computes_in_float32(tiny_llama):
    """On a CPU a bf16 block runs in float32 (inputs, weights during each layer's forward), its stored
    weights stay bf16, and the block outputs equal those of an explicit float32 copy of the block."""
    import copy

    from nnslim.graph.layerwise import call_block, computes_in_float32, float32_compute

    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    ref = copy.deepcopy(tiny_llama.model.layers).float()  # bf16-rounded weights, as float32
    for a, b in zip(ref.parameters(), model.model.layers.parameters()):
        a.data = b.data.float()
    seen = []

    def process(i, name, block, inputs, kwargs):
        assert computes_in_float32(block, torch.device("cpu"))
        assert all(h.dtype == torch.float32 for h in inputs)
        hook = block.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append((a[0].dtype, m.weight.dtype)))
        outs = [call_block(block, h, kw) for h, kw in zip(inputs, kwargs)]
        hook.remove()
        expect = [call_block(ref[i], h, kw) for h, kw in zip(inputs, kwargs)]
        assert all(torch.equal(o, e) for o, e in zip(outs, expect))

    with torch.no_grad():
        run_layerwise(model, llama_samples(2, 16), process)
    assert seen and all(s == (torch.float32, torch.float32) for s in seen)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # nothing left widened
    assert not computes_in_float32(tiny_llama.model.layers[0], torch.device("cpu"))  # fp32: nothing to do
    assert not computes_in_float32(model.model.layers[0], torch.device("cuda"))  # GPUs run bf16


def test_float32_compute_restores_weights_when_the_forward_fails():
    from nnslim.graph.layerwise import float32_compute

    lin = nn.Linear(4, 4).to(torch.bfloat16)
    ptr = lin.weight.data_ptr()
    with pytest.raises(RuntimeError):
        with float32_compute(nn.Sequential(lin)):
            lin(torch.zeros(3, 5))  # wrong width: fails inside the forward
    assert lin.weight.data_ptr() == ptr and lin.weight.dtype == torch.bfloat16


def test_targets_reading_one_input_share_one_hessian(tiny_llama):
    """q/k/v (and gate/up) read the same tensor: one accumulator each, equal to separate ones."""
    from nnslim.graph.hessian import HessianAccumulator, HessianObserver
    from nnslim.graph.layerwise import block_targets, feed_block

    block = tiny_llama.model.layers[0]
    names = {f"model.layers.0.{n}" for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    mods = block_targets(block, "model.layers.0", names)
    samples = llama_samples(3, 16)
    shared, alone = HessianObserver(), {}

    def both(name, mod, x):
        shared.observe(name, mod, x)
        alone.setdefault(name, HessianAccumulator(mod.in_features, x.device)).add(x)

    captured = []

    def process(i, name, blk, inputs, kwargs):
        if i == 0:
            feed_block(blk, mods, inputs, kwargs, both)
            captured.append(True)

    run_layerwise(tiny_llama, samples, process)
    assert captured and len(shared.hessians) == 4  # qkv, o, gate/up, down
    assert shared.shared["self_attn.k_proj"] == shared.shared["self_attn.v_proj"] == shared.shared["self_attn.q_proj"]
    assert shared.shared["mlp.up_proj"] == shared.shared["mlp.gate_proj"]
    for n in sorted(mods):
        h = shared.take(n)
        assert torch.equal(h, alone[n].h), n
    assert not shared.hessians  # every accumulator handed over and dropped


def test_awq_shares_one_scale_search_between_q_k_v(tiny_llama):
    from nnslim import Int4AwqConfig
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    q, _ = apply_step(tiny_llama, Int4AwqConfig(group_size=32, device="cpu", grid=5, fold=False), llama_samples(8))
    attn = q.model.layers[0].self_attn
    assert all(isinstance(m, WeightOnlyLinear) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    assert torch.equal(attn.q_proj.input_scale, attn.k_proj.input_scale)
    assert torch.equal(attn.q_proj.input_scale, attn.v_proj.input_scale)
    assert not torch.equal(attn.q_proj.input_scale, attn.o_proj.input_scale)


def test_widened_kwargs_stay_shared_between_samples():
    from nnslim.graph.layerwise import _as_float32

    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bfloat16)
    cos = torch.ones(1, 8, 4, dtype=torch.bfloat16)
    kwargs = [{"attention_mask": mask, "position_embeddings": (cos, cos), "flag": True} for _ in range(3)]
    wide = _as_float32(kwargs)
    assert all(kw["attention_mask"] is wide[0]["attention_mask"] for kw in wide)  # one copy, not one per sample
    assert wide[0]["attention_mask"].dtype == torch.float32 and wide[2]["position_embeddings"][1].dtype == torch.float32
    assert wide[1]["flag"] is True


def test_token_ids_are_checked_against_the_table_that_reads_them():
    """CANINE reads Unicode code points and hashes them into small tables: its ids were checked against the first
    nn.Embedding (64 rows) and every method refused real input. A transformers model's own input embeddings decide;
    none known: not checked."""
    import transformers as tf

    from nnslim.errors import NnslimError
    from nnslim.graph.layerwise import check_token_ids

    canine = tf.CanineModel(tf.CanineConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, downsampling_rate=4, num_hash_buckets=64))
    check_token_ids(canine, [{"input_ids": torch.tensor([[500, 1000, 65]])}])
    bert = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=100))
    with pytest.raises(NnslimError, match=r"has ids in 65..500; allowed: 0..99"):
        check_token_ids(bert, [{"input_ids": torch.tensor([[500, 65]])}])
