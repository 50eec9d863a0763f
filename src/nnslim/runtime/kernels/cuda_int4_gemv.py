"""An int4 GEMV in CUDA C, compiled at run time by NVRTC (CUDA, sm_80+, bf16 activations; issue 17).

y [M, N] = x [M, K] @ dequant(W).T for M <= 8 (decode), read straight from the canonical packed weight
(qweight [N, K/2] uint8, low nibble first: as 32-bit words, nibble j of word w is the code of k = 8w + j),
its scales [N, G] and, for asymmetric weights, zeros [N, G] uint8: no second copy.

Why CUDA: the Triton GEMVs (triton_int4_gemv) reach ~25-40% of the HBM bandwidth at M = 1 because Triton
neither keeps many independent weight loads in flight for non-dot loads nor lets x stay in the registers
of the lanes that use it (it goes through shared memory every iteration). Here each warp owns R output rows
and walks K (a compile-time constant: the loop is unrolled) with every lane copying 16 contiguous bytes (32
codes) of each row per step into shared memory with cp.async, STAGES - 1 steps ahead of the arithmetic (ptxas
moves plain loads next to their use, which left one load in flight per warp); x (L1-cached, the same for every
warp) is paired once per word and reused for the R rows. Optionally (PDL) launched as a programmatic dependent:
the first copies overlap the previous kernel's end, x is read after griddepcontrol.wait.
Per word of 8 codes: one LOP3 (after a shift) makes the bf16 pair (128 + q_j, 128 + q_{j+4}) exactly, one
bf16x2 FMA subtracts 128 + zero exactly, one bf16x2 FMA multiplies-and-adds the x pair (x_j, x_{j+4}); the
four products of each half are summed in bf16, the halves in fp32, then the group scale is applied in fp32
(the same arithmetic, and error, as triton_int4_gemv). MT rows of x are handled by one warp (the weight is
read and dequantized once for them).

The source needs no CUDA header (only builtins and inline PTX), so NVRTC from the CUDA pip wheels that
torch itself depends on is enough: no nvcc, no host compiler. Compiled once per (GPU architecture, K, group,
R, MT, zeros, stages) and kept in $NNSLIM_CACHE/cuda; where NVRTC or the driver API cannot be loaded the kernel
cannot run. The measured selector tries it only with NNSLIM_CUDA_KERNELS=1: it did not make decode faster end to
end (CONFIGS says what was measured).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import threading
from pathlib import Path
from typing import Callable

import torch

from ...errors import env_choice
from .pdl import enabled

_SOURCE = r"""
#define K __K__
#define GROUP __GROUP__
#define R __R__
#define MT __MT__
#define HAS_ZERO __HAS_ZERO__
#define CHUNKS (K / 32)
#define ITERS ((CHUNKS + 31) / 32)
#define NG (K / GROUP)
#define STAGES __STAGES__
#define PDL __PDL__

struct alignas(16) u4 { unsigned a, b, c, d; };

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned long long a;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
  return (unsigned)a;
}
// asynchronous copies global -> shared: issued at once, waited for STAGES - 1 steps later (ptxas sinks plain
// loads next to their use, which leaves too few bytes in flight)
__device__ __forceinline__ void cp16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void wait_stage() { asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 1)); }
__device__ __forceinline__ u4 ld_cached(const void* p) {
  u4 v;
  asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.a), "=r"(v.b), "=r"(v.c), "=r"(v.d) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}
__device__ __forceinline__ unsigned hfma2(unsigned a, unsigned b, unsigned c) {
  unsigned r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}
// sum_j x_j (q_j - z) over the 8 codes of word w; xp: the x pairs (x_j, x_{j+4}); negz: -(128 + z) twice
__device__ __forceinline__ float word_dot(unsigned w, const unsigned* xp, unsigned negz) {
  unsigned acc = 0u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    unsigned c = ((w >> (4 * j)) & 0x000F000Fu) | 0x43004300u;
    acc = hfma2(xp[j], hfma2(c, 0x3F803F80u, negz), acc);
  }
  return __uint_as_float(acc << 16) + __uint_as_float(acc & 0xFFFF0000u);
}

