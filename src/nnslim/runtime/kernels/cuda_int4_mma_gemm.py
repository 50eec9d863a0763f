"""An int4 GEMM on tensor cores from the tensor-core GEMV's layout (CUDA C through NVRTC, sm_80+, bf16 or fp16
activations; issue 17: prefill and batched decode, M >= 16). Opt-in (NNSLIM_CUDA_MMA_GEMM=1): its first version
ran at 0.35-0.74x bf16 at M = 128 / 256 on an H100, slower than the Triton MMA GEMM (0.76-1.18x in the same runs;
BENCHMARKS.md 9n); this version (scale in the A fragments, step-major MMAs) is 5-10% faster and still 0.33-0.81x
bf16 at M = 128-2048 where the Triton GEMM's wgmma runs 0.75-1.18x (9o).

y [M, N] = x [M, K] @ dequant(W).T with W in `cuda_int4_mma_gemv.to_layout`'s layout, so decode (the GEMV) and
prefill would read one copy of the codes. The GEMV loads each lane's x fragments from global memory per 16-row
tile, which at M > 32 moves more x than weight bytes through L1. Here a block of WARPS warps (RT 16-row tiles each)
shares BM = 8 NT rows of x: each batch of U chunks - the block's rows of x, its tiles' codes (one contiguous 512
bytes per tile and chunk) and their paired scale / zero words - is copied into shared memory with cp.async,
STAGES - 1 batches ahead. Per chunk a warp dequantizes its RT tiles' A fragments once (the GEMV's arithmetic,
`COMMON`), multiplies them by the group scale (one rounding in the activation dtype, as dequantize-then-matmul)
and runs RT x NT x S MMAs straight into fp32 accumulators, step-major (RT x NT independent MMAs between two into
one accumulator), against x fragments read from shared memory (two 16-byte loads per lane per n8 tile; rows padded
by 16 bytes: no bank conflicts). The first version kept the GEMV's exact products with fp32 partial sums per
chunk, scaled in fp32: Nsight Compute (9n) showed those chains of 4 dependent MMAs stalling the warps on
fixed-latency waits, the tensor pipe active 27% of its cycles.

SPLIT > 1 splits K over blockIdx.z: each K range writes its fp32 partial tile to the device's shared split-K
workspace (`triton_int4_mma.split_workspace`) and the last block of a tile to finish sums the partials in a fixed
order into y and resets its counter (one launch, the same bits every run). As a programmatic dependent launch
(sm_90) the first batches of codes are copied before waiting for the kernel that writes x.
"""
from __future__ import annotations

import torch

from ...errors import env_choice
from . import cuda_int4_gemv as base
from . import cuda_int4_mma_gemv as gemv
from .pdl import enabled

