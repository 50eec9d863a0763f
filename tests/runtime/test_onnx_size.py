"""Exported ONNX files carry no exporter metadata (stack traces, module paths, value_info)."""
import onnx
import torch

import nnslim


def test_exported_onnx_has_no_exporter_metadata(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    nnslim.export_onnx(model, {"x": torch.randn(2, 8)}, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert not any(n.metadata_props or n.doc_string for n in proto.graph.node)
    assert not proto.graph.value_info and not proto.metadata_props
