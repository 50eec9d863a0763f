"""An int4 GEMV on tensor cores (CUDA C through NVRTC, sm_80+, bf16 or fp16 activations, M <= 32; issue 17).

y [M, N] = x [M, K] @ dequant(W).T for decode-sized M. The packed GEMVs (triton_int4_gemv, cuda_int4_gemv)
spend ~3.3 SASS instructions per code on CUDA cores (pairing x, two bf16x2 FMAs per pair, partial sums), about
as much issue time as the weight bytes take to arrive at M = 1, and they re-read or re-pair x per row of x.
Here the dequantized codes are the A operand of `mma.m16n8k16` (16 weight rows x 16 codes) and x the B operand
(16 codes x 8 rows of x, M <= 8 per n8 tile): per 32-bit word of codes (8 codes, one A fragment of a lane)
three shifts, four LOP3 (mask + magic exponent: the bf16 pair 128 + q, exact; bf16's 7 mantissa bits leave no room
for fp16's shift-free 1024 + 16 q trick), four bf16x2 subtractions of 128 + zero (q - zero, exact) and one MMA per
8 rows of x: 1.5 instructions per code in the loop body (benchmarks/sass_int4_mma_gemv.py), products exact
and summed in fp32; the group scale is applied to each chunk's fp32 partial sums (no bf16 rounding of partial
sums, unlike the packed GEMVs). fp16 activations use the same steps with fp16's 1024 + q (mma .f16).

Layout (`to_layout`, built once per layer from the canonical packed codes and kept only if chosen): rows in
tiles of 16, K in chunks of CW = 16 S codes (S = 4 mma steps of 16; fewer for groups of 32 or 16); the S words a
lane needs for one chunk of one tile are contiguous (lane L = 4 g + t: rows g and g + 8), so a warp reads 512
contiguous bytes per chunk with one 16-byte load per lane. Within a chunk, lane t's mma slots hold codes 4 S t ..
4 S t + 4 S - 1, so its x operand is 8 S contiguous bytes of x. Scales (and -(128 + zero)) of rows g and g + 8
are paired in one word per (tile, group, g).

Each warp owns one 16-row tile and a contiguous share of its chunks (KW warps split K; their fp32 partial sums
are added through shared memory); weight loads are issued U chunks ahead (two batches in flight). As a
programmatic dependent launch (sm_90) the first batch of weights is loaded before waiting for the kernel that
writes x.
"""
from __future__ import annotations

import torch

from ...errors import env_choice
from . import cuda_int4_gemv as base
from .pdl import enabled

