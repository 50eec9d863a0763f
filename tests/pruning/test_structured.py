"""Structural pruning: dependency graph, importance, slicing, plans, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from nnslim.errors import NnslimError
from nnslim.graph.layers import PrunedMultiheadAttention
from nnslim.pruning.structured import (PLAN_ATTR, StructuredPruneConfig, apply_plan, dependency_graph,
                                     prune_structured)
from nnslim.testbeds.digits import DigitsCNN

from zoo import EncoderClassifier, UNetTiny, ViTTiny


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_removing_dead_channels_is_exact():
    """Channels that contribute nothing are the ones activation importance removes; output unchanged."""
    torch.manual_seed(0)
    m = DigitsCNN().eval()
    dead = torch.arange(0, 32, 2)
    with torch.no_grad():
        m.features[0].weight[dead] = 0
        m.features[1].weight[dead] = 0
        m.features[1].bias[dead] = 0
    x = torch.rand(8, 1, 8, 8)
    calib = [{"x": torch.rand(4, 1, 8, 8)} for _ in range(4)]
    cfg = StructuredPruneConfig(ratio=0.5, importance="activation",
                                ignore=("features.3", "features.7", "features.10", r"classifier\.\d"))
    p = prune_structured(m, cfg, {"x": x}, calib)
    assert p.features[0].out_channels == 16 and p.features[3].in_channels == 16
    assert p.features[3].out_channels == 64  # ignored layers keep their outputs
    torch.testing.assert_close(p(x), m(x), rtol=1e-5, atol=1e-5)
    assert m.features[0].out_channels == 32  # the caller's model is untouched


@pytest.mark.parametrize("entry", ["features.3", "*features.3*", "re:features\\.3$", r"features\.[3]",
                                   "type:Conv2d"])
def test_ignore_takes_the_entries_quantization_takes(entry):
    """One scope syntax for every method: a name, a glob, 're:', 'type:' or a bare regex (pruning's first syntax);
    the pruners' wrapped names ('model.features.3') are matched as the user's model names them."""
    from nnslim.graph.scope import matches

    m = DigitsCNN().eval()
    x = torch.rand(4, 1, 8, 8)
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, importance="l2", ignore=(entry,)), {"x": x})
    assert p.features[3].out_channels == m.features[3].out_channels
    conv = torch.nn.Conv2d(1, 1, 1)
    assert matches("bert.pooler.dense", "model.bert.pooler.dense", conv) and matches("dense", "a.b.dense", conv)
    assert matches("0", "0.conv", conv) and not matches("0", "features.0", conv)  # an index is the top level's
    assert not matches("*pooler", "model.bert.pooler.dense", conv) and matches("*pooler*", "x.pooler.dense", conv)


def test_ignore_entry_matching_no_layer_is_an_error():
    m = DigitsCNN().eval()
    with pytest.raises(NnslimError, match=r"ignore entry 'featurez\.3' matches no layer of the model; layers look "
                                          r"like: features\.0"):
        prune_structured(m, StructuredPruneConfig(ratio=0.5, ignore=("featurez.3",)), {"x": torch.rand(2, 1, 8, 8)})


def test_digits_half_the_channels_and_plan_rebuild(tmp_path):
    m = DigitsCNN().eval()
    x = torch.rand(4, 1, 8, 8)
    notes = []
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, importance="l2"), {"x": x}, notes=notes)
    assert [p.features[i].out_channels for i in (0, 3, 7, 10)] == [16, 32, 64, 64]
    assert p.classifier[1].in_features == 64 * 4 and p.classifier[3].out_features == 10
    assert "fx trace" in notes[0]
    rebuilt = apply_plan(DigitsCNN().eval(), getattr(p, PLAN_ATTR))
    rebuilt.load_state_dict(p.state_dict())
    torch.testing.assert_close(rebuilt(x), p(x))


def test_round_to_global_and_random():
    m = DigitsCNN().eval()
    x = torch.rand(2, 1, 8, 8)
    p = prune_structured(m, StructuredPruneConfig(ratio=0.3, round_to=8, importance="l1"), {"x": x})
    assert all(p.features[i].out_channels % 8 == 0 for i in (0, 3, 7, 10))
    g = prune_structured(m, StructuredPruneConfig(ratio=0.5, scope="global", max_ratio=0.6), {"x": x})
    outs = [g.features[i].out_channels for i in (0, 3, 7, 10)] + [g.classifier[1].out_features]
    full = [32, 64, 128, 128, 128]
    assert sum(outs) <= 0.55 * sum(full) and all(o >= f * 0.4 - 1 for o, f in zip(outs, full))
    r1 = prune_structured(m, StructuredPruneConfig(ratio=0.5, importance="random", seed=1), {"x": x})
    r2 = prune_structured(m, StructuredPruneConfig(ratio=0.5, importance="random", seed=1), {"x": x})
    torch.testing.assert_close(r1(x), r2(x))  # deterministic given the seed


def test_taylor_needs_and_uses_gradients():
    m = DigitsCNN().eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(NnslimError, match="taylor.*calibration"):
        prune_structured(m, StructuredPruneConfig(importance="taylor"), {"x": x})
    p = prune_structured(m, StructuredPruneConfig(importance="taylor", ratio=0.25), {"x": x},
                         [{"x": torch.rand(8, 1, 8, 8)}])
    assert p.features[0].out_channels == 24 and all(q.grad is None for q in p.parameters())


def test_groupnorm_concat_and_transposed_conv():
    m = UNetTiny().eval()
    x = torch.rand(2, 3, 32, 32)
    p = prune_structured(m, StructuredPruneConfig(ratio=0.4), {"x": x})
    for mod in p.modules():
        if isinstance(mod, nn.GroupNorm):
            assert mod.num_channels % mod.num_groups == 0
    # u2 reads cat([up2(m), b]): its input channels are the two producers' kept channels together
    assert p.u2[0].in_channels == p.up2.out_channels + p.d2[3].out_channels
    assert p(x).shape == m(x).shape and _params(p) < _params(m)


def test_vit_shape_reads_keep_the_width_and_mlp_shrinks():
    m = ViTTiny().eval()
    x = torch.rand(2, 3, 32, 32)
    notes = []
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5), {"x": x}, notes=notes)
    assert p.patch.out_channels == 64  # `b, n, c = x.shape` in the attention couples the width
    assert p.blocks[0].mlp[0].out_features == 128 and p.blocks[0].mlp[2].in_features == 128
    assert "reads the channel count" in notes[-1]
    assert p(x).shape == (2, 10)


def test_param_and_cls_token_members_follow_the_width():
    class Net(nn.Module):  # width is free: no shape reads, params combined elementwise
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.scale = nn.Parameter(torch.rand(16))
            self.tok = nn.Parameter(torch.rand(1, 1, 16))
            self.out = nn.Linear(16, 2)

        def forward(self, x):
            h = self.inp(x) * self.scale
            h = torch.cat([self.tok.expand(x.shape[0], -1, -1), h], dim=1)
            return self.out(h[:, 0] + h[:, 1:].mean(1))

    m = Net().eval()
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5), {"x": torch.rand(2, 3, 8)})
    assert p.scale.shape == (8,) and p.tok.shape == (1, 1, 8) and p.out.in_features == 8
    assert p(torch.rand(3, 5, 8)).shape == (3, 2)


def test_multihead_attention_conversion_is_exact():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        new = PrunedMultiheadAttention.from_mha(mha).eval()
        x = torch.rand(3, 7, 32) if batch_first else torch.rand(7, 3, 32)
        pad = torch.zeros(3, 7, dtype=torch.bool)
        pad[0, -2:] = True
        causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
        for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": causal.float() * -1e4}):
            want = mha(x, x, x, need_weights=False, **kw)[0]
            got = new(x, x, x, need_weights=False, **kw)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_transformer_encoder_heads_and_ffn():
    m = EncoderClassifier().eval()
    tok = torch.randint(0, 100, (2, 9))
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), {"tokens": tok})
    layer = p.encoder.layers[0]
    assert isinstance(layer.self_attn, PrunedMultiheadAttention) and layer.self_attn.q_proj.out_features == 32
    assert layer.linear1.out_features == 128 and p.emb.embedding_dim == 64  # width kept (embeddings)
    assert p(torch.randint(0, 100, (3, 5))).shape == (3, 3)
    same = prune_structured(m, StructuredPruneConfig(ratio=0.0, head_ratio=0.0), {"tokens": tok})
    torch.testing.assert_close(same(tok), m(tok), rtol=1e-5, atol=1e-5)


def _tiny_llama(heads=4, kv=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_llama_grouped_query_heads_stay_consistent():
    m = _tiny_llama(heads=4, kv=2)
    ids = torch.randint(0, 64, (2, 10))
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), {"input_ids": ids})
    attn = p.model.layers[0].self_attn
    assert attn.q_proj.out_features == 2 * 8 and attn.k_proj.out_features == 2 * 8  # kv heads kept
    assert attn.num_key_value_groups == 1 and p.model.layers[0].mlp.down_proj.in_features == 32
    assert p.model.embed_tokens.embedding_dim == 32
    out = p.generate(ids[:1], max_new_tokens=4, do_sample=False)  # the KV cache works with fewer heads
    assert out.shape == (1, 14)
    mha = _tiny_llama(heads=4, kv=4)
    q = prune_structured(mha, StructuredPruneConfig(ratio=0.0, head_ratio=0.5), {"input_ids": ids})
    assert q.model.layers[1].self_attn.k_proj.out_features == 16  # no GQA: kv heads go with q heads


def test_bert_heads_and_neurons():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    m = BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, head_ratio=0.25), {"input_ids": ids})
    sa = p.encoder.layer[0].attention.self
    assert sa.num_attention_heads == 3 and sa.all_head_size == 24 and sa.query.out_features == 24
    assert p.encoder.layer[0].attention.output.dense.in_features == 24
    assert p.encoder.layer[0].intermediate.dense.out_features == 32
    assert p(input_ids=torch.randint(0, 50, (1, 11))).last_hidden_state.shape == (1, 11, 32)


def test_attention_whose_projections_read_inputs_of_different_widths():
    """MobileBERT: query / key read a 16-wide bottleneck, value the 32-wide block input. Heads and FFN neurons are
    pruned; the inputs keep their widths (slicing them all like query's crashed the pruned model)."""
    from transformers import MobileBertConfig, MobileBertModel

    cfg = MobileBertConfig(vocab_size=50, hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
                           intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           max_position_embeddings=32, num_feedforward_networks=1)
    torch.manual_seed(0)
    m = MobileBertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), {"input_ids": ids})
    sa = p.encoder.layer[0].attention.self
    assert sa.query.out_features == 8 and (sa.query.in_features, sa.value.in_features) == (16, 32)
    assert p.encoder.layer[0].intermediate.dense.out_features == 32
    assert p(input_ids=torch.randint(0, 50, (1, 11))).last_hidden_state.shape == (1, 11, 32)


