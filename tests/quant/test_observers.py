import numpy as np
import pytest
import torch

from nnslim.errors import NnslimError
from nnslim.quant.observers import TensorStats, make_observer
from nnslim.quant.primitives import UINT8_ACT


def _stats(x):
    st = TensorStats()
    st.update_range(x)
    st.update_hist(x)
    return st


def test_minmax_and_percentile_on_heavy_tail():
    torch.manual_seed(0)
    x = torch.randn(200_000)
    x[0] = 100.0  # one outlier
    st = _stats(x)
    lo, hi = make_observer("minmax").range(st, UINT8_ACT)
    assert hi == pytest.approx(100.0) and lo < -3
    lo, hi = make_observer("percentile", 99.99).range(st, UINT8_ACT)
    assert 3.0 < hi < 5.0 and -5.0 < lo < -3.0


@pytest.mark.parametrize("name", ["mse", "entropy"])
def test_clipping_observers_clip_outliers_but_keep_bulk(name):
    torch.manual_seed(0)
    x = torch.randn(200_000).abs()
    x[:5] = 60.0
    lo, hi = make_observer(name).range(_stats(x), UINT8_ACT)
    assert 2.0 < hi < 60.0 and abs(lo) < 1e-3


def test_mse_beats_minmax_error_on_outliers():
    from nnslim.quant.observers import _centers, _quant_error

    torch.manual_seed(1)
    x = torch.randn(100_000)
    x[:3] = 80.0
    st = _stats(x)
    err = {n: _quant_error(_centers(st), st.hist, *make_observer(n).range(st, UINT8_ACT), UINT8_ACT)
           for n in ("minmax", "mse")}
    assert err["mse"] < err["minmax"]


def test_bad_observer_options():
    with pytest.raises(NnslimError, match="calibrator='kl'"):
        make_observer("kl")
    with pytest.raises(NnslimError, match="percentile=90"):
        make_observer("percentile", 90)
    assert np.isfinite(make_observer("minmax").range(_stats(torch.zeros(10)), UINT8_ACT)[1])
