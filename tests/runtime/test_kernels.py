"""nnslim's Triton kernels against the dequantize-then-matmul reference.

On CPU they run in Triton's interpreter (TRITON_INTERPRET=1, set by kernels.interpret.enable) when
triton is installed (the `test` extra installs it); on CUDA (device machine) they are compiled, and
torch's own packed kernels are checked too.
"""
import pytest
import torch
from torch import nn

from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
from nnslim.quant.weight_only.modules import WeightOnlyLinear

CUDA = torch.cuda.is_available()
try:
    import triton  # noqa: F401  (the test extra installs it; kernels are checked in its CPU interpreter)
except ImportError as e:
    raise ImportError("triton is not installed: run `make test`, which installs the test extra") from e
if not CUDA:
    from nnslim.runtime.kernels import interpret

    interpret.enable()
from nnslim.runtime.kernels import triton_int4, triton_int4_mma as mma, triton_w8a8  # noqa: E402

DEV = "cuda" if CUDA else "cpu"


def _split_and_unsplit(configs: list[dict]) -> list[dict]:
    """In Triton's (slow) CPU interpreter: the first split-K and the first unsplit launch configuration; on
    CUDA every configuration is checked."""
    split = [c for c in configs if c.get("SPLIT_K", 1) > 1][:1]
    return split + [c for c in configs if c.get("SPLIT_K", 1) == 1][:1]


def _int4(k, n, group, sym, weight=None, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=False)
    if weight is not None:
        lin.weight.data.copy_(weight)
    spec = WeightSpec(4, group, sym)
    g = spec.group_for(k)
    scale, zero = group_qparams(lin.weight.detach(), spec, g)
    q = quantize_codes(lin.weight.detach(), scale, zero, spec)
    return WeightOnlyLinear.from_codes(lin, q, scale, zero, spec).to(DEV)


@pytest.mark.parametrize("k,n,group,sym", [(192, 96, 64, True), (256, 80, 32, False), (96, 40, -1, True)])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_triton_int4_matches_reference(k, n, group, sym, m):
    layer = _int4(k, n, group, sym)
    configs = triton_int4.GEMV_CONFIGS + [dict(BLOCK_N=64, UNROLL=2, SPLIT_K=1, num_warps=4)] if m == 1 else triton_int4.GEMM_CONFIGS[:2] + triton_int4.GEMM_CONFIGS[4:5]
    configs = configs if CUDA else _split_and_unsplit(configs)
    for dtype in ([torch.bfloat16, torch.float16] if CUDA else [torch.float32]):
        x = torch.randn(m, k, device=DEV, dtype=dtype)
        ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
        for cfg in configs:
            y = torch.full((m, n), float("nan"), device=DEV)  # poisoned: every element must be written
            y = layer._triton_int4(x, cfg)
            if "BLOCK_M" not in cfg and cfg["SPLIT_K"] > 1:  # per-layer counters must be back at zero
                y2 = layer._triton_int4(x, cfg)
                assert torch.equal(y, y2)
            assert not torch.isnan(y).any()
            err = float((y.float() - ref).norm() / ref.norm())
            assert err < (1e-2 if dtype != torch.float32 else 1e-5), (cfg, dtype, err)


@pytest.mark.parametrize("k,n,group,sym", [(256, 96, 64, True), (512, 80, 32, False), (96 * 4, 40, -1, True),
                                           (1024, 24, 128, False)])
@pytest.mark.parametrize("m", [3, 1] if CUDA else [3])  # Triton's CPU interpreter is slow: rows 0-2 cover M
def test_kmajor_gemv_reads_stored_codes(k, n, group, sym, m):
    """The K-major GEMV reads the canonical packed weight directly; every tile shape that fits the
    group is exact vs the dequantized reference, split-K (last CTA) included, and repeatable."""
    layer = _int4(k, n, group, sym)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16 if CUDA else torch.float32)
    ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    tried = 0
    fits = [c for c in triton_int4.KMAJOR_CONFIGS if triton_int4.kmajor_tile(k, layer.group, c["BLOCK_K"]) is not None]
    for cfg in triton_int4.KMAJOR_CONFIGS:
        if cfg not in fits:
            with pytest.raises(ValueError, match="BLOCK_K"):
                layer._triton_int4k(x, cfg)
            continue
        if not CUDA and cfg not in _split_and_unsplit(fits):
            continue
        tried += 1
        y = layer._triton_int4k(x, cfg)
        assert torch.equal(y, layer._triton_int4k(x, cfg)), cfg
        err = float((y.float() - ref).norm() / ref.norm())
        assert err < (1e-2 if CUDA else 1e-5), (cfg, err)
    assert tried >= 1
    if CUDA:  # offered to the kernel selector on CUDA only
        assert any(c.startswith("triton-int4k-") for c in layer._candidates(x))