extern "C" __global__ void __launch_bounds__(128)
int4_gemv(const unsigned short* __restrict__ x, const unsigned* __restrict__ qw,
          const unsigned short* __restrict__ scales, const unsigned char* __restrict__ zeros,
          unsigned short* __restrict__ y, int N, int M, int stride_x, int stride_y) {
  const int lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
  const int m0 = blockIdx.y * MT;
  if (n0 >= N) return;
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;
  // per warp and stage: R x 32 lanes x (16 bytes of codes, the 4-byte word holding the scale, and the zero)
  __shared__ u4 wbuf[4][STAGES][R][32];
  __shared__ unsigned sbuf[4][STAGES][R][32];
#if HAS_ZERO
  __shared__ unsigned zbuf[4][STAGES][R][32];
#endif
  const int warp = threadIdx.x >> 5;
  const unsigned* scales32 = (const unsigned*)scales;
#pragma unroll
  for (int it = 0; it < ITERS + STAGES - 1; ++it) {
    if (it < ITERS) {  // issue step it
      const int c = it * 32 + lane;
      if ((CHUNKS % 32 == 0) || c < CHUNKS) {
        const int g = (c * 32) / GROUP;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int n = (n0 + r < N) ? n0 + r : N - 1;  // rows past N read row N - 1 and are not stored
          cp16(&wbuf[warp][it % STAGES][r][lane], qw + ((size_t)n * CHUNKS + c) * 4);
          cp4(&sbuf[warp][it % STAGES][r][lane], scales32 + (((size_t)n * NG + g) >> 1));
#if HAS_ZERO
          cp4(&zbuf[warp][it % STAGES][r][lane], (const unsigned*)zeros + (((size_t)n * NG + g) >> 2));
#endif
        }
      }
    }
    commit();
    const int t = it - (STAGES - 1);  // compute step t: its copies are the oldest group still pending
#if PDL
    // launched as a programmatic dependent: the weight copies above overlap the previous kernel's tail;
    // x (its output) is read only after it has completed and its writes are visible
    if (t == 0) {
      asm volatile("griddepcontrol.wait;" ::: "memory");
      asm volatile("griddepcontrol.launch_dependents;");
    }
#endif
    if (t >= 0) {
      wait_stage();
      const int c = t * 32 + lane;
      if ((CHUNKS % 32 == 0) || c < CHUNKS) {
        const int g = (c * 32) / GROUP;
        u4 w[R];
        float s[R];
        unsigned nz[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const size_t idx = (size_t)((n0 + r < N) ? n0 + r : N - 1) * NG + g;
          w[r] = wbuf[warp][t % STAGES][r][lane];
          s[r] = __uint_as_float(((sbuf[warp][t % STAGES][r][lane] >> (16 * (idx & 1))) & 0xFFFFu) << 16);
#if HAS_ZERO
          const unsigned nb = 0xC300u + ((zbuf[warp][t % STAGES][r][lane] >> (8 * (idx & 3))) & 0xFFu);
          nz[r] = nb | (nb << 16);
#else
          nz[r] = 0xC308C308u;  // symmetric: zero point 8
#endif
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (MT == 1 || m0 + m < M) {
            const unsigned short* xr = x + (size_t)(m0 + m) * stride_x + c * 32;
            float part[R];
#pragma unroll
            for (int r = 0; r < R; ++r) part[r] = 0.f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // word i: codes 8i .. 8i + 7 of the chunk
              const u4 xv = ld_cached(xr + 8 * i);
              unsigned xp[4];
              xp[0] = prmt(xv.a, xv.c, 0x5410u);
              xp[1] = prmt(xv.a, xv.c, 0x7632u);
              xp[2] = prmt(xv.b, xv.d, 0x5410u);
              xp[3] = prmt(xv.b, xv.d, 0x7632u);
#pragma unroll
              for (int r = 0; r < R; ++r) {
                const unsigned wi = i == 0 ? w[r].a : i == 1 ? w[r].b : i == 2 ? w[r].c : w[r].d;
                part[r] += word_dot(wi, xp, nz[r]);
              }
            }
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r][m] = fmaf(part[r], s[r], acc[r][m]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == (r * MT + m) % 32 && n0 + r < N && (MT == 1 || m0 + m < M)) {
        unsigned short o;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(o) : "f"(v));
        y[(size_t)(m0 + m) * stride_y + n0 + r] = o;
      }
    }
}
"""

WARPS = 4  # warps per block: each owns R output rows
# (R rows per warp, MT rows of x per warp, STAGES of copies in flight, programmatic dependent launch): the best
# launches without PDL at M = 1 in benchmarks/gpu_int4_gemv.py on the H100 (2026-12-06, BENCHMARKS 9k).
# Not offered to the selector unless NNSLIM_CUDA_KERNELS=1: end to end (8-layer decode, batch 1) it was 1.6%
# slower than what the selector picks without it (tinygemm / triton_int4_gemv), 7% slower with PDL, whose gain
# in the isolated sweep came from back-to-back independent GEMVs overlapping (a decode's kernels depend on each
# other). MT > 1 lost to tinygemm at every M = 2-8. Since the Triton decode kernels around it release their
# dependents early too (pdl.py), every config is launched as a programmatic dependent where pdl.enabled (sm_90+,
# unless NNSLIM_PDL=0).
CONFIGS = [dict(R=r, MT=1, STAGES=st, PDL=True) for r, st in ((2, 2), (2, 4), (4, 2), (2, 8))]
MAX_M = 8
SMEM_STATIC = 48 * 1024


def fits(config: dict) -> bool:
    """The copy stages of a block fit the 48 KB of static shared memory (with zero points: the largest case)."""
    return WARPS * config["STAGES"] * config["R"] * 32 * (16 + 4 + 4) <= SMEM_STATIC


_LOCK = threading.Lock()
_KERNELS: dict[tuple, object] = {}
_CUBINS: dict[tuple, bytes] = {}  # compiled or read in this process (also where $NNSLIM_CACHE cannot be written)
_BROKEN: set[int] = set()  # devices where NVRTC / the driver API failed once: not offered again


def fill(template: str, **values) -> str:
    """`template` with every __NAME__ replaced by the integer value of NAME (a CUDA source's compile-time
    constants)."""
    for name, value in values.items():
        template = template.replace(f"__{name}__", str(int(value)))
    return template


def source(k: int, group: int, r: int, mt: int, has_zero: bool, stages: int = 4, pdl: bool = False) -> str:
    """The kernel's CUDA source for these compile-time constants (pdl: sm_90+ only)."""
    return fill(_SOURCE, K=k, GROUP=group, R=r, MT=mt, HAS_ZERO=has_zero, STAGES=stages, PDL=pdl)


