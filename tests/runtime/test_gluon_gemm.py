"""The warp-specialized Gluon int4 GEMM (runtime/kernels/gluon_int4_gemm.py, experimental, issue 17): compiled for
sm_90a here (no GPU needed), refused launches named, and on a Hopper GPU the dequantize-then-matmul reference."""
import pytest
import torch
from torch import nn

from nnslim.runtime.kernels import gluon_int4_gemm as gg

pytestmark = pytest.mark.skipif(gg.gluon is None, reason="this Triton has no Gluon (triton.experimental.gluon)")
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


def test_gluon_gemm_compiles_for_sm90():
    """Every sweep launch compiles for sm_90a: TMA copies of x and the codes, register-A wgmma (the codes'
    dequantized layout converts trivially to the A operand: asserted inside the kernel), within a Hopper SM's
    shared memory, a producer partition of one warp."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    for cfg in gg.WS_CONFIGS:
        bn, bm, bk, w = cfg["BN"], cfg["BM"], cfg["BK"], cfg["num_warps"]
        assert gg.fits(4096, 128, cfg, 4096), cfg
        xl = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.bfloat16)
        ql = gl.NVMMASharedLayout.get_default_for([bn, bk // 2], gl.uint8)
        sig = {"x_desc": f"tensordesc<bf16[{bm}, {bk}],{xl!r}>", "q_desc": f"tensordesc<u8[{bn}, {bk // 2}],{ql!r}>",
               "s_ptr": "*bf16", "y_ptr": "*bf16", "M": "i32", "N": "i32", "stride_ym": "i32"}
        consts = dict(K=4096, GROUP=128, ASM=gg.ASM, BN=bn, BM=bm, BK=bk, STAGES=cfg["STAGES"],
                      CL=gg.codes_layout(bn, bk // 2, w), num_warps=w)
        sig.update({name: "constexpr" for name in consts})
        k = triton.compile(GluonASTSource(fn=gg._int4_gemm_ws_kernel, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": w})
        ptx = k.asm["ptx"]
        assert k.asm["cubin"] and "cp.async.bulk.tensor" in ptx, ("no TMA", cfg)
        assert ptx.count("wgmma.mma_async") >= bk // 16 and "fma.rn.bf16x2" in ptx, ("no register-A wgmma", cfg)
        assert k.metadata.shared <= 227 * 1024, ("shared memory", cfg, k.metadata.shared)


def test_gluon_gemm_refuses_what_it_cannot_run():
    assert not gg.fits(4096, 128, dict(BN=128, BM=128, BK=192, STAGES=4, num_warps=8), 4096)  # BK not in a group
    assert not gg.fits(4096, 128, dict(BN=64, BM=128, BK=64, STAGES=4, num_warps=8), 4096)  # 8 warps need 128 rows
    x = torch.zeros(4, 256, dtype=torch.float16)
    with pytest.raises(ValueError, match="bf16 activations"):
        gg.int4_gemm_ws(x, torch.zeros(64, 128, dtype=torch.uint8), torch.zeros(64, 2, dtype=torch.bfloat16), 128,
                        gg.WS_CONFIGS[0])


@pytest.mark.skipif(not HOPPER, reason="needs an sm_90 GPU (TMA, wgmma, warp specialization): the device machine")
@pytest.mark.parametrize("m,k,n", [(128, 4096, 4096), (77, 512, 200), (300, 1024, 384)])
def test_gluon_gemm_matches_reference(m, k, n):
    """Ragged M and N (TMA zero-fills the edges, the store is masked): within one bf16 rounding of each weight of
    dequantize-then-matmul, for every sweep launch."""
    from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
    from nnslim.quant.weight_only.modules import WeightOnlyLinear
    from nnslim.runtime.kernels import triton_int4_mma

    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=False)
    spec = WeightSpec(4, 128, True)
    scale, zero = group_qparams(lin.weight.detach(), spec, 128)
    layer = WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), scale, zero, spec), scale, zero, spec)
    layer = layer.to("cuda", torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ layer.dequantized_weight(torch.float32).t()
    wperm = triton_int4_mma.to_mma_layout(layer.qweight)
    for cfg in gg.WS_CONFIGS:
        y = gg.int4_gemm_ws(x, wperm, layer.scales.to(torch.bfloat16).contiguous(), 128, cfg)
        err = float((y.float() - ref).norm() / ref.norm())
        assert y.shape == (m, n) and err < 6e-3, (cfg, err)
