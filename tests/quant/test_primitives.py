import numpy as np
import pytest
import torch

from nnslim.errors import NnslimError
from nnslim.quant.primitives import (INT7_WEIGHT, INT8_WEIGHT, UINT8_ACT, QScheme, choose_qparams, dequantize,
                                     fake_quantize, quantize, weight_qparams)


def test_ranges_of_schemes():
    assert (INT8_WEIGHT.qmin, INT8_WEIGHT.qmax) == (-127, 127)
    assert (INT7_WEIGHT.qmin, INT7_WEIGHT.qmax) == (-63, 63)
    assert (UINT8_ACT.qmin, UINT8_ACT.qmax) == (0, 255)
    with pytest.raises(NnslimError, match="bits=9"):
        QScheme(9)


def test_asymmetric_qparams_cover_range_and_zero_is_exact():
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), UINT8_ACT)
    assert float(scale) == pytest.approx(4.0 / 255)
    x = torch.tensor([-1.0, 0.0, 3.0])
    q = quantize(x, scale, zp, UINT8_ACT)
    assert q.tolist()[0] == 0 and q.tolist()[2] == 255
    assert float(dequantize(q, scale, zp)[1]) == 0.0


def test_symmetric_per_channel_round_trip_error_bounded():
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.linspace(0.01, 5, 16)[:, None]
    scale, zp = weight_qparams(w, INT8_WEIGHT, per_channel=True, axis=0)
    assert scale.shape == (16,) and (zp == 0).all()
    w_hat = dequantize(quantize(w, scale, zp, INT8_WEIGHT, axis=0), scale, zp, axis=0)
    assert ((w - w_hat).abs() <= scale[:, None] / 2 + 1e-7).all()
    s_t, _ = weight_qparams(w, INT8_WEIGHT, per_channel=False)
    assert s_t.dim() == 0 and float(s_t) == pytest.approx(float(w.abs().max()) / 127)


def test_matches_onnx_quantizelinear_rounding():
    # ONNX QuantizeLinear rounds half to even, as torch.round does.
    q = quantize(torch.tensor([0.5, 1.5, 2.5, -0.5]), torch.tensor(1.0), torch.tensor(0), INT8_WEIGHT)
    assert q.tolist() == [0, 2, 2, 0]


def test_fake_quant_straight_through_gradient():
    x = torch.tensor([0.1, 0.5, 10.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.01), torch.tensor(0), UINT8_ACT)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # clipped value gets no gradient
    assert np.allclose(y.detach().numpy()[:2], [0.1, 0.5])
