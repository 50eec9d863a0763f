"""SASS of the tensor-core int4 GEMV (runtime/kernels/cuda_int4_mma_gemv.py) and the time NVRTC takes to compile
its offered launches, here, without a GPU (BENCHMARKS.md 9m).

  NNSLIM_NVRTC=/path/to/libnvrtc.so.13 python benchmarks/sass_int4_mma_gemv.py

(the library of the `nvidia-cuda-nvrtc` wheel; its directory must also be on LD_LIBRARY_PATH for the builtins
library). For each offered launch at M = 1 (one n8 tile), symmetric int4, group 128, K = 4096 and 11008, sm_90 with
PDL: registers, spills, the SASS op counts of the whole kernel (it is fully unrolled: no loop to isolate) read with
Triton's cuobjdump, instructions per code per lane, and the core's share (the dequantization LOP3 / SHF / HFMA2 /
HADD2 and the HMMAs). Then the wall time of compiling the 8 launches of one shape one after the other and in 8
threads (what the selector does for a new shape).
"""
from __future__ import annotations

import collections
import ctypes
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import triton

from nnslim.runtime.kernels import cuda_int4_gemv as B
from nnslim.runtime.kernels import cuda_int4_mma_gemv as C

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
CORE = ("LOP3", "SHF", "HFMA2", "HADD2", "HMMA")


def ops(cubin: bytes) -> collections.Counter:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(CUOBJDUMP), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return collections.Counter(m.group(1).split(".")[0] for m in
                               re.finditer(r"/\*[0-9a-f]{4,5}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass))


def main() -> None:
    path = os.environ.get("NNSLIM_NVRTC")
    if not path:
        raise SystemExit("set NNSLIM_NVRTC=/path/to/libnvrtc.so (e.g. from the nvidia-cuda-nvrtc wheel)")
    lib = ctypes.CDLL(path)
    for k in (4096, 11008):
        for cfg in C.CONFIGS:
            src = C.source(k, 128, cfg["KW"], cfg["TPB"], 1, cfg["U"], False, True, rt=cfg.get("RT", 1))
            cubin, log = B.compile_cubin(src, "sm_90", lib, ("--ptxas-options=-v",))
            regs = re.findall(r"Used (\d+) registers", log)
            spills = re.findall(r"(\d+) bytes spill stores", log)
            n = ops(cubin)
            chunks = -(-(k // 64) // cfg["KW"])  # per warp
            codes = chunks * 64 * 16 / 32 * cfg.get("RT", 1)  # per lane
            core = sum(n[o] for o in CORE)
            print(f"K={k} KW={cfg['KW']} TPB={cfg['TPB']} U={cfg['U']} RT={cfg.get('RT', 1)}: {regs[0]} registers, "
                  f"{spills[0]} bytes spilled; "
                  f"{sum(n.values())} instructions, {sum(n.values()) / codes:.2f} per code, core "
                  f"{core / codes:.2f} per code; {dict(n.most_common(8))}", flush=True)
    for k in (4096, 11008):
        srcs = [C.source(k, 128, c["KW"], c["TPB"], 1, c["U"], False, True, rt=c.get("RT", 1)) for c in C.CONFIGS]
        t = time.perf_counter()
        for s in srcs:
            B.compile_cubin(s, "sm_90", lib)
        one = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: B.compile_cubin(s, "sm_90", lib), srcs))
        print(f"K={k}: compiling the {len(srcs)} launches one after the other {one:.1f} s, in 8 threads "
              f"{time.perf_counter() - t:.1f} s ({os.cpu_count()} CPUs)", flush=True)


if __name__ == "__main__":
    main()
