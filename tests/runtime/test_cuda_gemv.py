"""nnslim's CUDA int4 GEMV (runtime/kernels/cuda_int4_gemv.py, compiled at run time by NVRTC).

On a CUDA GPU (device machine) it runs against the fp32 reference; on CPU its source is compiled for sm_80 and
sm_90 when an NVRTC library can be found (NNSLIM_NVRTC=/path/to/libnvrtc.so, or the nvidia-cuda-nvrtc wheel).
"""
import contextlib
import ctypes
import glob
import os
import re

import pytest
import torch
from torch import nn

from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
from nnslim.quant.weight_only.modules import WeightOnlyLinear
from nnslim.runtime.kernels import cuda_int4_gemv as C

CUDA = torch.cuda.is_available()


def _int4(k, n, group, sym, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=False)
    spec = WeightSpec(4, group, sym)
    scale, zero = group_qparams(lin.weight.detach(), spec, spec.group_for(k))
    codes = quantize_codes(lin.weight.detach(), scale, zero, spec)
    return WeightOnlyLinear.from_codes(lin.to(torch.bfloat16), codes, scale, zero, spec).to("cuda" if CUDA else "cpu")


def _nvrtc() -> ctypes.CDLL | None:
    paths = [os.environ.get("NNSLIM_NVRTC", "")]
    try:
        import nvidia  # the nvidia-cuda-nvrtc wheel (CUDA builds of torch depend on it)

        for root in nvidia.__path__:
            paths += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for p in paths:
        if p and os.path.exists(p) and "builtins" not in p and ".alt." not in p:
            try:
                return ctypes.CDLL(p)
            except OSError:
                continue
    return None


NVRTC = _nvrtc()


@pytest.mark.skipif(NVRTC is None or CUDA, reason="no NVRTC library here (set NNSLIM_NVRTC=/path/to/libnvrtc.so or "
                    "install nvidia-cuda-nvrtc), or a GPU is here: its tests compile and run the kernel")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_gemv_source_compiles_without_headers_or_spills(arch):
    """Every offered configuration compiles with NVRTC alone (no CUDA headers), with and without zero points,
    on a K that leaves a ragged last step, spilling at most a few bytes (ptxas spills up to 12 bytes of address
    arithmetic in some of the fully unrolled loops; the weights and accumulators stay in registers)."""
    for cfg in C.CONFIGS:
        for has_zero in (False, True):
            cubin, log = C.compile_cubin(C.source(11008, 128, cfg["R"], cfg["MT"], has_zero, cfg["STAGES"]), arch,
                                         NVRTC, ("--ptxas-options=-v",))
            assert cubin[:4] == b"\x7fELF", cfg
            spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
            assert spills and max(spills) <= 16, (cfg, log[-500:])


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC library here (set NNSLIM_NVRTC=/path/to/libnvrtc.so or install "
                    "nvidia-cuda-nvrtc)")