_GEMM = r"""
#define WARPS __WARPS__
#define RT __RT__          // 16-row tiles per warp
#define NT __NT__          // n8 tiles of x per block: BM = 8 NT rows of x
#define U __U__            // chunks per batch (one shared-memory stage)
#define STAGES __STAGES__  // shared-memory stages of x
#define SPLIT __SPLIT__    // K ranges (blockIdx.z)
#define BM (8 * NT)
#define ROWW (U * CW + 8)  // a stage's row of x in 16-bit elements (+16 bytes: conflict-free fragment loads)
#define PIECES (BM * U * CW / 8)  // 16-byte copies of x per stage
#define NEG_ZERO 0x80008000u      // -0.0 pair: fma(a, s, -0) = a * s
#define TW (WARPS * RT)           // 16-row tiles per block
#define CODE_WORDS (TW * U * 32 * S)
#define PAIR_WORDS (TW * U * 8)   // scale (or zero) words of rows g / g + 8 per tile and chunk
#define STAGE_BYTES (2 * BM * ROWW + 4 * CODE_WORDS + 4 * PAIR_WORDS * (1 + HAS_ZERO))

__device__ __forceinline__ void cp16(unsigned dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}

extern "C" __global__ void __launch_bounds__(32 * WARPS)
int4_mma_gemm(const unsigned short* __restrict__ x, const unsigned* __restrict__ qw,
              const unsigned* __restrict__ sc, const unsigned* __restrict__ zr,
              unsigned short* __restrict__ y, float* __restrict__ ws, int* __restrict__ cnt,
              int N, int M, int stride_x, int stride_y, int tiles) {
  extern __shared__ __align__(16) unsigned char smem[];  // STAGES x [x rows | codes | scale words | zero words]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.x * BM, btile = blockIdx.y * TW, tile0 = btile + warp * RT;
  const bool live = tile0 < tiles;
  const int cbeg = (int)((long long)blockIdx.z * CHUNKS / SPLIT);
  const int cend = (int)((long long)(blockIdx.z + 1) * CHUNKS / SPLIT);
  const int nb = (cend - cbeg + U - 1) / U;
  const unsigned s0 = (unsigned)__cvta_generic_to_shared(smem);

  // codes, scale and zero words of batch b's chunks for the block's tiles (tiles past the last: the last one)
  auto stage_w = [&](int b) {
    if (b >= nb) return;
    const int c0 = cbeg + b * U;
    const unsigned base = s0 + (b % STAGES) * STAGE_BYTES + 2 * BM * ROWW;
    for (int p = threadIdx.x; p < CODE_WORDS / 4; p += 32 * WARPS) {
      const int tw = p / (U * 8 * S), u = (p / (8 * S)) % U, q = p % (8 * S), c = c0 + u;
      const int tile = btile + tw < tiles ? btile + tw : tiles - 1;
      if (c < cend) cp16(base + 16u * p, qw + ((size_t)tile * CHUNKS + c) * (32 * S) + 4 * q, 16);
    }
    for (int p = threadIdx.x; p < (PAIR_WORDS / 4) * (1 + HAS_ZERO); p += 32 * WARPS) {
      const int which = p / (PAIR_WORDS / 4), pp = p % (PAIR_WORDS / 4);
      const int tw = pp / (U * 2), u = (pp / 2) % U, h = pp % 2, c = c0 + u;
      const int tile = btile + tw < tiles ? btile + tw : tiles - 1;
      const unsigned* src = (which ? zr : sc) + ((size_t)tile * NG + (c * CW) / GROUP) * 8 + 4 * h;
      if (c < cend) cp16(base + 4u * CODE_WORDS + 4u * PAIR_WORDS * which + 16u * pp, src, 16);
    }
  };
  // x chunks of batch b (rows past M zero-filled)
  auto stage_x = [&](int b) {
    if (b >= nb) return;
    const int c0 = cbeg + b * U;
    for (int p = threadIdx.x; p < PIECES; p += 32 * WARPS) {
      const int row = p / (U * CW / 8), col = (p % (U * CW / 8)) * 8;
      if (c0 + col / CW < cend) {
        const int m = m0 + row;
        cp16(s0 + (b % STAGES) * STAGE_BYTES + 2u * (unsigned)(row * ROWW + col),
             x + (size_t)(m < M ? m : 0) * stride_x + c0 * CW + col, m < M ? 16 : 0);
      }
    }
  };
  float acc[RT][NT][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][n][e] = 0.f;
  auto compute = [&](int b) {
    const unsigned char* st = smem + (b % STAGES) * STAGE_BYTES;
    const unsigned short* xb0 = (const unsigned short*)st;
    const unsigned* cw = (const unsigned*)(st + 2 * BM * ROWW);
    const unsigned* pw = cw + CODE_WORDS;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (cbeg + b * U + u < cend && live) {
        unsigned a[RT][S][4];
#pragma unroll
        for (int r = 0; r < RT; ++r) {
          const int tw = warp * RT + r;
          unsigned w[S], nzl, nzh;
#if S == 4
          const u4 v = *(const u4*)(cw + (tw * U + u) * (32 * S) + lane * S);
          w[0] = v.a; w[1] = v.b; w[2] = v.c; w[3] = v.d;
#else
#pragma unroll
          for (int i = 0; i < S; ++i) w[i] = cw[(tw * U + u) * (32 * S) + lane * S + i];
#endif
#if HAS_ZERO
          zero_pairs(pw[PAIR_WORDS + (tw * U + u) * 8 + g], nzl, nzh);
#else
          zero_pairs(0u, nzl, nzh);
#endif
          const unsigned sw = pw[(tw * U + u) * 8 + g];
          const unsigned slo = prmt(sw, 0x1010u), shi = prmt(sw, 0x3232u);
#pragma unroll
          for (int i = 0; i < S; ++i) {  // (q - zero) exact, times the scale: one rounding
            dequant(w[i], nzl, nzh, a[r][i]);
            a[r][i][0] = hfma2(a[r][i][0], slo, NEG_ZERO);
            a[r][i][1] = hfma2(a[r][i][1], shi, NEG_ZERO);
            a[r][i][2] = hfma2(a[r][i][2], slo, NEG_ZERO);
            a[r][i][3] = hfma2(a[r][i][3], shi, NEG_ZERO);
          }
        }
        unsigned xf[NT][2 * S];
#pragma unroll
        for (int n = 0; n < NT; ++n) ld_x(xb0 + (n * 8 + g) * ROWW + u * CW + 4 * S * t, true, xf[n]);
#pragma unroll
        for (int i = 0; i < S; ++i)  // RT x NT independent accumulators between two MMAs into one
#pragma unroll
          for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int r = 0; r < RT; ++r) mma(acc[r][n], a[r][i], xf[n][2 * i], xf[n][2 * i + 1], acc[r][n]);
      }
    }
  };

  // STAGES - 1 batches ahead; one commit group per batch (the first also holds the weights copied before x)
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) stage_w(s);  // weights do not depend on the previous kernel
#if PDL
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
#endif
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    stage_x(s);
    asm volatile("cp.async.commit_group;");
  }
  for (int b = 0; b < nb; ++b) {
    asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 2));
    __syncthreads();  // batch b is in; every warp is done with the stage refilled next
    stage_w(b + STAGES - 1);
    stage_x(b + STAGES - 1);
    asm volatile("cp.async.commit_group;");
    compute(b);
  }
  asm volatile("cp.async.wait_group 0;");

#if SPLIT > 1
  {  // partials [SPLIT][tiles of blocks][RT NT 4][threads]; the last block of a tile to finish sums them in order
    const int blk = blockIdx.y * gridDim.x + blockIdx.x, nblk = gridDim.x * gridDim.y;
    const int part = RT * NT * 4 * 32 * WARPS;  // floats of one block's partial tile
    float* mine = ws + ((size_t)blockIdx.z * nblk + blk) * part + threadIdx.x;
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) __stcg(mine + ((r * NT + n) * 4 + e) * (32 * WARPS), acc[r][n][e]);
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) last = atomicAdd(cnt + blk, 1) == SPLIT - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = 0.f;
          for (int z = 0; z < SPLIT; ++z)
            v += __ldcg(ws + ((size_t)z * nblk + blk) * part + ((r * NT + n) * 4 + e) * (32 * WARPS) + threadIdx.x);
          acc[r][n][e] = v;
        }
    if (threadIdx.x == 0) cnt[blk] = 0;  // ready for the next launch (also inside a CUDA graph)
  }
#endif
  if (!live) return;
  store_tiles(acc, y, m0, tile0, M, N, stride_y, g, t);
}
"""

