"""OpenVINO runtime backend (CPU plugin), reading the same ONNX files ONNX Runtime runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Runner, with_default_inputs


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32"):
        import openvino as ov

        # f32 inference precision: OpenVINO may otherwise pick bf16 on CPUs that have it, which would
        # make an "fp32" row silently lower precision. Int8 nodes in the graph still run as int8.
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        # A port can carry several tensor names (e.g. after fp16 conversion inserts casts).
        self.input_names = [sorted(p.get_names()) for p in self.compiled.inputs]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {}
        inputs = with_default_inputs([n for names in self.input_names for n in names], inputs)
        for i, names in enumerate(self.input_names):
            name = next((n for n in names if n in inputs), None)
            if name is None:
                raise KeyError(f"input {names} of the OpenVINO model not among the given inputs {list(inputs)}")
            feed[i] = np.ascontiguousarray(inputs[name])
        result = self.request.infer(feed)
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)