def _log(lib: ctypes.CDLL, prog: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace")


def compile_cubin(src: str, arch: str, lib: ctypes.CDLL, options: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """(cubin, compiler log) of `src` for `arch` (e.g. "sm_90") through the NVRTC library `lib`."""
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"int4_gemv.cu", 0, None, None) != 0:
        raise RuntimeError("NVRTC could not create a program")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"--use_fast_math", *(o.encode() for o in options)]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        if rc != 0:
            raise RuntimeError(f"NVRTC compile failed ({rc}): {_log(lib, prog)}")
        size = ctypes.c_size_t()
        cubin = None
        if lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)) == 0:
            cubin = ctypes.create_string_buffer(size.value)
        if cubin is None or lib.nvrtcGetCUBIN(prog, cubin) != 0:
            raise RuntimeError(f"NVRTC gave no cubin for {arch}")
        return cubin.raw, _log(lib, prog)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def offered() -> bool:
    """Whether the measured selector tries this kernel (opt-in, see CONFIGS)."""
    return env_choice("NNSLIM_CUDA_KERNELS", ("0", "1"), "0") == "1"


def available(device: torch.device) -> bool:
    if device.type != "cuda" or torch.version.hip or device.index in _BROKEN:
        return False
    try:
        from torch.cuda._utils import _cuda_load_module, _get_gpu_rtc_library  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def supports(x: torch.Tensor, k: int, group: int) -> bool:
    return (x.dtype == torch.bfloat16 and x.shape[0] <= MAX_M and k % 32 == 0 and group % 32 == 0
            and k % group == 0 and available(x.device))


def _cubin(src: str, arch: str, stem: str = "int4_gemv") -> bytes:
    """The cubin of `src` for `arch`, compiled once per source, architecture and NVRTC version and kept in
    $NNSLIM_CACHE/cuda (written atomically: a reader never sees half a file)."""
    from torch.cuda._utils import _get_gpu_rtc_library

    from ...io import atomic_write, cache_dir

    lib = _get_gpu_rtc_library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    digest = hashlib.sha256(f"{src}|{arch}|{major.value}.{minor.value}".encode()).hexdigest()[:32]
    if (stem, digest) in _CUBINS:
        return _CUBINS[stem, digest]
    try:
        path = cache_dir("cuda") / f"{stem}-{digest}.cubin"
        if path.is_file() and (data := path.read_bytes())[:4] == b"\x7fELF":
            return _CUBINS.setdefault((stem, digest), data)
    except OSError:  # no writable home: compiled once per process
        path = None
    data, _ = compile_cubin(src, arch, lib)
    if path is not None:
        with contextlib.suppress(OSError):
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return _CUBINS.setdefault((stem, digest), data)


def precompile(device: torch.device, sources: list[str], stem: str = "int4_gemv") -> None:
    """Compile `sources` for `device` into $NNSLIM_CACHE/cuda side by side (NVRTC runs outside the GIL): the
    selector then times every launch of a new shape without compiling them one after the other. Failures are left
    to the launch that needs the kernel."""
    from concurrent.futures import ThreadPoolExecutor

    major, minor = torch.cuda.get_device_capability(device)
    with ThreadPoolExecutor(max_workers=min(8, len(sources))) as pool:
        list(pool.map(lambda src: _try_cubin(src, f"sm_{major}{minor}", stem), sources))


