import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NNSLIM_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
try:  # without CUDA, Triton kernels are tested in Triton's interpreter, which must be on before import
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: two threads each would oversubscribe
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and the nnslim processes the tests start
except ImportError:
    pass


@pytest.fixture(scope="session", autouse=True)
def _export_cache(tmp_path_factory):
    """ONNX exports of identical modules are reused within one run (runtime/export_cache.py): one folder for
    both xdist workers (their base temp folders share a parent), removed with pytest's old temp folders."""
    if "NNSLIM_EXPORT_CACHE" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
        os.environ["NNSLIM_EXPORT_CACHE"] = str(root / "export-cache")


@pytest.fixture(scope="session")
def digits():
    from nnslim.testbeds import get_testbed

    tb = get_testbed("digits-cnn")
    return tb, tb.load_model()


@pytest.fixture(scope="session")
def minilm():
    from nnslim.testbeds import get_testbed

    tb = get_testbed("minilm", n_eval=64)
    return tb, tb.load_model()


def files_digest(directory):
    """{relative path: sha256} of every file under directory, to prove inputs stay untouched."""
    import hashlib
    from pathlib import Path

    root = Path(directory)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_llama():
    """A small random Llama (GQA, 2 layers) built from a config: the shape of real decoder LLMs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def llama_samples(n=8, seq=32, vocab=256, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (1, seq), generator=g)} for _ in range(n)]


def apply_step(model, config, calibration=None, example_inputs=None, testbed=None):
    """Run one method through the pipeline as nnslim.quantize/prune do; returns (result, notes)."""
    from pathlib import Path

    from nnslim.context import Context
    from nnslim.data import as_samples
    from nnslim.pipeline import run_steps
    from nnslim.recipe import Recipe

    ctx = Context(workdir=Path("."), source=testbed, user_calibration=as_samples(calibration, model),
                  user_example=example_inputs)
    return run_steps(model, Recipe((config,)), ctx), ctx.notes


@pytest.fixture
def exact_cpu_kernels(monkeypatch):
    """Tests that compare nnslim's logits with the other runtimes' (transformers, ONNX Runtime) to ~1e-4: the packed
    CPU kernels keep fp32 activations (their bf16-activation twins, picked when faster, differ at bf16 rounding)."""
    monkeypatch.setenv("NNSLIM_CPU_PACKED_BF16", "0")