def test_attention_given_a_per_head_bias_from_outside_keeps_its_heads():
    """LayoutLMv3 computes one relative-position bias [batch, heads, L, L] in its encoder and hands it to every
    layer's attention: pruning heads crashed the pruned model; now the heads stay (said in the notes) and the FFN
    neurons are pruned."""
    from transformers import LayoutLMv3Config, LayoutLMv3Model

    cfg = LayoutLMv3Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, coordinate_size=4, shape_size=8, input_size=16, patch_size=8,
                           max_position_embeddings=32)
    torch.manual_seed(0)
    m = LayoutLMv3Model(cfg).eval()
    ids = torch.randint(3, 50, (2, 7))
    notes = []
    p = prune_structured(m, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), {"input_ids": ids}, notes=notes)
    assert p.encoder.layer[0].attention.self.query.out_features == 32
    assert p.encoder.layer[0].intermediate.dense.out_features == 32
    assert any("per-head tensor" in n for n in notes), notes
    assert p(input_ids=torch.randint(3, 50, (1, 11))).last_hidden_state.shape == (1, 11, 32)


def test_unmodelled_op_keeps_channels_and_says_which():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 16)
            self.c, self.d = nn.Linear(16, 32), nn.Linear(32, 2)

        def forward(self, x):  # self.a is called twice: both calls' channels are one set
            return self.d(torch.relu(self.c(torch.cumsum(self.a(x), dim=-1) + self.b(self.a(x)))))

    notes = []
    with pytest.warns(UserWarning, match="op 'cumsum' is not modelled"):
        p = prune_structured(Net().eval(), StructuredPruneConfig(ratio=0.5), {"x": torch.rand(2, 4)}, notes=notes)
    assert p.a.out_features == 16 and p.b.out_features == 16 and p.c.out_features == 16
    assert "cumsum" in notes[-1]


