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
    shared memory, a producer partition of one warp. In a fresh process: another test in this worker may have
    turned on Triton's CPU interpreter, which replaces the compiler's language for the rest of the process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_gluon_gemm as t; "
            "t._compile_every_launch(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def _compile_every_launch():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    cases = [(cfg, "bf16", False) for cfg in gg.WS_CONFIGS] + [(gg.WS_CONFIGS[0], dt, True) for dt in ("bf16", "fp16")]
    for cfg, dt, has_zero in cases:
        bn, bm, bk, w = cfg["BN"], cfg["BM"], cfg["BK"], cfg["num_warps"]
        assert gg.fits(4096, 128, cfg, 4096), cfg
        xl = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.bfloat16 if dt == "bf16" else gl.float16)
        ql = gl.NVMMASharedLayout.get_default_for([bn, bk // 2], gl.uint8)
        sig = {"x_desc": f"tensordesc<{dt}[{bm}, {bk}],{xl!r}>", "q_desc": f"tensordesc<u8[{bn}, {bk // 2}],{ql!r}>",
               "s_ptr": "*" + dt, "z_ptr": "*u8" if has_zero else "*" + dt, "y_ptr": "*" + dt, "M": "i32",
               "N": "i32", "stride_ym": "i32"}
        consts = dict(K=4096, GROUP=128, HAS_ZERO=has_zero, ASM=gg.ASM if dt == "bf16" else gg.ASM_F16,
                      BASE=128.0 if dt == "bf16" else 1024.0, BN=bn, BM=bm, BK=bk, STAGES=cfg["STAGES"],
                      CL=gg.codes_layout(bn, bk // 2, w), num_warps=w)
        sig.update({name: "constexpr" for name in consts})
        k = triton.compile(GluonASTSource(fn=gg._int4_gemm_ws_kernel, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": w})
        ptx = k.asm["ptx"]
        assert k.asm["cubin"] and "cp.async.bulk.tensor" in ptx, ("no TMA", cfg)
        packed = "fma.rn.bf16x2" if dt == "bf16" else "fma.rn.f16x2"
        assert ptx.count("wgmma.mma_async") >= bk // 16 and packed in ptx, ("register-A wgmma", cfg, dt)
        assert k.metadata.shared <= 227 * 1024, ("shared memory", cfg, k.metadata.shared)


def test_gluon_gemm_refuses_what_it_cannot_run():
    assert not gg.fits(4096, 128, dict(BN=128, BM=128, BK=192, STAGES=4, num_warps=8), 4096)  # BK not in a group
    assert not gg.fits(4096, 128, dict(BN=64, BM=128, BK=64, STAGES=4, num_warps=8), 4096)  # 8 warps need 128 rows
    x = torch.zeros(4, 256, dtype=torch.float32)
    with pytest.raises(ValueError, match="bf16 or fp16 activations"):
        gg.int4_gemm_ws(x, torch.zeros(64, 128, dtype=torch.uint8), torch.zeros(64, 2, dtype=torch.float32), None, 128,
                        gg.WS_CONFIGS[0])
    assert not gg.supports(x, 256, 128)  # a CPU tensor


@pytest.mark.skipif(not HOPPER, reason="needs an sm_90 GPU (TMA, wgmma, warp specialization): the device machine")
@pytest.mark.parametrize("m,k,n,sym,dtype", [
    (128, 4096, 4096, True, torch.bfloat16), (77, 512, 200, True, torch.bfloat16),
    (300, 1024, 384, False, torch.bfloat16), (96, 512, 256, False, torch.float16), (200, 1024, 320, True, torch.float16)])
def test_gluon_gemm_matches_reference(m, k, n, sym, dtype):
    """Ragged M and N (TMA zero-fills the edges, the store is masked), symmetric and asymmetric, bf16 and fp16:
    within one rounding of each weight of dequantize-then-matmul, for every sweep launch; the same bits twice."""
    from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
    from nnslim.quant.weight_only.modules import WeightOnlyLinear
    from nnslim.runtime.kernels import triton_int4_mma

    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=False)
    spec = WeightSpec(4, 128, sym)
    scale, zero = group_qparams(lin.weight.detach(), spec, 128)
    layer = WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), scale, zero, spec), scale, zero, spec)
    layer = layer.to("cuda", dtype)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    ref = x.float() @ layer.dequantized_weight(torch.float32).t()
    wperm = triton_int4_mma.to_mma_layout(layer.qweight)
    bad = []  # every launch's verdict, not only the first wrong one's
    for cfg in gg.WS_CONFIGS:
        y = gg.int4_gemm_ws(x, wperm, layer.scales.to(dtype), None if sym else layer.zeros, 128, cfg)
        err = float((y.float() - ref).norm() / ref.norm())
        again = gg.int4_gemm_ws(x, wperm, layer.scales.to(dtype), None if sym else layer.zeros, 128, cfg)
        if not (y.shape == (m, n) and y.dtype == dtype and err < 6e-3 and torch.equal(again, y)):
            bad.append((cfg, round(err, 4), torch.equal(again, y)))
    assert not bad, bad


def test_gluon_gemm_is_offered_unless_turned_off(monkeypatch):
    """Offered to the selector by default, not with NNSLIM_GLUON_GEMM=0; another value is refused by name."""
    from nnslim.errors import NnslimError

    monkeypatch.delenv("NNSLIM_GLUON_GEMM", raising=False)
    assert gg.offered()
    monkeypatch.setenv("NNSLIM_GLUON_GEMM", "0")
    assert not gg.offered()
    monkeypatch.setenv("NNSLIM_GLUON_GEMM", "yes")
    with pytest.raises(NnslimError, match="NNSLIM_GLUON_GEMM"):
        gg.offered()


@pytest.mark.skipif(not HOPPER, reason="needs an sm_90 GPU (TMA, wgmma, warp specialization): the device machine")
def test_gluon_gemm_joins_the_selector_unless_turned_off(monkeypatch):
    from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    lin = nn.Linear(512, 256, bias=False)
    spec = WeightSpec(4, 128, True)
    scale, zero = group_qparams(lin.weight.detach(), spec, 128)
    layer = WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), scale, zero, spec), scale, zero, spec)
    layer = layer.to("cuda", torch.bfloat16)
    x = torch.randn(128, 512, device="cuda", dtype=torch.bfloat16)
    monkeypatch.setenv("NNSLIM_GLUON_GEMM", "0")
    assert not any(c.startswith("gluon-int4ws-") for c in layer._candidates(x))
    monkeypatch.delenv("NNSLIM_GLUON_GEMM", raising=False)
    cands = layer._candidates(x)
    assert "gluon-int4ws-0" in cands
    ref = x.float() @ layer.dequantized_weight(torch.float32).t()
    assert float((cands["gluon-int4ws-0"]().float() - ref).norm() / ref.norm()) < 6e-3
