"""Structured pruning of Hugging Face architectures whose layers do more than their class says: a LayerNorm
subclass that permutes (ConvNeXt's channels-first norm), attention with a per-head table (Swin's relative
position bias) or its output layer and norm inside (ALBERT, whose one layer is shared by the whole depth).
Each prunes, runs on another batch, and keeps what it cannot prune correctly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnslim.graph.layers import handler_for
from nnslim.pruning.structured import StructuredPruneConfig, prune_structured


def _convnext():
    import transformers as tf

    cfg = tf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=4, image_size=32)
    return tf.ConvNextForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _swin():
    import transformers as tf

    cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                        num_labels=4)
    return tf.SwinForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _albert():
    import transformers as tf

    cfg = tf.AlbertConfig(embedding_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, vocab_size=100, num_labels=2)
    return tf.AlbertForSequenceClassification(cfg), {"input_ids": torch.randint(0, 100, (2, 9))}


def _xglm():
    """XGLM reshapes its attention output to self.embed_dim (the heads' width when built): pruning heads without
    updating it made a model that failed on its first forward."""
    import transformers as tf

    cfg = tf.XGLMConfig(d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, vocab_size=100)
    return tf.XGLMForCausalLM(cfg), {"input_ids": torch.randint(1, 100, (2, 9))}


@pytest.mark.filterwarnings("ignore:structured pruning kept some channels")
@pytest.mark.parametrize("build", [_convnext, _swin, _albert, _xglm], ids=["convnext", "swin", "albert", "xglm"])
def test_prunes_and_runs(build):
    torch.manual_seed(0)
    model, example = build()
    model.eval()
    n0 = sum(p.numel() for p in model.parameters())
    pruned = prune_structured(model, StructuredPruneConfig(ratio=0.5), example, inplace=False)
    assert sum(p.numel() for p in pruned.parameters()) < 0.9 * n0
    other = {k: torch.cat([v, v[:1]]) for k, v in example.items()}
    with torch.no_grad():
        assert pruned(**other).logits.shape == model(**other).logits.shape


def test_channels_first_layernorm_is_pruned_with_its_channels():
    model, example = _convnext()
    pruned = prune_structured(model.eval(), StructuredPruneConfig(ratio=0.5), example, inplace=False)
    stem = pruned.convnext.embeddings
    assert stem.patch_embeddings.out_channels == stem.layernorm.weight.numel() < 16


def test_attention_with_more_than_its_projections_is_traced_into():
    swin_attention = _swin()[0].swin.encoder.layers[0].blocks[0].attention
    albert_attention = _albert()[0].albert.encoder.albert_layer_groups[0].albert_layers[0].attention
    import transformers as tf

    llama = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    assert handler_for(swin_attention) is None  # a per-head relative position bias table
    assert handler_for(albert_attention) is None  # its output dense + LayerNorm
    assert handler_for(llama.model.layers[0].self_attn) is not None
    q_norm = nn.Module()
    q_norm.weight = nn.Parameter(torch.ones(16))  # Qwen3's q_norm: one head's features, shared by the heads
    llama.model.layers[0].self_attn.q_norm = q_norm
    assert handler_for(llama.model.layers[0].self_attn) is not None
    llama.model.layers[0].self_attn.sinks = nn.Parameter(torch.zeros(4))  # one value per head
    assert handler_for(llama.model.layers[0].self_attn) is None


@pytest.mark.filterwarnings("ignore")
def test_layerwise_methods_on_stages_and_classifier_heads():
    """Layer-by-layer methods take a list of same-shape blocks (one Swin stage's blocks, not its stages, whose
    widths change) and prune the layers outside them (a classifier's dense layers) by magnitude, with a note."""
    import transformers as tf

    from nnslim.graph.layerwise import find_blocks
    from nnslim.pruning.oneshot import prune_oneshot
    from nnslim.pruning.wanda import Wanda, WandaConfig

    swin, example = _swin()
    prefix, blocks = find_blocks(swin)
    assert prefix.endswith(".blocks")  # swin.encoder.layers.<i>.blocks, not swin.encoder.layers
    torch.manual_seed(0)
    cfg = tf.RobertaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           vocab_size=100, num_labels=2)
    model = tf.RobertaForSequenceClassification(cfg).eval()
    config = WandaConfig(sparsity=0.5)
    notes: list[str] = []
    data = [{"input_ids": torch.randint(3, 100, (1, 64))} for _ in range(4)]
    pruned = prune_oneshot(model, config, data, notes=notes, algorithm=lambda: Wanda(config), name="wanda")
    dense = pruned.classifier.dense
    assert float((dense.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert any(n.startswith("2 linear layers outside the repeated blocks pruned by magnitude") for n in notes)
    layer = pruned.roberta.encoder.layer[0].attention.self.query
    assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():
        assert pruned(**data[0]).logits.shape == (1, 2)


def test_stages_of_changing_widths_are_the_blocks_when_nothing_else_repeats():
    import transformers as tf

    from nnslim.graph.layerwise import find_blocks

    resnet = tf.ResNetForImageClassification(tf.ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=16))
    assert find_blocks(resnet)[0] == "resnet.encoder.stages"  # (its stages' layers are nn.Sequential)


def test_a_pruned_model_that_fails_its_forward_is_a_clear_error(monkeypatch):
    """A size the model's code keeps that slicing did not follow (XGLM's embed_dim before it was followed) surfaced
    as the model's own RuntimeError from inside prune_structured."""
    from nnslim.errors import NnslimError
    from nnslim.pruning import structured

    def broken(model, inputs):
        raise RuntimeError("shape '[2, 9, 64]' is invalid for input of size 864")

    monkeypatch.setattr(structured, "_call", broken)
    model, example = _xglm()
    with pytest.raises(NnslimError, match=r"structured pruning made a XGLMForCausalLM that fails on the example input "
                                          r"\(RuntimeError: shape"):
        prune_structured(model.eval(), StructuredPruneConfig(ratio=0.5), example)
