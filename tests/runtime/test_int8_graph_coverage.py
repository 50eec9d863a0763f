"""The int8 ONNX export must deploy every quantized layer quantized (or say why one is not in the graph): layers the
exporter folds into constants (lookups at fixed indices, layers over fixed tables), layers that reach no output,
tables looked up twice, and half-precision models whose activation MatMuls are calibrated on a float32 graph."""
import pytest

import nnslim


def test_an_embedding_looked_up_at_fixed_indices_is_folded_with_a_note(tmp_path):
    """A position table indexed by a constant (a ViT / CLIP vision tower at a fixed image size) is folded into a
    constant by the exporter, so its int8 table is not in the graph: the int8 export refused the whole model. The
    folded rows are the dequantized ones (the int8 model's values); a note says they are stored in float."""
    import torch
    from torch import nn

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(48, 32)
            self.pos = nn.Embedding(16, 32)
            self.register_buffer("ids", torch.arange(16), persistent=False)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(torch.relu(self.proj(x) + self.pos(self.ids)).mean(1))

    torch.manual_seed(0)
    calib = [torch.randn(2, 16, 48) for _ in range(4)]
    res = nnslim.compress(Patches().eval(), {"method": "int8-dynamic", "preset": "transformer"}, calibration=calib,
                          example_inputs=calib[0],
                          out=tmp_path / "a", repeats=2, memory=False)
    assert any("pos: looked up at fixed indices" in n for n in res.notes)
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.99


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_an_embedding_looked_up_twice_exports_as_int8(tmp_path, method):
    """LayoutLM reads its x / y position tables twice (box left and right): the int8 export named both lookups' nodes
    alike and ONNX Runtime refused the graph ("two nodes with same node name"). Each lookup gets its own names, both
    read the one int8 table."""
    import onnx
    import torch
    from torch import nn

    class TwoLookups(nn.Module):
        def __init__(self):
            super().__init__()
            self.x_pos = nn.Embedding(64, 32)
            self.proj = nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)

        def forward(self, box):
            return self.head(torch.relu(self.proj(self.x_pos(box[..., 0]) + self.x_pos(box[..., 1]))).mean(1))

    torch.manual_seed(0)
    calib = [torch.randint(0, 64, (2, 8, 2)) for _ in range(4)]
    res = nnslim.compress(TwoLookups().eval(), {"method": method, "preset": "transformer"}, calibration=calib,
                          example_inputs=calib[0], out=tmp_path / "a", repeats=2, memory=False)
    graph = onnx.load(str(next((tmp_path / "a").glob("*.onnx")))).graph
    tables = [i.name for i in graph.initializer if i.name.endswith(".table_q")]
    assert tables == ["nnslim_q/x_pos.table_q"]
    assert sum(n.op_type == "Gather" and n.input[0] == tables[0] for n in graph.node) == 2
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.99


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_a_layer_over_a_fixed_table_is_folded_with_a_note(tmp_path, method):
    """Swin v2's continuous position-bias MLP reads a fixed coordinate table, so the exporter computes it once and
    its quantized Linears are not in the graph: the int8 export refused the whole model ("16/18 quantized layers
    were found"). Layers whose input is the same for any model input are folded with a note; the rest is int8."""
    import torch
    from torch import nn

    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("coords", torch.linspace(-1, 1, 32).reshape(16, 2), persistent=False)
            self.bias_mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 16))
            self.proj = nn.Linear(16, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            bias = self.bias_mlp(self.coords).mean(0)
            return self.head(torch.relu(self.proj(x) + bias))

    torch.manual_seed(0)
    calib = [torch.randn(4, 16) for _ in range(4)]
    res = nnslim.compress(Biased().eval(), {"method": method, "preset": "transformer"}, calibration=calib,
                          example_inputs=calib[0], out=tmp_path / "a", repeats=2, memory=False)
    assert any("2 layers whose input is the same for every model input (bias_mlp.0, bias_mlp.2)" in n
               for n in res.notes), res.notes
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.99


def test_a_quantized_layer_that_reaches_no_output_is_left_out_with_a_note(tmp_path):
    """CANINE's classifier runs its final character encoder, whose result no output uses: the exporter drops those
    layers as dead code and the int8 export refused the model ("29/36 quantized layers were found")."""
    import torch
    from torch import nn

    class DeadBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(16, 16)
            self.unused = nn.Linear(16, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            h = torch.relu(self.body(x))
            self.unused(h)  # (computed, never used)
            return self.head(h)

    torch.manual_seed(0)
    calib = [torch.randn(4, 16) for _ in range(4)]
    res = nnslim.compress(DeadBranch().eval(), {"method": "int8", "preset": "transformer"}, calibration=calib,
                          example_inputs=calib[0], out=tmp_path / "a", repeats=2, memory=False)
    assert any("1 quantized layers reach none of the model's outputs (unused)" in n for n in res.notes), res.notes
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.99


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_int8_of_a_half_precision_model_with_activation_matmuls(tmp_path, dtype):
    """A half-precision model's calibration samples were fed as they are to the float32 graph that calibrates its
    activation x activation MatMuls (SegFormer's attention): ONNX Runtime refused fp16 ("Actual: tensor(float16)"),
    numpy bf16 ("unsupported ScalarType BFloat16")."""
    import torch
    from torch import nn

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))

        def forward(self, x):
            w = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / 4.0, dim=-1)
            return self.o(w @ self.v(x)).mean(1)

    torch.manual_seed(0)
    model = Attn().eval().to(getattr(torch, dtype))
    calib = [torch.randn(2, 8, 16, dtype=getattr(torch, dtype)) for _ in range(4)]
    res = nnslim.compress(model, {"method": "int8", "preset": "transformer"}, calibration=calib,
                          example_inputs=calib[0], out=tmp_path / "a", repeats=2, memory=False)
    assert res.report.variants[-1].metrics["output_cos_mean"] > 0.98
