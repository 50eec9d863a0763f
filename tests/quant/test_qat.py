"""QAT (STE / LSQ / PACT, 2-8 bits) and binary weights: gradients reach what they should, training
helps where PTQ loses, and the artifact is the real low-bit thing."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

import nnslim
from nnslim import NnslimError
from nnslim.quant.binary import BinaryLayer, BinaryWrapper, sign_ste
from nnslim.quant.primitives import fake_quantize
from nnslim.quant.quantizers import ActQuantizer, WeightQuantizer, weight_scheme
from nnslim.recipe import as_recipe


def test_ste_gradients_and_lsq_scale_gradient():
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    y = fake_quantize(x, s, None, weight_scheme(4))  # codes in [-7, 7]: range +-0.7
    y.sum().backward()
    inside = x.detach().abs() <= 0.7
    assert torch.equal(x.grad, inside.float())  # straight-through inside the range, zero outside
    assert s.grad is not None and s.grad != 0  # LSQ: the scale learns
    with torch.no_grad():  # the forward is the exact integer grid
        codes = y / 0.1
        assert torch.allclose(codes, codes.round(), atol=1e-5)


def test_pact_learns_its_clipping_range():
    q = ActQuantizer(8, "pact", lo=0.0, hi=1.0)
    x = torch.linspace(-1, 3, 50)
    q(x).sum().backward()
    assert q.hi.grad is not None and float(q.hi.grad) > 0  # inputs above hi pull it up
    lsq = ActQuantizer(4, "lsq", lo=-1.0, hi=1.0)
    lsq.train()
    lsq(x).sum().backward()
    assert lsq.scale.grad is not None


def test_weight_quantizer_modes_and_bits():
    w = torch.randn(6, 10)
    for bits in (2, 3, 4, 8):
        q = WeightQuantizer(w, bits, per_channel=True, mode="lsq")
        codes = q.codes(w)
        assert int(codes.abs().max()) <= 2 ** (bits - 1) - 1
        assert isinstance(q.scale, nn.Parameter)
    with pytest.raises(NnslimError, match="bits=9 is not allowed; allowed: 2..8"):
        nnslim.QatConfig(bits=9)
    with pytest.raises(NnslimError, match="act_mode='ema' is not allowed; allowed: fixed, lsq, pact"):
        nnslim.QatConfig(act_mode="ema")


def test_w4a8_qat_exports_int4_weights_that_onnx_runtime_runs(digits, tmp_path):
    tb, _ = digits
    res = nnslim.compress("digits-cnn", as_recipe([{"method": "qat", "bits": 4},
                                                   {"method": "distill", "steps": 20, "batch_size": 64}]),
                          out=tmp_path / "q", report=False)
    proto = onnx.load(str(tmp_path / "q" / "model.onnx"))
    int4 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT4 and i.name.endswith("weight_q")]
    assert len(int4) == 6  # every conv and linear weight packed two per byte
    assert all(len(i.raw_data) == -(-int(np.prod(i.dims)) // 2) for i in int4)
    assert any(o.version >= 21 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    acc = nnslim.evaluate(str(tmp_path / "q" / "model.onnx"), testbed="digits-cnn")["metrics"]["accuracy"]
    assert acc > 0.95
    assert any("labels" in n for n in res.notes)  # the digits training split carries hard labels


def test_w2_qat_recovers_what_w2_ptq_loses(digits):
    tb, model = digits
    from nnslim.runtime import TorchRunner

    ptq = nnslim.quantize(model, nnslim.QatConfig(bits=2), testbed=tb)
    acc_ptq = tb.evaluate(TorchRunner(ptq))["accuracy"]
    trained = nnslim.distill(ptq, model, testbed=tb, config=nnslim.DistillConfig(steps=80, batch_size=64, lr=1e-3))
    acc_qat = tb.evaluate(TorchRunner(trained))["accuracy"]
    assert acc_qat > acc_ptq + 0.1 and acc_qat > 0.9


def test_binary_layers_pack_one_bit_per_weight(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    b = nnslim.quantize(model, nnslim.BinaryConfig())
    assert isinstance(b[2], BinaryWrapper) and isinstance(b[0], nn.Linear) and isinstance(b[4], nn.Linear)
    x = torch.randn(5, 16)
    y = b(x)
    nnslim.save(b, tmp_path / "b")
    loaded = nnslim.load(tmp_path / "b", model=model)
    assert isinstance(loaded[2], BinaryLayer)
    assert loaded[2].bits.numel() == 64 * 64 // 8  # one bit per weight
    torch.testing.assert_close(loaded(x), y)
    with pytest.raises(NnslimError, match="no Linear/Conv layer left"):
        nnslim.quantize(model, nnslim.BinaryConfig(ignore=("2",)))


def test_binary_activations_use_a_learned_shift():
    x = torch.tensor([-0.5, 0.2, 2.0], requires_grad=True)
    y = sign_ste(x)
    assert torch.equal(y, torch.tensor([-1.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    b = nnslim.quantize(model, nnslim.BinaryConfig(activations=True))
    b.train()
    b(torch.rand(32, 8))  # the first training batch sets each shift to the channel mean
    assert bool(b[2].shift_ready) and float(b[2].shift.abs().sum()) > 0
    assert np.isfinite(b(torch.rand(4, 8)).detach().numpy()).all()


def test_symmetric_activation_quantizer_and_its_refusal():
    """symmetric: a signed range gets int8 codes with zero point 0 (the same scale both sides), a non-negative one
    stays uint8; a PACT range (learned, asymmetric) refuses the option instead of ignoring it."""
    signed = ActQuantizer(8, "fixed", -2.0, 1.0, symmetric=True)
    assert signed.signed and signed.export_qparams()[1] == 0
    x = torch.linspace(-2, 2, 101)
    err = (signed(x) - x)[x.abs() <= 2].abs().max()
    assert err <= signed.export_qparams()[0] / 2 + 1e-6
    assert not ActQuantizer(8, "fixed", 0.0, 3.0, symmetric=True).signed
    assert not ActQuantizer(8, "pact", -2.0, 1.0, symmetric=True).signed
    from nnslim.quant.ptq import quantize_int8
    from nnslim.quant.qat import QatConfig

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    data = [{"input": torch.randn(2, 4)} for _ in range(4)]
    with pytest.raises(NnslimError, match="symmetric_activations=true is not allowed with act_mode='pact'"):
        quantize_int8(model, QatConfig(act_mode="pact", symmetric_activations=True), data)


def test_symmetric_activations_survive_qat_distill_into_the_onnx_artifact(tmp_path):
    """qat (lsq, symmetric_activations) -> distill -> ONNX on transformers' ResNet (normalized images: a signed
    input): the learned activation scales deploy with int8 zero points of 0 where the calibrated range was
    signed, uint8 elsewhere, and the artifact stays close to the model (cosine of the logits: this random-weight
    model's logits are nearly uniform, so its top-1 moves with any training, symmetric or not)."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                             num_labels=4)
    config.image_size = 32
    tf.ResNetForImageClassification(config).eval().save_pretrained(tmp_path / "resnet")
    recipe = as_recipe([{"method": "qat", "samples": 16, "symmetric_activations": True},
                        {"method": "distill", "steps": 5, "batch_size": 16}])
    nnslim.compress(str(tmp_path / "resnet"), recipe, out=tmp_path / "q", report=False)
    proto = onnx.load(str(tmp_path / "q" / "model.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    zps = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert any(z.dtype == np.int8 for z in zps) and all(int(z) == 0 for z in zps)
    metrics = nnslim.evaluate(str(tmp_path / "q"), testbed=str(tmp_path / "resnet"))["metrics"]
    assert metrics["logits_cos_mean"] > 0.97


def test_symmetric_activations_auto_follows_cpu_preset_and_backend(monkeypatch):
    """symmetric_activations=auto: signed int8 activations for a transformer on a CPU with AMX (OpenVINO runs them
    faster there), with a note saying so; never for a CNN, without AMX, or when the artifact is meant for ONNX
    Runtime (--backend onnxruntime), where they are slower; an explicit true / false is kept as given."""
    from nnslim.quant import ptq
    from nnslim.quant.ptq import Int8Config, quantize_int8

    torch.manual_seed(0)
    layer = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1,
                                                enable_nested_tensor=False), nn.Linear(16, 4)).eval()
    data = [{"input": torch.randn(2, 5, 16)} for _ in range(4)]

    def signed(config, backend=None, amx=True):
        monkeypatch.setattr(ptq, "cpu_has_amx", lambda: amx)
        notes = []
        q = quantize_int8(layer, config, data, data[0], notes=notes, backend=backend)
        acts = [m.act_quantizer for m in q.modules() if isinstance(getattr(m, "act_quantizer", None), ActQuantizer)]
        return any(a.signed for a in acts), any("symmetric_activations=auto" in n for n in notes)

    assert signed(Int8Config(bias_correction=False)) == (True, True)
    assert signed(Int8Config(bias_correction=False), backend="openvino") == (True, True)
    assert signed(Int8Config(bias_correction=False), backend="onnxruntime") == (False, False)
    assert signed(Int8Config(bias_correction=False), amx=False) == (False, False)
    assert signed(Int8Config(bias_correction=False, preset="cnn")) == (False, False)
    assert signed(Int8Config(bias_correction=False, symmetric_activations=True), amx=False) == (True, False)
    assert signed(Int8Config(bias_correction=False, symmetric_activations=False)) == (False, False)


def test_qat_without_a_training_step_says_it_was_not_trained(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    calib = [torch.randn(8, 16) for _ in range(4)]
    alone = nnslim.compress(model, "qat", calibration=calib, example_inputs=calib[0], report=False)
    assert any(n.startswith("qat: no training step follows") for n in alone.notes)
    trained = nnslim.compress(model, ["qat", {"method": "distill", "steps": 2}], calibration=calib,
                              example_inputs=calib[0], report=False)
    assert not any(n.startswith("qat: no training step follows") for n in trained.notes)


def test_qat_trains_a_layer_called_twice_in_one_forward():
    """A weight quantizer following its weight (minmax) rewrote its scale in place on each call, so a layer called
    twice in one forward (LayoutLM's x-position table: left and right of each box) broke the backward ("modified by
    an inplace operation")."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(32, 16)
            self.shared = nn.Linear(16, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, ids):
            h = self.table(ids[:, 0]) + self.table(ids[:, 1])
            return self.head(torch.relu(self.shared(torch.relu(self.shared(h)))))

    torch.manual_seed(0)
    data = [torch.randint(0, 32, (4, 2)) for _ in range(4)]
    out = nnslim.compress(Twice().eval(), [{"method": "qat", "preset": "transformer"},
                                           {"method": "distill", "steps": 3, "batch_size": 4}],
                          calibration=data, example_inputs=data[0], report=False)
    from nnslim.runtime import make_runner

    runner = make_runner(out.model)
    assert np.isfinite(runner({runner.input_names[0]: data[0].numpy()})).all()
