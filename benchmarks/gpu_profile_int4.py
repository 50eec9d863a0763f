"""Run nnslim's int4 GEMVs and torch's tinygemm on one Llama-7B up-projection (4096 -> 11008, M=1) a few
times, for Nsight Compute. This is diagnostic only; the timings that BENCHMARKS.md reports come from
gpu_llm.py. On the device machine:

  ncu --kernel-name regex:"gemv|tinygemm" --launch-skip 3 --launch-count 3 --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section WarpStateStats --section InstructionStats \
      --section MemoryWorkloadAnalysis python benchmarks/gpu_profile_int4.py [KMAJOR_INDEX PERM_INDEX]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes  # noqa: E402
from nnslim.quant.weight_only.modules import WeightOnlyLinear  # noqa: E402
from nnslim.runtime.kernels import triton_int4  # noqa: E402


def main():
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (run it through the device machine)")
    ki, pi = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (0, 1)
    k, n = 4096, 11008
    lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda")
    spec = WeightSpec(4, 128, True)
    s, z = group_qparams(lin.weight.detach(), spec, 128)
    m = WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), s, z, spec), s, z, spec).cuda()
    x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        m._triton_int4k(x, triton_int4.KMAJOR_CONFIGS[ki])
        m._triton_int4p(x, triton_int4.PERM_CONFIGS[pi])
        m._tinygemm(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
