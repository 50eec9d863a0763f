"""Movement pruning: learned scores over whole neurons / heads, a cubic schedule, physically smaller layers;
depth pruning of repeated blocks; JPQD (movement + QAT + KD) in one recipe."""
import pytest
import torch
from torch import nn

import nnslim
from nnslim import NnslimError
from nnslim.pruning.movement import SCORES_ATTR, cubic
from nnslim.recipe import as_recipe


class Encoder(nn.Module):
    """A small BERT from a config, mean-pooled: the shape of the sentence encoders nnslim sees."""

    def __init__(self, layers=2, heads=4, hidden=64, ffn=128):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=ffn, vocab_size=200, max_position_embeddings=64)
        self.bert = BertModel(cfg)

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.mean(1)


def _bert(layers=2):
    torch.manual_seed(0)
    return Encoder(layers).eval()


def _data(n=48, seq=12):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 200, (1, seq), generator=g),
             "attention_mask": torch.ones(1, seq, dtype=torch.long)} for _ in range(n)]


EXAMPLE = {"input_ids": torch.randint(0, 200, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}


def test_cubic_schedule():
    assert cubic(0.05, 0.5, 0.1, 0.6) == 0.0
    assert cubic(0.6, 0.5, 0.1, 0.6) == 0.5 and cubic(0.9, 0.5, 0.1, 0.6) == 0.5
    mid = cubic(0.35, 0.5, 0.1, 0.6)
    assert 0.4 < mid < 0.5  # fast early, slow near the end


def test_movement_removes_whole_heads_and_neurons(tmp_path):
    teacher = _bert()
    pruned = nnslim.prune(teacher, nnslim.MovementPruneConfig(sparsity=0.5, head_sparsity=0.5),
                          example_inputs=EXAMPLE)
    bank = getattr(pruned, SCORES_ATTR)
    assert all(p.nnslim_lr == 20.0 for p in bank.scores)
    scores_before = [p.detach().clone() for p in bank.scores]
    trained = nnslim.distill(pruned, teacher, data=_data(), inplace=True,
                             config=nnslim.DistillConfig(steps=30, batch_size=8, loss="cosine"))
    assert not hasattr(trained, SCORES_ATTR)  # finished: scores gone, structure sliced
    layer = trained.bert.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 64 and layer.output.dense.in_features == 64
    assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.query.out_features == 32
    moved = sum(not torch.equal(a, b) for a, b in zip(scores_before, [p.detach() for p in bank.scores]))
    assert moved >= 4  # the heads and FFN neurons of both layers (the unused pooler gets no gradient)
    out = trained(**EXAMPLE)
    assert out.shape == (2, 64)
    nnslim.save(trained, tmp_path / "m")  # the plan rebuilds the smaller architecture on load
    loaded = nnslim.load(tmp_path / "m", model=_bert())
    torch.testing.assert_close(loaded(**EXAMPLE), out)


def test_block_movement_leaves_zeros_as_masks():
    teacher = _bert()
    pruned = nnslim.prune(teacher, nnslim.MovementPruneConfig(structured=False, block=(16, 16), block_sparsity=0.5),
                          example_inputs=EXAMPLE)
    trained = nnslim.distill(pruned, teacher, data=_data(), config=nnslim.DistillConfig(steps=20, batch_size=8))
    w = trained.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.05
    blocks = (w.detach().reshape(8, 16, 4, 16) == 0).all(3).all(1)  # whole 16x16 blocks are zero
    assert int(blocks.sum()) == 16


def test_jpqd_one_recipe_smaller_int8(tmp_path):
    recipe = as_recipe([{"method": "prune-movement", "sparsity": 0.5, "head_sparsity": 0.5},
                        {"method": "qat", "ignore": ["re:position_embeddings"]},
                        {"method": "distill", "steps": 30, "batch_size": 8, "loss": "cosine"}])
    res = nnslim.compress(_bert(), recipe, calibration=_data(), example_inputs=EXAMPLE, out=tmp_path / "j",
                          report=False)
    assert any("int8 ONNX: 14/14" in n for n in res.notes)
    assert any("removed whole neurons/heads" in n for n in res.notes)
    import onnx

    proto = onnx.load(str(tmp_path / "j" / "model.onnx"))
    shapes = [tuple(i.dims) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert (128, 64) not in shapes and (64, 128) not in shapes  # the FFN weights lost half their neurons
    assert any(64 in s and 64 in s[1:] or s == (64, 64) for s in shapes)


def test_drop_layers_and_layer_mapped_distillation(tmp_path):
    teacher = _bert(layers=4)
    student = nnslim.prune(teacher, nnslim.DropLayersConfig())
    assert len(student.bert.encoder.layer) == 2 and student.bert.config.num_hidden_layers == 2
    trained = nnslim.distill(student, teacher, data=_data(), config=nnslim.DistillConfig(
        steps=10, batch_size=8, hidden_weight=1.0, attention_weight=1.0, loss="cosine"))
    nnslim.save(trained, tmp_path / "s")
    loaded = nnslim.load(tmp_path / "s", model=_bert(layers=4))
    assert len(loaded.bert.encoder.layer) == 2
    torch.testing.assert_close(loaded(**EXAMPLE), trained(**EXAMPLE))
    with pytest.raises(NnslimError, match="keeps all 4 blocks"):
        nnslim.prune(teacher, nnslim.DropLayersConfig(every=1))
    with pytest.raises(NnslimError, match=r"blocks to keep \[0, 9\] are not allowed"):
        nnslim.prune(teacher, nnslim.DropLayersConfig(keep=(0, 9)))


def test_earlier_masks_survive_movement_and_its_slicing():
    recipe = as_recipe([{"method": "prune-magnitude", "sparsity": 0.5},
                        {"method": "prune-movement", "sparsity": 0.25, "head_sparsity": 0.0},
                        {"method": "distill", "steps": 10, "batch_size": 8, "loss": "cosine"}])
    res = nnslim.compress(_bert(), recipe, calibration=_data(), example_inputs=EXAMPLE, report=False)
    dense = res.model.bert.encoder.layer[0].intermediate.dense
    assert dense.out_features == 96  # a quarter of the 128 neurons went
    assert float((dense.weight == 0).float().mean()) >= 0.45  # the magnitude zeros stayed through training


def test_drop_layers_refuses_a_model_whose_config_derives_its_depth():
    """Funnel's config computes num_hidden_layers from block_sizes and refuses to be set: drop-layers crashed with
    transformers' NotImplementedError after cutting the block list. It refuses before changing anything."""
    import transformers as tf

    cfg = tf.FunnelConfig(d_model=32, n_head=2, d_head=16, d_inner=64, block_sizes=[1, 1], vocab_size=50,
                          num_labels=2)
    model = tf.FunnelForSequenceClassification(cfg).eval()
    inp = {"input_ids": torch.randint(1, 50, (2, 8))}
    with pytest.raises(NnslimError, match=r"config cannot express fewer layers \(FunnelConfig.num_hidden_layers"):
        nnslim.prune(model, "drop-layers", example_inputs=inp, calibration=[inp])
    assert len(model.funnel.encoder.blocks) == 2


@pytest.mark.parametrize("groups", [16, 4], ids=["depthwise", "grouped"])
def test_jpqd_removes_channels_of_a_cnn_whose_batchnorms_qat_folded(groups):
    """Movement pruning records its channel groups before qat folds each BatchNorm into its convolution (an Identity
    is left in its place): removing the channels at the end stopped at "layer 'bn' (Identity) has no pruning
    function" (SegFormer, MobileViT); and a depthwise convolution's channels were cut from its weight but not from
    its weight quantizer's scales (the int8 export failed on the shapes)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=groups), nn.BatchNorm2d(16)
            self.pw, self.head = nn.Conv2d(16, 16, 1), nn.Linear(16, 4)

        def forward(self, x):
            x = torch.relu(self.bn2(self.dw(torch.relu(self.bn(self.stem(x))))))
            return self.head(torch.relu(self.pw(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    for b in (model.bn, model.bn2):
        b.running_mean.uniform_(-0.5, 0.5), b.running_var.uniform_(0.5, 2), b.weight.data.uniform_(0.5, 1.5)
    data = [torch.randn(2, 3, 16, 16) for _ in range(8)]
    res = nnslim.compress(model, [{"method": "prune-movement", "sparsity": 0.5}, "qat",
                                  {"method": "distill", "steps": 6, "batch_size": 2}],
                          calibration=data, example_inputs=data[0], report=False)
    assert any("folded 2 BatchNorm" in n for n in res.notes)
    removed = next(n for n in res.notes if n.startswith("movement: final masks applied"))
    assert "layer slices removed" in removed and "int8 ONNX: 4/4 layers as int8" in " ".join(res.notes)
    import onnx

    graph = onnx.load(str(res.model.path)).graph
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvInteger", "QLinearConv")]
    grouped = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) == 1
    group = next(a.i for a in grouped[0].attribute if a.name == "group")
    made_by = {o: n for n in graph.node for o in n.output}
    w = grouped[0].input[1]
    while w not in weights:  # the int8 codes behind DequantizeLinear (and any Cast / Reshape)
        w = made_by[w].input[0]
    assert group == 4 if groups == 4 else group < 16, group  # channels removed, the grouping kept
    assert weights[w][0] < 16 and weights[w][0] // group == (1 if groups == 16 else 16 // 4 // 2), weights[w]