@pytest.mark.parametrize("k,n,group,sym", [(256, 96, 64, True), (512, 80, 32, False), (96 * 4, 40, -1, True),
                                           (1024, 24, 128, False)])
def test_perm_gemv(k, n, group, sym):
    """The permuted-layout GEMV (v = 1 + q/16 trick) is exact vs the dequantized reference, for every
    launch configuration, split-K included, with and without zero points."""
    layer = _int4(k, n, group, sym)
    bw = triton_int4.perm_tile_words(k, layer.group)
    assert bw is not None
    codes = layer.codes()
    wp = triton_int4.to_kernel_layout_perm(codes, bw)  # nibble j of word w of tile t is k = 8*bw*t + bw*j + w
    tiles = k // (8 * bw)
    t, j, w, row = 1 % tiles, 5, bw - 1, 19 % n
    word = wp[((row // 16) * tiles + t) * 16 * bw + (row % 16) * bw + w]  # [row block, tile, row, word]
    assert int((word >> (4 * j)) & 15) == int(codes[row, 8 * bw * t + bw * j + w])
    # in Triton's (slow) CPU interpreter: two rows, a split-K and an unsplit configuration
    configs = triton_int4.PERM_CONFIGS if CUDA else [triton_int4.PERM_CONFIGS[1], triton_int4.PERM_CONFIGS[5]]
    for m in (1, 2) if CUDA else (2,):
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16 if CUDA else torch.float32)
        ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
        for cfg in configs:
            y = layer._triton_int4p(x, cfg)
            assert torch.equal(y, layer._triton_int4p(x, cfg)), cfg
            err = float((y.float() - ref).norm() / ref.norm())
            assert err < (1e-2 if CUDA else 1e-5), (cfg, err)



@pytest.mark.skipif(not CUDA, reason="the packed-bf16x2 GEMV is PTX inline assembly: it needs a CUDA GPU "
                    "(its compilation for sm_90 is checked on CPU by test_x2_gemv_compiles_for_sm90)")
@pytest.mark.parametrize("k,n,group,sym", [(256, 96, 32, True), (512, 80, 64, False), (2048, 24, 128, False),
                                           (1024, 136, 256, True)])
@pytest.mark.parametrize("m", [1, 3])
def test_x2_gemv_reads_stored_codes(k, n, group, sym, m):
    """The packed-bf16x2 GEMV reads the canonical packed weight: within one bf16 rounding of the fp32
    reference for every configuration that fits, split-K included, repeatable, offered for bf16 only."""
    from nnslim.runtime.kernels import triton_int4_gemv

    layer = _int4(k, n, group, sym)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16) * 3
    ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    tried = 0
    for cfg in triton_int4_gemv.X2_CONFIGS + [dict(BLOCK_N=16, BLOCK_K=256, SPLIT_K=3, num_warps=2)]:
        if not triton_int4_gemv.supports(x, k, layer.group, cfg["BLOCK_K"]):
            continue
        tried += 1
        y = layer._triton_int4x(x, cfg)
        assert torch.equal(y, layer._triton_int4x(x, cfg)), cfg
        err = float((y.float() - ref).norm() / ref.norm())
        assert err < 6e-3, (cfg, err)
    assert tried >= 2
    assert any(c.startswith("triton-int4x-") for c in layer._candidates(x))
    assert not any(c.startswith("triton-int4x-") for c in layer._candidates(x.half()))
    with pytest.raises(ValueError, match="bf16"):
        layer._triton_int4x(x.half(), triton_int4_gemv.X2_CONFIGS[0])


def test_x2_lop3_truth_table_is_and_then_or():
    """The packed GEMV's one LOP3 (truth table 0xEA over a, b, c = 0xF0, 0xCC, 0xAA) computes (a & mask) | magic bit
    for bit, as the AND and OR it replaced did (checked on words with every nibble value in both halves)."""
    import re

    from nnslim.runtime.kernels import triton_int4_gemv

    merged, apart = triton_int4_gemv._asm(), triton_int4_gemv._asm(merged=False)
    lut = {int(v, 16) for v in re.findall(r"lop3\.b32 [^;]*, (0x[0-9A-Fa-f]+);", merged)}
    assert lut == {0xEA} and merged.count("lop3.b32") == 4 and "or.b32" not in merged
    assert apart.count("and.b32 c,") == 4 and apart.count("or.b32") == 4 and "lop3" not in apart
    assert merged.count("fma.rn.bf16x2") == apart.count("fma.rn.bf16x2") == 8
    mask, magic = 0x000F000F, triton_int4_gemv.MAGIC
    words = [sum(((q + i) % 16) << (4 * j) for j in range(8)) for q in range(16) for i in (0, 3, 7)]
    for w in words + [0, 0xFFFFFFFF]:
        for shift in (0, 4, 8, 12):
            a = w >> shift
            lop3 = sum((((0xEA >> ((((a >> bit) & 1) << 2) | (((mask >> bit) & 1) << 1) | ((magic >> bit) & 1))) & 1)
                        << bit) for bit in range(32))
            assert lop3 == (a & mask) | magic


def _compiles_in_fresh_process(code: str) -> None:
    """Run `code` (which prints ok) in a new Python without Triton's interpreter: this module may have enabled it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_x2_gemv_compiles_for_sm90():
    """The inline PTX of the packed GEMV assembles for sm_90 (Triton's bundled ptxas; no GPU needed), with
    and without zero points, and loads the weight in 16-byte vectors. In a fresh process: this module
    runs Triton's interpreter on CPU, which replaces the compiled kernels."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from nnslim.runtime.kernels import triton_int4_gemv as g
from nnslim.runtime.kernels.triton_int4 import kmajor_tile
for has_zero in (False, True):
    cfg = g.X2_CONFIGS[0]
    ng, gw = kmajor_tile(4096, 128, cfg["BLOCK_K"])
    sig = {"x_ptr": "*i32", "wq_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8" if has_zero else "*bf16",
           "y_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "N": "i32", "stride_xm": "i32", "stride_ym": "i32"}
    consts = dict(K=4096, GROUP=128, HAS_ZERO=has_zero, NEG_BASE=g.NEG_BASE, ASM=g._asm(), BLOCK_N=cfg["BLOCK_N"],
                  NG=ng, GW=gw, SPLIT_K=cfg["SPLIT_K"], PREFETCH=has_zero, PDL=has_zero)
    sig.update({name: "constexpr" for name in consts})
    src = triton.compiler.ASTSource(fn=g._int4_gemv_x2_kernel, signature=sig, constexprs=consts,
                                    attrs={(i,): [["tt.divisibility", 16]] for i in range(10)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=cfg["num_warps"]))
    assert k.asm["cubin"] and k.asm["ptx"].count("fma.rn.bf16x2") >= 8, "no packed FMAs"
    assert k.asm["ptx"].count("lop3.b32") >= 4, "mask and magic not merged"
    assert ("griddepcontrol.wait" in k.asm["ptx"]) == has_zero, "programmatic dependent launch"
    assert "ld.global.v4" in k.asm["ptx"], "weight not loaded in 16-byte vectors"
print("ok")
"""
    _compiles_in_fresh_process(code)


@pytest.mark.parametrize("k,n,group,sym", [(256, 96, 64, True), (512, 80, 32, False), (96 * 4, 40, -1, True),
                                           (1024, 24, 128, False)])
@pytest.mark.parametrize("m", [2, 17])
def test_tensor_core_gemm_and_dequantizer_read_stored_codes(k, n, group, sym, m):
    """The tensor-core GEMM (both operand orders) and the one-kernel dequantizer read the canonical packed
    weight: exact vs the dequantized reference for every tile that fits, ragged M and N included."""
    layer = _int4(k, n, group, sym)
    dtype = torch.bfloat16 if CUDA else torch.float32
    x = torch.randn(m, k, device=DEV, dtype=dtype)
    ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    small = [dict(c, BLOCK_M=16, BLOCK_N=32, num_stages=1) for c in triton_int4.TC_CONFIGS[:1]]
    configs = small + [dict(small[0], SWAP=False, BLOCK_K=32), dict(small[0], BLOCK_K=32, GROUP_N=1),
                       dict(small[0], BLOCK_K=32, SPLIT_K=3)]
    if CUDA:
        configs += triton_int4.TC_CONFIGS
    tried = 0
    for cfg in configs:
        if not triton_int4.tc_fits(k, layer.group, cfg["BLOCK_K"]):
            with pytest.raises(ValueError, match="BLOCK_K"):
                layer._triton_int4tc(x, cfg)
            continue
        tried += 1
        y = layer._triton_int4tc(x, cfg)
        err = float((y.float() - ref).norm() / ref.norm())
        assert err < (1e-2 if CUDA else 1e-5), (cfg, err)
    assert tried >= 2
    w = layer._triton_dequant(dtype)
    assert torch.equal(w, layer.dequantized_weight(dtype)) if not CUDA else \
        float((w.float() - layer.dequantized_weight(torch.float32)).abs().max()) < 1e-2
    if CUDA:
        cands = layer._candidates(torch.zeros(64, k, device=DEV, dtype=dtype))
        assert any(c.startswith("triton-int4tc-") for c in cands) and "triton-int4dq" in cands

def test_int8_gemm_and_row_quant():
    torch.manual_seed(1)
    a = torch.randint(-127, 128, (37, 96), dtype=torch.int8, device=DEV)
    b = torch.randint(-127, 128, (50, 96), dtype=torch.int8, device=DEV)
    sa, sb, bias = torch.rand(37, device=DEV), torch.rand(50, device=DEV), torch.randn(50, device=DEV)
    ref = (a.float() @ b.float().t()) * sa[:, None] * sb[None, :] + bias
    for cfg in triton_w8a8.INT8_GEMM_CONFIGS[5:7] + triton_w8a8.INT8_GEMM_CONFIGS[:1]:
        c = triton_w8a8.int8_gemm(a, b, sa, sb, bias, torch.float32, cfg)
        assert float((c - ref).norm() / ref.norm()) < 1e-6
    from nnslim.quant.w8a8 import quantize_rows_torch

    x = torch.randn(6, 96, device=DEV) * 3
    # Triton 3.6's interpreter casts to float8 wrongly (127.6 -> 64): fp8 is checked on CUDA only.
    for fmt, rows in [(f, r) for f in (("int8", "fp8") if CUDA else ("int8",)) for r in (None, 4)]:
        q, s = triton_w8a8.quantize_rows(x, fmt, rows=rows)  # 4 rows per program: the last one half empty
        qr, sr = quantize_rows_torch(x, fmt)
        assert torch.allclose(s, sr, rtol=1e-6)
        deq, deqr = q.float() * s[:, None], qr.float() * sr[:, None]
        if fmt == "int8":  # equal up to rounding ties
            assert float((deq - deqr).abs().max() / s.max()) <= 1.0 + 1e-4
        else:  # within one e4m3 step of x
            assert torch.all((deq - x).abs() <= 0.13 * x.abs() + s[:, None] * 2 ** -6)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA: torch's CUDA int4 / fp8 / int8 kernels (run on the device machine)")
def test_cuda_kernels_match_reference_on_random_and_real_weights():
    from pathlib import Path

    from nnslim.quant.w8a8 import W8A8Linear

    weights = [torch.randn(1536, 576) * 0.02]
    real = Path(__file__).resolve().parents[2] / ".gpu_data" / "real_linears.safetensors"
    if real.exists():  # weights of SmolLM2 layers, carried to the device machine (not committed)
        from safetensors.torch import load_file

        weights += list(load_file(str(real)).values())
    for w in weights:
        n, k = w.shape
        layer = _int4(k, n, 64 if k % 64 == 0 else 32, True, weight=w)
        for m in (1, 16, 256):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
            for name, fn in layer._candidates(x).items():
                err = float((fn().float() - ref).norm() / ref.norm())
                assert err < 1e-2, (name, m, err)
        lin = nn.Linear(k, n).cuda().to(torch.bfloat16)
        lin.weight.data.copy_(w)
        for fmt in ("fp8", "int8"):
            q = W8A8Linear.from_linear(lin, fmt, fast_accum=True)
            assert fmt == "int8" or "scaled_mm-fastacc" in q._candidates(torch.zeros(16, k, device="cuda",
                                                                                     dtype=torch.bfloat16))
            for m in (16, 512):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = q._reference(x).float()
                exact = nn.functional.linear(x.float(), q.qweight.float() * q.wscale[:, None], q.bias.float())
                ref_exact = float((ref - exact).norm() / exact.norm())
                for name, fn in q._candidates(x).items():
                    y = fn().float()
                    if name.startswith("triton-fp8q-"):  # quantizes x per K slice, not per token: vs unquantized x
                        err = float((y - exact).norm() / exact.norm())
                        assert err < ref_exact * 1.25 + 2e-3, (fmt, name, m, err, ref_exact)
                    else:
                        err = float((y - ref).norm() / ref.norm())
                        assert err < 1.5e-2, (fmt, name, m, err)


# --- the int4 GEMM on MMA-permuted codes (triton_int4_mma): its fp32-dequantization path runs in the CPU
# interpreter; the packed bf16x2 PTX path is compiled for sm_90 here and run on the device machine's GPU

def test_mma_layout_permutes_each_32_byte_block():
    """Byte 4t + c of every 32-byte block lands at 8c + t (a lane's bytes of an A-operand row become
    contiguous); K not a multiple of 64 is refused."""
    q = torch.arange(2 * 64, dtype=torch.int32).remainder(256).to(torch.uint8).reshape(2, 64)
    p = mma.to_mma_layout(q)
    for j in range(64):
        b, t, c = j // 32, (j % 32) // 4, j % 4
        assert int(p[1, 32 * b + 8 * c + t]) == int(q[1, j])
    with pytest.raises(ValueError, match="multiple of 64"):
        mma.to_mma_layout(torch.zeros(3, 48, dtype=torch.uint8))


@pytest.mark.parametrize("k,n,group,sym", [(256, 72, 64, True), (512, 40, 128, False), (256, 24, -1, True)])
@pytest.mark.parametrize("m", [3, 33])
def test_mma_gemm_matches_reference(k, n, group, sym, m):
    """Every tile shape that fits (ragged M and N, split-K) gives the dequantized reference: exact up to
    float summation on CPU (fp32 path), within one bf16 rounding of each weight on the GPU (packed path
    for bf16, fp32 path for fp16); tiles that do not fit the group are refused by name."""
    layer = _int4(k, n, group, sym)
    dtypes = [torch.bfloat16, torch.float16] if CUDA else [torch.float32]
    configs = [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, num_warps=1),
               dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, num_warps=2, GROUP_N=1),
               dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4),
               dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=2, num_warps=1, ATOMIC=True),
               dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, num_warps=2)]  # K ranges 2, 2, 0
    if CUDA:
        configs += [dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=4),
                    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=4),
                    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=4)]
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
            if cfg["SPLIT_K"] > 1 and not cfg.get("ATOMIC"):  # partials summed in a fixed order by the last CTA
                assert torch.equal(layer._triton_int4mma(x, cfg), y), cfg
                assert int(mma._WORKSPACE[str(x.device)][1].count_nonzero()) == 0  # counters back at zero
    assert tried >= 2


def test_mma_split_workspace_grows_and_keeps_outgrown_buffers():
    """One workspace per device for every layer's split-K launches: grown by doubling when a launch needs
    more, counters zeroed, and the outgrown pair kept alive (a captured CUDA graph may still hold it)."""
    dev = torch.device("meta")
    mma._WORKSPACE.pop(str(dev), None)
    first = mma.split_workspace(dev, 100, 4)
    assert first[0].numel() == 100 and first[1].numel() == 4
    assert mma.split_workspace(dev, 50, 2) is first
    grown = mma.split_workspace(dev, 150, 3)
    assert grown[0].numel() == 200 and grown[1].numel() == 8 and any(w is first for w in mma._RETIRED)
    mma._WORKSPACE.pop(str(dev))
    mma._RETIRED[:] = [w for w in mma._RETIRED if w[0].device != dev]


def test_split_k_tiles_only_for_few_rows_and_int32_safe(monkeypatch):
    """Long prompts (16k rows) are offered no split-K tile (one needed an 11 GB workspace and overflowed the
    kernel's int32 offsets: an illegal address in a 16k-token prefill); a split launch whose partials would pass
    int32 offsets adds atomically instead of using the workspace."""
    split, whole = dict(BLOCK_M=16, SPLIT_K=8), dict(BLOCK_M=256, SPLIT_K=1)
    assert mma.tile_offered(split, 16, 16) and mma.tile_offered(split, 512, 512)
    assert not mma.tile_offered(split, 16384, 4096) and mma.tile_offered(whole, 16384, 4096)
    assert not mma.tile_offered(whole, 16, 16)  # taller than the bucket
    monkeypatch.setattr(mma, "MAX_PARTIALS", 1000)
    y, ws_p, ws_c, cfg = mma.split_outputs(torch.device("cpu"), torch.bfloat16, 16, 64,
                                           dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=2))  # 2048 partials
    assert cfg["ATOMIC"] and y.dtype == torch.float32 and ws_p is y


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the selector offers the kernel on CUDA only")
def test_mma_gemm_is_a_selector_candidate_for_batches():
    layer = _int4(256, 64, 128, True)
    assert any(c.startswith("triton-int4mma-") for c in layer._candidates(torch.zeros(64, 256, device=DEV,
                                                                                     dtype=torch.bfloat16)))
    assert not any(c.startswith("triton-int4mma-") for c in layer._candidates(torch.zeros(1, 256, device=DEV,
                                                                                         dtype=torch.bfloat16)))
    long = layer._candidates(torch.zeros(2048, 256, device=DEV, dtype=torch.bfloat16))
    assert not any(mma.MMA_CONFIGS[int(c.rsplit("-", 1)[1])]["SPLIT_K"] > 1 for c in long if c.startswith("triton-int4mma-"))


def test_mma_gemm_compiles_for_sm90():
    """The packed path assembles for sm_90 with and without zero points, in every configuration the selector
    offers (within the shared memory of a Hopper SM) and two with fp16 activations: wgmma, packed bf16x2 (f16x2)
    FMAs, and no 1-byte shared-memory loads of the codes (the permuted layout gives each lane contiguous bytes);
    every other one as a programmatic dependent launch (L2 prefetches of the first codes, then the grid wait). In a
    fresh process: this module may run Triton's interpreter."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from nnslim.runtime.kernels import triton_int4_mma as mma
cases = [(cfg, False, "bf16") for cfg in mma.MMA_CONFIGS] + [(mma.MMA_CONFIGS[9], True, "bf16")]
cases += [(mma.MMA_CONFIGS[9], True, "fp16"), (mma.MMA_CONFIGS[13], False, "fp16")]
for i, (cfg, has_zero, dt) in enumerate(cases):
    pdl = i % 2 == 1
    sig = {"x_ptr": "*" + dt, "qw_ptr": "*u8", "s_ptr": "*" + dt, "z_ptr": "*u8" if has_zero else "*" + dt,
           "y_ptr": "*" + dt, "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "stride_xm": "i32",
           "stride_ym": "i32"}
    launch = {k: cfg[k] for k in ("num_warps", "num_stages")}
    consts = dict(K=4096, GROUP=128, HAS_ZERO=has_zero, ASM=mma.ASM if dt == "bf16" else mma.ASM_F16, PACKED=True,
                  GROUP_N=8, ATOMIC=False, PDL=pdl, **{k: v for k, v in cfg.items() if k not in launch})
    sig.update({name: "constexpr" for name in consts})
    src = triton.compiler.ASTSource(fn=mma._int4_gemm_mma_kernel, signature=sig, constexprs=consts,
                                    attrs={(i,): [["tt.divisibility", 16]] for i in range(11)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=launch)
    ptx = k.asm["ptx"]
    assert k.asm["cubin"] and "wgmma.mma_async" in ptx, ("no wgmma", cfg)
    assert ptx.count("fma.rn.bf16x2" if dt == "bf16" else "fma.rn.f16x2") >= 16, ("no packed FMAs", cfg, dt)
    assert "ld.shared.u8" not in ptx and "ld.shared.b8" not in ptx, ("codes read byte by byte", cfg)
    assert k.metadata.shared <= 227 * 1024, ("shared memory", cfg, k.metadata.shared)
    pf, wait = ptx.find("prefetch.global.L2"), ptx.find("griddepcontrol.wait")
    assert (pf >= 0 and wait > pf and "wgmma.mma_async" not in ptx[:wait]) if pdl else (pf < 0 and wait < 0), cfg
print("ok")
"""
    _compiles_in_fresh_process(code)


# --- the fp8 GEMM for small M (triton_w8a8._fp8_gemm_swap_kernel): in the interpreter on CPU (fp8 codes made by
# torch), compiled for sm_90 here, run on the device machine's GPU

@pytest.mark.parametrize("m,k,n", [(3, 256, 72), (1, 128, 40), (20, 192, 24)])
def test_fp8_swap_gemm_matches_reference(m, k, n):
    """(x fp8 @ W fp8.T) * token scale * channel scale + bias for ragged M and N, split-K summed in the launch
    (bit-identical run to run, counters back at zero) or through atomics, with and without fast
    accumulation; a BLOCK_K that does not divide K is refused by name."""
    from nnslim.quant.w8a8 import quantize_rows_torch

    torch.manual_seed(0)
    q, s = quantize_rows_torch(torch.randn(m, k, device=DEV), "fp8")
    wq, ws = quantize_rows_torch(torch.randn(n, k, device=DEV) * 0.05, "fp8")
    bias = torch.randn(n, device=DEV)
    ref = (q.float() @ wq.float().t()) * s[:, None] * ws[None, :] + bias
    configs = [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, num_warps=1),
               dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, num_warps=1, GROUP_N=1),
               dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=2, num_warps=1, ATOMIC=True),
               dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, SPLIT_K=2, num_warps=4)]
    if CUDA:
        configs += triton_w8a8.FP8_SWAP_CONFIGS
    out_dtype = torch.bfloat16 if CUDA else torch.float32
    tried = 0
    for cfg in configs:
        if not triton_w8a8.fp8_fits(k, cfg):
            with pytest.raises(ValueError, match="BLOCK_K"):
                triton_w8a8.fp8_gemm_swap(q, wq, s, ws, bias, out_dtype, cfg)
            continue
        for fast in (True, False) if CUDA or cfg is configs[1] else (True,):
            tried += 1
            y = triton_w8a8.fp8_gemm_swap(q, wq, s, ws, bias, out_dtype, cfg, fast)
            assert y.dtype == out_dtype and y.shape == (m, n)
            err = float((y.float() - ref).norm() / ref.norm())
            assert err < (1e-2 if CUDA else 1e-5), (cfg, fast, err)
            if cfg["SPLIT_K"] > 1 and not cfg.get("ATOMIC"):
                assert torch.equal(triton_w8a8.fp8_gemm_swap(q, wq, s, ws, bias, out_dtype, cfg, fast), y), cfg
                assert int(mma._WORKSPACE[str(q.device)][1].count_nonzero()) == 0
    assert tried >= 3


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an fp8 GPU (sm_89+); Triton 3.6's interpreter casts to float8 wrongly")
@pytest.mark.parametrize("m,k,n", [(3, 512, 72), (20, 768, 200)])
def test_fp8_swap_gemm_quantizes_x_per_slice(m, k, n):
    """With sx=None the GEMM quantizes the bf16 x itself, each row's BLOCK_K slice with its own absmax scale:
    equal to that quantization done in torch then multiplied, bit-identical run to run under split-K, and no less
    accurate than per-token quantization against the unquantized product; fp8 x is refused there by name."""
    from nnslim.quant.w8a8 import quantize_rows_torch

    torch.manual_seed(0)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    x[:, :7] *= 30  # an outlier channel: its slice's scale differs from the others'
    wq, ws = quantize_rows_torch(torch.randn(n, k, device=DEV) * 0.05, "fp8")
    wd = wq.float() * ws[:, None]
    exact = x.float() @ wd.t()
    q, s = quantize_rows_torch(x.float(), "fp8")
    per_token = float(((q.float() * s[:, None]) @ wd.t() - exact).norm() / exact.norm())
    extra = [dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=3, num_warps=4)]
    for cfg in triton_w8a8.FP8_QUANT_X_CONFIGS + triton_w8a8.FP8_SWAP_CONFIGS + extra:
        if not triton_w8a8.fp8_fits(k, cfg):
            continue
        bk = cfg["BLOCK_K"]
        qs, ss = quantize_rows_torch(x.float().reshape(m * k // bk, bk), "fp8")
        ref = ((qs.float() * ss[:, None]).reshape(m, k) @ wd.t())
        y = triton_w8a8.fp8_gemm_swap(x, wq, None, ws, None, torch.bfloat16, cfg)
        assert float((y.float() - ref).norm() / ref.norm()) < 8e-3, cfg
        assert float((y.float() - exact).norm() / exact.norm()) < per_token * 1.25 + 4e-3, cfg
        if cfg["SPLIT_K"] > 1:
            assert torch.equal(triton_w8a8.fp8_gemm_swap(x, wq, None, ws, None, torch.bfloat16, cfg), y), cfg
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        triton_w8a8.fp8_gemm_swap(q, wq, None, ws, None, torch.bfloat16, triton_w8a8.FP8_SWAP_CONFIGS[0])


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an fp8 GPU (sm_89+): the selector offers the fp8 kernels there only")
def test_fp8_swap_gemm_is_a_selector_candidate_for_small_m():
    from nnslim.quant.w8a8 import W8A8Linear

    layer = W8A8Linear.from_linear(nn.Linear(256, 64).to(DEV, torch.bfloat16), "fp8", fast_accum=True)
    small = layer._candidates(torch.zeros(4, 256, device=DEV, dtype=torch.bfloat16))
    assert any(c.startswith("triton-fp8-") for c in small) and "scaled_mm" in small
    assert any(c.startswith("triton-fp8q-") for c in small)  # quantizing x inside the GEMM, M <= 16 only
    m17 = layer._candidates(torch.zeros(triton_w8a8.FP8_QUANT_X_MAX_M + 1, 256, device=DEV, dtype=torch.bfloat16))
    assert any(c.startswith("triton-fp8-") for c in m17) and not any(c.startswith("triton-fp8q-") for c in m17)
    from nnslim.quant.w8a8 import PreQuantized, quantize_rows_torch

    pre = PreQuantized(*quantize_rows_torch(torch.randn(4, 256, device=DEV), "fp8"), torch.bfloat16)
    pre = layer._candidates(pre)
    assert any(c.startswith("triton-fp8-") for c in pre) and not any(c.startswith("triton-fp8q-") for c in pre)
    big = layer._candidates(torch.zeros(triton_w8a8.FP8_SWAP_MAX_M + 1, 256, device=DEV, dtype=torch.bfloat16))
    assert not any(c.startswith("triton-fp8-") for c in big)
    x = torch.randn(4, 256, device=DEV, dtype=torch.bfloat16)
    ref = layer._reference(x).float()
    for name, fn in layer._candidates(x).items():  # fp8q quantizes per K slice: within fp8's own error of ref
        assert float((fn().float() - ref).norm() / ref.norm()) < (5e-2 if "fp8q" in name else 1e-2), name
    from nnslim.runtime.kernels import select

    select.reset()  # the selector's output check takes fp8's own rounding into account: no fp8 candidate is "wrong"
    layer(x)
    row = next(r for r in select.kernel_table() if r["key"].startswith("w8a8/fp8"))
    assert not row.get("wrong") and any(k.startswith("triton-fp8q-") for k in row), row
    select.reset()


def test_fp8_swap_gemm_compiles_for_sm90():
    """Every configuration the selector offers assembles for sm_90 as fp8 wgmma (e4m3 x e4m3, fp32 accumulate)
    within a Hopper SM's shared memory, with and without fast accumulation, on fp8 x and quantizing bf16 x, and
    (every third) as a programmatic dependent launch. In a fresh process: this module may run Triton's interpreter."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from nnslim.runtime.kernels import triton_w8a8 as w
launches = [(c, False) for c in w.FP8_SWAP_CONFIGS] + [(c, True) for c in w.FP8_QUANT_X_CONFIGS]
for i, (cfg, quant_x) in enumerate(launches):
    fast = i % 2 == 0
    sig = {"w_ptr": "*fp8e4nv", "x_ptr": "*bf16" if quant_x else "*fp8e4nv", "sw_ptr": "*fp32", "sx_ptr": "*fp32",
           "bias_ptr": "*bf16", "y_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32",
           "stride_xm": "i32", "stride_ym": "i32"}
    launch = {k: cfg[k] for k in ("num_warps", "num_stages")}
    pdl = i % 3 == 1
    consts = dict(K=4096, HAS_BIAS=True, FAST_ACC=fast, GROUP_N=8, ATOMIC=False, QUANT_X=quant_x, PDL=pdl,
                  **{k: v for k, v in cfg.items() if k not in launch})
    sig.update({name: "constexpr" for name in consts})
    src = triton.compiler.ASTSource(fn=w._fp8_gemm_swap_kernel, signature=sig, constexprs=consts,
                                    attrs={(i,): [["tt.divisibility", 16]] for i in range(12)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=launch)
    assert "wgmma.mma_async" in k.asm["ptx"] and ".e4m3.e4m3" in k.asm["ptx"], ("no fp8 wgmma", cfg)
    assert k.metadata.shared <= 227 * 1024, ("shared memory", cfg, k.metadata.shared)
    pf, wait = k.asm["ptx"].find("prefetch.global.L2"), k.asm["ptx"].find("griddepcontrol.wait")
    assert (pf >= 0 and wait > pf) if pdl else (pf < 0 and wait < 0), cfg
print("ok")
"""
    _compiles_in_fresh_process(code)