MIN_M = 16
_PRECOMPILED: set[tuple] = set()
# (WARPS, RT, NT, U, STAGES, SPLIT): a first grid; the sweep (`benchmarks/gpu_int4_gemm.py --family cuda`, 9n)
# found none faster than the Triton MMA GEMM
CONFIGS = [dict(WARPS=w, RT=rt, NT=nt, U=u, STAGES=st, SPLIT=sp, PDL=True) for w, rt, nt, u, st, sp in (
    (4, 2, 4, 2, 3, 4), (8, 1, 8, 2, 3, 2), (8, 2, 8, 2, 3, 2), (8, 2, 8, 2, 3, 4), (8, 2, 8, 2, 3, 1),
    (4, 2, 8, 2, 3, 2), (8, 1, 16, 2, 3, 1), (8, 1, 16, 1, 4, 2), (4, 1, 16, 2, 3, 2))]


def offered() -> bool:
    """Whether the measured selector tries this kernel (NNSLIM_CUDA_MMA_GEMM; off: slower than the Triton MMA GEMM,
    see the module doc)."""
    return env_choice("NNSLIM_CUDA_MMA_GEMM", ("0", "1"), "0") == "1"


def smem_bytes(config: dict, group: int, has_zero: bool = True) -> int:
    """Dynamic shared memory of a launch: STAGES x (BM rows of U CW + 8 16-bit x values, and the block's codes,
    scale and zero words of U chunks)."""
    c, s = config, gemv.steps(group)
    tiles = c["WARPS"] * c["RT"] * c["U"]
    return c["STAGES"] * (2 * 8 * c["NT"] * (c["U"] * 16 * s + 8) + 4 * tiles * 32 * s + 4 * tiles * 8 * (1 + has_zero))