def test_bad_input_errors():
    with pytest.raises(NnslimError, match="ratio=1.2"):
        StructuredPruneConfig(ratio=1.2)
    with pytest.raises(NnslimError, match="importance='fisher'"):
        StructuredPruneConfig(importance="fisher")
    with pytest.raises(NnslimError, match="nothing in this model can be pruned.*model output"):
        prune_structured(nn.Sequential(nn.Linear(4, 2)), StructuredPruneConfig(), {"x": torch.rand(2, 4)})
    with pytest.raises(NnslimError, match="nothing in this model can be pruned.*no layer"):
        prune_structured(nn.Linear(4, 2), StructuredPruneConfig(), {"x": torch.rand(2, 4)})
    with pytest.raises(NnslimError, match="could not be traced.*fx.*stopped at node 'features_0'.*dynamic.*stopped "
                                          "at op 'conv2d'"):
        prune_structured(DigitsCNN(), StructuredPruneConfig(), {"x": torch.rand(2, 3, 8, 8)})
    with pytest.raises(NnslimError, match="example_inputs"):
        nnslim.prune(DigitsCNN(), StructuredPruneConfig())


def test_dependency_graph_groups_describe_coupling():
    from zoo import ResNetTiny

    g, tracer = dependency_graph(ResNetTiny().eval(), {"x": torch.rand(2, 3, 16, 16)})
    residual = [grp for grp in g.groups() if len(grp.members) > 6]
    assert residual, "the residual stream couples stem, block outputs and shortcut convs"
    names = {g.members[i].module for i in residual[0].members}
    assert {"stem.0", "layer1.0.bn2", "layer1.1.conv1"} <= names
    assert tracer == "fx" and np.all([len(grp.atoms) > 0 for grp in g.groups()])


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_least_squares_refit_reduces_the_error(mode):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    calib = [{"input": torch.randn(64, 16)} for _ in range(4)]
    x = torch.randn(256, 16)
    errs = {}
    for r in ("off", mode):
        notes = []
        p = prune_structured(m, StructuredPruneConfig(ratio=0.5, reconstruct=r), {"input": x[:2]}, calib, notes=notes)
        errs[r] = float((p(x) - m(x)).pow(2).mean())
    assert errs[mode] < 0.7 * errs["off"] and f"refit ({mode}) of 2 Linear" in notes[0]


