import numpy as np

from nnslim.runtime import TorchRunner
from nnslim.testbeds.digits import digits_data


def test_splits_disjoint_and_cover_dataset():
    xc, yc, xe, ye = digits_data()
    assert len(xc) + len(xe) == 1797
    rows_c = {x.tobytes() + bytes([y]) for x, y in zip(xc, yc)}
    rows_e = {x.tobytes() + bytes([y]) for x, y in zip(xe, ye)}
    # sklearn digits has a handful of exact duplicate images; the split is by index, so allow those only
    assert len(rows_c & rows_e) <= 5
    assert xc.shape[1:] == (1, 8, 8) and xc.dtype == np.float32 and 0 <= xc.min() and xc.max() <= 1


def test_trained_accuracy(digits):
    tb, model = digits
    acc = tb.evaluate(TorchRunner(model))["accuracy"]
    assert acc >= 0.97
    assert 2e5 < sum(p.numel() for p in model.parameters()) < 1e6


def test_calibration_comes_from_calibration_split(digits):
    tb, _ = digits
    xc, _, xe, _ = digits_data()
    calib = tb.calibration(50)
    assert len(calib) == 50 and calib[0]["x"].shape == (1, 1, 8, 8)
    assert np.array_equal(calib[3]["x"][0], xc[3])
    assert tb.example_inputs(batch=5)["x"].shape == (5, 1, 8, 8)


def test_weights_are_cached_and_deterministic(digits):
    tb, model = digits
    again = tb.load_model()
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
