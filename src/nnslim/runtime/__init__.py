"""Backends that run a model on named numpy inputs: torch, ONNX Runtime, OpenVINO.

Every backend is a Runner: `runner(inputs: dict[str, np.ndarray]) -> np.ndarray` (float32 output),
so metrics and latency code never care which runtime executes the model.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import NnslimError, bad_value
from .base import OnnxModel, Runner, TorchRunner

BACKENDS = ("torch", "onnxruntime", "openvino")


def make_runner(model, backend: str | None = None, threads: int | None = None) -> Runner:
    """A Runner for an nn.Module (torch) or an OnnxModel/.onnx path (onnxruntime or openvino)."""
    import torch

    if isinstance(model, (str, Path)):
        model = OnnxModel(Path(model))
    if isinstance(model, torch.nn.Module):
        if backend not in (None, "torch"):
            raise bad_value("--backend", backend, "torch for a PyTorch model (compress with "
                            "--method onnx to run it in onnxruntime or openvino)")
        return TorchRunner(model)
    if isinstance(model, OnnxModel) and model.is_ir and backend not in (None, "openvino"):
        raise bad_value("--backend", backend, "openvino for an OpenVINO IR (openvino_model.xml)")
    if isinstance(model, OnnxModel) and len(model.graphs) > 1:
        from .onnx_seq2seq import Seq2SeqRunner

        return Seq2SeqRunner(model.path, lambda f: _graph_runner(f, backend, threads))
    if isinstance(model, OnnxModel):
        return _graph_runner(model.path, backend, threads)
    raise bad_value("model", type(model).__name__, "torch.nn.Module, OnnxModel or a .onnx path")


def _graph_runner(path: Path, backend: str | None, threads: int | None) -> Runner:
    """A runner for one ONNX graph file (or OpenVINO IR)."""
    backend = backend or ("openvino" if path.suffix == ".xml" else "onnxruntime")
    if backend in ("onnxruntime", "openvino"):
        _require(backend)
    if backend == "onnxruntime":
        from .onnxruntime import OrtRunner
        return OrtRunner(path, threads=threads)
    if backend == "openvino":
        from .openvino import OpenVinoRunner
        return OpenVinoRunner(path, threads=threads)
    raise bad_value("--backend", backend, "onnxruntime, openvino for an ONNX model")


def _require(backend: str) -> None:
    """A clear error when the runtime asked for cannot be imported here (uninstalled, or a broken install)."""
    import importlib

    try:
        importlib.import_module(backend)
    except ImportError as e:
        other = "openvino" if backend == "onnxruntime" else "onnxruntime"
        raise NnslimError(f"--backend={backend!r}: {backend} cannot be imported here ({e}); install it "
                          f"(pip install {backend}) or pass --backend {other}") from None


__all__ = ["BACKENDS", "OnnxModel", "Runner", "TorchRunner", "make_runner"]
