"""int4 tensor-core GEMM from codes pre-permuted for the MMA's register layout (CUDA, bf16; issue 17).

y [M, N] = x [M, K] @ dequant(W).T for M >= 16 (prefill, batched decode), computed as y.T = W x.T so
the dequantized weight tile is the MMA's A operand, which Hopper's wgmma reads from registers.

Why another GEMM (triton_int4's `_int4_gemm_tc_kernel` reads the canonical codes): in the register
layout of an A operand, lane l of a warp holds, for each 16-code slice, the byte pair of codes
(2c, 2c+1) and (2c+8, 2c+9), c = l % 4, so its bytes of a row are j = c + 4t (t = 0, 1, ...): every
fourth byte. Read from the canonical layout, each is a 1-byte shared-memory load. Here each 32-byte
block of a row (64 codes) is stored permuted, byte j = 4t + c at position 8c + t (`to_mma_layout`), so a
lane's bytes of a block are 8 contiguous bytes: one 8-byte load; the kernel undoes the permutation
with a reshape / permute that the compiler resolves in registers.

Dequantization is packed bf16x2 arithmetic in inline PTX (`ASM`), 4 bytes (8 codes) at a time:
PRMT spreads two bytes into the halves of a word, LOP3 turns each nibble into the bf16 128 + q (OR-ed
under the exponent of 128), one HFMA2 subtracts 128 + zero exactly and one multiplies by the scale
(one rounding, as a bf16 weight has): 16 instructions for 8 codes instead of ~28 in fp32. fp16 activations take
the same steps in f16x2 with fp16's 1024 + q (`ASM_F16`). Needs K % 64 == 0 and BLOCK_K a multiple of 64 inside
one group; sm_80+. fp32 (Triton's CPU interpreter, for the tests) takes an fp32 dequantization path.
"""
from __future__ import annotations

import torch

from .launch import launch
from .pdl import launch_options

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernel is simply not offered
    triton = None
    tl = None

PERM_BYTES = 32  # bytes per permuted block: 4 lanes x 8 registers of one A-operand row


