"""nnslim's own Triton kernels for 4-bit weight-only linears: y = x @ dequant(W).T.

Kernel layout (built once per layer from the canonical packed codes, see `to_kernel_layout`):
  wk [K/2, N] uint8: byte (16*b + i, n) holds the code of k = 32*b + i (low nibble) and of
  k = 32*b + 16 + i (high nibble), so one coalesced [16, BLOCK_N] byte tile holds two [16, BLOCK_N]
  code tiles with no re-reads or shuffles;
  st [G, N] scales; zt [G, N] fp32 = 2**23 + zero (asymmetric only).
Codes become floats with the 2**23 trick (or 0x4B000000, bitcast, subtract) instead of a slow
int-to-float conversion. Needs K % 32 == 0 and group % 32 == 0.

Two kernels: a GEMV for one row at a time (decode; CUDA-core FMAs, split-K) and a tensor-core
GEMM (tl.dot on dequantized bf16/fp16 tiles) for several rows. triton_int4_mma's GEMM, on a copy of the
codes permuted for the MMA's register layout, beat this one at every M measured (BENCHMARKS.md 9h); this
one stays in the selector for tiles that one cannot take (groups of 32, K not a multiple of 64).

The K-major GEMV (configs with KMAJOR=True) needs no layout of its own: the canonical packed weight
[N, K/2] uint8 (low nibble first) read as int32 [N, K/8] holds in nibble j of word w the code of
k = 8w + j, so every thread loads 16 contiguous bytes (32 codes) of one output row, scales and zeros are
read in their stored [N, G] layout, and no second copy of the weight is kept.

The permuted-layout GEMV (PERM=True, `to_kernel_layout_perm`) stores each group's codes so that the x
values of one nibble position form a contiguous vector and uses one FMA per code (see its kernel).
On the H100 none of the three GEMVs beats torch's tinygemm at M=1 (BENCHMARKS.md 3b); the selector
still times them, and they are what runs for fp16 activations, where tinygemm does not apply.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernels are simply not offered
    triton = None
    tl = None

from .launch import launch  # noqa: E402

MAGIC = 8388608.0  # 2**23: float32 with bits 0x4B000000 | q equals 2**23 + q exactly


def available() -> bool:
    return triton is not None


def to_kernel_layout(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes [N, K] int (0..15), scales/zeros [N, G] -> (wk [K/2, N] uint8, st [G, N], zt [G, N] | None)."""
    n, k = codes.shape
    c = codes.to(torch.uint8).t().reshape(k // 32, 2, 16, n)  # [block, half, i, n]
    wk = (c[:, 0] | (c[:, 1] << 4)).reshape(k // 2, n).contiguous()
    st = scales.t().contiguous()
    zt = None if zeros is None else (zeros.t().float() + MAGIC).contiguous()
    return wk, st, zt


if triton is not None:

    @triton.jit
    def grouped_tile(pid, num_major, num_minor, GROUP: tl.constexpr):
        """(major, minor) tile of program `pid`, GROUP major tiles at a time, so the minor-axis tiles they
        share are read while still in L2 (the usual grouped ordering of a GEMM grid)."""
        per_group = GROUP * num_minor
        first = (pid // per_group) * GROUP
        size = tl.minimum(num_major - first, GROUP)
        return first + (pid % per_group) % size, (pid % per_group) // size

    @triton.jit
    def gemm_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_N: tl.constexpr):
        """(weight rows, x rows, and both wrapped into range) of this program's [BLOCK_N, BLOCK_M] output tile of
        a y.T = W x.T GEMM; wrapped rows / columns are computed and never stored: no load masks."""
        pid_n, pid_m = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(M, BLOCK_M), GROUP_N)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        return offs_n, offs_m, offs_n % N, offs_m % M

    @triton.jit
    def split_steps(steps: tl.constexpr, SPLIT_K: tl.constexpr):
        """[first, last) of the K steps this program (grid axis 1 of SPLIT_K) runs."""
        per: tl.constexpr = (steps + SPLIT_K - 1) // SPLIT_K
        first = tl.program_id(1) * per
        return first, tl.minimum(first + per, steps)

    @triton.jit
    def _codes(wk_ptr, b, offs_n, N, mask, zoff):
        """Two [16, BN] fp32 tiles (code - zero) for the 32-row K block b."""
        rows = b * 16 + tl.arange(0, 16)
        raw = tl.load(wk_ptr + rows[:, None] * N + offs_n[None, :], mask=mask, other=0).to(tl.int32)
        lo = ((raw & 15) | 0x4B000000).to(tl.float32, bitcast=True) - zoff
        hi = ((raw >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - zoff
        return lo, hi

    @triton.jit
    def _qparams(st_ptr, zt_ptr, b, offs_n, N, mask_n, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                 ZCONST: tl.constexpr):
        g = (b * 32) // GROUP
        s = tl.load(st_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(zt_ptr + g * N + offs_n, mask=mask_n, other=0.0)
        else:
            z = tl.full(offs_n.shape, ZCONST, tl.float32)
        return s, z

    @triton.jit
    def _split_range(pid_k, K: tl.constexpr, SPLIT_K: tl.constexpr):
        """(K blocks of 32, blocks per split, first block of split pid_k)."""
        nb = K // 32
        per_split = (nb + SPLIT_K - 1) // SPLIT_K
        return nb, per_split, pid_k * per_split

    @triton.jit
    def _gemv_store(out, y_ptr, ws_ptr, cnt_ptr, row, pid_n, pid_k, offs_n, mask_n, stride_ym, N,
                    SPLIT_K: tl.constexpr):
        """Write one split's partial sums: directly (no split) or into a workspace, the last split of each
        tile summing them into y (one launch: no memset, atomics or cast kernels)."""
        if SPLIT_K == 1:
            tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=mask_n)
        else:
            rows = tl.num_programs(1)
            tl.store(ws_ptr + (pid_k * rows + row) * N + offs_n, out, mask=mask_n)
            tl.debug_barrier()
            counter = cnt_ptr + row * tl.num_programs(0) + pid_n
            count = tl.atomic_add(counter, 1, sem="acq_rel")
            if count == SPLIT_K - 1:
                tl.debug_barrier()
                total = tl.zeros_like(out)
                for sk in tl.static_range(SPLIT_K):
                    total += tl.load(ws_ptr + (sk * rows + row) * N + offs_n, mask=mask_n, other=0.0,
                                     cache_modifier=".cg")
                tl.store(y_ptr + row * stride_ym + offs_n, total.to(y_ptr.dtype.element_ty), mask=mask_n)
                tl.atomic_xchg(counter, 0)  # ready for the next call (also inside a CUDA graph)

    @triton.jit
    def _int4_gemv_kernel(x_ptr, wk_ptr, st_ptr, zt_ptr, y_ptr, ws_ptr, cnt_ptr, N, stride_xm, stride_ym, K: tl.constexpr,
                          GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, ZCONST: tl.constexpr,
                          BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, SPLIT_K: tl.constexpr):
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        i16 = tl.arange(0, 16)
        nb, per_split, b_start = _split_range(pid_k, K, SPLIT_K)
        acc = tl.zeros((16, BLOCK_N), tl.float32)
        for b0 in range(0, per_split, UNROLL):
            for u in tl.static_range(UNROLL):
                b = b_start + b0 + u
                valid = (b0 + u < per_split) & (b < nb)
                s, z = _qparams(st_ptr, zt_ptr, b, offs_n, N, mask_n & valid, GROUP, HAS_ZERO, ZCONST)
                lo, hi = _codes(wk_ptr, b, offs_n, N, mask_n[None, :] & valid, z[None, :])
                xl = tl.load(x_ptr + row * stride_xm + b * 32 + i16, mask=valid & (i16 < 16), other=0.0)
                xh = tl.load(x_ptr + row * stride_xm + b * 32 + 16 + i16, mask=valid & (i16 < 16), other=0.0)
                part = xl.to(tl.float32)[:, None] * lo + xh.to(tl.float32)[:, None] * hi
                acc += part * s[None, :]
        out = tl.sum(acc, axis=0)
        _gemv_store(out, y_ptr, ws_ptr, cnt_ptr, row, pid_n, pid_k, offs_n, mask_n, stride_ym, N, SPLIT_K)

    @triton.jit
    def kmajor_tiles(N, K: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, GW: tl.constexpr,
                     SPLIT_K: tl.constexpr):
        """Program ids and offsets of a K-major GEMV tile [BLOCK_N rows, NG groups, GW words]: (pid_n, row,
        pid_k, offs_n, mask_n, offs_g, words [NG, GW] word offsets in a tile, tiles along K, tiles per split)."""
        pid_n = tl.program_id(0)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_g = tl.arange(0, NG)
        words = offs_g[:, None] * GW + tl.arange(0, GW)[None, :]
        nb = (K // 8 + NG * GW - 1) // (NG * GW)
        return (pid_n, tl.program_id(1), tl.program_id(2), offs_n, offs_n < N, offs_g, words, nb,
                (nb + SPLIT_K - 1) // SPLIT_K)

    @triton.jit
    def _int4_gemv_kmajor_kernel(x_ptr, wq_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, cnt_ptr, N, stride_xm, stride_ym,
                                 K: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                                 ZCONST: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, GW: tl.constexpr,
                                 SPLIT_K: tl.constexpr):
        """Tile [BLOCK_N rows, NG groups, GW words]: BLOCK_K = 8 * NG * GW codes per row and iteration
        (NG > 1 only when a tile spans several groups, GW * 8 <= GROUP)."""
        KW: tl.constexpr = K // 8
        G: tl.constexpr = K // GROUP
        BW: tl.constexpr = NG * GW
        pid_n, row, pid_k, offs_n, mask_n, offs_g, words, nb, per_split = kmajor_tiles(N, K, BLOCK_N, NG, GW, SPLIT_K)
        acc = tl.zeros((BLOCK_N, NG, GW), tl.float32)
        for i in range(per_split):
            b = pid_k * per_split + i
            wcol = b * BW + words
            wmask = wcol < KW
            raw = tl.load(wq_ptr + offs_n[:, None, None] * KW + wcol[None, :, :],
                          mask=mask_n[:, None, None] & wmask[None, :, :], other=0)
            gidx = (b * BW * 8) // GROUP + offs_g  # group of each tile slice
            gmask = mask_n[:, None] & (gidx < G)[None, :] & (b < nb)
            s = tl.load(s_ptr + offs_n[:, None] * G + gidx[None, :], mask=gmask, other=0.0).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(z_ptr + offs_n[:, None] * G + gidx[None, :], mask=gmask, other=0).to(tl.float32) + 8388608.0
            else:
                z = tl.full((BLOCK_N, NG), ZCONST, tl.float32)
            part = tl.zeros((BLOCK_N, NG, GW), tl.float32)
            xp = x_ptr + row * stride_xm + wcol * 8
            for j in tl.static_range(8):
                xj = tl.load(xp + j, mask=wmask, other=0.0).to(tl.float32)
                w = (((raw >> (4 * j)) & 15) | 0x4B000000).to(tl.float32, bitcast=True) - z[:, :, None]
                part += xj[None, :, :] * w
            acc += part * s[:, :, None]
        out = tl.sum(tl.sum(acc, axis=2), axis=1)
        _gemv_store(out, y_ptr, ws_ptr, cnt_ptr, row, pid_n, pid_k, offs_n, mask_n, stride_ym, N, SPLIT_K)

    @triton.jit
    def _int4_gemv_perm_kernel(x_ptr, wp_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, cnt_ptr, N, stride_xm, stride_ym,
                               K: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, BW: tl.constexpr,
                               BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, SPLIT_K: tl.constexpr):
        """Permuted layout (to_kernel_layout_perm): in a tile of BW words (8 * BW codes, inside one group)
        nibble j of word w holds k = 8 * BW * t + BW * j + w, so the x values of nibble j are one
        contiguous vector; 16 rows x BW words of a tile are contiguous in memory, so every CTA streams
        a few sequential regions instead of BLOCK_N scattered rows. A code q becomes v = 1 + q / 16 by moving it to mantissa bits 19-22 under
        the exponent of 1.0 (shift + and-or), and sum x (q - z) = 16 sum x v - (16 + z) sum x: one FMA
        per code, the zero-point term once per word."""
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        pid_k = tl.program_id(2)
        KW: tl.constexpr = K // 8
        G: tl.constexpr = K // GROUP
        TILES: tl.constexpr = KW // BW
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        offs_w = tl.arange(0, BW)
        per_split = (TILES + SPLIT_K - 1) // SPLIT_K
        acc = tl.zeros((BLOCK_N, BW), tl.float32)
        corr = tl.zeros((BLOCK_N, BW), tl.float32)
        for t0 in range(0, per_split, UNROLL):
            for u in tl.static_range(UNROLL):
                t = pid_k * per_split + t0 + u
                valid = (t0 + u < per_split) & (t < TILES)
                # rows in blocks of 16: block rb, tile t holds 16 rows x BW words contiguously
                rowoff = ((offs_n // 16) * TILES + t) * (16 * BW) + (offs_n % 16) * BW
                raw = tl.load(wp_ptr + rowoff[:, None] + offs_w[None, :], mask=mask_n[:, None] & valid, other=0)
                g = (t * BW * 8) // GROUP
                s = tl.load(s_ptr + offs_n * G + g, mask=mask_n & valid, other=0.0).to(tl.float32)
                if HAS_ZERO:
                    zc = tl.load(z_ptr + offs_n * G + g, mask=mask_n & valid, other=0).to(tl.float32) + 16.0
                else:
                    zc = tl.full((BLOCK_N,), 24.0, tl.float32)
                xbase = x_ptr + row * stride_xm + t * BW * 8
                part = tl.zeros((BLOCK_N, BW), tl.float32)
                xs = tl.zeros((BW,), tl.float32)
                for j in tl.static_range(8):
                    xj = tl.load(xbase + j * BW + offs_w, mask=valid & (offs_w < BW), other=0.0).to(tl.float32)
                    if 4 * j <= 19:
                        sh = raw << (19 - 4 * j)
                    else:
                        sh = raw >> (4 * j - 19)
                    v = ((sh & 0x00780000) | 0x3F800000).to(tl.float32, bitcast=True)
                    part += xj[None, :] * v
                    xs += xj
                acc += part * s[:, None]
                corr += (s * zc)[:, None] * xs[None, :]
        out = tl.sum(16.0 * acc - corr, axis=1)
        _gemv_store(out, y_ptr, ws_ptr, cnt_ptr, row, pid_n, pid_k, offs_n, mask_n, stride_ym, N, SPLIT_K)

    @triton.jit
    def _int4_gemm_kernel(x_ptr, wk_ptr, st_ptr, zt_ptr, y_ptr, M, N, stride_xm, stride_ym, K: tl.constexpr,
                          GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, ZCONST: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
                          SPLIT_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_n = offs_n < N
        mask_m = offs_m < M
        i16 = tl.arange(0, 16)
        nb, per_split, b_start = _split_range(pid_k, K, SPLIT_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for b0 in range(0, per_split, UNROLL):
            for u in tl.static_range(UNROLL):
                b = b_start + b0 + u
                valid = (b0 + u < per_split) & (b < nb)
                s, z = _qparams(st_ptr, zt_ptr, b, offs_n, N, mask_n & valid, GROUP, HAS_ZERO, ZCONST)
                lo, hi = _codes(wk_ptr, b, offs_n, N, mask_n[None, :] & valid, z[None, :])
                xmask = mask_m[:, None] & valid
                xp = x_ptr + offs_m[:, None] * stride_xm + b * 32 + i16[None, :]
                xl = tl.load(xp, mask=xmask, other=0.0)
                xh = tl.load(xp + 16, mask=xmask, other=0.0)
                wl = (lo * s[None, :]).to(xl.dtype)
                wh = (hi * s[None, :]).to(xl.dtype)
                acc = tl.dot(xl, wl, acc)
                acc = tl.dot(xh, wh, acc)
        yp = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        ymask = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(yp, acc.to(y_ptr.dtype.element_ty), mask=ymask)
        else:
            tl.atomic_add(yp, acc, mask=ymask)


    @triton.jit
    def _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_n, k0, K: tl.constexpr, GROUP: tl.constexpr,
                      HAS_ZERO: tl.constexpr, BLOCK_K: tl.constexpr, OUT_DTYPE: tl.constexpr):
        """W[offs_n, k0:k0+BLOCK_K] dequantized to OUT_DTYPE, from the canonical packed codes (qw [N, K/2]
        uint8, low nibble = even k): bytes [BN, BK/2] -> nibbles joined on a last axis of 2 -> [BN, BK] in k
        order. Codes become floats with the 2**23 trick; one scale (and zero) per row when the tile lies in
        one group, else one per group column."""
        G: tl.constexpr = K // GROUP
        raw = tl.load(qw_ptr + offs_n[:, None] * (K // 2) + k0 // 2 + tl.arange(0, BLOCK_K // 2)[None, :]).to(tl.int32)
        q = tl.reshape(tl.join(raw & 15, raw >> 4), (raw.shape[0], BLOCK_K))
        qf = (q | 0x4B000000).to(tl.float32, bitcast=True)
        if GROUP % BLOCK_K == 0:
            gi = offs_n * G + k0 // GROUP
            s = tl.load(s_ptr + gi).to(tl.float32)[:, None]
            if HAS_ZERO:
                z = tl.load(z_ptr + gi).to(tl.float32)[:, None] + 8388608.0
            else:
                z = 8388616.0
        else:
            gi = offs_n[:, None] * G + (k0 + tl.arange(0, BLOCK_K))[None, :] // GROUP
            s = tl.load(s_ptr + gi).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(z_ptr + gi).to(tl.float32) + 8388608.0
            else:
                z = 8388616.0
        return ((qf - z) * s).to(OUT_DTYPE)

    @triton.jit
    def _int4_gemm_tc_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, stride_xm, stride_ym, K: tl.constexpr,
                             GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
                             SWAP: tl.constexpr, SPLIT_K: tl.constexpr):
        """Tensor-core GEMM straight from the stored codes: each K step dequantizes a [BLOCK_N, BLOCK_K]
        weight tile in registers. SWAP computes y.T = W @ x.T, so the dequantized weight is the MMA's A
        operand, which Hopper's wgmma reads from registers (the B operand, x.T, streams through shared
        memory); without SWAP the weight tile is the B operand (through shared memory). Program ids are
        grouped GROUP_N weight tiles at a time so the x tiles they share stay in L2. SPLIT_K > 1 (small M:
        more weight bytes in flight) splits the K steps over the grid's second axis, summed with fp32
        atomics into a zeroed output."""
        offs_n, offs_m, rn, rm = gemm_tile(M, N, BLOCK_M, BLOCK_N, GROUP_N)
        offs_k = tl.arange(0, BLOCK_K)
        if SWAP:
            acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        first, last = split_steps(K // BLOCK_K, SPLIT_K)
        for kk in range(first, last):
            k0 = kk * BLOCK_K
            w = _dequant_tile(qw_ptr, s_ptr, z_ptr, rn, k0, K, GROUP, HAS_ZERO, BLOCK_K, x_ptr.dtype.element_ty)
            if SWAP:
                xt = tl.load(x_ptr + rm[None, :] * stride_xm + (k0 + offs_k)[:, None])
                acc = tl.dot(w, xt, acc)
            else:
                xa = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + offs_k)[None, :])
                acc = tl.dot(xa, tl.trans(w), acc)
        out = acc.to(y_ptr.dtype.element_ty)
        if SWAP:
            yp = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
            ym = (offs_m[None, :] < M) & (offs_n[:, None] < N)
        else:
            yp = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
            ym = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        if SPLIT_K == 1:
            tl.store(yp, out, mask=ym)
        else:
            tl.atomic_add(yp, out, mask=ym, sem="relaxed")

    @triton.jit
    def _int4_dequant_kernel(qw_ptr, s_ptr, z_ptr, w_ptr, N, K: tl.constexpr, GROUP: tl.constexpr,
                             HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """W [N, K] in the output dtype from the stored codes (for large M: dequantize once, then cuBLAS)."""
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_n % N, k0, K, GROUP, HAS_ZERO, BLOCK_K, w_ptr.dtype.element_ty)
        tl.store(w_ptr + offs_n[:, None] * K + k0 + tl.arange(0, BLOCK_K)[None, :], w, mask=(offs_n < N)[:, None])


# Launch configurations tried by the kernel selector (see kernels/select.py): the ones that won on
# the H100 for Llama-7B shapes (benchmarks/gpu_llm.py kernels), plus one for small groups. Split-K
# GEMVs sum their partials in the last CTA of each tile.
GEMV_CONFIGS = [dict(BLOCK_N=bn, UNROLL=u, SPLIT_K=sk, num_warps=w)
                for bn, u, sk, w in [(32, 4, 8, 2), (64, 4, 8, 4), (32, 2, 16, 2), (64, 2, 16, 2)]]
KMAJOR_CONFIGS = [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w, KMAJOR=True)
                  for bn, bk, sk, w in [(32, 512, 2, 2), (64, 256, 4, 2), (8, 512, 1, 2), (8, 1024, 2, 2),
                                        (16, 1024, 2, 4), (16, 128, 1, 2)]]
PERM_CONFIGS = [dict(BLOCK_N=bn, UNROLL=u, SPLIT_K=sk, num_warps=w, PERM=True)
                for bn, u, sk, w in [(16, 4, 4, 2), (64, 1, 4, 2), (128, 1, 4, 4), (32, 2, 4, 2), (64, 1, 2, 2),
                                     (32, 8, 1, 4)]]
GEMM_CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, UNROLL=u, SPLIT_K=sk, num_warps=w)
                for bm, bn, u, sk, w in [(16, 64, 2, 4, 4), (16, 128, 2, 4, 4), (16, 64, 4, 8, 4),
                                         (32, 64, 2, 2, 4), (64, 64, 2, 1, 4), (64, 128, 2, 1, 8),
                                         (128, 128, 1, 1, 8)]]


def int4_matmul(x: torch.Tensor, wk: torch.Tensor, st: torch.Tensor, zt: torch.Tensor | None, group: int,
                bits_zero: int = 8, config: dict | None = None, workspace: tuple | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T on the byte layout (to_kernel_layout): the GEMV for configs without
    BLOCK_M (default at M == 1), else the tensor-core GEMM. `workspace` (fp32 partials, int32 zeroed
    counters) serves split-K GEMVs: pass one kept per layer so nothing is allocated or zeroed per call."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    m, k = x.shape
    n = wk.shape[1]
    cfg = dict(config or (GEMV_CONFIGS[0] if m == 1 else GEMM_CONFIGS[0]))
    gemv = "BLOCK_M" not in cfg
    split = cfg["SPLIT_K"]
    common = dict(GROUP=group, HAS_ZERO=zt is not None, ZCONST=MAGIC + bits_zero)
    zarg = zt if zt is not None else st
    if gemv:
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
        ws, cnt = _split_workspace(y, split, cfg["BLOCK_N"], workspace)
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), m, split)
        launch(_int4_gemv_kernel, grid, (x, wk, st, zarg, y, ws, cnt, n, x.stride(0), y.stride(0)),
               dict(K=k, **common, **cfg))
        return y
    y = (torch.zeros if split > 1 else torch.empty)((m, n), dtype=torch.float32 if split > 1 else x.dtype,
                                                     device=x.device)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]), split)
    launch(_int4_gemm_kernel, grid, (x, wk, st, zarg, y, m, n, x.stride(0), y.stride(0)), dict(K=k, **common, **cfg))
    return y if split == 1 else y.to(x.dtype)


def _split_workspace(y: torch.Tensor, split: int, block_n: int, workspace: tuple | None) -> tuple:
    """(partials, counters) for a split-K GEMV writing y [M, N]; y itself when there is no split."""
    if split == 1:
        return y, y
    m, n = y.shape
    tiles = triton.cdiv(n, block_n)
    if workspace is None or workspace[0].numel() < split * m * n or workspace[1].numel() < m * tiles:
        workspace = (torch.empty(split * m * n, dtype=torch.float32, device=y.device),
                     torch.zeros(m * tiles, dtype=torch.int32, device=y.device))
    return workspace


def kmajor_tile(k: int, group: int, block_k: int) -> tuple[int, int] | None:
    """(NG, GW) of a K-major tile of block_k codes for this K and group, or None when it does not fit:
    a tile lies inside one group (GW = block_k / 8) or covers a power of two of whole groups."""
    if k % 32 or group % 8:
        return None
    if group % block_k == 0:
        return 1, block_k // 8
    if block_k % group == 0 and (block_k // group) & (block_k // group - 1) == 0 and (group // 8) & (group // 8 - 1) == 0:
        return block_k // group, group // 8
    return None


def int4_gemv_kmajor(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     group: int, config: dict, workspace: tuple | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T from the canonical packed weight (qweight [N, K/2] uint8, low nibble
    first), scales [N, G] and, for asymmetric weights, zeros [N, G] uint8 (None: symmetric, zero 8)."""
    m, k = x.shape
    n = qweight.shape[0]
    tile = kmajor_tile(k, group, config["BLOCK_K"])
    if tile is None:
        raise ValueError(f"K-major GEMV: BLOCK_K={config['BLOCK_K']} does not fit K={k}, group={group}")
    wq = qweight.contiguous().view(torch.int32)
    split, bn = config["SPLIT_K"], config["BLOCK_N"]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    ws, cnt = _split_workspace(y, split, bn, workspace)
    grid = (triton.cdiv(n, bn), m, split)
    launch(_int4_gemv_kmajor_kernel, grid, (x, wq, scales, zeros if zeros is not None else scales, y, ws, cnt, n,
                                            x.stride(0), y.stride(0)),
           dict(K=k, GROUP=group, HAS_ZERO=zeros is not None, ZCONST=MAGIC + 8, BLOCK_N=bn, NG=tile[0], GW=tile[1],
                SPLIT_K=split, num_warps=config["num_warps"]))
    return y


def perm_tile_words(k: int, group: int) -> int | None:
    """Words per tile of the permuted layout: the largest of 16/8/4 (128/64/32 codes) inside one group."""
    if k % 32:
        return None
    for bw in (16, 8, 4):
        if group % (8 * bw) == 0:
            return bw
    return None


def to_kernel_layout_perm(codes: torch.Tensor, bw: int) -> torch.Tensor:
    """Codes [N, K] -> int32 [ceil(N/16) * 16 * K/8] ordered [row block of 16, tile, row, word]: in tile t
    of bw words, nibble j of word w holds k = 8*bw*t + bw*j + w (rows past N are zero)."""
    n, k = codes.shape
    tiles = k // (8 * bw)
    c = codes.to(torch.int32).reshape(n, tiles, 8, bw)  # [n, tile, j, w]
    words = torch.zeros(-(-n // 16) * 16, tiles, bw, dtype=torch.int32, device=codes.device)
    for j in range(8):
        words[:n] |= c[:, :, j] << (4 * j)
    return words.reshape(-1, 16, tiles, bw).transpose(1, 2).contiguous().reshape(-1)


def int4_gemv_perm(x: torch.Tensor, wp: torch.Tensor, bw: int, scales: torch.Tensor, zeros: torch.Tensor | None,
                   group: int, config: dict, workspace: tuple | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T from the permuted layout (to_kernel_layout_perm), scales [N, G] and, for
    asymmetric weights, zeros [N, G] uint8 (None: symmetric, zero 8)."""
    m, k = x.shape
    n = scales.shape[0]
    split, bn = config["SPLIT_K"], config["BLOCK_N"]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    ws, cnt = _split_workspace(y, split, bn, workspace)
    launch(_int4_gemv_perm_kernel, (triton.cdiv(n, bn), m, split),
           (x, wp, scales, zeros if zeros is not None else scales, y, ws, cnt, n, x.stride(0), y.stride(0)),
           dict(K=k, GROUP=group, HAS_ZERO=zeros is not None, BW=bw, BLOCK_N=bn, UNROLL=config["UNROLL"],
                SPLIT_K=split, num_warps=config["num_warps"]))
    return y


# Tensor-core GEMM from the stored codes (M > 1): the winners of benchmarks/gpu_int4_gemm.py on the H200
# (2026-12-03, Llama-7B shapes, M = 16..2048; results/gpu_int4_gemm_sweep2_h200.json). All put the weight
# tile in the MMA's A operand (SWAP); split-K wins up to M = 128.
TC_CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_N=8, SWAP=True, SPLIT_K=sk, num_warps=w, num_stages=st)
              for bm, bn, bk, sk, w, st in [
                  (16, 64, 128, 8, 4, 4), (16, 128, 128, 4, 4, 4), (32, 64, 128, 8, 4, 4), (64, 64, 128, 4, 4, 4),
                  (64, 128, 128, 8, 4, 4), (64, 128, 128, 4, 4, 4), (128, 64, 128, 2, 4, 4), (128, 64, 128, 1, 4, 3),
                  (128, 64, 128, 1, 4, 4), (256, 128, 64, 1, 8, 3)]]


def tc_fits(k: int, group: int, block_k: int) -> bool:
    """Whether a BLOCK_K tile of the tensor-core GEMM / dequantizer fits K and the group size."""
    return k % block_k == 0 and (group % block_k == 0 or block_k % group == 0)


def int4_gemm_tc(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 group: int, config: dict) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T on tensor cores, from the canonical packed weight (qweight [N, K/2]
    uint8, low nibble first), scales [N, G] and, for asymmetric weights, zeros [N, G] uint8."""
    m, k = x.shape
    n = qweight.shape[0]
    if not tc_fits(k, group, config["BLOCK_K"]):
        raise ValueError(f"int4 tensor-core GEMM: BLOCK_K={config['BLOCK_K']} does not fit K={k}, group={group}")
    cfg = {"SPLIT_K": 1, **config}
    split = cfg["SPLIT_K"]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device) if split == 1 else \
        torch.zeros((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), split)
    launch(_int4_gemm_tc_kernel, grid, (x, qweight, scales, zeros if zeros is not None else scales, y, m, n,
                                         x.stride(0), y.stride(0)),
           dict(K=k, GROUP=group, HAS_ZERO=zeros is not None, **cfg))
    return y if split == 1 else y.to(x.dtype)


def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group: int,
                    dtype: torch.dtype, block_k: int = 128, block_n: int = 64, num_warps: int = 4) -> torch.Tensor:
    """The dequantized weight [N, K] in `dtype`, in one kernel (large M: dequantize, then cuBLAS)."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    while not tc_fits(k, group, block_k):
        block_k //= 2
        if block_k < 2:
            raise ValueError(f"int4 dequantize: K={k}, group={group} has no tile")
    w = torch.empty((n, k), dtype=dtype, device=qweight.device)
    launch(_int4_dequant_kernel, (triton.cdiv(n, block_n), k // block_k),
           (qweight, scales, zeros if zeros is not None else scales, w, n),
           dict(K=k, GROUP=group, HAS_ZERO=zeros is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps))
    return w
