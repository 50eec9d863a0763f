"""Where streamed CPU GPTQ spends its time and memory, per phase (issue 19; BENCHMARKS.md 10b).

  python benchmarks/gptq_cpu_phases.py [--layers 2] [--dir /tmp/nnslim-big] [--offload /tmp/nnslim-off]

On the 7B-shaped checkpoint of stream_big.py (written there first when missing), int4 GPTQ g128 with 4 x 512
calibration tokens, streamed with offload. Phases are labelled by wrapping nnslim's own functions (capture,
block forwards, Hessian accumulation, GPTQ of the layers of a block incl. the inverses); a
thread samples VmRSS every 20 ms and keeps the peak per phase. Prints one JSON line: seconds and peak RSS
(GB) per phase.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]


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
    phase, peaks, seconds = ["load"], {}, collections.Counter()

    def rss():
        return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 2**20

    def sample():
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss())
            time.sleep(0.02)

    def label(owner, name, lab):
        f = getattr(owner, name)

        def wrapped(*a, **k):
            old, t = phase[0], time.perf_counter()
            phase[0] = lab if old == "quantize" or lab == "hessian_add" else f"{old}/{lab}"
            try:
                return f(*a, **k)
            finally:
                phase[0] = old
                seconds[lab] += time.perf_counter() - t
        setattr(owner, name, wrapped)

    label(lw, "capture_inputs", "capture")
    label(lw, "feed_block", "feed")
    label(lw, "call_block", "block forward")
    label(hs.HessianAccumulator, "add", "hessian_add")
    label(gq.Gptq, "finish", "gptq of a block")  # (not gptq_quantize: a wrapper holding its H would add a copy)
    threading.Thread(target=sample, daemon=True).start()
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 32000, (1, 512), generator=g)} for _ in range(4)]
    m = nnslim.load(d, stream=True, offload_dir=args.offload)
    phase[0] = "quantize"
    t = time.perf_counter()
    nnslim.quantize(m, Int4GptqConfig(group_size=128, samples=4, seq_len=512), calibration=data, inplace=True)
    total = time.perf_counter() - t
    time.sleep(0.1)
    print(json.dumps({"layers": args.layers, "quantize_s": round(total, 1),
                      "seconds": {k: round(v, 1) for k, v in seconds.items()},
                      "peak_rss_GB": {k: round(v, 2) for k, v in sorted(peaks.items(), key=lambda kv: -kv[1])}}))


if __name__ == "__main__":
    main()
