"""A warp-specialized int4 GEMM for Hopper written in Gluon (Triton's explicit-layout dialect; issue 17, M >= 128).
The measured selector times its launches beside the others (NNSLIM_GLUON_GEMM=0 leaves it out), so it runs only
where it is faster. Measured on an H100 (BENCHMARKS.md 9q and 9r, bf16, symmetric, the Llama-7B shapes, M =
128-2048; every launch within 2.2e-3 of the fp32 reference and bit-identical on a rerun): 0.72-0.97x bf16 at M = 256
against the Triton MMA GEMM's 0.85-0.94x, 0.74-0.82x at M = 512 against 0.61-0.76x, slower at M = 2048 (0.72-0.77x vs
0.84-0.93x); its GPU tests (ragged M / N, fp16, asymmetric, in the selector) passed on an H100 on 2026-12-07.

y [M, N] = x [M, K] @ dequant(W).T from the same permuted codes as triton_int4_mma (`to_mma_layout`), one scale (and
for asymmetric weights one zero point) per group, bf16 or fp16 activations. One program owns BN weight rows and BM
rows of x. A one-warp producer partition streams each K step's x tile [BM, BK] and codes tile [BN, BK / 2] into a
STAGES-deep shared-memory ring by TMA
(one mbarrier per stage says "full", one "empty"). The consumer warps (the kernel's num_warps, one or two
warpgroups) read the codes into registers in `codes_layout`, which the PRMT / LOP3 / HFMA2 dequantization of
triton_int4_mma turns into exactly the wgmma A-operand fragments (the conversion is checked trivial at compile
time), and issue the step's wgmmas from registers against the x tile, keeping one step in flight
(`warpgroup_mma_wait(1)`) before they hand the previous stage back. Address arithmetic and copies leave the MMA
warps, which the Triton kernel's Nsight Compute profile (BENCHMARKS.md 9o) and its SASS (9p: its wgmmas already
overlap the next step's dequantization) point at as what remains.
"""
from __future__ import annotations

import functools

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except ImportError:  # CPU-only installs, or a Triton without Gluon
    gluon = None

from ...errors import env_choice
from .launch import launch
from .triton_int4_mma import ASM, ASM_F16

# launches for the benchmark sweep and the opt-in selector (BN weight rows, BM rows of x, BK, STAGES, warps). A BM =
# 256 launch (128, 256, 4, 8) failed or was wrong in every sweep row that offered it on the H100 (9q): left out.
WS_CONFIGS = [dict(BN=bn, BM=bm, BK=64, STAGES=st, num_warps=w)
              for bn, bm, st, w in [(128, 128, 4, 8), (128, 128, 6, 8), (64, 128, 6, 4), (128, 64, 6, 8),
                                    (256, 128, 4, 8)]]


def codes_layout(bn: int, kb: int, num_warps: int):
    """Register layout of a [bn, kb] tile of permuted codes (kb = 32 or 64 bytes) whose dequantized [bn, 2 kb] tile
    is the wgmma A-operand layout (16 rows per warp, warps down the rows): each thread holds 8 contiguous bytes of
    rows r and r + 8 per 32-byte block. The layout Triton's own propagation gives triton_int4_mma's codes."""
    reg = [[8, 0], [0, 1], [0, 2], [0, 4]] + ([[0, 32]] if kb == 64 else [])
    lane = [[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]]
    warp = [[16 << i, 0] for i in range(num_warps.bit_length() - 1)]
    r = 16 * num_warps
    while r < bn:
        reg.append([r, 0])
        r *= 2
    return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=lane, warp_bases=warp, block_bases=[], shape=[bn, kb])


