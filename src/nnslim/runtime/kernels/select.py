"""Pick the fastest correct implementation of a quantized matmul per (device, format, shape, M bucket).

Each quantized layer offers candidates (name -> callable). The first call for a new key times every
candidate that runs (on CUDA: replays of a captured graph timed with events; on CPU: perf_counter;
warm-up then median) and remembers the winner for the process; `kernel_table()` shows what was chosen and
measured. Before timing, each candidate's output is compared once with the reference candidate's (`dequant` /
`dense`): one that is wrong is never chosen (`_wrong`). While a CUDA graph is being captured nothing is timed:
the first applicable candidate runs (warm up before capturing).
NNSLIM_KERNEL=<name> forces one candidate wherever it applies (e.g. `dequant`, the reference);
CUDA candidates are timed with their weights evicted from L2 (as in a decode, where each layer's weights come
from HBM); NNSLIM_SELECT_TIMING=warm times them with the weights in L2 (see _time_cuda_graph).
"""
from __future__ import annotations

import os
import statistics
import time
import weakref
from typing import Callable

import torch

from ...errors import env_choice

_CHOICES: dict[tuple, str] = {}
_TIMINGS: dict[tuple, dict[str, float]] = {}
_FLUSH_MS: dict[int, float] = {}
_WRONG: dict[tuple, dict[str, str]] = {}  # candidates left out because their output was wrong


def m_bucket(m: int) -> int:
    b = 1
    while b < m and b < 4096:
        b *= 2
    return b


