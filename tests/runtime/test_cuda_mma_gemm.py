"""nnslim's tensor-core int4 GEMM on the GEMV's layout (runtime/kernels/cuda_int4_mma_gemm.py, CUDA C by NVRTC).

On CPU: the launch arithmetic (shared memory, which tiles fit which M), the switch, and the source compiled for
sm_80 / sm_90 where an NVRTC library is found. On a CUDA GPU (device machine): every launch against the fp32
reference, split-K bit-identical run to run with its counters back at zero, and under a CUDA graph.
"""
import re

import pytest
import torch
from test_cuda_gemv import CUDA, NVRTC, _int4, check_launches, replay_reads_new_x
from torch import nn

from nnslim.runtime.kernels import cuda_int4_gemv as B
from nnslim.runtime.kernels import cuda_int4_mma_gemm as G


def test_launch_arithmetic_and_switch(monkeypatch):
    cfg = dict(WARPS=8, RT=1, NT=16, U=2, STAGES=3, SPLIT=1)
    # per stage: 128 rows of x (2 chunks + 8 values of padding), 8 tiles x 2 chunks of codes (512 bytes at S = 4),
    # their scale and zero words (32 bytes each)
    assert G.smem_bytes(cfg, 128) == 3 * (2 * 128 * (2 * 64 + 8) + 16 * 512 + 16 * 32 * 2)
    assert G.smem_bytes(cfg, 32, has_zero=False) == 3 * (2 * 128 * (2 * 32 + 8) + 16 * 256 + 16 * 32)
    assert G.fits(cfg, 128, 128) and G.fits(cfg, 128, 113) and not G.fits(cfg, 128, 64)
    assert G.fits(dict(cfg, NT=4), 128, 16) and not G.fits(dict(cfg, NT=8), 128, 16)
    assert not G.fits(dict(cfg, STAGES=8, U=4), 128, 128)
    monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMM", "1")
    assert G.offered()
    monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMM", "0")
    assert not G.offered()
    x = torch.randn(32, 256, dtype=torch.bfloat16)
    assert not G.supports(x[:8], 256, 64) and not G.supports(x.float(), 256, 64) and not G.supports(x, 256, 24)
    if not CUDA:
        assert not G.supports(x, 256, 64)  # no GPU: never offered
        layer = _int4(256, 64, 64, True)
        monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMM", "1")
        assert not any(c.startswith("cuda-int4mmag-") for c in layer._candidates(x))


@pytest.mark.skipif(NVRTC is None or CUDA, reason="no NVRTC library here (set NNSLIM_NVRTC=/path/to/libnvrtc.so or "
                    "install nvidia-cuda-nvrtc), or a GPU is here: its tests compile and run the kernel")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_source_compiles_without_headers_or_spills(arch):
    """Every offered launch, with and without zero points, groups of 16-128, bf16 and fp16 activations."""
    for cfg in G.CONFIGS:
        for has_zero, f16, (k, group) in [(False, False, (11008, 128)), (True, True, (4096, 128)),
                                          (True, False, (576, 32)), (False, True, (256, 16))]:
            src = G.source(k, group, cfg, has_zero, arch == "sm_90", f16)
            cubin, log = B.compile_cubin(src, arch, NVRTC, ("--ptxas-options=-v",))
            assert cubin[:4] == b"\x7fELF", cfg
            spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
            assert spills and max(spills) <= 8, (cfg, log[-500:])


@pytest.mark.skipif(not CUDA, reason="the tensor-core GEMM needs a CUDA GPU (its source is checked on CPU above)")
@pytest.mark.parametrize("k,n,group,sym", [(256, 97, 32, True), (512, 80, 64, False), (11008, 48, 128, False),
                                           (1024, 300, 256, True), (96, 40, 32, False), (128, 64, 64, True)])
@pytest.mark.parametrize("m", [16, 37, 128, 200])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mma_gemm_matches_the_fp32_reference(k, n, group, sym, m, dtype, monkeypatch):
    """Within one rounding of the output dtype of the fp32 reference for every launch (fitting M or not: a tile
    taller than M must still be right), ragged N and M, split-K over ragged K ranges; repeatable bit for bit;
    offered to the selector only with NNSLIM_CUDA_MMA_GEMM=1."""
    layer = _int4(k, n, group, sym)
    if dtype == torch.float16:
        layer = layer.half()
    x = torch.randn(m, k, device="cuda", dtype=dtype) * 3
    ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMM", "1")
    assert any(c.startswith("cuda-int4mmag-") for c in layer._candidates(x))
    monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMM", "0")
    assert not any(c.startswith("cuda-int4mmag-") for c in layer._candidates(x))
    extra = [dict(WARPS=2, RT=1, NT=2, U=1, STAGES=2, SPLIT=3, PDL=False),
             dict(WARPS=1, RT=3, NT=4, U=3, STAGES=4, SPLIT=1)]
    check_launches(lambda c: layer._cuda_int4mmag(x, c), G.CONFIGS + extra, ref, dtype)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_split_k_leaves_its_counters_at_zero_and_runs_under_a_cuda_graph():
    """The last K range of a tile resets its counter (the next launch, and a graph replay, start from zero); a
    capture right after the kernel that writes x reads the new x on replay."""
    from nnslim.runtime.kernels.triton_int4_mma import _WORKSPACE

    layer = _int4(4096, 512, 128, False)
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    split = next(c for c in G.CONFIGS if c["SPLIT"] > 1)
    y = layer._cuda_int4mmag(x, split)
    torch.cuda.synchronize()
    assert int(_WORKSPACE[str(x.device)][1].abs().sum()) == 0
    assert torch.equal(y, layer._cuda_int4mmag(x, dict(split, PDL=False)))
    assert replay_reads_new_x(lambda x: layer._cuda_int4mmag(x, split), m=64)
