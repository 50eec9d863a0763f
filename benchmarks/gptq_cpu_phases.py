"""Where streamed CPU GPTQ spends its time and memory, per phase (issue 19; BENCHMARKS.md 10b).

  python benchmarks/gptq_cpu_phases.py [--layers 2] [--dir /tmp/nnslim-big] [--offload /tmp/nnslim-off]

On the 7B-shaped checkpoint of stream_big.py (written there first when missing), int4 GPTQ g128 with 4 x 512
calibration tokens, streamed with offload. Phases are labelled by wrapping nnslim's own functions (capture,
block forwards, building and updating Hessians, GPTQ of the layers of a block, its inverses and sweeps). Peak
memory per phase is exact, not sampled: the kernel's peak RSS (VmHWM) is reset on entering a phase
(/proc/self/clear_refs) and read on leaving it, and a phase's peak counts toward the phases around it.
(An earlier version sampled RSS from a thread; it put a transient in the wrong phase.) Prints one JSON line:
seconds and peak RSS (GB) per phase path.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]


class PeakPhases:
    """Nested phases with their exact peak RSS (Linux >= 4.0: clear_refs 5 resets VmHWM)."""

    def __init__(self):
        self.stack = [["total", 0.0]]
        self.peaks: dict[str, float] = collections.defaultdict(float)
        self.seconds: collections.Counter = collections.Counter()

    @staticmethod
    def hwm() -> float:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 2**20

    @staticmethod
    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def enter(self, label: str) -> None:
        self.stack[-1][1] = max(self.stack[-1][1], self.hwm())
        self.reset()
        self.stack.append([label, 0.0, time.perf_counter()])

    def leave(self) -> None:
        label, peak, t0 = self.stack.pop()
        peak = max(peak, self.hwm())
        path = "/".join([s[0] for s in self.stack[1:]] + [label])
        self.peaks[path] = max(self.peaks[path], peak)
        self.seconds[path] += time.perf_counter() - t0
        self.stack[-1][1] = max(self.stack[-1][1], peak)

    def wrap(self, owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        def wrapped(*a, **k):
            self.enter(label)
            try:
                return f(*a, **k)
            finally:
                self.leave()
        setattr(owner, name, wrapped)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/nnslim-big")
    ap.add_argument("--offload", default="/tmp/nnslim-off")
    args = ap.parse_args()
    import torch

    import nnslim
    import nnslim.graph.hessian as hs
    import nnslim.graph.layerwise as lw
    import nnslim.quant.weight_only.gptq as gq
    from nnslim import Int4GptqConfig
    from stream_big import write_checkpoint

    d = Path(args.dir) / f"llama7b-shaped-{args.layers}"
    if not (d / "model.safetensors.index.json").is_file():
        write_checkpoint(d, args.layers)
    Path(args.offload).mkdir(parents=True, exist_ok=True)
    ph = PeakPhases()
    for owner, name, label in [(lw, "capture_inputs", "capture"), (lw, "feed_block", "feed"),
                               (lw, "call_block", "block forward"), (hs.HessianAccumulator, "__init__", "hessian new"),
                               (hs.HessianAccumulator, "add", "hessian add"), (gq.Gptq, "finish", "gptq of a block"),
                               (gq, "inverse_factor", "inverse"), (gq, "obs_sweep", "sweep")]:
        ph.wrap(owner, name, label)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 32000, (1, 512), generator=g)} for _ in range(4)]
    ph.enter("load")
    m = nnslim.load(d, stream=True, offload_dir=args.offload)
    ph.leave()
    ph.enter("quantize")
    nnslim.quantize(m, Int4GptqConfig(group_size=128, samples=4, seq_len=512), calibration=data, inplace=True)
    ph.leave()
    print(json.dumps({"layers": args.layers, "quantize_s": round(ph.seconds["quantize"], 1),
                      "seconds": {k: round(v, 1) for k, v in ph.seconds.items()},
                      "peak_rss_GB": {k: round(v, 2) for k, v in sorted(ph.peaks.items(), key=lambda kv: -kv[1])}}))


if __name__ == "__main__":
    main()