def _graph_ms(body: Callable[[], None], calls: int, reps: int) -> list[float]:
    """ms per call of `calls` bodies captured in one CUDA graph, for each of `reps` replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            body()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return times


def _time_cuda_graph(fn: Callable[[], torch.Tensor], calls: int = 10, reps: int = 10) -> float:
    """Median ms per call, replayed from a CUDA graph (no launch overhead: how decode loops run). By default
    (NNSLIM_SELECT_TIMING=cold) a buffer twice the L2 size is written before each call and the time of those
    writes alone is subtracted: each layer's weights come from HBM, as in a decode (picks measured better end to
    end on an H100: BENCHMARKS 9l); warm: repeated calls find the weights in L2."""
    probe = statistics.median(_graph_ms(fn, 1, 3))
    if probe > 1.0:  # a long call (large M, a slow candidate): L2 hardly matters and three replays suffice
        return probe
    if env_choice("NNSLIM_SELECT_TIMING", ("warm", "cold"), "cold") == "warm":
        return statistics.median(_graph_ms(fn, calls, reps))
    dev = torch.cuda.current_device()
    flush = torch.empty(2 * torch.cuda.get_device_properties(dev).L2_cache_size // 4, dtype=torch.float32,
                        device="cuda")
    both = _graph_ms(lambda: (flush.zero_(), fn()), calls, reps)
    if dev not in _FLUSH_MS:  # the writes alone, measured once per device
        _FLUSH_MS[dev] = statistics.median(_graph_ms(flush.zero_, calls, reps))
    return max(1e-6, statistics.median(both) - _FLUSH_MS[dev])


def _time(fn: Callable[[], torch.Tensor], device: torch.device, reps: int, timing: str = "graph") -> float:
    if device.type == "cuda":
        if timing == "graph":
            try:
                return _time_cuda_graph(fn)
            except Exception:  # not capturable: time eagerly with events
                torch.cuda.synchronize()
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):  # back-to-back calls: host overhead per call shows as it does in eager runs
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 5)
        return statistics.median(times)
    fn()
    times = []
    for _ in range(max(3, reps // 4)):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def choose(key: tuple, candidates: dict[str, Callable[[], torch.Tensor]], device: torch.device,
           reps: int = 20, timing: str = "graph", tol: float | None = None) -> str:
    """Name of the fastest candidate for `key` (timed once per process). timing: graph (replays of a
    CUDA graph, for models run under graphs) or eager (back-to-back calls, host overhead included). tol: the
    relative error from the reference candidate beyond which a candidate is wrong (WRONG_REL_ERR by default)."""
    forced = os.environ.get("NNSLIM_KERNEL")
    if forced and forced in candidates:
        return forced
    if key in _CHOICES and _CHOICES[key] in candidates:
        return _CHOICES[key]
    if len(candidates) == 1 or _capturing(device):
        return next(iter(candidates))
    wrong = _wrong(candidates, WRONG_REL_ERR if tol is None else tol)
    timings = {}
    for name, fn in candidates.items():
        if name in wrong:
            continue
        try:
            timings[name] = _time(fn, device, reps, timing)
        except Exception:  # a candidate that does not support this shape/dtype is skipped
            continue
    if not timings:  # nothing could be timed: the reference if there is one, else the first that is not wrong
        return next((n for n in (*REFERENCES, *candidates) if n in candidates and n not in wrong),
                    next(iter(candidates)))
    best = min(timings, key=timings.get)
    _CHOICES[key], _TIMINGS[key] = best, timings
    if wrong:
        _WRONG[key] = wrong
    return best


REFERENCES = ("dequant", "dense")  # the candidate other candidates are checked against (the first present)
# kernels of one weight-only layer differ by bf16 / fp16 rounding: ~2e-3 relative (BENCHMARKS 9r); layers whose
# kernels quantize activations differently (fp8 per row vs per K slice: up to ~5e-2) pass their own tolerance
WRONG_REL_ERR = 2e-2


def _wrong(candidates: dict[str, Callable[[], torch.Tensor]], tol: float) -> dict[str, str]:
    """Each candidate's output once against the reference candidate's: {name: why} for those that are not
    finite or differ by more than tol (relative Frobenius norm), so a kernel that a compiler, a GPU or a
    launch gets wrong is never chosen (a Gluon launch gave 13% error on one Triton build, BENCHMARKS 9w). Candidates
    that raise are left to the timing loop, which skips them."""
    ref_name = next((r for r in REFERENCES if r in candidates), None)
    if ref_name is None:
        return {}
    try:
        ref = candidates[ref_name]().float()
    except Exception:  # noqa: BLE001  (the reference cannot run here, e.g. out of memory: nothing to check against)
        return {}
    norm = float(ref.norm()) or 1.0
    wrong = {}
    for name, fn in candidates.items():
        if name == ref_name:
            continue
        try:
            out = fn()
        except Exception:  # noqa: BLE001  (unsupported here: the timing loop skips it)
            continue
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
            continue
        err = float((out.float() - ref).norm()) / norm
        if not err <= tol:  # NaN too
            wrong[name] = f"rel err {err:.2g}"
    return wrong


_GENERATION = [0]  # bumped by reset(): a layer's kept choice belongs to one generation of _CHOICES
_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # layer -> {call key: chosen fn(layer, x)}


def chosen_fn(owner, key: tuple, x: torch.Tensor, build: Callable[[torch.Tensor], dict[str, Callable]],
              tol: float | None = None) -> Callable:
    """fn(owner, x) of the candidate chosen for `key`. build(x) -> {name: fn(owner, x)} lists the candidates; once
    the choice is settled the chosen function is kept for `owner` per (key, rows, input type, device, forced kernel)
    and later calls go straight to it (kept beside the layer, not in it: a copy or a pickle of the layer is
    unaffected) instead of building every candidate (dozens of closures and fit checks on CUDA) on each call
    (on a CPU 38 -> 35 us per int4 call, benchmarks/layer_call_overhead.py)."""
    forced = os.environ.get("NNSLIM_KERNEL")
    kept = _KEPT.setdefault(owner, {})
    ckey = (key, x.shape[0], type(x), x.device, forced, _GENERATION[0])
    fn = kept.get(ckey)
    if fn is not None:
        return fn
    fns = build(x)
    name = choose(key, {n: (lambda f=f: f(owner, x)) for n, f in fns.items()}, x.device, tol=tol)
    if (forced and forced == name) or _CHOICES.get(key) == name or len(fns) == 1:  # settled, not a capture's pick
        kept[ckey] = fns[name]
    return fns[name]


def kernel_table() -> list[dict]:
    """What was chosen for each key, with the measured milliseconds of every candidate."""
    rows = []
    for key, best in _CHOICES.items():
        rows.append({"key": "/".join(map(str, key)), "chosen": best,
                     **{f"{k}_ms": round(v, 4) for k, v in _TIMINGS.get(key, {}).items()},
                     **({"wrong": _WRONG[key]} if key in _WRONG else {})})
    return rows


def reset() -> None:
    _GENERATION[0] += 1
    _CHOICES.clear()
    _TIMINGS.clear()
    _FLUSH_MS.clear()
    _WRONG.clear()
