"""BatchNorm folding into the preceding convolution, in models torch.fx cannot trace."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from nnslim.graph.fold import fold_batchnorm


def _randomise(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


def test_hf_resnet_batchnorms_fold_exactly_given_an_example():
    """transformers' ResNet does not trace with torch.fx and keeps conv / BatchNorm as attributes, not in a
    Sequential: the pairs come from one run on the example, and the folded model gives the same logits."""
    import transformers as tf

    model = _randomise(tf.ResNetForImageClassification(tf.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=3)))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    ref = model(x).logits
    assert fold_batchnorm(copy.deepcopy(model)) == 0  # no example: nothing found, nothing changed
    assert fold_batchnorm(model, {"pixel_values": x.numpy()}) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x).logits, ref, rtol=1e-4, atol=1e-5)


class _ConvReadTwice(nn.Module):
    """The conv output feeds the BatchNorm and a residual: folding would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(y) + y
        return y


def test_a_fold_that_changes_the_output_is_undone():
    model = _randomise(_ConvReadTwice())
    x = torch.randn(1, 3, 8, 8)
    ref = model(x)
    weight = model.conv.weight.detach().clone()
    assert fold_batchnorm(model, {"x": x.numpy()}) == 0
    assert isinstance(model.bn, nn.BatchNorm2d) and torch.equal(model.conv.weight, weight)
    torch.testing.assert_close(model(x), ref)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(_ConvReadTwice().train())


@pytest.mark.parametrize("symmetric", [False, True])
def test_hf_resnet_int8_runs_every_convolution_as_int8_in_onnxruntime(tmp_path, symmetric):
    """transformers' ResNet through int8: its BatchNorms fold, every convolution is found in the exported graph,
    and the residual Adds get QDQ inputs, so ONNX Runtime fuses every convolution into QLinearConv (one feeding
    a residual Add would otherwise run in float on dequantized inputs). Either activation form: uint8 with zero
    points, or symmetric (int8 with zero point 0 for the signed image and residual branches)."""
    import onnxruntime as ort
    import transformers as tf

    import nnslim

    torch.manual_seed(0)
    config = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                             num_labels=4)
    config.image_size = 32
    tf.ResNetForImageClassification(config).eval().save_pretrained(tmp_path / "resnet")
    res = nnslim.compress(str(tmp_path / "resnet"), {"steps": [{"method": "int8", "samples": 16,
                                                                 "symmetric_activations": symmetric}]},
                          out=tmp_path / "q", report=False)
    assert any(n.startswith("folded 6 BatchNorm") for n in res.notes)
    assert any(n.startswith("residual adds: 2 Adds") and "1 reusing" in n for n in res.notes)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(res.out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    import onnx

    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    ops = [n.op_type for n in optimized.node]
    assert ops.count("QLinearConv") == 6 and "Conv" not in ops
    # the stem's MaxPool is quantized on its input with its consumers' quantizer: ONNX Runtime pools uint8 codes
    # straight from the stem's QLinearConv, and the values reaching the next layers are those of the float pool
    assert any(n.startswith("max pooling: 1 MaxPool") for n in res.notes)
    producer = {o: n.op_type for n in optimized.node for o in n.output}
    pool = next(n for n in optimized.node if n.op_type.endswith("MaxPool"))  # NhwcMaxPool: uint8, channels last
    assert producer[pool.input[0]] == "QLinearConv"
    proto = onnx.load(str(res.out / "model.onnx"))
    zero_points = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    act_zps = [zero_points[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    signed = [z for z in act_zps if z.dtype == np.int8]
    assert all(int(z) == 0 for z in signed) and (len(signed) > 0) == symmetric
    if symmetric:  # the image input has negative values: int8 (uint8 only for non-negative, ReLU'd, tensors)
        assert any(n.startswith("activations: symmetric") for n in res.notes)
        assert all(int(z) == 0 for z in act_zps)
    plain = onnx.ModelProto()
    plain.CopyFrom(proto)
    pool = next(n for n in plain.graph.node if n.op_type == "MaxPool")
    dq = next(n for n in plain.graph.node if pool.input[0] in n.output)
    q = next(n for n in plain.graph.node if dq.input[0] in n.output)
    pool.input[0] = q.input[0]  # the pool back on the float stem output
    plain.graph.node.remove(dq)
    plain.graph.node.remove(q)
    x = {"pixel_values": torch.randn(2, 3, 32, 32).numpy()}
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
            for m in (proto, plain)]
    assert np.allclose(outs[0], outs[1], atol=1e-5)
    assert nnslim.evaluate(str(res.out), testbed=str(tmp_path / "resnet"))["metrics"]["top1_agreement"] > 0.9


def test_subclassed_convolutions_are_folded_too():
    """fx traces into modules outside torch.nn: a Conv2d subclass (transformers' EfficientNetDepthwiseConv2d)
    followed by its BatchNorm is still a pair (once left unfolded, the exporter folded the BatchNorm into the int8
    weights and the int8 export refused the layers)."""
    import torch
    from torch import nn

    from nnslim.graph.fold import fold_batchnorm

    class Depthwise(nn.Conv2d):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), Depthwise(8, 8, 3, groups=8), nn.BatchNorm2d(8))
    model[3].running_mean.uniform_(-1, 1)
    model[3].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    want = model(x)
    assert fold_batchnorm(model, {"x": x}) == 1
    assert isinstance(model[3], nn.Identity)
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
