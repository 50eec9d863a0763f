"""Triton kernels for W8A8 linears on CUDA: fused per-token activation quantization (int8 or fp8),
an int8 x int8 GEMM whose epilogue applies the token and channel scales (and bias) in one pass,
instead of torch._int_mm's int32 output followed by separate scaling kernels, and an fp8 x fp8 GEMM for
small M (decode, short prompts) computed as y.T = W x.T: the weight fills the MMA's 64-row side, x the
narrow one (16+ rows), with split-K summed in the same launch (triton_int4_mma.store_tile) so enough
weight bytes are in flight; cuBLAS (torch._scaled_mm) has no such tile at M <= 64.
"""
from __future__ import annotations

import torch

from ..rowquant import FP8_MAX, ROW_FORMATS, PreQuantized, quantize_rows_torch  # noqa: F401
from .launch import launch
from .pdl import launch_options
from .triton_int4 import tl, triton

if triton is not None:
    from .pdl import prefetch_rows_then_wait, wait_then_release
    from .triton_int4 import gemm_tile, grouped_tile, split_steps
    from .triton_int4_mma import grid, split_outputs, store_tile

if triton is not None:
    FP8_QMAX = tl.constexpr(FP8_MAX)

    @triton.jit
    def _round_half_away(v):
        return tl.where(v >= 0, tl.floor(v + 0.5), tl.ceil(v - 0.5))

    @triton.jit
    def quantize_row(x, QMAX: tl.constexpr, IS_FP8: tl.constexpr):
        """(codes as fp32, scale) of one fp32 row (padding zeros): symmetric, scale = absmax / QMAX."""
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / QMAX
        v = x / scale
        if IS_FP8:
            q = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        else:
            q = tl.minimum(tl.maximum(_round_half_away(v), -QMAX), QMAX)
        return q, scale

    @triton.jit
    def _rowwise_quant_kernel(x_ptr, q_ptr, s_ptr, stride_x, stride_q, K: tl.constexpr, BLOCK: tl.constexpr,
                              QMAX: tl.constexpr, IS_FP8: tl.constexpr, PDL: tl.constexpr = False):
        wait_then_release(PDL)
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        q, scale = quantize_row(x, QMAX, IS_FP8)
        tl.store(q_ptr + row * stride_q + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + row, scale)

    @triton.jit
    def _rows_quant_kernel(x_ptr, q_ptr, s_ptr, M, stride_x, stride_q, K: tl.constexpr, BLOCK: tl.constexpr,
                           QMAX: tl.constexpr, IS_FP8: tl.constexpr, ROWS: tl.constexpr, PDL: tl.constexpr = False):
        """The same, ROWS whole rows per program (a launch option benchmarks/gpu_rowquant.py times)."""
        wait_then_release(PDL)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        offs = tl.arange(0, BLOCK)
        mask = (rows[:, None] < M) & (offs[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_x + offs[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / QMAX
        v = x / scale[:, None]
        if IS_FP8:
            q = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        else:
            q = tl.minimum(tl.maximum(_round_half_away(v), -QMAX), QMAX)
        tl.store(q_ptr + rows[:, None] * stride_q + offs[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + rows, scale, mask=rows < M)

    @triton.jit
    def _int8_gemm_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, c_ptr, M, N, K,
                          HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                          GM: tl.constexpr):
        """C[M, N] = (A[M, K] int8 @ B[N, K].T int8) * sa[M] * sb[N] (+ bias), int32 accumulation."""
        pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GM)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_k = tl.arange(0, BK)
        a_ptrs = a_ptr + offs_m[:, None] * K + offs_k[None, :]
        b_ptrs = b_ptr + offs_n[None, :] * K + offs_k[:, None]
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for k0 in range(0, tl.cdiv(K, BK)):
            kmask = offs_k + k0 * BK < K
            a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & kmask[None, :], other=0)
            b = tl.load(b_ptrs, mask=(offs_n[None, :] < N) & kmask[:, None], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            a_ptrs += BK
            b_ptrs += BK
        sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
        sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
        out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        c = c_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(c, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


if triton is not None:

    @triton.jit
    def _fp8_gemm_swap_kernel(w_ptr, x_ptr, sw_ptr, sx_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, stride_xm,
                              stride_ym, K: tl.constexpr, HAS_BIAS: tl.constexpr, FAST_ACC: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              GROUP_N: tl.constexpr, SPLIT_K: tl.constexpr, ATOMIC: tl.constexpr,
                              QUANT_X: tl.constexpr = False, PDL: tl.constexpr = False):
        """Tile [BLOCK_N weight rows, BLOCK_M rows of x] of (W fp8 @ x.T fp8) * sw[n] * sx[m] (+ bias).
        FAST_ACC: the MMA accumulates all of K in its own (reduced) precision; otherwise each BLOCK_K step's
        product is added to the fp32 accumulator (what _scaled_mm does without fast accumulation).
        QUANT_X: x is bf16 / fp16 and is quantized here, each row's BLOCK_K slice with its own scale
        (absmax / FP8_MAX, taken in registers as the slice is loaded; no separate quantization kernel, no serial
        pass over K before the first weight load); each step's product is scaled into the fp32 accumulator.
        PDL: the first weights of the program's rows are asked into L2 before waiting for the kernel that writes x."""
        offs_n, offs_m, rn, rm = gemm_tile(M, N, BLOCK_M, BLOCK_N, GROUP_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        first, last = split_steps(K // BLOCK_K, SPLIT_K)
        prefetch_rows_then_wait(w_ptr + rn * K, first * BLOCK_K, K, PDL)
        for kk in range(first, last):
            w = tl.load(w_ptr + rn[:, None] * K + (kk * BLOCK_K + offs_k)[None, :])
            xt = tl.load(x_ptr + rm[None, :] * stride_xm + (kk * BLOCK_K + offs_k)[:, None])
            if QUANT_X:
                xf = xt.to(tl.float32)
                sx = tl.maximum(tl.max(tl.abs(xf), axis=0), 1e-12) / FP8_QMAX
                xq = tl.minimum(tl.maximum(xf * (1.0 / sx)[None, :], -FP8_QMAX), FP8_QMAX).to(w.dtype)
                acc += tl.dot(w, xq) * sx[None, :]
            elif FAST_ACC:
                acc = tl.dot(w, xt, acc)
            else:
                acc += tl.dot(w, xt)
        acc = acc * tl.load(sw_ptr + rn)[:, None]
        if not QUANT_X:
            acc = acc * tl.load(sx_ptr + rm)[None, :]
        if HAS_BIAS:  # added by the first K range only
            acc += tl.load(bias_ptr + rn).to(tl.float32)[:, None] * (tl.program_id(1) == 0).to(tl.float32)
        yp = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
        store_tile(acc, yp, (offs_m[None, :] < M) & (offs_n[:, None] < N), ws_ptr, cnt_ptr, SPLIT_K, ATOMIC)


def row_launch(m: int, k: int) -> tuple[int, int]:
    """(rows per program, warps) of the row quantizer for an [m, k] input: one row per program, as measured so far
    (other launches are options of quantize_rows that benchmarks/gpu_rowquant.py times; not yet run on a GPU)."""
    block = triton.next_power_of_2(k)
    return 1, 8 if block >= 4096 else 4


def quantize_rows(x: torch.Tensor, fmt: str = "int8", rows: int | None = None,
                  warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) symmetric dynamic quantization of a 2-D tensor in one kernel.

    Returns (q [M, K] int8 or float8_e4m3fn, scale [M] fp32) with x ~ q * scale[:, None]. rows / warps: the launch
    (rows per program, warps per program; default `row_launch`)."""
    m, k = x.shape
    fp8 = fmt == "fp8"
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    r, w = row_launch(m, k)
    r, w = rows or r, warps or w
    consts = dict(K=k, BLOCK=triton.next_power_of_2(k), QMAX=FP8_MAX if fp8 else 127.0, IS_FP8=fp8, num_warps=w,
                  **launch_options(x.device))
    if r == 1:
        launch(_rowwise_quant_kernel, (m,), (x, q, s, x.stride(0), q.stride(0)), consts)
    else:
        launch(_rows_quant_kernel, (triton.cdiv(m, r),), (x, q, s, m, x.stride(0), q.stride(0)), dict(consts, ROWS=r))
    return q, s


# Tile configurations tried by the kernel selector (kernels/select.py).
INT8_GEMM_CONFIGS = [dict(BM=bm, BN=bn, BK=bk, GM=gm, num_stages=st, num_warps=w)
                     for bm, bn, bk, gm, st, w in [(128, 128, 128, 8, 3, 8), (128, 256, 128, 8, 3, 8),
                                                   (256, 128, 128, 8, 3, 8), (128, 128, 64, 8, 4, 4),
                                                   (64, 128, 128, 8, 4, 4), (16, 128, 128, 1, 4, 4),
                                                   (32, 64, 64, 1, 2, 4)]]
# Also timed on the H100 and never chosen (BENCHMARKS.md 3b): (128, 256, 128, 8, 4, 8), (256, 128, 128, 8, 4, 8),
# (128, 128, 128, 8, 4, 8), (128, 256, 64, 8, 4, 8), (128, 128, 128, 16, 5, 4).


# fp8 y.T = W x.T launches the selector times for M <= FP8_SWAP_MAX_M: the winners of `benchmarks/gpu_fp8_gemm.py`
# on Llama-7B shapes at M = 1, 16, 32, 64, 128 (H100, 2026-12-06; BENCHMARKS.md 9i), a BLOCK_K = 64 tile for
# K = 64 * odd, and the H200's winner at M = 1-16 on 11008x4096 (split 4; 9j)
FP8_SWAP_CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, num_stages=st)
                    for bm, bn, bk, sk, st in [(16, 64, 256, 2, 4), (16, 64, 256, 1, 4), (16, 128, 256, 1, 4),
                                               (32, 64, 256, 1, 4), (32, 128, 256, 1, 4), (32, 64, 256, 2, 4),
                                               (64, 64, 256, 1, 3), (64, 64, 128, 1, 4), (128, 64, 256, 2, 3),
                                               (16, 64, 128, 4, 4), (16, 64, 64, 2, 4), (16, 64, 256, 4, 4)]]
# The same kernel quantizing bf16 x itself (QUANT_X), offered for M <= FP8_QUANT_X_MAX_M: the winners of the
# sweep's "Q" rows on the H200 (2026-12-06, BENCHMARKS.md 9j), 3-6% faster than quantize-then-GEMM at M = 1-16
# on 4096x4096 and 11008x4096, slower on 4096x11008; at M = 128 it ran at 0.5-0.7x bf16 (never offered there).
FP8_QUANT_X_CONFIGS = [dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, num_stages=4)
                       for bk, sk in [(256, 4), (128, 8)]]
FP8_QUANT_X_MAX_M = 16
FP8_SWAP_MAX_M = 128  # larger M (not measured): cuBLAS's fp8 GEMM (torch._scaled_mm), whose tiles fill the MMA


def fp8_fits(k: int, config: dict) -> bool:
    return k % config["BLOCK_K"] == 0


def fp8_gemm_swap(q: torch.Tensor, w: torch.Tensor, sx: torch.Tensor | None, sw: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype, config: dict,
                  fast_accum: bool = True) -> torch.Tensor:
    """(q [M, K] fp8 @ w [N, K].T fp8) * sx[:, None] * sw[None, :] + bias as out_dtype, computed as y.T = W q.T
    (for small M; `fp8_fits` says whether config's BLOCK_K divides K). sx None: q is the bf16 / fp16 x itself,
    quantized inside the GEMM per row and BLOCK_K slice (finer than per row; fast_accum does not apply)."""
    m, k = q.shape
    n = w.shape[0]
    if not fp8_fits(k, config):
        raise ValueError(f"fp8 GEMM: BLOCK_K={config['BLOCK_K']} does not divide K={k}")
    if sx is None and q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"fp8 GEMM quantizing x itself: x must be bfloat16 or float16, got {q.dtype}")
    y, ws_p, ws_c, cfg = split_outputs(q.device, out_dtype, m, n, config)
    launch(_fp8_gemm_swap_kernel, grid(m, n, cfg), (w, q, sw, sx if sx is not None else sw,
                                                     bias if bias is not None else sw, y, ws_p, ws_c, m, n, q.stride(0),
                                                     y.stride(0)),
           dict(K=k, HAS_BIAS=bias is not None, FAST_ACC=fast_accum, QUANT_X=sx is None, **cfg,
                **launch_options(q.device)))
    return y.to(out_dtype)


def int8_gemm(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype, config: dict | None = None) -> torch.Tensor:
    """(a [M, K] int8 @ b [N, K].T) * sa[:, None] * sb[None, :] + bias, as out_dtype."""
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    cfg = config or INT8_GEMM_CONFIGS[0]
    grid = (triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"]),)
    launch(_int8_gemm_kernel, grid, (a, b, sa, sb, bias if bias is not None else sa, c, m, n, k),
           dict(HAS_BIAS=bias is not None, **cfg))
    return c
