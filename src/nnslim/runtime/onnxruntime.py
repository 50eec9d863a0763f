"""ONNX Runtime backend (CPU execution provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Runner, with_default_inputs
from .onnx_llm import takes_past


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def as_declared(value, ort_type: str) -> np.ndarray:
    """value as the numpy dtype of an ONNX Runtime input type (an fp16 / bf16 model's inputs fed to a float32
    graph)."""
    from ..data import to_numpy

    value = to_numpy(value)
    dtype = _NUMPY_TYPES.get(ort_type)
    return value.astype(dtype, copy=False) if dtype is not None else value


# Thread-pool spinning: never, between the ops of a run only (nnslim's default), or also between runs (ORT's).
SPINNING = ("off", "within-run", "always")


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, spinning: str = "within-run",
                 config: dict[str, str] | None = None):
        """config: extra ONNX Runtime session config entries (e.g. session.qdq_matmulnbits_accuracy_level)."""
        import onnxruntime as ort

        if spinning not in SPINNING:
            raise ValueError(f"spinning={spinning!r}: expected one of {', '.join(SPINNING)}")

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # Worker threads spin between the ops of a run (ONNX Runtime's default: waking sleeping threads for
        # each op cost a token-by-token decode 20-30% on a 16-core Xeon, BENCHMARKS.md 8c) but stop when the
        # run returns, so that they do not steal the cores from whatever runs next (another variant in an
        # interleaved benchmark, or the rest of the user's program).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "off" else "1")
        opts.add_session_config_entry("session.force_spinning_stop", "1" if spinning == "within-run" else "0")
        for key, value in (config or {}).items():
            opts.add_session_config_entry(key, str(value))
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.decodes = takes_past(self.input_names)  # a decoder exported with its KV cache

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        inputs = with_default_inputs(self.input_names, inputs, self.input_shapes)
        for name in self.input_names:
            feed[name] = as_declared(inputs[name], self.input_types[name])
        return feed

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(self.output_names[:1], self._feed(inputs))[0], dtype=np.float32)

    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name (a decoder's logits and its present key/values)."""
        return dict(zip(self.output_names, self.session.run(None, self._feed(inputs))))
