"""Time of the calibration passes of static int8 PTQ on a testbed (BENCHMARKS.md 8a: MiniLM's PTQ wall time).

  python benchmarks/ptq_passes.py [--testbed minilm] [--samples 300]

Prints the seconds of: SmoothQuant's statistics pass; the minmax range pass over the smoothed inputs and the same
ranges taken from SmoothQuant's per-channel (min, max) (checked equal); bias correction (`correct_biases`) and a
per-token reference of the same shift E[(W - W_q) x] (a second matmul per layer and sample, as nnslim computed it
before 2026-12-05), with the largest relative difference between the two corrections.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbed", default="minilm")
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    from nnslim.io import machine_info
    from nnslim.quant import ptq
    from nnslim.quant.calibration import run_with_hooks
    from nnslim.quant.modules import QuantWrapper
    from nnslim.quant.smoothquant import smoothing_scales
    from nnslim.testbeds import get_testbed

    print(machine_info())
    torch.manual_seed(0)
    tb = get_testbed(args.testbed)
    model = tb.load_model().eval()
    data = [{k: torch.as_tensor(v) for k, v in d.items()} for d in tb.calibration(args.samples)]
    layers = ptq.target_layers(model, ptq.Int8Config(), "transformer")

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    ranges: dict = {}
    smooth, t_smooth = timed(lambda: smoothing_scales(model, layers, data, ptq.DEFAULT_SMOOTHQUANT_ALPHA, ranges))
    full, t_pass = timed(lambda: ptq.calibrate_activations(model, layers, data, "minmax", 99.99, smooth))
    reused, t_reuse = timed(lambda: ptq.calibrate_activations(model, layers, data, "minmax", 99.99, smooth,
                                                              channel_ranges=ranges))
    print(f"smoothquant statistics pass: {t_smooth:.2f} s")
    print(f"minmax ranges: a pass {t_pass:.2f} s, from SmoothQuant's channel ranges {t_reuse:.3f} s, "
          f"equal: {full == reused}")

    q = ptq.quantize_int8(model, ptq.Int8Config(bias_correction=False), data, data[0], notes=[])
    wrappers = {n: m for n, m in q.named_modules() if isinstance(m, QuantWrapper)}
    sums, counts = {}, {}

    def per_token(name, x):  # the reference: (W - W_q) x for every token, then the mean
        m = wrappers[name]
        x = x / m.input_scale if m.input_scale is not None else x
        diff = torch.nn.functional.linear(x, m.float_module.weight - m.dequantized_weight())
        diff = diff.reshape(-1, diff.shape[-1])
        sums[name] = sums.get(name, 0) + diff.double().sum(0)
        counts[name] = counts.get(name, 0) + diff.shape[0]

    _, t_ref = timed(lambda: torch.no_grad()(run_with_hooks)(q, wrappers, data, per_token, desc="reference"))
    before = {n: m.float_module.bias.detach().clone() for n, m in wrappers.items()}
    _, t_bc = timed(lambda: ptq.correct_biases(q, data))
    rel = max(float(((m.float_module.bias.detach() - before[n]) - sums[n] / counts[n]).abs().max()
                    / (sums[n] / counts[n]).abs().max()) for n, m in wrappers.items())
    print(f"bias correction: correct_biases {t_bc:.2f} s, per-token reference {t_ref:.2f} s, "
          f"largest relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