def to_mma_layout(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical packed codes [N, K/2] uint8 -> the same bytes with byte 4t + c of each 32-byte block at 8c + t."""
    n, kb = qweight.shape
    if kb % PERM_BYTES:
        raise ValueError(f"int4 MMA layout: K={2 * kb} is not a multiple of {2 * PERM_BYTES}")
    return qweight.reshape(n, kb // PERM_BYTES, 8, 4).transpose(2, 3).contiguous().reshape(n, kb)


# per activation dtype: the PTX type, the magic exponent word (base + q exactly: bf16 128 has 7 mantissa bits,
# fp16 1024 has 10) and the pair (1, 1)
_PACKED = {"bf16": ("bf16", "0x43004300", "0x3F803F80"), "f16": ("f16", "0x64006400", "0x3C003C00")}


def _asm(dtype: str = "bf16") -> str:
    """Per 4 bytes ($4): $0,$1 = bf16 (or f16) pairs of the low nibbles, $2,$3 of the high nibbles, each
    (q - z) * s with $5,$6 the scales and $7,$8 the -(base + z) of the 4 elements, two per word."""
    t, magic, one = _PACKED[dtype]
    lines = ["{", ".reg .b32 t0, t1, u, nz, one, zero;", "mov.b32 nz, 0x80008000;", f"mov.b32 one, {one};",
             "mov.b32 zero, 0;"]
    for i, sel in enumerate(("0x4140", "0x4342")):  # bytes (0, 1) / (2, 3) into the low bytes of each half
        s, nb = f"${5 + i}", f"${7 + i}"
        lines += [f"prmt.b32 t{i}, $4, zero, {sel};",
                  f"lop3.b32 u, t{i}, 0x000F000F, {magic}, 0xEA;",  # (t & 0xF) | base
                  f"fma.rn.{t}x2 u, u, one, {nb};",  # base + q - (base + z) = q - z, exact
                  f"fma.rn.{t}x2 ${i}, u, {s}, nz;",  # (q - z) * s
                  f"shr.u32 u, t{i}, 4;",
                  f"lop3.b32 u, u, 0x000F000F, {magic}, 0xEA;",
                  f"fma.rn.{t}x2 u, u, one, {nb};",
                  f"fma.rn.{t}x2 ${2 + i}, u, {s}, nz;"]
    lines.append("}")
    return "\n".join(lines)


ASM = _asm()  # built once: the kernel launch passes it as a constexpr
ASM_F16 = _asm("f16")


if triton is not None:
    from .pdl import prefetch_rows_then_wait
    from .triton_int4 import gemm_tile, split_steps

    @triton.jit
    def _mma_tile(qw_ptr, s_ptr, z_ptr, rn, kk, K: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                  BLOCK_K: tl.constexpr, ASM: tl.constexpr, PACKED: tl.constexpr, OUT_DTYPE: tl.constexpr):
        """W[rn, kk*BLOCK_K : (kk+1)*BLOCK_K] from the permuted codes (one group per tile): packed bf16x2
        arithmetic (PACKED) or fp32 arithmetic rounded to OUT_DTYPE once."""
        KB: tl.constexpr = BLOCK_K // 2
        BN: tl.constexpr = rn.shape[0]
        G: tl.constexpr = K // GROUP
        raw = tl.load(qw_ptr + rn[:, None] * (K // 2) + kk * KB + tl.arange(0, KB)[None, :])
        gi = rn * G + (kk * BLOCK_K) // GROUP
        s = tl.load(s_ptr + gi)
        if HAS_ZERO:
            z = tl.load(z_ptr + gi).to(tl.float32)
        else:
            z = tl.full((BN,), 8.0, tl.float32)
        if PACKED:
            if s.dtype == tl.float16:  # scales in the activations' dtype: ASM is ASM_F16 then
                nb = (-1024.0 - z).to(tl.float16)
            else:
                nb = (-128.0 - z).to(tl.bfloat16)
            lo, hi = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,r,r,r,r,r",
                                               [raw, tl.broadcast_to(s[:, None], (BN, KB)),
                                                tl.broadcast_to(nb[:, None], (BN, KB))],
                                               dtype=(s.dtype, s.dtype), is_pure=True, pack=4)
        else:
            r = raw.to(tl.int32)
            sf = s.to(tl.float32)[:, None]
            zf = 8388608.0 + z[:, None]
            lo = ((((r & 15) | 0x4B000000).to(tl.float32, bitcast=True) - zf) * sf).to(OUT_DTYPE)
            hi = ((((r >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - zf) * sf).to(OUT_DTYPE)
        # the permutation undone and the nibbles interleaved into k order: the compiler resolves both in
        # registers (the loads above already follow the MMA's layout)
        lo = tl.reshape(tl.permute(tl.reshape(lo, (BN, KB // 32, 4, 8)), (0, 1, 3, 2)), (BN, KB))
        hi = tl.reshape(tl.permute(tl.reshape(hi, (BN, KB // 32, 4, 8)), (0, 1, 3, 2)), (BN, KB))
        return tl.reshape(tl.join(lo, hi), (BN, BLOCK_K))

    @triton.jit
    def store_tile(acc, yp, ym, ws_ptr, cnt_ptr, SPLIT_K: tl.constexpr, ATOMIC: tl.constexpr):
        """Store this program's fp32 output tile (at yp, mask ym) of a y.T = W x.T GEMM on grid (tiles, SPLIT_K).
        SPLIT_K > 1: each K range writes its partial tile to the workspace and the last one to finish sums
        them in a fixed order into y (one launch, deterministic); ATOMIC: fp32 atomics into a zeroed fp32 y."""
        if SPLIT_K == 1:
            tl.store(yp, acc.to(yp.dtype.element_ty), mask=ym)
        elif ATOMIC:
            tl.atomic_add(yp, acc, mask=ym, sem="relaxed")
        else:
            BN: tl.constexpr = acc.shape[0]
            BM: tl.constexpr = acc.shape[1]
            tile, tiles = tl.program_id(0), tl.num_programs(0)
            loc = tl.arange(0, BN)[:, None] * BM + tl.arange(0, BM)[None, :]
            tl.store(ws_ptr + (tl.program_id(1) * tiles + tile) * (BN * BM) + loc, acc)
            tl.debug_barrier()
            count = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
            if count == SPLIT_K - 1:
                tl.debug_barrier()
                total = tl.zeros((BN, BM), tl.float32)
                for sk in tl.static_range(SPLIT_K):
                    total += tl.load(ws_ptr + (sk * tiles + tile) * (BN * BM) + loc, cache_modifier=".cg")
                tl.store(yp, total.to(yp.dtype.element_ty), mask=ym)
                tl.atomic_xchg(cnt_ptr + tile, 0)  # ready for the next launch (also inside a CUDA graph)

    @triton.jit
    def _int4_gemm_mma_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, stride_xm, stride_ym,
                              K: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, ASM: tl.constexpr,
                              PACKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr, SPLIT_K: tl.constexpr,
                              ATOMIC: tl.constexpr, PDL: tl.constexpr = False):
        """Tile [BLOCK_N weight rows, BLOCK_M rows of x]; split-K partials summed by `store_tile`. (Dequantizing
        the next K step's weight tile while this step's MMAs run was measured 7-49% slower on the H100: 9p.)
        PDL: the first codes of the program's rows are asked into L2 before waiting for the kernel that writes x."""
        offs_n, offs_m, rn, rm = gemm_tile(M, N, BLOCK_M, BLOCK_N, GROUP_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        first, last = split_steps(K // BLOCK_K, SPLIT_K)
        prefetch_rows_then_wait(qw_ptr + rn * (K // 2), first * (BLOCK_K // 2), K // 2, PDL)
        for kk in range(first, last):
            w = _mma_tile(qw_ptr, s_ptr, z_ptr, rn, kk, K, GROUP, HAS_ZERO, BLOCK_K, ASM, PACKED,
                          x_ptr.dtype.element_ty)
            xt = tl.load(x_ptr + rm[None, :] * stride_xm + (kk * BLOCK_K + offs_k)[:, None])
            acc = tl.dot(w, xt, acc)
        yp = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
        store_tile(acc, yp, (offs_m[None, :] < M) & (offs_n[:, None] < N), ws_ptr, cnt_ptr, SPLIT_K, ATOMIC)


SPLIT_MAX_M = 512  # split-K tiles are offered up to this M: beyond it the output tiles alone fill the GPU
MAX_PARTIALS = 2**31  # store_tile's workspace offsets are int32: larger split launches add atomically


def tile_offered(cfg: dict, m: int, bucket: int) -> bool:
    """Whether the selector tries a GEMM tile for m rows (M bucket `bucket`): tiles no taller than the bucket,
    split-K only up to SPLIT_MAX_M rows (at 16384 rows a 16-row split-8 tile needed an 11 GB workspace)."""
    return cfg["BLOCK_M"] <= bucket and (cfg.get("SPLIT_K", 1) == 1 or m <= SPLIT_MAX_M)


# Launch configurations the kernel selector times: the winners of `benchmarks/gpu_int4_gemm.py --family mma` on
# Llama-7B shapes at M = 16, 32, 128, 256, 2048 (H100, 2026-12-05; BENCHMARKS.md 9h; split 4 at M=128 from the 22:12
# sweep; 128x128x128 split 2: 0.86x vs 0.76x bf16 at M = 256 on 11008x4096, 2026-12-06, 9o; the last, 128x64x128
# split 4 with 3 stages (two blocks per SM): 1.10x vs 1.05x at M = 128 on 11008x4096, 9p)
MMA_CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=bn // 16, num_stages=st)
               for bm, bn, bk, sk, st in [
                   (16, 64, 128, 2, 4), (16, 64, 128, 4, 4), (16, 64, 128, 8, 4), (32, 64, 128, 2, 4),
                   (32, 64, 128, 4, 4), (32, 64, 128, 8, 4), (64, 64, 128, 1, 4), (64, 64, 128, 2, 4),
                   (128, 64, 64, 2, 4), (128, 64, 128, 1, 4), (128, 64, 128, 2, 4), (128, 128, 128, 1, 4),
                   (256, 64, 64, 2, 4), (256, 128, 64, 1, 4), (256, 128, 128, 1, 3), (128, 128, 128, 4, 4),
                   (64, 64, 64, 4, 4), (128, 128, 128, 2, 4), (128, 64, 128, 4, 3)]]


def fits(k: int, group: int, block_k: int) -> bool:
    """Whether a BLOCK_K tile fits K and the group size (whole permuted blocks inside one group)."""
    return k % block_k == 0 and block_k % 64 == 0 and group % block_k == 0


def supports(x: torch.Tensor, k: int, group: int, block_k: int) -> bool:
    """Whether the selector may offer the kernel: CUDA sm_80+, bf16 or fp16 activations, a tile that fits."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and fits(k, group, block_k)
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


_WORKSPACE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (fp32 partials, int32 counters at zero)
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []  # outgrown pairs: a captured CUDA graph may still use them


def split_workspace(device: torch.device, partials: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The split-K workspace of a device, shared by every layer: launches on one stream run in order and each
    leaves its counters at zero (split-K launches on two streams of a device at the same time are not
    supported). Grown (doubling) when a launch needs more; outgrown buffers are kept alive, since a captured
    CUDA graph holds their addresses. None while a CUDA graph is being captured and the
    workspace is too small (counters made during a capture would be zeroed only when the graph runs)."""
    key = str(device)
    ws = _WORKSPACE.get(key)
    if ws is not None and ws[0].numel() >= partials and ws[1].numel() >= tiles:
        return ws
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    have = (0, 0)
    if ws is not None:
        _RETIRED.append(ws)
        have = (ws[0].numel(), ws[1].numel())
    ws = (torch.empty(max(partials, 2 * have[0]), dtype=torch.float32, device=device),
          torch.zeros(max(tiles, 2 * have[1]), dtype=torch.int32, device=device))
    _WORKSPACE[key] = ws
    return ws


def grid(m: int, n: int, cfg: dict) -> tuple[int, int]:
    """(output tiles, K ranges) of a y.T = W x.T launch."""
    return triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), cfg["SPLIT_K"]


def split_outputs(device: torch.device, dtype: torch.dtype, m: int, n: int, cfg: dict):
    """(y, workspace partials, workspace counters, cfg) for a launch whose kernel ends in `store_tile`: y [m, n]
    in dtype, or zeroed fp32 when the launch adds atomically (cfg ATOMIC, set here when a CUDA graph capture
    would need a larger workspace; the caller casts y back with `.to(dtype)`)."""
    cfg = {"SPLIT_K": 1, "GROUP_N": 8, "ATOMIC": False, **cfg}
    tiles, split = grid(m, n, cfg)
    ws = None
    partials = split * tiles * cfg["BLOCK_M"] * cfg["BLOCK_N"]
    if split > 1 and not cfg["ATOMIC"] and partials < MAX_PARTIALS:
        ws = split_workspace(device, partials, tiles)
        cfg["ATOMIC"] = ws is None
    elif split > 1:
        cfg["ATOMIC"] = True
    if split > 1 and cfg["ATOMIC"]:
        y = torch.zeros((m, n), dtype=torch.float32, device=device)
    else:
        cfg["ATOMIC"] = False
        y = torch.empty((m, n), dtype=dtype, device=device)
    ws_p, ws_c = ws if ws is not None else (y, y)
    return y, ws_p, ws_c, cfg


def int4_gemm_mma(x: torch.Tensor, wperm: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                  group: int, config: dict) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T from the permuted codes (`to_mma_layout`), scales [N, G] in x's dtype and,
    for asymmetric weights, zeros [N, G]. bf16 / fp16 on CUDA dequantize with packed bf16x2 / f16x2 PTX; fp32
    (Triton's CPU interpreter) in fp32 (config PACKED=False forces that path).
    Split-K sums its partials in the same launch through the device's shared workspace (`split_workspace`);
    config ATOMIC=True (or a CUDA graph capture that would need a larger workspace) uses fp32 atomics into a
    zeroed buffer and a cast instead: two more kernels, and a sum whose order varies between runs."""
    m, k = x.shape
    n = wperm.shape[0]
    if not fits(k, group, config["BLOCK_K"]):
        raise ValueError(f"int4 MMA GEMM: BLOCK_K={config['BLOCK_K']} does not fit K={k}, group={group} (a multiple "
                         "of 64 inside one group)")
    packed = config.get("PACKED", True) and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
    cfg = {**config, "PACKED": packed}
    y, ws_p, ws_c, cfg = split_outputs(x.device, x.dtype, m, n, cfg)
    launch(_int4_gemm_mma_kernel, grid(m, n, cfg), (x, wperm, scales, zeros if zeros is not None else scales, y, ws_p,
                                                    ws_c, m, n, x.stride(0), y.stride(0)),
           dict(K=k, GROUP=group, HAS_ZERO=zeros is not None, ASM=ASM_F16 if x.dtype == torch.float16 else ASM, **cfg,
                **launch_options(x.device)))
    return y.to(x.dtype)
