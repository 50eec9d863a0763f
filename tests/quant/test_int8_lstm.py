"""int8-dynamic of LSTM layers: ONNX Runtime's DynamicQuantizeLSTM in the artifact (runtime/onnx_lstm.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import nnslim


class Tagger(nn.Module):
    def __init__(self, head=True, bidirectional=False):
        super().__init__()
        self.rnn = nn.LSTM(16, 24, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(24 * (2 if bidirectional else 1), 5) if head else None

    def forward(self, x):
        y = self.rnn(x)[0]
        return self.fc(y) if self.fc is not None else y


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("head,bidirectional", [(True, False), (False, True)], ids=["lstm+linear", "lstm-only-bi"])
def test_lstms_deploy_as_dynamic_int8_and_match_torch(tmp_path, head, bidirectional):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Tagger(head, bidirectional).eval()
    x = torch.randn(2, 7, 16)
    res = nnslim.compress(model, ["int8-dynamic"], example_inputs={"x": x}, out=tmp_path / "a", report=False)
    assert "DynamicQuantizeLSTM" in _ops(res.model.path) and "LSTM" not in _ops(res.model.path)
    assert any("2 ONNX LSTM nodes as ONNX Runtime's DynamicQuantizeLSTM" in n for n in res.notes), res.notes
    assert any("needs ONNX Runtime" in n for n in res.notes)
    other = torch.randn(3, 7, 16)  # another batch (the time axis is fixed for a plain module)
    got = ort.InferenceSession(str(res.model.path), providers=["CPUExecutionProvider"]).run(
        None, {"x": other.numpy()})[0]
    with torch.no_grad():
        want = model(other).numpy()
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_lstm_false_keeps_standard_onnx_and_a_lstm_only_model_is_refused_then(tmp_path):
    torch.manual_seed(0)
    x = {"x": torch.randn(2, 5, 16)}
    res = nnslim.compress(Tagger().eval(), [{"method": "int8-dynamic", "lstm": False}], example_inputs=x,
                          out=tmp_path / "a", report=False)
    assert "LSTM" in _ops(res.model.path) and "DynamicQuantizeLSTM" not in _ops(res.model.path)
    with pytest.raises(nnslim.NnslimError, match="int8-dynamic quantizes nn.Linear layers only"):
        nnslim.compress(Tagger(head=False).eval(), [{"method": "int8-dynamic", "lstm": False}], example_inputs=x,
                        report=False)


def test_the_report_measures_onnx_runtime_only_and_openvino_is_refused_clearly(tmp_path):
    torch.manual_seed(0)
    x = {"x": torch.randn(2, 5, 16)}
    res = nnslim.compress(Tagger().eval(), ["int8-dynamic"], example_inputs=x, out=tmp_path / "a", repeats=2,
                          memory=False)
    rows = [v for v in res.report.variants if "int8" in v.name]
    assert [v.backend for v in rows] == ["onnxruntime"], [(v.name, v.backend) for v in res.report.variants]
    with pytest.raises(nnslim.NnslimError, match="cannot follow int8 / int8-dynamic of a model with LSTM layers"):
        nnslim.compress(Tagger().eval(), ["int8-dynamic", "openvino"], example_inputs=x, report=False)
    notes = nnslim.compress(Tagger().eval(), ["int8-dynamic"], example_inputs=x, report=False,
                            backend="openvino").notes
    assert any("1 nn.LSTM module(s) stay float" in n for n in notes), notes


def test_static_int8_of_a_crnn_keeps_its_convs_static_and_its_lstm_int8(tmp_path):
    """A CNN + LSTM (OCR / speech shape): static QDQ convolutions and the LSTM as DynamicQuantizeLSTM in one graph
    (ONNX Runtime's static quantizer leaves the LSTM float)."""
    import onnxruntime as ort

    class Crnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.rnn = nn.LSTM(8 * 8, 32, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(64, 10)

        def forward(self, image):  # [B, 1, 8 (height), W (time)]
            f = self.conv(image)
            seq = f.permute(0, 3, 1, 2).flatten(2)  # [B, W, 8 * 8]
            return self.fc(self.rnn(seq)[0])

    torch.manual_seed(0)
    data = [{"image": torch.rand(2, 1, 8, 20)} for _ in range(8)]
    model = Crnn().eval()
    res = nnslim.compress(model, ["int8"], calibration=data, example_inputs=data[0], out=tmp_path / "a",
                          report=False)
    ops = _ops(res.model.path)
    assert {"DynamicQuantizeLSTM", "QuantizeLinear", "Conv"} <= ops and "LSTM" not in ops, ops
    assert any("static QDQ" in n for n in res.notes), res.notes
    got = ort.InferenceSession(str(res.model.path), providers=["CPUExecutionProvider"]).run(
        None, {"image": data[1]["image"].numpy()})[0]
    with torch.no_grad():
        want = model(data[1]["image"]).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    plain = nnslim.compress(model, [{"method": "int8", "lstm": False}], calibration=data, example_inputs=data[0],
                            out=tmp_path / "b", report=False)
    assert "LSTM" in _ops(plain.model.path)


def test_evaluating_such_an_artifact_in_openvino_is_a_clear_error(tmp_path):
    from nnslim.runtime.openvino import OpenVinoRunner

    torch.manual_seed(0)
    res = nnslim.compress(Tagger().eval(), ["int8-dynamic"], example_inputs={"x": torch.randn(2, 5, 16)},
                          out=tmp_path / "a", report=False)
    with pytest.raises(nnslim.NnslimError, match="backend openvino cannot run .*use backend onnxruntime"):
        OpenVinoRunner(res.model.path)


def test_pruned_hidden_units_survive_into_the_int8_lstm(tmp_path):
    """prune-structured then int8-dynamic: the LSTM's smaller hidden size is what the int8 op in the artifact has."""
    torch.manual_seed(0)
    data = [{"x": torch.randn(2, 5, 16)} for _ in range(4)]
    res = nnslim.compress(Tagger().eval(), [{"method": "prune-structured", "ratio": 0.5}, "int8-dynamic"],
                          calibration=data, example_inputs=data[0], out=tmp_path / "a", report=False)
    graph = onnx.load(str(res.model.path)).graph
    lstms = [n for n in graph.node if n.op_type == "DynamicQuantizeLSTM"]
    hidden = {onnx.helper.get_attribute_value(a) for n in lstms for a in n.attribute if a.name == "hidden_size"}
    assert len(lstms) == 2 and hidden == {12}, hidden
