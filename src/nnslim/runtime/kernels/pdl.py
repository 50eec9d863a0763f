"""Programmatic dependent launch (PDL, sm_90+) of the decode step's kernels (issue 17).

A kernel launched as a programmatic dependent may be scheduled while the kernel before it in the stream is
still running, once every program of that one has passed `griddepcontrol.launch_dependents`: its launch and
whatever it does before `griddepcontrol.wait` (e.g. loading its first weights, which no kernel writes) overlap
the previous kernel's last wave. Each kernel that takes part calls `wait_then_release` (after such loads and
before touching any memory that another kernel writes): it waits until the previous kernel has finished and
its writes are visible, then lets the next one be scheduled. Kernels that do not take part (cuBLAS, tinygemm,
torch's own) are launched as usual and wait for everything before them; a waiting kernel waits transitively
for all earlier ones, so mixing both kinds is safe. CUDA graphs capture these launches with their edges.

nnslim's Triton decode kernels (the norm, rotary, attention and SiLU kernels of triton_decode and the packed
int4 GEMV), the int4 MMA GEMM, the fp8 GEMM and the per-token quantizer (the GEMMs first ask L2 for their first
weight tiles) are launched this way on sm_90+ (not under Triton's interpreter) unless NNSLIM_PDL=0; so are the
CUDA GEMV's configs marked PDL (benchmarks only). Measured on an H100 (BENCHMARKS 9l): the 8-layer 7B-shaped
int4 decode at batch 1 1441 -> 1515 tok/s, bf16 691 -> 715; with the GEMMs too (9q), fp8 decode at batch 1 / 8
1021.7 -> 1104.8 / 7505.0 -> 8092.2 tok/s against main's launches in the same machine, int4 unchanged (within 0.6%).
"""
from __future__ import annotations

import functools
import os

import torch

from ...errors import env_choice

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # no Triton, or one without grid dependency control (before 3.3): never launched so
    gdc_wait = gdc_launch_dependents = None

DEFAULT = "1"


@functools.lru_cache(maxsize=None)
def _sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def supported(device: torch.device) -> bool:
    """sm_90+ compiled kernels (Triton's interpreter has no grid dependency control). Asked at every launch:
    the GPU's capability is looked up once per device."""
    return (gdc_wait is not None and device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
            and _sm90(torch.cuda.current_device() if device.index is None else device.index))


def enabled(device: torch.device) -> bool:
    """Whether the decode kernels are launched as programmatic dependents on `device` (NNSLIM_PDL)."""
    return env_choice("NNSLIM_PDL", ("0", "1"), DEFAULT) == "1" and supported(device)


def launch_options(device: torch.device) -> dict:
    """Keyword arguments of a Triton launch whose kernel takes `PDL: tl.constexpr` and calls wait_then_release."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {"PDL": False}


if triton is not None:

    @triton.jit
    def wait_then_release(PDL: tl.constexpr):
        """Wait for the previous kernel (its writes visible), then let the next kernel be scheduled."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()

    @triton.jit
    def prefetch_l2(ptrs):
        """Ask L2 for the lines at `ptrs` (a hint: no registers written, no fault); e.g. a GEMM's first weight
        tiles, which no kernel writes, before it waits for the kernel that writes its input."""
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];\nmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)

    @triton.jit
    def prefetch_rows_then_wait(row_ptrs, start, row_bytes, PDL: tl.constexpr):
        """PDL: prefetch into L2 the first 256 bytes from byte `start` of each weight row (`row_ptrs`, uint8 or
        fp8 pointers, clamped to the row's `row_bytes`), then wait_then_release."""
        if PDL:
            offs = tl.minimum(start + tl.arange(0, 2) * 128, row_bytes - 1)
            prefetch_l2(row_ptrs[:, None] + offs[None, :])
            wait_then_release(PDL)
