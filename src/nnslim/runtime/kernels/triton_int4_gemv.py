"""An int4 GEMV with packed bf16 dequantization (CUDA, sm_80+, bf16 activations; issue 17).

y [M, N] = x [M, K] @ dequant(W).T for small M (decode), read straight from the canonical packed
weight (qweight [N, K/2] uint8, low nibble first, viewed as int32 [N, K/8]: nibble j of word w is the
code of k = 8w + j), its scales [N, G] and, for asymmetric weights, zeros [N, G]: no second copy.

Why another GEMV: the K-major kernel of triton_int4 spends ~5 instructions and one load of x per
code (shift, and/or, subtract, fp32 FMA), so at M=1 it is bound by instruction issue, not by the
weight bytes. Here one 32-bit word (8 codes) is handled by one PTX block working on pairs of codes:
  (raw >> 4j) & 0x000F000F | MAGIC  ->  bf16 halves (128 + q_j, 128 + q_{j+4}), exact, one LOP3 (+ a shift)
  fma(v, 1, -(128 + z))             ->  (q_j - z, q_{j+4} - z), exact, one HFMA2
  fma(x pair, v, acc)               ->  two products accumulated per instruction, one HFMA2
with the x pairs (x_j, x_{j+4}) built from x's own 32-bit words by one PRMT each; the four products
of each half are summed in bf16, then the two halves in fp32, and the per-group scale is applied in
fp32: the whole loop compiles to 3.0-3.8 SASS instructions per code on sm_90 (benchmarks/sass_int4_gemv.py).

Precision: each word's 4-term partial sum is rounded to bf16 (8 significant bits, like the bf16
output itself), so the result differs from an fp32-accumulated reference by about one bf16 rounding
(tests bound it). fp16 activations are not offered: fp16 partial sums overflow for |x| > ~1000.
Split-K partials are summed by the last CTA of each tile (triton_int4's workspace and counters).
"""
from __future__ import annotations

import torch

from .launch import launch
from .pdl import launch_options
from .triton_int4 import _split_workspace, available, kmajor_tile

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernel is simply not offered
    triton = None
    tl = None

MAGIC = 0x43004300  # two bf16 halves 128.0: OR-ing a code q into the mantissa gives 128 + q exactly
NEG_BASE = 0xC300  # bits of bf16 -128.0; -(128 + z) is NEG_BASE + z for z < 128


def _asm(merged: bool = True) -> str:
    """PTX for one word: $0 (f32) = sum_j x_j (q_j - z) over its 8 codes; $1 the word, $2..$5 x's
    32-bit words (x0 x1, x2 x3, x4 x5, x6 x7), $6 the packed -(128 + z). merged=False writes the mask and the
    magic as an AND and an OR (the earlier form, for benchmarks/gpu_int4_gemv.py's family x2andor)."""
    lines = ["{", ".reg .b32 xp, c, v, acc, one;", ".reg .f32 f0, f1;", "mov.b32 acc, 0;",
             "mov.b32 one, 0x3F803F80;"]
    for j in range(4):
        xa, xb = ("$2", "$4") if j < 2 else ("$3", "$5")
        lines.append(f"prmt.b32 xp, {xa}, {xb}, {'0x5410' if j % 2 == 0 else '0x7632'};")  # (x_j, x_{j+4})
        src = "$1" if j == 0 else "c"
        if j:
            lines.append(f"shr.u32 c, $1, {4 * j};")
        # (q_j, q_{j+4}) | MAGIC in one LOP3: (a & b) | c is truth table 0xEA (ptxas does not merge an AND and an
        # OR written separately here: 9 LOP3 per word instead of 5, benchmarks/sass_int4_gemv.py)
        lines += ([f"lop3.b32 c, {src}, 0x000F000F, {MAGIC:#010x}, 0xEA;"] if merged else
                  [f"and.b32 c, {src}, 0x000F000F;", f"or.b32 c, c, {MAGIC:#010x};"])
        lines += ["fma.rn.bf16x2 v, c, one, $6;", "fma.rn.bf16x2 acc, xp, v, acc;"]
    lines += ["shl.b32 c, acc, 16;", "and.b32 v, acc, 0xFFFF0000;", "mov.b32 f0, c;", "mov.b32 f1, v;",
              "add.f32 $0, f0, f1;", "}"]
    return "\n".join(lines)


ASM = _asm()  # built once: every launch passes it

