"""BENCHMARKS.md 2h: a model built from torch's own layers (a ViT-style image classifier: Conv2d patch embedding,
nn.TransformerEncoder with nn.MultiheadAttention, pre-norm, GELU), int8 on this CPU: nnslim (static QDQ and
dynamic, attention projections reached through graph/attention.py) vs ONNX Runtime's quantizer and NNCF on the
same exported fp32 graph, measured side by side (interleaved latency, output cosine vs fp32 on held-out inputs).

The weights are random (seeded; each block its own) and the model is calibrated on 64 random images and evaluated on
another 8: the table compares tools on one graph (fidelity to the fp32 model, speed), not task accuracy.

usage: python benchmarks/torch_native.py [--dim 384] [--depth 6] [--image 112] [--batch 8] [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import nnslim  # noqa: E402
from int8_cpu import NOTES, nncf_rivals, ort_rivals  # noqa: E402
from nnslim.eval.compare import Variant, compare  # noqa: E402
from nnslim.loading import resolve  # noqa: E402
from nnslim.runtime.onnx_export import export_onnx  # noqa: E402


class TorchViT(nn.Module):
    """A ViT from torch layers only (what torchvision's vit_b_16 is made of)."""

    def __init__(self, dim: int, depth: int, heads: int, image: int, patch: int = 16, classes: int = 100):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        for block in self.encoder.layers:  # the encoder deep-copies one layer: give each its own weights
            for m in block.modules():
                if hasattr(m, "_reset_parameters"):
                    m._reset_parameters()
                elif isinstance(m, nn.Linear):
                    m.reset_parameters()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--image", type=int, default=112)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="build/bench-torch-native")
    args = ap.parse_args()
    print(f"command: python benchmarks/torch_native.py {' '.join(sys.argv[1:])}", flush=True)
    torch.manual_seed(0)
    model = TorchViT(args.dim, args.depth, args.heads, args.image).eval()
    g = torch.Generator().manual_seed(1)
    calib = [{"x": torch.rand(1, 3, args.image, args.image, generator=g)} for _ in range(args.samples)]
    example = {"x": torch.rand(args.batch, 3, args.image, args.image, generator=g)}
    out = Path(args.out)
    t0 = time.perf_counter()
    static = nnslim.compress(model, "int8", calibration=calib, example_inputs=example, out=out / "int8",
                             overwrite=True, report=False)
    static_s = time.perf_counter() - t0
    dynamic = nnslim.compress(model, "int8-dynamic", calibration=calib, example_inputs=example,
                              out=out / "int8-dynamic", overwrite=True, report=False)
    tb = resolve(model, example_inputs=example, calibration=calib).testbed
    work = Path(tempfile.mkdtemp(prefix="torch-native-"))
    fp32 = export_onnx(model, {k: v.numpy() for k, v in example.items()}, work / "fp32.onnx", {"x": {0: "batch"}})
    np_calib = [{k: v.numpy() for k, v in c.items()} for c in calib]
    NOTES.clear()
    variants = [Variant("fp32 ONNX", fp32, "onnxruntime"), Variant("fp32 ONNX", fp32, "openvino"),
                Variant("nnslim int8", static.model, "onnxruntime"), Variant("nnslim int8", static.model, "openvino"),
                Variant("nnslim int8-dynamic", dynamic.model, "onnxruntime")]
    variants += ort_rivals(fp32.path, np_calib, work, True)
    variants += nncf_rivals(fp32.path, np_calib, work / "nncf", True)
    report = compare(tb, [Variant("fp32 torch", model, "torch")] + variants, batch=args.batch,
                     repeats=args.repeats, memory=False, max_seconds=600)
    params = sum(p.numel() for p in model.parameters())
    report.notes = [f"TorchViT dim {args.dim}, depth {args.depth}, heads {args.heads}, image {args.image}, "
                    f"{params:,} parameters; nnslim int8 wall time {static_s:.1f} s with {args.samples} samples",
                    *NOTES, *static.notes] + report.notes
    report.write(out)
    print(report.to_markdown())


if __name__ == "__main__":
    main()
