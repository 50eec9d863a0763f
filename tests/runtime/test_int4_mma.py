"""The int4 GEMM on MMA-permuted codes (runtime/kernels/triton_int4_mma.py) against the reference.

On CPU its fp32-dequantization path runs in Triton's interpreter (the permutation, the tile loop, split-K);
the packed bf16x2 PTX path is compiled for sm_90 with Triton's bundled ptxas (no GPU needed) and run on
the device machine's GPU.
"""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
from nnslim.quant.weight_only.modules import WeightOnlyLinear

CUDA = torch.cuda.is_available()
try:
    import triton  # noqa: F401  (the test extra installs it)
except ImportError as e:
    raise ImportError("triton is not installed: run `make test`, which installs the test extra") from e
if not CUDA:
    from nnslim.runtime.kernels import interpret

    interpret.enable()
from nnslim.runtime.kernels import triton_int4_mma as mma  # noqa: E402

DEV = "cuda" if CUDA else "cpu"


def _layer(k, n, group, sym, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=False)
    spec = WeightSpec(4, group, sym)
    g = spec.group_for(k)
    scale, zero = group_qparams(lin.weight.detach(), spec, g)
    return WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), scale, zero, spec), scale, zero,
                                       spec).to(DEV)


def test_mma_layout_permutes_each_32_byte_block():
    """Byte 4t + c of every 32-byte block lands at 8c + t (a lane's bytes of an A-operand row become
    contiguous); the inverse restores the canonical codes; K not a multiple of 64 is refused."""
    q = torch.arange(2 * 64, dtype=torch.int32).remainder(256).to(torch.uint8).reshape(2, 64)
    p = mma.to_mma_layout(q)
    for j in range(64):
        b, t, c = j // 32, (j % 32) // 4, j % 4
        assert int(p[1, 32 * b + 8 * c + t]) == int(q[1, j])
    assert torch.equal(mma.from_mma_layout(p), q)
    with pytest.raises(ValueError, match="multiple of 64"):
        mma.to_mma_layout(torch.zeros(3, 48, dtype=torch.uint8))


@pytest.mark.parametrize("k,n,group,sym", [(256, 72, 64, True), (512, 40, 128, False), (256, 24, -1, True)])
@pytest.mark.parametrize("m", [3, 33])
def test_mma_gemm_matches_reference(k, n, group, sym, m):
    """Every tile shape that fits (ragged M and N, split-K) gives the dequantized reference: exact up to
    float summation on CPU (fp32 path), within one bf16 rounding of each weight on the GPU (packed path
    for bf16, fp32 path for fp16); tiles that do not fit the group are refused by name."""
    layer = _layer(k, n, group, sym)
    dtypes = [torch.bfloat16, torch.float16] if CUDA else [torch.float32]
    configs = [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, num_warps=1),
               dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, num_warps=2, GROUP_N=1),
               dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4)]
    if CUDA:
        configs += [dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=4),
                    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=4)]
    tried = 0
    for dtype in dtypes:
        x = torch.randn(m, k, device=DEV, dtype=dtype)
        ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
        for cfg in configs:
            if not mma.fits(k, layer.group, cfg["BLOCK_K"]):
                with pytest.raises(ValueError, match="BLOCK_K"):
                    layer._triton_int4mma(x, cfg)
                continue
            tried += 1
            y = layer._triton_int4mma(x, cfg)
            assert y.dtype == dtype and y.shape == (m, n)
            err = float((y.float() - ref).norm() / ref.norm())
            assert err < (6e-3 if CUDA else 1e-5), (dtype, cfg, err)
    assert tried >= 2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the selector offers the kernel on CUDA only")
def test_mma_gemm_is_a_selector_candidate_for_batches():
    layer = _layer(256, 64, 128, True)
    assert any(c.startswith("triton-int4mma-") for c in layer._candidates(torch.zeros(64, 256, device=DEV,
                                                                                     dtype=torch.bfloat16)))
    assert not any(c.startswith("triton-int4mma-") for c in layer._candidates(torch.zeros(1, 256, device=DEV,
                                                                                         dtype=torch.bfloat16)))


def test_mma_gemm_compiles_for_sm90():
    """The packed path assembles for sm_90 with and without zero points: wgmma with the weight from
    registers, packed bf16x2 FMAs, and no 1-byte shared-memory loads of the codes (the permuted layout
    gives each lane contiguous bytes). In a fresh process: this module may run Triton's interpreter."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from nnslim.runtime.kernels import triton_int4_mma as mma
for has_zero in (False, True):
    sig = {"x_ptr": "*bf16", "qw_ptr": "*u8", "s_ptr": "*bf16", "z_ptr": "*u8" if has_zero else "*bf16",
           "y_ptr": "*bf16", "M": "i32", "N": "i32", "stride_xm": "i32", "stride_ym": "i32"}
    consts = dict(K=4096, GROUP=128, HAS_ZERO=has_zero, ASM=mma._asm(), PACKED=True, BLOCK_M=128, BLOCK_N=64,
                  BLOCK_K=128, GROUP_N=8, SPLIT_K=1)
    sig.update({name: "constexpr" for name in consts})
    src = triton.compiler.ASTSource(fn=mma._int4_gemm_mma_kernel, signature=sig, constexprs=consts,
                                    attrs={(i,): [["tt.divisibility", 16]] for i in range(9)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=4))
    ptx = k.asm["ptx"]
    assert k.asm["cubin"] and "wgmma.mma_async" in ptx, "no wgmma"
    assert ptx.count("fma.rn.bf16x2") >= 16, "no packed FMAs"
    assert "ld.shared.u8" not in ptx and "ld.shared.b8" not in ptx, "codes read byte by byte"
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