# What the tensor-core GEMV and GEMM (cuda_int4_mma_gemm) share: the layout's constants, loads of codes and of
# x fragments, the dequantization into an A fragment, the MMA
COMMON = r"""
#define K __K__
#define GROUP __GROUP__
#define S __S__
#define HAS_ZERO __HAS_ZERO__
#define PDL __PDL__
#define F16 __F16__  // activations, scales and output fp16 (else bf16)
#if F16
#define T "f16"
#define MAGIC 0x64006400u  // fp16 1024: 1024 + q exactly (10 mantissa bits)
#define ONE 0x3C003C00u
#define SYM_NEG 0xE408E408u  // -(1024 + 8)
#else
#define T "bf16"
#define MAGIC 0x43004300u  // bf16 128: 128 + q exactly (7 mantissa bits)
#define ONE 0x3F803F80u
#define SYM_NEG 0xC308C308u  // -(128 + 8)
#endif
#define CW (16 * S)
#define CHUNKS (K / CW)
#define NG (K / GROUP)

struct alignas(16) u4 { unsigned a, b, c, d; };
struct alignas(8) u2 { unsigned a, b; };

// S words of codes (one chunk of one tile for this lane): streamed, not kept in L1
__device__ __forceinline__ void ld_codes(const unsigned* p, unsigned* w) {
#if S == 4
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
#elif S == 2
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
#else
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(w[0]) : "l"(p));
#endif
}
__device__ __forceinline__ unsigned ld_word(const unsigned* p) {
  unsigned v;
  asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned hfma2(unsigned a, unsigned b, unsigned c) {
  unsigned r;
  asm("fma.rn." T "x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}
// (a & mask) | magic in one LOP3 (ptxas keeps an AND and an OR of two immediates apart)
template <unsigned MASK, unsigned OR> __device__ __forceinline__ unsigned lop3(unsigned a) {
  unsigned r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "n"(MASK), "n"(OR));
  return r;
}
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, %1, %2;" : "=r"(r) : "r"(a), "r"(sel));
  return r;
}
// the 16-bit scale in the low bits of h as fp32
__device__ __forceinline__ float to_f32(unsigned h) {
#if F16
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
  return f;
#else
  return __uint_as_float(h << 16);
#endif
}
__device__ __forceinline__ void mma(float* d, const unsigned* a, unsigned b0, unsigned b1, const float* c) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
// -(MAGIC + zero) of rows g (low) and g + 8 (high) as pairs, from their paired word (symmetric: zero point 8)
__device__ __forceinline__ void zero_pairs(unsigned zw, unsigned& nzl, unsigned& nzh) {
#if HAS_ZERO
  nzl = prmt(zw, 0x1010u); nzh = prmt(zw, 0x3232u);
#else
  nzl = SYM_NEG; nzh = SYM_NEG;
#endif
}
// one word of codes -> the A fragment: nibbles (j, j + 4) -> pair (MAGIC + q) -> (q - zero) = register j
__device__ __forceinline__ void dequant(unsigned v, unsigned nzl, unsigned nzh, unsigned* a) {
  a[0] = hfma2(lop3<0x000F000Fu, MAGIC>(v), ONE, nzl);
  a[1] = hfma2(lop3<0x000F000Fu, MAGIC>(v >> 4), ONE, nzh);
  a[2] = hfma2(lop3<0x000F000Fu, MAGIC>(v >> 8), ONE, nzl);
  a[3] = hfma2(lop3<0x000F000Fu, MAGIC>(v >> 12), ONE, nzh);
}
// y rows m0 + (the rows of x in NT n8 tiles) x weight rows of RT 16-row tiles from tile0, rounded to the output
// dtype: accumulators c0 c1 are row g and x rows 2t, 2t + 1; c2 c3 row g + 8
template <int RT_, int NT_>
__device__ __forceinline__ void store_tiles(const float (&acc)[RT_][NT_][4], unsigned short* __restrict__ y, int m0,
                                            int tile0, int M, int N, int stride_y, int g, int t) {
#pragma unroll
  for (int r = 0; r < RT_; ++r)
#pragma unroll
    for (int n = 0; n < NT_; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = m0 + n * 8 + 2 * t + (e & 1), row = (tile0 + r) * 16 + g + 8 * (e >> 1);
        if (m < M && row < N) {
          unsigned short o;
          asm("cvt.rn." T ".f32 %0, %1;" : "=h"(o) : "f"(acc[r][n][e]));
          y[(size_t)m * stride_y + row] = o;
        }
      }
}
// the 2 S words of x (this lane's 4 S codes of a chunk: the B operands of its S mma steps) at xr, or zeros
__device__ __forceinline__ void ld_x(const unsigned short* xr, bool ok, unsigned* xb) {
#if S == 1
  const u2 v = ok ? *(const u2*)xr : u2{0u, 0u};
  xb[0] = v.a; xb[1] = v.b;
#else
#pragma unroll
  for (int q = 0; q < 2 * S; q += 4) {
    const u4 v = ok ? *(const u4*)(xr + 2 * q) : u4{0u, 0u, 0u, 0u};
    xb[q] = v.a; xb[q + 1] = v.b; xb[q + 2] = v.c; xb[q + 3] = v.d;
  }
#endif
}
"""