@functools.lru_cache(maxsize=None)
def _shared_layouts(bm: int, bn: int, bk: int, dtype: torch.dtype) -> tuple:
    """Shared-memory layouts of the x tile and the codes tile (built once per launch shape, not per call)."""
    gdt = gl.float16 if dtype == torch.float16 else gl.bfloat16
    return (gl.NVMMASharedLayout.get_default_for([bm, bk], gdt),
            gl.NVMMASharedLayout.get_default_for([bn, bk // 2], gl.uint8))


def base_of(dtype: torch.dtype) -> float:
    """The packed dequantization's exact base (base + q is one bf16 / fp16 value): 128 for bf16, 1024 for fp16."""
    return 1024.0 if dtype == torch.float16 else 128.0


def offered() -> bool:
    """The selector times its launches unless NNSLIM_GLUON_GEMM=0."""
    return env_choice("NNSLIM_GLUON_GEMM", ("0", "1"), "1") == "1"


def supports(x: torch.Tensor, k: int, group: int) -> bool:
    """Gluon present, an sm_90 GPU (TMA, wgmma, warp specialization), bf16 / fp16 activations, BK = 64 in a group."""
    return (gluon is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and k % 64 == 0
            and group % 64 == 0 and torch.cuda.get_device_capability(x.device)[0] == 9)


def fits(k: int, group: int, config: dict, n: int) -> bool:
    """Whether a launch fits: BK a multiple of 64 inside one group, BN a multiple of the warps' 16 rows each."""
    bk, bn, w = config["BK"], config["BN"], config["num_warps"]
    return (k % bk == 0 and bk % 64 == 0 and group % bk == 0 and bk <= 128 and w in (4, 8)
            and bn % (16 * w) == 0 and config["BM"] % 8 == 0 and config["BM"] <= 256)


if gluon is not None:

    @gluon.jit
    def _producer(x_desc, q_desc, xs, qs, ready, empty, m0, n0, k_steps, BK: gl.constexpr, KB: gl.constexpr):
        STAGES: gl.constexpr = xs.type.shape[0]
        for i in range(k_steps):
            st = i % STAGES
            mbarrier.wait(empty.index(st), ((i // STAGES) & 1) ^ 1)  # a fresh barrier counts as released
            mbarrier.expect(ready.index(st), x_desc.block_type.nbytes + q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [m0, i * BK], ready.index(st), xs.index(st))
            tma.async_copy_global_to_shared(q_desc, [n0, i * KB], ready.index(st), qs.index(st))

    @gluon.jit
    def _consumer(xs, qs, ready, empty, s_ptr, z_ptr, n0, N, k_steps, K: gl.constexpr, GROUP: gl.constexpr,
                  HAS_ZERO: gl.constexpr, ASM: gl.constexpr, BASE: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr,
                  BK: gl.constexpr, CL: gl.constexpr, num_warps: gl.constexpr):
        STAGES: gl.constexpr = xs.type.shape[0]
        KB: gl.constexpr = BK // 2
        G: gl.constexpr = K // GROUP
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, BM, 16])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        DT: gl.constexpr = xs.dtype
        rows = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, CL))
        nb = gl.full([BN, KB], -BASE - 8.0, DT, layout=CL)  # symmetric codes: -(base + 8)
        acc = gl.zeros((BN, BM), gl.float32, layout=mma)
        for i in range(k_steps):
            st = i % STAGES
            mbarrier.wait(ready.index(st), (i // STAGES) & 1)
            raw = qs.index(st).load(CL)
            gi = rows * G + (i * BK) // GROUP
            s = gl.load(s_ptr + gi, mask=rows < N, other=0.0)
            sb = gl.broadcast(gl.expand_dims(s, 1), raw)[0]
            if HAS_ZERO:
                z = gl.load(z_ptr + gi, mask=rows < N, other=0).to(gl.float32)
                nbz = gl.broadcast(gl.expand_dims((-BASE - z).to(DT), 1), raw)[0]
            else:
                nbz = nb
            lo, hi = gl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,r,r,r,r,r", [raw, sb, nbz], dtype=(xs.dtype, xs.dtype),
                                               is_pure=True, pack=4)
            lo = gl.reshape(gl.permute(gl.reshape(lo, (BN, KB // 32, 4, 8)), (0, 1, 3, 2)), (BN, KB))
            hi = gl.reshape(gl.permute(gl.reshape(hi, (BN, KB // 32, 4, 8)), (0, 1, 3, 2)), (BN, KB))
            w = gl.convert_layout(gl.reshape(gl.join(lo, hi), (BN, BK)), a_l, assert_trivial=True)
            acc = warpgroup_mma(w, xs.index(st).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            fence_async_shared()  # this step's generic-proxy code reads before the stage goes back to TMA
            mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), pred=i > 0)  # the previous step's stage
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        return (acc, )

    @gluon.jit
    def _int4_gemm_ws_kernel(x_desc, q_desc, s_ptr, z_ptr, y_ptr, M, N, stride_ym, K: gl.constexpr,
                             GROUP: gl.constexpr, HAS_ZERO: gl.constexpr, ASM: gl.constexpr, BASE: gl.constexpr,
                             BN: gl.constexpr,
                             BM: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr, CL: gl.constexpr,
                             num_warps: gl.constexpr):
        n0 = gl.program_id(0) * BN
        m0 = gl.program_id(1) * BM
        xs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        qs = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        k_steps = K // BK
        acc, = gl.warp_specialize([
            (_consumer, (xs, qs, ready, empty, s_ptr, z_ptr, n0, N, k_steps, K, GROUP, HAS_ZERO, ASM, BASE, BN, BM,
                         BK, CL, num_warps)),
            (_producer, (x_desc, q_desc, xs, qs, ready, empty, m0, n0, k_steps, BK, BK // 2)),
        ], [1], [40])
        yl: gl.constexpr = gl.BlockedLayout([8, 1], [8, 4], [1, num_warps], [0, 1])  # 16-byte stores along N
        out = gl.convert_layout(acc, yl)
        on = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, yl))
        om = m0 + gl.arange(0, BM, layout=gl.SliceLayout(0, yl))
        gl.store(y_ptr + om[None, :] * stride_ym + on[:, None], out.to(y_ptr.dtype.element_ty),
                 mask=(om < M)[None, :] & (on < N)[:, None])


def codes_descriptor(wperm: torch.Tensor, config: dict):
    """The TMA descriptor of the permuted codes for a launch configuration (a layer keeps it: its weight is fixed)."""
    bn, bk = config["BN"], config["BK"]
    return TensorDescriptor.from_tensor(wperm, [bn, bk // 2], _shared_layouts(config["BM"], bn, bk, torch.bfloat16)[1])


def int4_gemm_ws(x: torch.Tensor, wperm: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group: int,
                 config: dict, q_desc=None) -> torch.Tensor:
    """y [M, N] = x [M, K] (bf16 / fp16) @ W.T from the permuted codes `wperm` [N, K / 2] (to_mma_layout), scales
    [N, K / group] in x's dtype and, for asymmetric weights, zero points [N, K / group]; sm_90 (TMA, wgmma, warp
    specialization). q_desc: `codes_descriptor(wperm, config)`, kept by the caller (built here when None)."""
    m, k = x.shape
    n = wperm.shape[0]
    if gluon is None:
        raise RuntimeError("int4 Gluon GEMM: this Triton has no Gluon (triton.experimental.gluon)")
    if x.dtype not in (torch.bfloat16, torch.float16) or scales.dtype != x.dtype:
        raise ValueError(f"int4 Gluon GEMM: bf16 or fp16 activations with scales of the same dtype, got {x.dtype} / "
                         f"{scales.dtype}")
    if not fits(k, group, config, n):
        raise ValueError(f"int4 Gluon GEMM: launch {config} does not fit K={k}, group={group}")
    bn, bm, bk, warps = config["BN"], config["BM"], config["BK"], config["num_warps"]
    xl, ql = _shared_layouts(bm, bn, bk, x.dtype)
    x_desc = TensorDescriptor.from_tensor(x.contiguous(), [bm, bk], xl)
    if q_desc is None:
        q_desc = TensorDescriptor.from_tensor(wperm, [bn, bk // 2], ql)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    has_zero, f16 = zeros is not None, x.dtype == torch.float16
    launch(_int4_gemm_ws_kernel, (-(-n // bn), -(-m // bm)),
           (x_desc, q_desc, scales.contiguous(), zeros if has_zero else scales, y, m, n, y.stride(0)),
           lambda: dict(K=k, GROUP=group, HAS_ZERO=has_zero, ASM=ASM_F16 if f16 else ASM, BASE=base_of(x.dtype), BN=bn,
                        BM=bm, BK=bk, STAGES=config["STAGES"], CL=codes_layout(bn, bk // 2, warps), num_warps=warps),
           key=(k, group, has_zero, f16, bn, bm, bk, config["STAGES"], warps))
    return y
