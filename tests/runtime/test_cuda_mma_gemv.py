"""nnslim's tensor-core int4 GEMV (runtime/kernels/cuda_int4_mma_gemv.py, CUDA C compiled by NVRTC).

On CPU: its weight layout is checked against the mma.m16n8k16 fragment layout (PTX ISA) by rebuilding the codes
from it, and its source is compiled for sm_80 / sm_90 where an NVRTC library is found. On a CUDA GPU (device
machine) it runs against the fp32 reference.
"""
import re

import pytest
import torch
from test_cuda_gemv import CUDA, NVRTC, _int4, check_launches, replay_reads_new_x
from torch import nn

from nnslim.runtime.kernels import cuda_int4_gemv as B
from nnslim.runtime.kernels import cuda_int4_mma_gemv as C
from nnslim.runtime.kernels.pdl import enabled


def _codes_from_layout(words: torch.Tensor, n: int, k: int, group: int) -> torch.Tensor:
    """Rebuild the [N, K] codes from the layout the way the kernel's mma reads them: lane L = 4 g + t, register j
    of the A fragment = nibbles (j, j + 4) of word i; A registers 0 / 1 / 2 / 3 hold rows g / g + 8 / g / g + 8 at
    fragment columns (2t, 2t + 1) / (2t, 2t + 1) / (2t + 8, 2t + 9) / (2t + 8, 2t + 9) (PTX ISA, mma.m16n8k16
    .bf16 A layout); the B operand of lane t at step i holds x's words 2 i and 2 i + 1 of its 4 S codes, i.e. those
    columns are codes CW c + 4 S t + 4 i + (0, 1) and (2, 3)."""
    s = C.steps(group)
    tiles, chunks = words.shape[:2]
    out = torch.full((tiles * 16, k), -1, dtype=torch.int64)
    w = words.to(torch.int64) & 0xFFFFFFFF
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(s):
            word = w[:, :, lane, i]
            for j in range(4):
                lo, hi = (word >> (4 * j)) & 15, (word >> (4 * (j + 4))) & 15
                row = g + 8 * (j % 2)
                col0 = 2 * (j // 2)  # fragment columns 2t (+8): x words 2i (2i + 1)
                for c in range(chunks):
                    kk = 16 * s * c + 4 * s * t + 4 * i + col0
                    out[torch.arange(tiles) * 16 + row, kk] = lo[:, c]
                    out[torch.arange(tiles) * 16 + row, kk + 1] = hi[:, c]
    return out[:n]


@pytest.mark.parametrize("n,k,group", [(24, 128, 64), (16, 256, 128), (40, 96, 32), (8, 64, 16), (1064, 128, 128)])
def test_layout_is_the_mma_fragment_layout(n, k, group):
    """Every code lands where the kernel's A fragment expects it (rows past N are padding; 1064 rows: built in two
    blocks)."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (n, k))
    packed = (codes[:, 0::2] | codes[:, 1::2] << 4).to(torch.uint8)
    words = C.to_layout(packed, k, group)
    assert words.shape == (-(-n // 16), k // (16 * C.steps(group)), 32, C.steps(group))
    assert torch.equal(_codes_from_layout(words, n, k, group), codes)


def test_scales_and_zero_offsets_pair_rows_g_and_g_plus_8():
    s = torch.randn(20, 3).to(torch.bfloat16)
    paired = C.pair_rows(s)
    assert paired.shape == (2, 3, 8) and paired.dtype == torch.int32
    bits = s.view(torch.int16).to(torch.int32) & 0xFFFF
    assert int(paired[0, 2, 5]) & 0xFFFF == int(bits[5, 2]) and (int(paired[0, 2, 5]) >> 16) & 0xFFFF == int(bits[13, 2])
    assert (int(paired[1, 1, 3]) >> 16) & 0xFFFF == 0  # row 27 is padding
    z = torch.tensor([0, 8, 15], dtype=torch.uint8)
    neg = C.neg_offsets(z).view(torch.bfloat16).float()
    assert neg.tolist() == [-128.0, -136.0, -143.0]
    assert C.neg_offsets(z, torch.float16).view(torch.float16).float().tolist() == [-1024.0, -1032.0, -1039.0]


def test_switch_and_refusals(monkeypatch):
    from nnslim.errors import NnslimError

    monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMV", "maybe")
    with pytest.raises(NnslimError, match=r"NNSLIM_CUDA_MMA_GEMV='maybe' is not allowed;.* allowed: 0, 1"):
        C.offered()
    monkeypatch.delenv("NNSLIM_CUDA_MMA_GEMV")
    assert C.offered()
    layer = _int4(256, 64, 64, True)
    x = torch.randn(1, 256, dtype=torch.bfloat16, device=layer.qweight.device)
    assert not C.supports(x.float(), 256, 64) and not C.supports(x.repeat(33, 1), 256, 64)
    assert C.fits(dict(KW=16, TPB=1, U=2), 32) and not C.fits(dict(KW=16, TPB=2, U=2, RT=2), 32)
    assert not C.supports(x, 256, 24) and C.steps(32) == 2 and C.steps(16) == 1 and C.steps(256) == 4
    if not CUDA:
        assert not any(c.startswith("cuda-int4mma-") for c in layer._candidates(x))
    with pytest.raises(ValueError, match="tensor-core int4 GEMV: M=33"):
        C.int4_gemv_mma(x.repeat(33, 1), (None, None, None), 64, 64, C.CONFIGS[0])


@pytest.mark.skipif(NVRTC is None or CUDA, reason="no NVRTC library here (set NNSLIM_NVRTC=/path/to/libnvrtc.so or "
                    "install nvidia-cuda-nvrtc), or a GPU is here: its tests compile and run the kernel")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_source_compiles_without_headers_or_spills(arch):
    """Every offered configuration, 1-4 n8 tiles of x rows, with and without zero points, groups of 16-128, bf16 and
    fp16 activations, one or two 16-row tiles per warp."""
    for cfg in C.CONFIGS:
        for nt, has_zero, (k, group) in [(1, False, (11008, 128)), (4, True, (4096, 128)), (2, True, (576, 32)),
                                         (1, False, (256, 16))]:
            rt = max(cfg["RT"], 2 if nt > 1 and C.fits(dict(cfg, RT=2), 8 * nt) else 1)
            src = C.source(k, group, cfg["KW"], cfg["TPB"], nt, cfg["U"], has_zero, arch == "sm_90", f16=nt == 2,
                           rt=rt)
            cubin, log = B.compile_cubin(src, arch, NVRTC, ("--ptxas-options=-v",))
            assert cubin[:4] == b"\x7fELF", cfg
            spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
            assert spills and max(spills) <= 8, (cfg, log[-500:])


@pytest.mark.skipif(not CUDA, reason="the tensor-core GEMV needs a CUDA GPU (its layout and source are checked on "
                    "CPU by the tests above)")
@pytest.mark.parametrize("k,n,group,sym", [(256, 97, 32, True), (512, 80, 64, False), (11008, 24, 128, False),
                                           (1024, 130, 256, True), (4096, 64, 128, True), (96, 40, 32, False)])
@pytest.mark.parametrize("m", [1, 3, 8, 9, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mma_gemv_matches_the_fp32_reference(k, n, group, sym, m, dtype, monkeypatch):
    """Within one rounding of the output dtype of the fp32 reference (products exact, fp32 sums) for every offered
    configuration and 1-32 rows of x, bf16 and fp16, ragged N included; repeatable; offered to the selector unless
    NNSLIM_CUDA_MMA_GEMV=0."""
    layer = _int4(k, n, group, sym)
    if dtype == torch.float16:
        layer = layer.half()
    x = torch.randn(m, k, device="cuda", dtype=dtype) * 3
    ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    assert any(c.startswith("cuda-int4mma-") for c in layer._candidates(x))
    monkeypatch.setenv("NNSLIM_CUDA_MMA_GEMV", "0")
    assert not any(c.startswith("cuda-int4mma-") for c in layer._candidates(x))
    configs = C.CONFIGS + [dict(KW=16, TPB=1, U=2, PDL=False), dict(KW=1, TPB=4, U=8, PDL=True), dict(KW=2, TPB=2, U=4),
                           dict(KW=4, TPB=1, U=2, RT=2), dict(KW=2, TPB=2, U=4, RT=2, PDL=True),
                           dict(KW=1, TPB=1, U=2, RT=3)]
    configs = [c for c in configs if C.fits(c, m)]
    # compiled side by side first (the loop below would compile them one at a time: minutes of device time)
    nt, pdl_on = C.x_tiles(m), enabled(x.device)
    B.precompile(x.device, [C.source(k, group, c["KW"], c["TPB"], nt, c["U"], not sym, bool(c.get("PDL")) and pdl_on,
                                     dtype == torch.float16, c.get("RT", 1)) for c in configs], "int4_mma_gemv")
    check_launches(lambda c: layer._cuda_int4mma(x, c), configs, ref, dtype)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_mma_gemv_under_cuda_graph_as_programmatic_dependent():
    """Captured by a CUDA graph right after the kernel that writes its x (launched as a programmatic dependent on
    sm_90): the replay reads the new x."""
    layer = _int4(4096, 256, 128, False)
    assert replay_reads_new_x(lambda x: layer._cuda_int4mma(x, C.CONFIGS[0]))
