"""An LSTM-heavy model on this CPU: nnslim int8-dynamic vs ONNX Runtime's quantize_dynamic, side by side in one run.
Both turn each ONNX LSTM into ONNX Runtime's com.microsoft DynamicQuantizeLSTM (int8 weights: nnslim per gate row,
ORT per direction; inputs quantized inside the op); "nnslim int8-dynamic, lstm false" keeps standard ONNX (the
LSTM float, the Linear int8), what nnslim wrote before.

  python benchmarks/lstm_int8_cpu.py [--batch 8] [--time 64] [--runs 30]

Model: LSTM(256 -> 512, 2 layers) + Linear(512 -> 32) over [batch, time, 256], random weights; each variant's
max abs difference from torch fp32 beside its ONNX Runtime latency (2 intra-op threads, median of interleaved runs).
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(256, 512, num_layers=2, batch_first=True)
        self.fc = nn.Linear(512, 32)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


def _flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
        return " ".join(f for f in flags if f.startswith(("avx2", "avx512", "amx")) or f == "avx_vnni")
    except OSError:
        return "?"


def main():
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import nnslim

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--time", type=int, default=64)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(args.batch, args.time, 256)
    work = Path(tempfile.mkdtemp(prefix="nnslim-lstm-"))
    ours = nnslim.compress(model, ["int8-dynamic"], example_inputs={"x": x[:2]}, out=work / "nnslim",
                           report=False)
    plain = nnslim.compress(model, [{"method": "int8-dynamic", "lstm": False}], example_inputs={"x": x[:2]},
                            out=work / "nnslim-plain", report=False)
    fp32 = work / "fp32.onnx"
    torch.onnx.export(model, (x,), str(fp32), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "batch", 1: "time"}})
    rival = work / "ort_dynamic.onnx"
    quantize_dynamic(str(fp32), str(rival), weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    paths = {"fp32 ONNX": fp32, "nnslim int8-dynamic, lstm false": Path(plain.model.path),
             "nnslim int8-dynamic": Path(ours.model.path), "ORT quantize_dynamic": rival}
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feed = {"x": x.numpy()}
    with torch.no_grad():
        ref = model(x).numpy()
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    times = {k: [] for k in sessions}
    for _ in range(args.runs):  # interleaved
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    import onnx

    print(f"# LSTM int8 on {platform.processor() or platform.machine()} ({_flags()}), onnxruntime {ort.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; batch {args.batch} x time {args.time}")
    print("| variant | ops that hold the LSTM | ms (median) | vs fp32 | max abs diff vs torch fp32 |")
    print("|---|---|---|---|---|")
    base = float(np.median(times["fp32 ONNX"]))
    for k, s in sessions.items():
        ops = sorted({n.op_type for n in onnx.load(str(paths[k])).graph.node if "LSTM" in n.op_type})
        ms = float(np.median(times[k])) * 1e3
        err = float(np.abs(s.run(None, feed)[0] - ref).max())
        print(f"| {k} | {', '.join(ops)} | {ms:.2f} | {base * 1e3 / ms:.2f}x | {err:.2e} |")


if __name__ == "__main__":
    main()