def test_observe_inputs_stops_after_the_last_observed_module():
    """Calibration passes skip what runs after the last observed layer (an LM head): the statistics equal
    those of whole passes, the head runs in the first pass only; a layer that runs twice (shared weights)
    never stops a pass early."""
    from nnslim.pruning.reconstruct import observe_inputs

    torch.manual_seed(0)
    body, head = nn.Linear(8, 8), nn.Linear(8, 1000)
    model = nn.Sequential(body, nn.ReLU(), head)
    head_calls = []
    head.register_forward_hook(lambda *a: head_calls.append(1))
    batches = [{"x": torch.randn(3, 8)} for _ in range(4)]
    seen = []
    observe_inputs(model, [body], batches, lambda m, b: m(b["x"]), lambda mod, args: seen.append(args[0].sum()))
    assert len(seen) == 4 and len(head_calls) == 1
    want = [b["x"].sum() for b in batches]
    assert torch.equal(torch.stack(seen), torch.stack(want))

    shared = nn.Linear(8, 8)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    runs = []
    twice.register_forward_hook(lambda *a: runs.append(1))
    count = []
    observe_inputs(twice, [shared], batches, lambda m, b: m(b["x"]), lambda mod, args: count.append(1))
    assert len(count) == 8 and len(runs) == 4


