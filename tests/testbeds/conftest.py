import pytest


@pytest.fixture
def exact_cpu_kernels(monkeypatch):
    """Tests that compare nnslim's logits with the other runtimes' (transformers, ONNX Runtime) to ~1e-4: the packed
    CPU kernels keep fp32 activations (their bf16-activation twins, picked when faster, differ at bf16 rounding)."""
    monkeypatch.setenv("NNSLIM_CPU_PACKED_BF16", "0")