def fits(config: dict, group: int, m: int) -> bool:
    """Whether a launch is sensible for m rows: its x tile no taller than m rounded up to a multiple of 16 (32 at
    least), and its stages within the 227 KB an sm_90 block may have (sm_80: 163 KB; the launch checks the device)."""
    return 8 * config["NT"] <= max(32, -(-m // 16) * 16) and smem_bytes(config, group) <= 227 * 1024


def source(k: int, group: int, config: dict, has_zero: bool, pdl: bool, f16: bool) -> str:
    """The kernel's CUDA source for these compile-time constants (pdl: sm_90+ only; f16: fp16 activations)."""
    c = config
    return base.fill(gemv.COMMON + _GEMM, K=k, GROUP=group, S=gemv.steps(group), HAS_ZERO=has_zero, PDL=pdl,
                     F16=f16, WARPS=c["WARPS"], RT=c["RT"], NT=c["NT"], U=c["U"], STAGES=c["STAGES"],
                     SPLIT=c["SPLIT"])


def supports(x: torch.Tensor, k: int, group: int) -> bool:
    return (x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 2 and x.shape[0] >= MIN_M
            and group % 16 == 0 and k % group == 0 and base.available(x.device))


def _key(c: dict) -> tuple:
    return tuple(c[name] for name in ("WARPS", "RT", "NT", "U", "STAGES", "SPLIT"))


def int4_gemm_mma(x: torch.Tensor, layout: tuple, n: int, group: int, config: dict) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (bf16 or fp16 x, M >= MIN_M) from the tensor-core GEMV's `layout` (to_layout
    codes, paired scales in x's dtype, paired -(MAGIC + zero) or None)."""
    from .triton_int4_mma import split_workspace

    m, k = x.shape
    qw, sc, zr = layout
    if not supports(x, k, group):
        raise ValueError(f"tensor-core int4 GEMM: M={m}, K={k}, group={group}, x {x.dtype} not supported (bf16 or "
                         f"fp16, M >= {MIN_M}, group a multiple of 16 dividing K)")
    smem = smem_bytes(config, group, zr is not None)
    limit = torch.cuda.get_device_properties(x.device).shared_memory_per_block_optin
    if smem > limit:
        raise ValueError(f"tensor-core int4 GEMM: config {_key(config)} needs {smem} bytes of shared memory, "
                         f"this GPU allows {limit} per block")
    x = base._aligned(x)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    tiles = qw.shape[0]
    grid = (-(-m // (8 * config["NT"])), -(-tiles // (config["WARPS"] * config["RT"])), config["SPLIT"])
    ws = cnt = y
    if config["SPLIT"] > 1:
        threads = 32 * config["WARPS"]
        pair = split_workspace(x.device, grid[0] * grid[1] * grid[2] * threads * config["RT"] * config["NT"] * 4,
                               grid[0] * grid[1])
        if pair is None:  # a CUDA graph capture that would need a larger workspace: the same tile without split-K
            config, grid = dict(config, SPLIT=1), (grid[0], grid[1], 1)
        else:
            ws, cnt = pair
    pdl = bool(config.get("PDL")) and enabled(x.device)
    f16 = x.dtype == torch.float16
    shape_key = (k, group, zr is not None, pdl, f16)
    if shape_key not in _PRECOMPILED:  # a new shape: the selector is about to time every offered launch
        _PRECOMPILED.add(shape_key)
        base.precompile(x.device, [source(k, group, c, zr is not None, pdl, f16) for c in CONFIGS], "int4_mma_gemm")
    kern = base.load_function(x.device, (*shape_key, *_key(config)),
                              lambda: source(k, group, config, zr is not None, pdl, f16), "int4_mma_gemm",
                              "int4_mma_gemm")
    with torch.cuda.device(x.device):
        base._launch(kern, grid, (32 * config["WARPS"], 1, 1),
                     [x, qw, sc, zr if zr is not None else sc, y, ws, cnt, n, m, x.stride(0), y.stride(0), tiles],
                     pdl, smem)
    return y