def test_cubins_are_cached_in_nnslim_cache(tmp_path, monkeypatch):
    """A compiled cubin is written once under $NNSLIM_CACHE/cuda and read back; a damaged file is compiled again."""
    C._CUBINS.clear()
    import torch.cuda._utils as cu

    monkeypatch.setenv("NNSLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(cu, "_get_gpu_rtc_library", lambda: NVRTC)
    src = C.source(256, 64, 2, 1, False, 2)
    first = C._cubin(src, "sm_90")
    files = list((tmp_path / "cuda").glob("int4_gemv-*.cubin"))
    assert len(files) == 1 and files[0].read_bytes() == first and not list((tmp_path / "cuda").glob("*.tmp"))
    files[0].write_bytes(b"damaged")
    assert C._cubin(src, "sm_90") == first  # this process keeps what it compiled
    C._CUBINS.clear()  # another process: the damaged file is compiled again
    assert C._cubin(src, "sm_90") == first and files[0].read_bytes() == first


def test_bad_switch_values_are_one_clear_error(monkeypatch):
    """The kernel switches take only their listed values: anything else names the variable and what is allowed."""
    from nnslim.errors import NnslimError

    monkeypatch.setenv("NNSLIM_CUDA_KERNELS", "yes")
    with pytest.raises(NnslimError, match=r"NNSLIM_CUDA_KERNELS='yes' is not allowed;.* allowed: 0, 1"):
        C.offered()
    monkeypatch.setenv("NNSLIM_CUDA_KERNELS", "1")
    assert C.offered()
    from nnslim.runtime.kernels import pdl

    monkeypatch.setenv("NNSLIM_PDL", "on")
    with pytest.raises(NnslimError, match=r"NNSLIM_PDL='on' is not allowed;.* allowed: 0, 1"):
        pdl.enabled(torch.device("cuda"))
    monkeypatch.setenv("NNSLIM_PDL", "1")  # never on the CPU or under Triton's interpreter
    assert pdl.launch_options(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl.launch_options(torch.device("cuda")) == {"PDL": False}


def test_cuda_gemv_refuses_what_it_cannot_run():
    """Not offered on CPU, for fp16 activations or M > 8; a direct call says which input it cannot take."""
    layer = _int4(256, 64, 64, True)
    x = torch.randn(1, 256, dtype=torch.bfloat16, device=layer.qweight.device)
    assert not C.supports(x.half(), 256, 64) and not C.supports(x.repeat(9, 1), 256, 64)
    if not CUDA:
        assert not C.supports(x, 256, 64)
        assert not any(c.startswith("cuda-int4-") for c in layer._candidates(x))
    with pytest.raises(ValueError, match="CUDA int4 GEMV: M=9"):
        C.int4_gemv_cuda(x.repeat(9, 1), layer.qweight, layer.scales, None, 64, C.CONFIGS[0])


@pytest.mark.skipif(not CUDA, reason="the CUDA GEMV needs a CUDA GPU (its source is compiled on CPU by "
                    "test_cuda_gemv_source_compiles_without_headers_or_spills where NVRTC is installed)")
@pytest.mark.parametrize("k,n,group,sym", [(256, 97, 32, True), (512, 80, 64, False), (11008, 24, 128, False),
                                           (1024, 130, 256, True), (4096, 64, 128, True)])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_cuda_gemv_reads_stored_codes(k, n, group, sym, m, monkeypatch):
    """Within one bf16 rounding of the fp32 reference for every offered configuration and for several rows of x
    per warp, ragged N and a ragged last K step included; repeatable; offered to the selector at M = 1 only when
    NNSLIM_CUDA_KERNELS=1."""
    layer = _int4(k, n, group, sym)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    ref = nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    monkeypatch.delenv("NNSLIM_CUDA_KERNELS", raising=False)
    assert not any(c.startswith("cuda-int4-") for c in layer._candidates(x))  # opt-in
    monkeypatch.setenv("NNSLIM_CUDA_KERNELS", "1")
    assert any(c.startswith("cuda-int4-") for c in layer._candidates(x)) == (m == 1)  # tinygemm wins at M > 1
    monkeypatch.delenv("NNSLIM_CUDA_KERNELS")
    for cfg in C.CONFIGS + [dict(R=r, MT=mt, STAGES=2, PDL=True) for r, mt in ((1, 2), (2, 4), (1, 8))]:
        y = layer._cuda_int4(x, cfg)
        assert torch.equal(y, layer._cuda_int4(x, cfg)), cfg
        err = float((y.float() - ref).norm() / ref.norm())
        assert err < 6e-3, (cfg, err)
    # an offset, non-16-byte-aligned x is copied, not misread
    xo = torch.randn(m * k + 1, device="cuda", dtype=torch.bfloat16)[1:].view(m, k)
    y = layer._cuda_int4(xo, C.CONFIGS[0])
    ref = nn.functional.linear(xo.float(), layer.dequantized_weight(torch.float32))
    assert float((y.float() - ref).norm() / ref.norm()) < 6e-3


def check_launches(call, configs, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Every launch `call(cfg)` repeats bit for bit and is within one rounding of the output dtype of the fp32
    reference (4e-3 relative for bf16, 1e-3 for fp16)."""
    for cfg in configs:
        y = call(cfg)
        assert torch.equal(y, call(cfg)), cfg
        err = float((y.float() - ref).norm() / ref.norm())
        assert y.dtype == dtype and err < (4e-3 if dtype == torch.bfloat16 else 1e-3), (cfg, err)


def replay_reads_new_x(call, k: int = 4096, m: int = 1) -> bool:
    """Capture `call(x)` (x [m, k]) in a CUDA graph right after a kernel that writes x; whether a replay with a new
    x gives what an eager call on that x gives (a kernel launched on torch's stream, as a programmatic dependent or
    not)."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    call(x)  # compile / build layouts outside the capture
    g = torch.cuda.CUDAGraph()
    src = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.graph(g):
        x.copy_(src * 2)  # the previous kernel writes x
        y = call(x)
    src.copy_(torch.randn_like(src))
    want = call(src * 2)
    g.replay()
    torch.cuda.synchronize()
    return torch.equal(y, want)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("pdl", [False, True])
def test_cuda_gemv_under_cuda_graph(pdl):
    """Launched through the driver API on torch's current stream, so a CUDA graph captures it; as a programmatic
    dependent launch (sm_90) too, right after the kernel that writes its x."""
    layer = _int4(4096, 256, 128, True)
    assert replay_reads_new_x(lambda x: layer._cuda_int4(x, dict(C.CONFIGS[1], PDL=pdl)))


def test_launch_config_matches_the_driver_struct():
    """The ctypes mirror of CUlaunchConfig / CUlaunchAttribute that PDL launches pass to cuLaunchKernelEx has the
    driver's layout (64-bit: 3 + 3 uints, shared bytes, stream at 32, attrs at 40, count at 48; attribute 72 bytes)."""
    assert ctypes.sizeof(C._LaunchConfig) == 56 and ctypes.sizeof(C._Attr) == 72
    assert (C._LaunchConfig.smem.offset, C._LaunchConfig.stream.offset, C._LaunchConfig.attrs.offset,
            C._LaunchConfig.num_attrs.offset) == (24, 32, 40, 48)
    assert C._Attr.value.offset == 8


def test_offered_configs_fit_static_shared_memory():
    assert all(C.fits(c) for c in C.CONFIGS) and not C.fits(dict(R=4, STAGES=8))


@pytest.mark.skipif(not CUDA, reason="times CUDA graphs: needs a CUDA GPU")
@pytest.mark.parametrize("timing", ["warm", "cold"])
def test_selector_times_candidates_warm_and_cold(monkeypatch, timing):
    """The selector's CUDA-graph timing, with the weights evicted from L2 before each call (cold, the default) or
    in L2 (warm): every candidate gets a positive time, one of over 1 ms included (timed by three replays), and the
    fastest of very different ones is chosen."""
    from nnslim.runtime.kernels import select

    monkeypatch.setenv("NNSLIM_SELECT_TIMING", timing)
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    small, big = a[:64].clone(), torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    key = ("test-timing", timing)
    select._CHOICES.pop(key, None)
    square = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    best = select.choose(key, {"big": lambda: x @ big.T, "small": lambda: x @ small.T, "slow": lambda: square @ square},
                         torch.device("cuda"))
    assert best == "small" and all(t > 0 for t in select._TIMINGS[key].values())
    assert select._TIMINGS[key]["slow"] > 1.0 > select._TIMINGS[key]["big"]
    select._CHOICES.pop(key, None)


def test_a_loaded_kernel_is_looked_up_by_key_without_building_its_source(monkeypatch):
    """Launches find their kernel by key: the source is built (and compiled) only the first time."""
    import torch.cuda._utils as cu

    built, compiled = [], []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(C, "_cubin", lambda src, arch, stem="int4_gemv": compiled.append((src, arch)) or b"\x7fELF")
    monkeypatch.setattr(cu, "_cuda_load_module", lambda cubin, names: {n: f"kernel {n}" for n in names}, raising=False)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(C, "_KERNELS", {})
    dev = torch.device("cuda", 0)
    for _ in range(3):
        assert C.load_function(dev, (1, 2), lambda: built.append(1) or "src", "f", "stem") == "kernel f"
    assert built == [1] and compiled == [("src", "sm_90")]
    C.load_function(dev, (1, 3), lambda: built.append(2) or "src2", "f", "stem")
    assert built == [1, 2]
