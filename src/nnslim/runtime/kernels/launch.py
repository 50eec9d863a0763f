"""Launch a Triton / Gluon kernel without Triton's per-call binding once its compiled variant is known.

`kernel[grid](*args, **consts)` costs 40-110 us of host time per call on an H100 host for nnslim's int4 GEMMs
(benchmarks/gpu_prefill_profile.py, BENCHMARKS 9t): Triton binds every argument, hashes the constexprs (Gluon layout
objects among them) into its cache key and looks the variant up. An eager forward (a Hugging Face prefill) is bound
by that host time, not by the GPU: a 2-layer 7B-shaped int4 model took 4.7 ms where its kernels ran 0.7 ms.

`launch(kernel, grid, args, consts)` does the same launch; the first call for a key goes through Triton (compiling
if needed) and keeps the compiled kernel; later calls with an equal key call its launcher directly. The key is what
decides Triton's variant: the caller's `key` (or the constexpr values themselves), the current device, and per
argument what Triton specializes on (a tensor's dtype and 16-byte alignment; an int's == 1, divisibility by 16 and
width; a tensor descriptor's dtype and block shape). NNSLIM_FAST_LAUNCH=0 always goes through Triton; so do
Triton's interpreter (TRITON_INTERPRET=1), CPU tensors, and runs with a launch hook (a profiler) installed.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ...errors import env_choice

# key -> (the kernel, its compiled variant, the constexpr tail). The kernel is held and compared: an id alone could
# name a later kernel once a short-lived one (a test's) is freed
_COMPILED: dict[tuple, tuple] = {}
_SLOW: dict[int, object] = {}  # id -> kernel whose arguments cannot be passed positionally to its launcher


def enabled() -> bool:
    return (env_choice("NNSLIM_FAST_LAUNCH", ("0", "1"), "1") == "1"
            and os.environ.get("TRITON_INTERPRET") != "1")


def _spec(a: Any):
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int):
        return ("i", a == 1, a % 16 == 0, -2**31 <= a < 2**31, a >= 2**63)
    if isinstance(a, float):
        return "f"
    if a is None:
        return "n"
    base, block = getattr(a, "base", None), getattr(a, "block_shape", None)
    if isinstance(base, torch.Tensor) and block is not None:  # a host tensor descriptor (TMA)
        return (type(a).__name__, base.dtype, tuple(block), base.data_ptr() % 16 == 0)
    raise TypeError(type(a).__name__)


def _hooked() -> bool:
    """Whether a launch hook (a profiler such as proton) is installed: such launches go through Triton. Triton 3.6
    keeps its hooks as chains that are empty when none is set."""
    try:
        from triton import knobs
    except ImportError:
        return True
    return any(h is not None and (not hasattr(h, "calls") or bool(h.calls))
               for h in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook))


def _stream(device: int) -> int:
    try:
        return torch._C._cuda_getCurrentRawStream(device)
    except AttributeError:
        return torch.cuda.current_stream(device).cuda_stream


def launch(kernel, grid: tuple, args: tuple, consts: dict | Callable[[], dict], key: tuple | None = None) -> None:
    """kernel[grid](*args, **consts), with `args` the kernel's leading parameters in order and `consts` (or a
    function returning them, called only when Triton has to see them) the rest by name plus launch options
    (num_warps, launch_pdl, ...). key: a hashable stand-in for consts (required when consts is a function)."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if _SLOW.get(id(kernel)) is kernel or first is None or not first.is_cuda or not enabled() or _hooked():
        kernel[grid](*args, **(consts() if callable(consts) else consts))
        return
    try:
        dev = torch.cuda.current_device()
        full = (id(kernel), dev, tuple(consts.items()) if key is None else key, tuple(_spec(a) for a in args))
        entry = _COMPILED.get(full)
    except TypeError:  # an argument Triton specializes in a way not modelled here, or an unhashable constexpr
        kernel[grid](*args, **(consts() if callable(consts) else consts))
        return
    if entry is not None and entry[0] is kernel:
        _, compiled, tail = entry
        g = (tuple(grid) + (1, 1))[:3]
        compiled.run(g[0], g[1], g[2], _stream(dev), compiled.function, compiled.packed_metadata, None, None, None,
                     *args, *tail)
        return
    values = consts() if callable(consts) else consts
    compiled = kernel[grid](*args, **values)
    every = list(getattr(kernel, "params", None) or ())
    params = every[len(args):]
    # the positional arguments must be runtime values (a constexpr's value would not be in the key) and every later
    # parameter a constexpr given here or left at its default (a runtime value given by name would be frozen at
    # this call's value): otherwise this kernel always goes through Triton
    defaults = {p.name: p.default for p in params if p.name not in values and p.has_default}
    if (compiled is None or not hasattr(compiled, "packed_metadata") or len(every) < len(args)
            or any(p.is_constexpr for p in every[:len(args)])
            or not all(p.is_constexpr and (p.name in values or p.name in defaults) for p in params)):
        _SLOW[id(kernel)] = kernel
        return
    rest = [p.name for p in params]
    _COMPILED[full] = (kernel, compiled, tuple(values[n] if n in values else defaults[n] for n in rest))
