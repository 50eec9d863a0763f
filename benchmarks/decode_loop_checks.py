"""Two checks of the decode loop behind BENCHMARKS.md 7c / 8c (the report's "decode tok/s"), on IRs / ONNX
files that benchmarks/llm_cpu_deploy.py wrote:

  python benchmarks/decode_loop_checks.py stateful build/llm_cpu/g64.xml
      OpenVINO: the same IR made stateful (KV cache kept inside the infer request, as optimum-intel does,
      via apply_make_stateful_transformation) vs nnslim's explicit past/present loop.
  python benchmarks/decode_loop_checks.py iobinding build/llm_cpu/int4-RTN-g64/model.onnx
      ONNX Runtime: present OrtValues bound straight back as past (I/O binding, no numpy copies) vs the loop.

Batch 1, a random 64-token prompt, 32 new tokens (31 timed steps), tokens/s.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nnslim.runtime.onnx_llm import PAST, PRESENT  # noqa: E402

PROMPT = np.random.default_rng(0).integers(0, 49000, (1, 64))
NEW = 32


def stateful(xml: str) -> None:
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation

    from nnslim.runtime.openvino import OpenVinoRunner

    core = ov.Core()
    model = core.read_model(xml)
    pasts = [p.get_any_name() for p in model.inputs if p.get_any_name().startswith(PAST)]
    shapes = {p.get_any_name(): p.get_partial_shape() for p in model.inputs}
    apply_make_stateful_transformation(model, {n: PRESENT + n[len(PAST):] for n in pasts})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    req.reset_state()
    for st, name in zip(req.query_state(), pasts):  # an empty cache of batch 1
        shp = shapes[name]
        st.state = ov.Tensor(np.zeros((1, shp[1].get_length(), 0, shp[3].get_length()), np.float32))
    p = PROMPT.shape[1]
    out = req.infer({"input_ids": PROMPT, "attention_mask": np.ones((1, p), np.int64), "position_ids": np.arange(p)[None]})
    tok = int(out[compiled.output(0)][0, -1].argmax())
    t = time.perf_counter()
    for i in range(NEW - 1):
        total = p + 1 + i
        out = req.infer({"input_ids": np.array([[tok]]), "attention_mask": np.ones((1, total), np.int64),
                         "position_ids": np.array([[total - 1]])})
        tok = int(out[compiled.output(0)][0, -1].argmax())
    print(f"stateful OpenVINO: {(NEW - 1) / (time.perf_counter() - t):.1f} tok/s")
    runner = OpenVinoRunner(xml)
    runner.decode(PROMPT, 4)
    print(f"explicit past/present loop: {runner.decode(PROMPT, NEW)[1]:.1f} tok/s")


def iobinding(path: str) -> None:
    from nnslim.runtime.onnxruntime import OrtRunner

    r = OrtRunner(path)
    s = r.session

    def decode():
        io = s.io_binding()
        feed = r._feed({"input_ids": PROMPT})
        for k, v in feed.items():
            io.bind_cpu_input(k, v)
        for o in r.output_names:
            io.bind_output(o, "cpu")
        s.run_with_iobinding(io)
        outs, p, toks = io.get_outputs(), PROMPT.shape[1], []
        t = time.perf_counter()
        for i in range(NEW):
            toks.append(int(outs[0].numpy()[0, -1].argmax()))
            if i == NEW - 1:
                break
            total = p + i + 1
            io = s.io_binding()
            io.bind_cpu_input("input_ids", np.array([[toks[-1]]], np.int64))
            io.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
            io.bind_cpu_input("position_ids", np.array([[total - 1]], np.int64))
            for name, val in zip(r.output_names[1:], outs[1:]):
                io.bind_ortvalue_input(PAST + name[len(PRESENT):], val)
            for o in r.output_names:
                io.bind_output(o, "cpu")
            s.run_with_iobinding(io)
            outs = io.get_outputs()
        return toks, (NEW - 1) / (time.perf_counter() - t)

    r.decode(PROMPT, 4)
    decode()
    for _ in range(3):
        a, b = r.decode(PROMPT, NEW), decode()
        print(f"numpy loop {a[1]:.1f} tok/s, I/O binding {b[1]:.1f} tok/s, same tokens {a[0] == b[0]}")


if __name__ == "__main__":
    {"stateful": stateful, "iobinding": iobinding}[sys.argv[1]](sys.argv[2])