if triton is not None:
    from .pdl import wait_then_release
    from .triton_int4 import _gemv_store, kmajor_tiles

    @triton.jit
    def _int4_gemv_x2_kernel(x_ptr, wq_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, cnt_ptr, N, stride_xm, stride_ym,
                             K: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                             NEG_BASE: tl.constexpr, ASM: tl.constexpr, BLOCK_N: tl.constexpr,
                             NG: tl.constexpr, GW: tl.constexpr, SPLIT_K: tl.constexpr, PREFETCH: tl.constexpr,
                             PDL: tl.constexpr):
        """Tile [BLOCK_N rows, NG groups, GW words] as in triton_int4's K-major GEMV; x is read as 32-bit
        words (two activations each), stride_xm in those words. PDL: the first weight words are loaded before
        waiting for the kernel that writes x (pdl.py)."""
        KW: tl.constexpr = K // 8
        G: tl.constexpr = K // GROUP
        BW: tl.constexpr = NG * GW
        pid_n, row, pid_k, offs_n, mask_n, offs_g, words, nb, per_split = kmajor_tiles(N, K, BLOCK_N, NG, GW, SPLIT_K)
        acc = tl.zeros((BLOCK_N, NG, GW), tl.float32)
        sym = tl.full((BLOCK_N, NG), NEG_BASE + 8, tl.int32)
        sym = sym | (sym << 16)
        wrow = wq_ptr + offs_n[:, None, None] * KW
        wcol = pid_k * per_split * BW + words
        raw = tl.load(wrow + wcol[None, :, :], mask=mask_n[:, None, None] & ((wcol < KW) & (per_split > 0))[None, :, :],
                      other=0)
        wait_then_release(PDL)
        for i in range(per_split):
            b = pid_k * per_split + i
            wcol = b * BW + words
            wmask = (wcol < KW) & (b < nb)
            if PREFETCH:  # the next tile's load is issued before this one's arithmetic
                nmask = (wcol + BW < KW) & (b + 1 < nb) & (i + 1 < per_split)
                nxt = tl.load(wrow + (wcol + BW)[None, :, :], mask=mask_n[:, None, None] & nmask[None, :, :], other=0)
            else:
                raw = tl.load(wrow + wcol[None, :, :], mask=mask_n[:, None, None] & wmask[None, :, :], other=0)
            xw = tl.load(x_ptr + row * stride_xm + wcol[:, :, None] * 4 + tl.arange(0, 4)[None, None, :],
                         mask=wmask[:, :, None], other=0)
            xa, xb = tl.split(tl.reshape(xw, (NG, GW, 2, 2)))  # (x0 x1, x4 x5), (x2 x3, x6 x7)
            x01, x45 = tl.split(xa)
            x23, x67 = tl.split(xb)
            gidx = (b * BW * 8) // GROUP + offs_g
            gmask = mask_n[:, None] & (gidx < G)[None, :] & (b < nb)
            s = tl.load(s_ptr + offs_n[:, None] * G + gidx[None, :], mask=gmask, other=0.0).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(z_ptr + offs_n[:, None] * G + gidx[None, :], mask=gmask, other=0).to(tl.int32)
                negc = (NEG_BASE + z) | ((NEG_BASE + z) << 16)
            else:
                negc = sym
            part = tl.inline_asm_elementwise(  # the args broadcast to [BLOCK_N, NG, GW]
                ASM, "=f,r,r,r,r,r,r",
                [raw, x01[None, :, :], x23[None, :, :], x45[None, :, :], x67[None, :, :], negc[:, :, None]],
                dtype=tl.float32, is_pure=True, pack=1)
            acc += part * s[:, :, None]
            if PREFETCH:
                raw = nxt
        out = tl.sum(tl.sum(acc, axis=2), axis=1)
        _gemv_store(out, y_ptr, ws_ptr, cnt_ptr, row, pid_n, pid_k, offs_n, mask_n, stride_ym, N, SPLIT_K)


# (BLOCK_N, BLOCK_K codes per row and iteration, SPLIT_K, prefetch): the winners of
# benchmarks/gpu_int4_gemv.py on the H200 (2026-12-03) on Llama-7B shapes and the fused q/k/v, gate/up ones
X2_CONFIGS = [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, PREFETCH=pf, X2=True)
              for bn, bk, sk, pf in [(32, 256, 8, False), (64, 256, 8, True), (32, 512, 1, True), (128, 256, 4, True),
                                     (64, 512, 8, False), (32, 256, 4, True), (64, 256, 4, False), (16, 1024, 1, True)]]


def supports(x: torch.Tensor, k: int, group: int, block_k: int) -> bool:
    return (available() and x.is_cuda and x.dtype == torch.bfloat16 and k % 32 == 0
            and kmajor_tile(k, group, block_k) is not None
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


def int4_gemv_x2(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 group: int, config: dict, workspace: tuple | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (bf16 x) from the canonical packed weight; see the module doc."""
    m, k = x.shape
    n = qweight.shape[0]
    tile = kmajor_tile(k, group, config["BLOCK_K"])
    if tile is None or x.dtype != torch.bfloat16:
        raise ValueError(f"packed int4 GEMV: BLOCK_K={config['BLOCK_K']}, K={k}, group={group}, "
                         f"dtype={x.dtype} not supported (bf16 activations, a tile inside whole groups)")
    x = x.contiguous()
    split, bn = config["SPLIT_K"], config["BLOCK_N"]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    ws, cnt = _split_workspace(y, split, bn, workspace)
    grid = (triton.cdiv(n, bn), m, split)
    launch(_int4_gemv_x2_kernel, grid, (x.view(torch.int32), qweight.contiguous().view(torch.int32), scales,
                                         zeros if zeros is not None else scales, y, ws, cnt, n, k // 2, y.stride(0)),
           dict(K=k, GROUP=group, HAS_ZERO=zeros is not None, NEG_BASE=NEG_BASE, ASM=config.get("ASM", ASM), BLOCK_N=bn,
                NG=tile[0], GW=tile[1], SPLIT_K=split, PREFETCH=config.get("PREFETCH", False),
                num_warps=config["num_warps"], **launch_options(x.device)))
    return y
