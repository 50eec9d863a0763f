"""kernels/launch.py: Triton launches that skip Triton's per-call binding once the compiled variant is known."""
import pytest
import torch

from nnslim.runtime.kernels import launch as L

CUDA = torch.cuda.is_available()


class _Recorder:
    """Stands in for a Triton kernel: records kernel[grid](*args, **consts)."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *a, **kw: self.calls.append((grid, a, kw))


def test_cpu_tensors_and_the_switch_go_through_triton(monkeypatch):
    k = _Recorder()
    x = torch.zeros(4)
    L.launch(k, (2,), (x, 3), {"BLOCK": 16})
    L.launch(k, (2,), (x, 3), lambda: {"BLOCK": 32}, key=(32,))
    assert [c[2] for c in k.calls] == [{"BLOCK": 16}, {"BLOCK": 32}]
    assert not L._COMPILED
    monkeypatch.setenv("NNSLIM_FAST_LAUNCH", "0")
    assert not L.enabled()
    monkeypatch.setenv("NNSLIM_FAST_LAUNCH", "2")
    with pytest.raises(Exception, match="NNSLIM_FAST_LAUNCH"):
        L.enabled()


def test_the_key_separates_what_triton_specializes_on():
    a = torch.zeros(64, dtype=torch.float16)
    assert L._spec(a) != L._spec(a[1:])  # 16-byte alignment
    assert L._spec(a) != L._spec(a.float())
    assert L._spec(1) != L._spec(2) != L._spec(16)
    assert L._spec(16) == L._spec(32)
    assert L._spec(2**31) != L._spec(16)
    assert L._spec(True) != L._spec(1)
    with pytest.raises(TypeError):
        L._spec(object())


@pytest.mark.skipif(not CUDA, reason="launches a compiled Triton kernel: needs a CUDA GPU (runs on the device machine)")
def test_fast_launches_match_triton_and_respect_constexprs_and_alignment():
    import triton
    import triton.language as tl

    @triton.jit
    def _scale(x_ptr, y_ptr, n, F: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * F, mask=offs < n)

    x = torch.arange(300, dtype=torch.float32, device="cuda")
    for f in (2, 3, 2):  # a constexpr's value is part of the key
        for off in (0, 1):  # an unaligned pointer gets its own compiled variant
            for n in (300 - off, 17):
                y = torch.zeros(300, device="cuda")
                L.launch(_scale, (triton.cdiv(n, 64),), (x[off:], y, n), {"F": f, "BLOCK": 64})
                want = torch.zeros(300, device="cuda")
                want[:n] = x[off:off + n] * f
                torch.testing.assert_close(y, want)
    assert sum(1 for key in L._COMPILED if key[0] == id(_scale)) >= 4
    assert id(_scale) not in L._SLOW
    assert all(entry[0] is _scale for key, entry in L._COMPILED.items() if key[0] == id(_scale))

    @triton.jit
    def _positional_constexpr(x_ptr, F: tl.constexpr):
        tl.store(x_ptr, tl.load(x_ptr) * F)

    z = torch.ones(1, device="cuda")
    L.launch(_positional_constexpr, (1,), (z, 3), {})
    L.launch(_positional_constexpr, (1,), (z, 5), {})  # a constexpr passed by position: always through Triton
    assert id(_positional_constexpr) in L._SLOW
    assert float(z) == 15.0


def test_no_launch_hook_is_installed_by_default_and_one_sends_launches_through_triton():
    pytest.importorskip("triton")
    from triton import knobs

    assert not L._hooked()
    hook = lambda *a, **k: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert L._hooked()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert not L._hooked()
