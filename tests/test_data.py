"""Calibration and example inputs in the forms users bring: tensors, tuples, dicts, DataLoaders,
data + transform; matched to the forward's signature, with clear errors for anything else."""
import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from nnslim.data import Dataset, as_inputs, as_samples
from nnslim.errors import NnslimError
from nnslim.runtime import TorchRunner


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(8, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def _batches(n=6):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 8, generator=g) for _ in range(n)]


def test_every_form_gives_the_same_samples():
    m = TwoInputs()
    xs, ys = _batches(), _batches()
    want = [{"x": x, "y": y} for x, y in zip(xs, ys)]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=2)
    forms = [want, list(zip(xs, ys)), (t for t in zip(xs, ys)), loader,
             Dataset(zip(xs, ys, ["label"] * 6), transform=lambda item: item[:2])]
    for form in forms:
        got = as_samples(form, m)
        assert len(got) == 6 and all(set(s) == {"x", "y"} for s in got)
        assert all(torch.equal(g["x"], w["x"]) and torch.equal(g["y"], w["y"]) for g, w in zip(got, want))
    assert as_inputs((xs[0], ys[0]), m).keys() == {"x", "y"}


def test_plain_tensors_quantize_and_export(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    q = nnslim.quantize(model, nnslim.Int8Config(samples=6), calibration=_batches())  # NNCF's first call
    x = _batches(1)[0]
    onnx_model = nnslim.export_onnx(q, (x,), tmp_path / "m.onnx")  # a tuple, as torch.onnx.export takes
    from nnslim.runtime import make_runner

    got = make_runner(onnx_model, "onnxruntime")({"input": x.numpy()})
    np.testing.assert_allclose(got, TorchRunner(q)({"input": x.numpy()}), atol=0.05)


def test_compress_takes_a_dataloader_and_a_tensor_example():
    torch.manual_seed(0)
    model = TwoInputs()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 8), torch.randn(12, 8)),
                                         batch_size=2)
    res = nnslim.compress(model, nnslim.Int8Config(samples=6), calibration=loader,
                          example_inputs=(torch.randn(2, 8), torch.randn(2, 8)), repeats=2, memory=False)
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.99


def test_unusable_data_is_a_clear_error():
    m = TwoInputs()
    for bad, needle in ((42, "is a int; accepted"), ("text", "is a str"), ([{1: torch.ones(1)}], "not an input name"),
                        ([(torch.ones(1), torch.ones(1), torch.ones(1))], r"tuple of 3 inputs but forward takes \(x, y\)"),
                        ([object()], r"calibration\[0\] is a object"),
                        (Dataset([1], transform=lambda i: 1 / 0), "the transform failed: ZeroDivisionError")):
        with pytest.raises(NnslimError, match=needle):
            as_samples(bad, m)
    with pytest.raises(NnslimError, match="calibration"):
        nnslim.quantize(m, nnslim.Int8Config(), calibration=42)


def test_labels_of_an_inputs_labels_batch_never_become_an_optional_input():
    """A DataLoader of (inputs, labels) for a forward(x, scale=None): the labels were passed as `scale` (here a shape
    error deep in the model; with broadcastable shapes, a silently wrong calibration). Refused, with the fix; an
    optional input that takes one integer per sample (lengths, offsets) is still accepted."""
    from torch.utils.data import DataLoader, TensorDataset

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x, scale=None):
            return self.fc(x) if scale is None else self.fc(x) * scale

    class WithLengths(nn.Module):
        def forward(self, x, lengths=None):
            return x

    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(NnslimError, match=r"calibration\[0\] is a tuple of 2 whose last element \(torch.int64, shape "
                                          r"\(8,\)\) looks like labels, and it would be passed as the optional input "
                                          r"'scale'"):
        as_samples(loader, Scaled())
    samples = as_samples(nnslim.Dataset(loader, transform=lambda item: item[:1]), Scaled())
    assert list(samples[0]) == ["x"]
    assert list(as_samples(loader, WithLengths())[0]) == ["x", "lengths"]
    assert list(as_samples([(x, y)], nn.Bilinear(16, 1, 2))[0]) == ["input1", "input2"]  # both required: inputs