_GEMV = r"""
#define KW __KW__
#define TPB __TPB__
#define NT __NT__
#define U __U__
#define RT __RT__  // 16-row tiles per warp: x fragments loaded once per chunk for RT tiles
#define PER_WARP ((CHUNKS + KW - 1) / KW)
#define BATCHES ((PER_WARP + U - 1) / U)

extern "C" __global__ void __launch_bounds__(32 * KW * TPB)
int4_mma_gemv(const unsigned short* __restrict__ x, const unsigned* __restrict__ qw,
              const unsigned* __restrict__ sc, const unsigned* __restrict__ zr,
              unsigned short* __restrict__ y, int N, int M, int stride_x, int stride_y, int tiles) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kw = warp % KW, tile0 = (blockIdx.x * TPB + warp / KW) * RT;
  const int g = lane >> 2, t = lane & 3;
  const bool live = tile0 < tiles;
  const int cbeg = kw * PER_WARP;
  const unsigned* wp[RT];
  const unsigned* sp[RT];
#if HAS_ZERO
  const unsigned* zp[RT];
#endif
#pragma unroll
  for (int r = 0; r < RT; ++r) {  // tiles past the last read the last one and are not stored
    const size_t tr = tile0 + r < tiles ? tile0 + r : (tiles > 0 ? tiles - 1 : 0);
    wp[r] = qw + (tr * CHUNKS + cbeg) * (32 * S) + lane * S;
    sp[r] = sc + tr * NG * 8 + g;
#if HAS_ZERO
    zp[r] = zr + tr * NG * 8 + g;
#endif
  }
  unsigned w[2][U][RT][S], sw[2][U][RT];
#if HAS_ZERO
  unsigned zw[2][U][RT];
#endif
  float acc[RT][NT][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][n][e] = 0.f;

#pragma unroll
  for (int b = 0; b <= BATCHES; ++b) {
    if (b < BATCHES) {  // issue batch b's loads (two batches in flight)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int j = b * U + u, c = cbeg + j;
        if (j < PER_WARP && live && c < CHUNKS) {
#pragma unroll
          for (int r = 0; r < RT; ++r) {
            ld_codes(wp[r] + (size_t)j * (32 * S), w[b & 1][u][r]);
            sw[b & 1][u][r] = ld_word(sp[r] + (size_t)((c * CW) / GROUP) * 8);
#if HAS_ZERO
            zw[b & 1][u][r] = ld_word(zp[r] + (size_t)((c * CW) / GROUP) * 8);
#endif
          }
        }
      }
    }
#if PDL
    if (b == 0) {  // the codes above overlap the previous kernel's end; x is its output
      asm volatile("griddepcontrol.wait;" ::: "memory");
      asm volatile("griddepcontrol.launch_dependents;");
    }
#endif
    if (b == 0) continue;
    const int pb = b - 1;  // compute batch pb
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = pb * U + u, c = cbeg + j;
      if (j < PER_WARP && live && c < CHUNKS) {
        unsigned xb[NT][2 * S];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const int m = n * 8 + g;
          ld_x(x + (size_t)(m < M ? m : 0) * stride_x + c * CW + 4 * S * t, m < M, xb[n]);
        }
#pragma unroll
        for (int r = 0; r < RT; ++r) {
        unsigned nzl, nzh;
#if HAS_ZERO
        zero_pairs(zw[pb & 1][u][r], nzl, nzh);
#else
        zero_pairs(0u, nzl, nzh);
#endif
        float part[NT][4];
        const float zero4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int i = 0; i < S; ++i) {
          unsigned a[4];
          dequant(w[pb & 1][u][r][i], nzl, nzh, a);
#pragma unroll
          for (int n = 0; n < NT; ++n) mma(part[n], a, xb[n][2 * i], xb[n][2 * i + 1], i == 0 ? zero4 : part[n]);
        }
        const float slo = to_f32(sw[pb & 1][u][r] & 0xFFFFu), shi = to_f32(sw[pb & 1][u][r] >> 16);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          acc[r][n][0] = fmaf(part[n][0], slo, acc[r][n][0]);
          acc[r][n][1] = fmaf(part[n][1], slo, acc[r][n][1]);
          acc[r][n][2] = fmaf(part[n][2], shi, acc[r][n][2]);
          acc[r][n][3] = fmaf(part[n][3], shi, acc[r][n][3]);
        }
        }
      }
    }
  }
#if KW > 1
  __shared__ float red[TPB][KW][RT * NT * 4][32];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[warp / KW][kw][(r * NT + n) * 4 + e][lane] = acc[r][n][e];
  __syncthreads();
  if (kw != 0) return;
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = 0.f;
#pragma unroll
        for (int q = 0; q < KW; ++q) v += red[warp / KW][q][(r * NT + n) * 4 + e][lane];
        acc[r][n][e] = v;
      }
#endif
  if (!live) return;
  store_tiles(acc, y, 0, tile0, M, N, stride_y, g, t);
}
"""

