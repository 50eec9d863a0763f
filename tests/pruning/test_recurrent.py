"""Structural pruning of recurrent layers: LSTM / GRU / RNN input features and hidden units (graph/recurrent.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nnslim
from nnslim.pruning.structured import PLAN_ATTR, StructuredPruneConfig, apply_plan, prune_structured


class Tagger(nn.Module):
    def __init__(self, kind=nn.LSTM, bidirectional=True, layers=2, batch_first=False):
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.rnn = kind(16, 24, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)
        self.out = nn.Linear(24 * (2 if bidirectional else 1), 5)
        self.batch_first = batch_first

    def forward(self, x):  # x [batch, time, 10]
        h = torch.relu(self.inp(x))
        y = self.rnn(h if self.batch_first else h.transpose(0, 1))[0]
        return self.out(y if self.batch_first else y.transpose(0, 1))


def _kill_units(model: Tagger, dead: torch.Tensor) -> None:
    """Hidden units whose gate rows and recurrent columns are zero: their state stays 0 (LSTM: i = f = o = 0.5,
    g = 0, c = 0; GRU: h = z * h_prev = 0), and the layers above read zero columns for them."""
    m, h = model.rnn, model.rnn.hidden_size
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(m)]
    rows = torch.cat([g * h + dead for g in range(gates)])
    with torch.no_grad():
        for name, p in m.named_parameters():
            p[rows] = 0
            if name.startswith("weight_hh"):
                p[:, dead] = 0
            if name.startswith("weight_ih") and not name.startswith("weight_ih_l0"):
                p[:, torch.cat([dead, h + dead]) if m.bidirectional else dead] = 0
        cols = torch.cat([dead, h + dead]) if m.bidirectional else dead
        model.out.weight[:, cols] = 0


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_dead_hidden_units_go_and_the_output_stays(kind):
    torch.manual_seed(0)
    model = Tagger(kind).eval()
    dead = torch.arange(0, 24, 2)
    _kill_units(model, dead)
    x = torch.randn(3, 7, 10)
    p = prune_structured(model, StructuredPruneConfig(ratio=0.5, importance="l2", ignore=("inp",)), {"x": x})
    assert p.rnn.hidden_size == 12 and p.out.in_features == 24 and p.rnn.weight_hh_l1_reverse.shape[1] == 12
    torch.testing.assert_close(p(x), model(x), rtol=1e-5, atol=1e-5)
    assert model.rnn.hidden_size == 24  # the caller's model is untouched
    rebuilt = apply_plan(Tagger(kind).eval(), getattr(p, PLAN_ATTR))
    rebuilt.load_state_dict(p.state_dict())
    torch.testing.assert_close(rebuilt(x), p(x))


def test_pruned_lstm_exports_to_onnx_and_runs_other_lengths(tmp_path):
    import onnxruntime as ort

    from nnslim.runtime.onnx_export import export_onnx

    torch.manual_seed(0)
    p = prune_structured(Tagger(nn.LSTM, batch_first=True).eval(), StructuredPruneConfig(ratio=0.3),
                         {"x": torch.randn(2, 6, 10)})
    assert p.rnn.hidden_size < 24 and p.rnn.input_size < 16
    onnx_model = export_onnx(p, {"x": np.random.randn(2, 6, 10).astype(np.float32)}, tmp_path / "m.onnx",
                             {"x": {0: "batch", 1: "time"}})
    other = torch.randn(3, 11, 10)
    got = ort.InferenceSession(str(onnx_model.path), providers=["CPUExecutionProvider"]).run(
        None, {"x": other.numpy()})[0]
    np.testing.assert_allclose(got, p(other).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_a_caller_given_initial_state_keeps_the_hidden_units_and_says_why():
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn, self.out = nn.Linear(10, 16), nn.GRU(16, 24, batch_first=True), nn.Linear(24, 5)

        def forward(self, x):
            h0 = torch.zeros(1, x.shape[0], 24)  # the caller's own size: pruning the units would break it
            return self.out(self.rnn(torch.relu(self.inp(x)), h0)[0])

    notes = []
    p = prune_structured(WithState().eval(), StructuredPruneConfig(ratio=0.5), {"x": torch.randn(2, 5, 10)},
                         notes=notes)
    assert p.rnn.hidden_size == 24 and p.rnn.input_size == 8
    assert any("rnn: initial state given by the caller" in n for n in notes), notes


def test_embedding_gru_classifier_through_compress():
    """The model that had nothing prunable (the GRU was opaque): its hidden units go, then int8 exports."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.gru = nn.Embedding(50, 16), nn.GRU(16, 32, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(64, 3)

        def forward(self, ids):
            return self.fc(self.gru(self.emb(ids))[0][:, -1])

    torch.manual_seed(0)
    data = [{"ids": torch.randint(0, 50, (2, 12))} for _ in range(6)]
    res = nnslim.compress(Net().eval(), ["prune-structured", "int8"], calibration=data, example_inputs=data[0],
                          report=False)
    removed = next(n for n in res.notes if n.startswith("structured pruning"))
    assert "removed 9/32 channels" in removed, res.notes


def test_a_packed_sequence_keeps_the_hidden_units_and_says_why():
    from torch.nn.utils.rnn import pack_padded_sequence

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn, self.out = nn.Linear(10, 16), nn.LSTM(16, 24, batch_first=True), nn.Linear(24, 5)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(torch.relu(self.inp(x)), lengths, batch_first=True, enforce_sorted=False)
            return self.out(self.rnn(packed)[1][0][-1])

    # packing reorders the batch (index_select), which keeps the input features too: nothing is left, and the
    # error names both reasons
    with pytest.raises(nnslim.NnslimError, match="rnn: packed-sequence input"):
        prune_structured(Packed().eval(), StructuredPruneConfig(ratio=0.5),
                         {"x": torch.randn(2, 5, 10), "lengths": torch.tensor([5, 3])})
