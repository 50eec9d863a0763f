"""Symmetric weights' zero points in nnslim's deployed graphs: explicit zeros (nnslim's ONNX) vs left out (as
NNCF writes them), in ONNX Runtime and OpenVINO, in one run; and the OpenVINO IR nnslim's `openvino` step
writes (zero-point Subtracts removed, runtime/openvino.drop_zero_weight_offsets) vs a plain conversion.

  python benchmarks/llm_cpu_deploy.py ...    (or any nnslim weight-only LLM ONNX with a KV cache)
  python benchmarks/weight_zero_points.py build/llm_cpu/int4-RTN-g64/model.onnx [--testbed smollm2] [--rounds 8]

Greedy decode, batch 1, prompt 64 + 32 new tokens, prefill excluded, interleaved rounds; prints the median tok/s,
whether the variants' tokens agree, and the CPU flags.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def without_zero_points(src: Path, dst: Path) -> int:
    """The ONNX file with every all-zero zero point input of a weight DequantizeLinear left out."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    inits = {i.name: i for i in proto.graph.initializer}
    dropped = 0
    for node in proto.graph.node:
        if (node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[0] in inits
                and node.input[2] in inits and not np.any(numpy_helper.to_array(inits[node.input[2]]))):
            del node.input[2]
            dropped += 1
    used = {i for n in proto.graph.node for i in n.input}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    onnx.save(proto, str(dst))
    return dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--testbed", default="smollm2")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    import openvino as ov

    from nnslim.io import machine_info
    from nnslim.loading import resolve
    from nnslim.runtime import OnnxModel, make_runner
    from nnslim.runtime.onnx_llm import greedy_decode
    from nnslim.runtime.openvino import onnx_to_ir

    info = machine_info()
    print(f"cpu: {info.get('cpu')}; flags: {info.get('cpu_flags')}", flush=True)
    prompt = resolve(args.testbed).testbed.example_inputs(batch=1, seq=64)["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{without_zero_points(args.model, tmp / 'nozp.onnx')} zero points left out", flush=True)
        plain = ov.convert_model(str(args.model))
        ov.save_model(plain, str(tmp / "plain.xml"), compress_to_fp16=False)
        onnx_to_ir(args.model, tmp / "nnslim.xml")
        variants = {("ONNX, explicit zero points (nnslim)", "onnxruntime"): args.model,
                    ("ONNX, zero points left out", "onnxruntime"): tmp / "nozp.onnx",
                    ("ONNX, explicit zero points (nnslim)", "openvino"): args.model,
                    ("ONNX, zero points left out", "openvino"): tmp / "nozp.onnx",
                    ("IR, plain conversion", "openvino"): tmp / "plain.xml",
                    ("IR, nnslim's openvino step", "openvino"): tmp / "nnslim.xml"}
        runners = {k: make_runner(OnnxModel(Path(f)), k[1]) for k, f in variants.items()}
        rates = {k: [] for k in runners}
        tokens = {}
        for _ in range(args.rounds):
            for k, r in runners.items():
                tokens[k], _, rate = greedy_decode(r.run_all, prompt, 32)
                rates[k].append(rate)
    first = next(iter(tokens.values()))
    print("| graph | runtime | decode tok/s | same tokens as the first row |")
    print("|---|---|---|---|")
    for k in runners:
        print(f"| {k[0]} | {k[1]} | {statistics.median(rates[k]):.1f} | {tokens[k] == first} |")


if __name__ == "__main__":
    main()