MAX_M = 32
_PRECOMPILED: set[tuple] = set()
# (KW warps splitting K per 16-row tile, TPB tiles per block, U chunks per load batch, RT tiles per warp): the best
# launches at M = 1, 8, 16 and 32 of `benchmarks/gpu_int4_gemv.py --families cudamma` on the Llama-7B shapes (H100,
# 2026-12-06, BENCHMARKS 9m; the two RT = 2 ones from `--m 16,32 --mma-rt 1,2`, 9n); launched as programmatic
# dependents where pdl.enabled
CONFIGS = [dict(KW=kw, TPB=tpb, U=u, RT=rt, PDL=True) for kw, tpb, u, rt in (
    (16, 1, 2, 1), (16, 1, 4, 1), (4, 1, 2, 1), (4, 2, 2, 1), (8, 1, 2, 1), (8, 1, 4, 1), (2, 2, 4, 1), (8, 2, 2, 1),
    (4, 1, 4, 2), (8, 1, 2, 2))]


def x_tiles(m: int) -> int:
    """n8 tiles of x a launch for m <= 32 rows is compiled for (NT): 1 up to 8 rows, 2 up to 16, else 4."""
    return 1 if m <= 8 else 2 if m <= 16 else 4


def fits(config: dict, m: int) -> bool:
    """The shared-memory sums of KW warps (TPB x RT tiles, 4 x NT values per lane) fit 48 KB."""
    return (config["KW"] == 1
            or config["TPB"] * config["KW"] * config.get("RT", 1) * x_tiles(m) * 4 * 32 * 4 <= 48 * 1024)


def offered() -> bool:
    """Whether the measured selector tries this kernel (NNSLIM_CUDA_MMA_GEMV, default on)."""
    return env_choice("NNSLIM_CUDA_MMA_GEMV", ("0", "1"), "1") == "1"


def steps(group: int) -> int:
    """mma steps (16 codes) per chunk: 4 (one 16-byte load per lane) unless the group is smaller."""
    return 4 if group % 64 == 0 else 2 if group % 32 == 0 else 1


def source(k: int, group: int, kw: int, tpb: int, nt: int, u: int, has_zero: bool, pdl: bool = False,
           f16: bool = False, rt: int = 1) -> str:
    """The kernel's CUDA source for these compile-time constants (pdl: sm_90+ only; f16: fp16 activations; rt:
    16-row tiles per warp)."""
    return base.fill(COMMON + _GEMV, K=k, GROUP=group, S=steps(group), KW=kw, TPB=tpb, NT=nt, U=u,
                     HAS_ZERO=has_zero, PDL=pdl, F16=f16, RT=rt)


def supports(x: torch.Tensor, k: int, group: int) -> bool:
    return (x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 2 and 1 <= x.shape[0] <= MAX_M and group % 16 == 0
            and k % group == 0 and base.available(x.device))


_NIBBLE = [0, 4, 2, 6, 1, 5, 3, 7]  # nibble j of a word holds (row half h, slot p) number h * 4 + p