@pytest.mark.parametrize("how", ["view-literal", "unflatten-literal", "view-inferred"])
def test_a_reshape_to_a_literal_channel_count_keeps_those_channels(how):
    """`x.view(n, 32)` or nn.Unflatten(1, (32, 1)) after pooling names the channel count in the code: pruning the
    convolution made the forward fail (unflatten: sizes don't multiply up). Those channels are kept; a -1 lets
    them go."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.conv = nn.Conv2d(16, 32, 3, padding=1)
            self.unflat = nn.Unflatten(1, (32, 1))
            self.fc = nn.Linear(32, 4)

        def forward(self, x):
            h = torch.relu(self.conv(torch.relu(self.stem(x)))).mean((2, 3))
            if how == "view-literal":
                h = h.view(h.shape[0] * 0 + 2, 32)
            elif how == "unflatten-literal":
                h = self.unflat(h).squeeze(2)
            else:
                h = h.reshape(2, -1)
            return self.fc(h)

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    pruned = nnslim.prune(model, StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert pruned(x).shape == (2, 4)
    assert pruned.stem.out_channels == 8
    assert pruned.conv.out_channels == (16 if how == "view-inferred" else 32)


@pytest.mark.parametrize("slopes", [1, 32])
def test_prelu_passes_or_slices_its_channels(slopes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.PReLU(slopes), nn.Conv2d(32, 16, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    pruned = nnslim.prune(model, StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert pruned[0].out_channels == 16 and pruned[1].weight.numel() == (1 if slopes == 1 else 16)
    assert pruned(x).shape == (2, 4)


def test_grouped_conv_loses_channels_equally_per_group_and_dead_ones_exactly():
    """A ResNeXt bottleneck's grouped 3x3: its inputs go with the 1x1 before it, its outputs with the one after, as
    many from each of its groups; channels that contribute nothing are removed without changing the output."""
    from zoo import ResNeXtBlock

    torch.manual_seed(0)
    block = ResNeXtBlock(16, 16, groups=4).eval()
    dead = torch.tensor([1, 2, 5, 6, 9, 10, 13, 14])  # two per group of 4
    with torch.no_grad():
        for layer in (block.reduce[0], block.reduce[1], block.grouped[0], block.grouped[1]):
            layer.weight[dead] = 0
        block.reduce[1].bias[dead] = 0
        block.grouped[1].bias[dead] = 0
    x = torch.randn(2, 16, 8, 8)
    cfg = StructuredPruneConfig(ratio=0.5, importance="activation")
    p = prune_structured(block, cfg, {"x": x}, [{"x": torch.randn(2, 16, 8, 8)} for _ in range(2)])
    conv = p.grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 8, 4) and conv.weight.shape == (8, 2, 3, 3)
    assert p.reduce[0].out_channels == 8 and p.expand[0].in_channels == 8
    torch.testing.assert_close(p(x), block(x), rtol=1e-5, atol=1e-5)
    # dead channels all in one group: still the same number from each group, and the plan rebuilds it
    lopsided = ResNeXtBlock(16, 16, groups=4).eval()
    with torch.no_grad():
        lopsided.reduce[0].weight[:4] = 0
    p = prune_structured(lopsided, StructuredPruneConfig(ratio=0.25, importance="l2"), {"x": x})
    assert (p.grouped[0].out_channels, p.grouped[0].groups, p.grouped[0].weight.shape[1]) == (12, 4, 3)
    rebuilt = apply_plan(ResNeXtBlock(16, 16, groups=4).eval(), getattr(p, PLAN_ATTR))
    rebuilt.load_state_dict(p.state_dict())
    torch.testing.assert_close(rebuilt(x), p(x))


def test_grouped_conv_with_in_ne_out_and_movement():
    """Inputs and outputs of a grouped conv (8 -> 16, 4 groups) are pruned independently, equally per group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.ReLU(),
                          nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    p = prune_structured(model, StructuredPruneConfig(ratio=0.5), {"x": x})
    assert (p[2].in_channels, p[2].out_channels, p[2].groups, p[2].weight.shape[1]) == (4, 8, 4, 1)
    assert p[0].out_channels == 4 and p[4].in_channels == 8 and p(x).shape == (2, 4, 8, 8)
    # the grouped conv of a transposed kind keeps its channels, with the reason
    notes = []
    up = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, 2, groups=2), nn.ReLU(),
                       nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    p = prune_structured(up, StructuredPruneConfig(ratio=0.5), {"x": x}, notes=notes)
    assert p[2].in_channels == 8 and p[4].out_channels == 4
    assert any("grouped conv (groups=2, transposed)" in n for n in notes), notes


def test_grouped_conv_over_a_concat_keeps_its_inputs_and_says_why():
    """The grouped conv's inputs come from two layers (a concat): no one group holds all of them, so equal removal
    per conv group cannot be promised; they stay, with the reason, and its outputs are still pruned."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(self.g(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))))

    notes = []
    p = prune_structured(Net().eval(), StructuredPruneConfig(ratio=0.5), {"x": torch.randn(1, 3, 8, 8)}, notes=notes)
    assert p.a.out_channels == p.b.out_channels == 8 and p.g.in_channels == 16
    assert p.g.out_channels == 8 and p.head.in_channels == 8 and p.g.groups == 4
    assert any("g: its 4 groups' channels are not one prunable group" in n for n in notes), notes