def _try_cubin(src: str, arch: str, stem: str) -> None:
    with contextlib.suppress(Exception):
        _cubin(src, arch, stem)


def load_function(device: torch.device, key: tuple, make_src: Callable[[], str], name: str, stem: str = "int4_gemv"):
    """The kernel `name` of the source `make_src()` (built only the first time: launches look the kernel up by key)
    compiled for `device`'s architecture, loaded once per (device, key)."""
    major, minor = torch.cuda.get_device_capability(device)
    key = (device.index, major, minor, name, *key)
    with _LOCK:
        if key not in _KERNELS:
            from torch.cuda._utils import _cuda_load_module

            try:
                cubin = _cubin(make_src(), f"sm_{major}{minor}", stem)
                with torch.cuda.device(device):
                    _KERNELS[key] = _cuda_load_module(cubin, [name])[name]
            except (OSError, AttributeError):  # no NVRTC / driver library: not offered again on this device
                _BROKEN.add(device.index)
                raise
        return _KERNELS[key]


def _kernel(device: torch.device, k: int, group: int, r: int, mt: int, has_zero: bool, stages: int, pdl: bool):
    return load_function(device, (k, group, r, mt, has_zero, stages, pdl),
                         lambda: source(k, group, r, mt, has_zero, stages, pdl), "int4_gemv")


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t contiguous with a 16-byte aligned start (the kernel's vector loads)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def int4_gemv_cuda(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   group: int, config: dict) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (bf16 x, M <= MAX_M) from the canonical packed weight; see the module doc."""
    m, k = x.shape
    n = qweight.shape[0]
    r, mt = config["R"], config["MT"]
    if not supports(x, k, group) or scales.dtype != torch.bfloat16 or not fits(config):
        raise ValueError(f"CUDA int4 GEMV: M={m}, K={k}, group={group}, x {x.dtype}, scales {scales.dtype} not "
                         f"supported (bf16, M <= {MAX_M}, K and group multiples of 32)")
    x, qw, sc = _aligned(x), _aligned(qweight), _aligned(scales)
    z = _aligned(zeros) if zeros is not None else qw
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    pdl = bool(config.get("PDL")) and enabled(x.device)
    kern = _kernel(x.device, k, group, r, mt, zeros is not None, config["STAGES"], pdl)
    with torch.cuda.device(x.device):
        _launch(kern, (-(-n // (WARPS * r)), -(-m // mt), 1), (32 * WARPS, 1, 1),
                [x, qw, sc, z, y, n, m, x.stride(0), y.stride(0)], pdl)
    return y


class _Attr(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_Attr)), ("num_attrs", ctypes.c_uint)]


_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


_SMEM: dict[int, int] = {}  # id of a loaded kernel -> the dynamic shared memory it was allowed


def _allow_smem(kern, smem: int) -> None:
    """Let `kern` use `smem` bytes of dynamic shared memory (above 48 KB a kernel must opt in)."""
    if smem < 48 * 1024 or _SMEM.get(id(kern), 0) >= smem:
        return
    if hasattr(kern, "set_shared_memory_config"):
        kern.set_shared_memory_config(smem)
    else:
        from torch.cuda._utils import _check_cuda, _get_gpu_runtime_library

        _check_cuda(_get_gpu_runtime_library().cuFuncSetAttribute(kern.func, 8, smem))  # MAX_DYNAMIC_SHARED_SIZE
    _SMEM[id(kern)] = smem


def _launch(kern, grid: tuple, block: tuple, args: list, pdl: bool, smem: int = 0) -> None:
    """Launch on torch's current stream (captured by CUDA graphs) with `smem` bytes of dynamic shared memory;
    pdl: as a programmatic dependent launch (cuLaunchKernelEx), which may start while the previous kernel
    finishes (the kernel waits for it before reading x)."""
    _allow_smem(kern, smem)
    if not pdl:
        kern(grid=grid, block=block, args=args, shared_mem=smem)
        return
    from torch.cuda._utils import _check_cuda, _get_gpu_runtime_library

    holders = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args]
    argv = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.byref(h), ctypes.c_void_p) for h in holders])
    attr = _Attr(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1
    cfg = _LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), smem,
                        ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), ctypes.pointer(attr), 1)
    _check_cuda(_get_gpu_runtime_library().cuLaunchKernelEx(ctypes.byref(cfg), kern.func, argv, None))