def to_layout(qweight: torch.Tensor, k: int, group: int) -> torch.Tensor:
    """Canonical packed codes [N, K/2] uint8 (low nibble first) -> int32 [tiles, chunks, 32 lanes, S] (module doc):
    word i of lane 4 g + t in chunk c holds, as nibble pairs (j, j + 4), the codes of rows g / g + 8 at
    k = CW c + 4 S t + 4 i + p: nibbles 0 / 4 row g p 0 / 1, 1 / 5 row g + 8 p 0 / 1, 2 / 6 row g p 2 / 3,
    3 / 7 row g + 8 p 2 / 3 (the mma A fragment's registers 0-3). Rows past N are zero codes. Built in blocks
    of 1024 rows (~100 MB of int64 temporaries per block at K = 11008)."""
    n = qweight.shape[0]
    s = steps(group)
    tiles, chunks = -(-n // 16), k // (16 * s)
    out = torch.empty((tiles, chunks, 32, s), dtype=torch.int32, device=qweight.device)
    shift = 4 * torch.arange(8, device=qweight.device)
    for t0 in range(0, tiles, 64):
        q = qweight[t0 * 16:(t0 + 64) * 16]
        nt = -(-q.shape[0] // 16)
        codes = torch.stack([q & 15, q >> 4], dim=-1).reshape(q.shape[0], k).to(torch.int64)
        codes = torch.nn.functional.pad(codes, (0, 0, 0, nt * 16 - q.shape[0]))
        c = codes.view(nt, 2, 8, chunks, 4, s, 4)  # tile, h, g, chunk, t, i, p
        c = c.permute(0, 3, 2, 4, 5, 1, 6).reshape(nt, chunks, 8, 4, s, 8)[..., _NIBBLE]
        words = (c << shift).sum(-1)
        out[t0:t0 + nt] = (words - (words >= 2 ** 31).to(torch.int64) * 2 ** 32).to(torch.int32).view(nt, chunks, 32, s)
    return out


def pair_rows(values: torch.Tensor) -> torch.Tensor:
    """[N, G] 16-bit values -> int32 [tiles, G, 8]: word g of a tile holds row g (low half) and row g + 8."""
    n, ng = values.shape
    tiles = -(-n // 16)
    v = torch.nn.functional.pad(values.view(torch.int16), (0, 0, 0, tiles * 16 - n))
    return v.view(tiles, 2, 8, ng).permute(0, 3, 2, 1).contiguous().view(torch.int32).reshape(tiles, ng, 8)


def neg_offsets(zeros: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """uint8 zero points -> the bits of -(MAGIC + zero) in `dtype` (bf16 -(128 + z), fp16 -(1024 + z); exact for
    4-bit zero points) as int16."""
    magic = 0xC300 if dtype == torch.bfloat16 else 0xE400
    return (magic - 0x10000 + zeros.to(torch.int32)).to(torch.int16)


def int4_gemv_mma(x: torch.Tensor, layout: tuple, n: int, group: int, config: dict) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (bf16 or fp16 x, M <= 32) from `layout` = (to_layout codes, pair_rows(scales in
    x's dtype), pair_rows(neg_offsets(zeros, x's dtype)) or None)."""
    m, k = x.shape
    if not supports(x, k, group):
        raise ValueError(f"tensor-core int4 GEMV: M={m}, K={k}, group={group}, x {x.dtype} not supported "
                         f"(bf16 or fp16, 1 <= M <= {MAX_M}, group a multiple of 16 dividing K)")
    qw, sc, zr = layout
    x = base._aligned(x)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    nt = x_tiles(m)
    kw, tpb, u = config["KW"], config["TPB"], config["U"]
    pdl = bool(config.get("PDL")) and enabled(x.device)
    f16 = x.dtype == torch.float16
    rt = config.get("RT", 1)
    if not fits(config, m):
        raise ValueError(f"tensor-core int4 GEMV: KW={kw} x TPB={tpb} x RT={rt} at M={m} needs more than 48 KB of "
                         "static shared memory for its sums")
    key = (k, group, nt, zr is not None, pdl, f16)
    if key not in _PRECOMPILED:  # a new shape: the selector is about to time every offered launch
        _PRECOMPILED.add(key)
        base.precompile(x.device, [source(k, group, c["KW"], c["TPB"], nt, c["U"], zr is not None, pdl, f16,
                                          c.get("RT", 1)) for c in CONFIGS if fits(c, m)], "int4_mma_gemv")
    kern = base.load_function(x.device, (*key, kw, tpb, u, rt),
                              lambda: source(k, group, kw, tpb, nt, u, zr is not None, pdl, f16, rt),
                              "int4_mma_gemv", "int4_mma_gemv")
    tiles = qw.shape[0]
    with torch.cuda.device(x.device):
        base._launch(kern, (-(-tiles // (tpb * rt)), 1, 1), (32 * kw * tpb, 1, 1),
                     [x, qw, sc, zr if zr is not None else sc, y, n, m, x.stride(0), y.stride(0), tiles], pdl)
    return y
