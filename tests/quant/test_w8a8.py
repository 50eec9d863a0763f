import copy

import pytest
import torch
from torch import nn

from conftest import llama_samples
from nnslim import NnslimError
from nnslim.quant.w8a8 import Fp8Config, Int8W8A8Config, W8A8Linear, quantize_rows_torch, quantize_w8a8


@pytest.mark.parametrize("fmt,tol", [("fp8", 0.06), ("int8", 0.01)])
def test_w8a8_linear_close_to_float(fmt, tol):
    torch.manual_seed(0)
    lin = nn.Linear(128, 32)
    q = W8A8Linear.from_linear(lin, fmt)
    x = torch.randn(4, 7, 128)
    ref = lin(x)
    y = q(x)
    assert y.shape == ref.shape
    assert float((y - ref).norm() / ref.norm()) < tol


@pytest.mark.parametrize("m,k,n,bias", [(1, 576, 1536, True), (17, 100, 7, False), (64, 64, 96, True)])
def test_cpu_int8_matmul_matches_the_reference(m, k, n, bias):
    """The CPU int8 candidate (torch._int_mm on per-token codes) computes what the reference computes: the same
    codes, exact int32 sums; also from a PreQuantized input; the selector may choose it. On a CPU where
    torch._int_mm is not exact (no int8 dot products) only the reference is offered."""
    from nnslim.quant.w8a8 import cpu_int_mm_exact
    from nnslim.runtime.rowquant import PreQuantized

    torch.manual_seed(0)
    q = W8A8Linear.from_linear(nn.Linear(k, n, bias=bias), "int8")
    x = torch.randn(m, k)
    cands = q._candidates(x)
    if not cpu_int_mm_exact():
        assert set(cands) == {"dequant"}
        return
    assert set(cands) == {"cpu-int_mm", "dequant"}
    y, ref = cands["cpu-int_mm"](), cands["dequant"]()
    assert y.dtype == torch.float32 and torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    pre = PreQuantized(*quantize_rows_torch(x, "int8"), torch.float32)
    assert torch.equal(q._candidates(pre)["cpu-int_mm"](), y)
    q.kernel = "cpu-int_mm"
    assert torch.equal(q(x), y)


def test_cpu_int8_matmul_not_offered_where_it_saturates(monkeypatch):
    """A CPU whose int8 GEMM pairs products in saturating int16 adds (no VNNI) fails the probe; the layer then
    offers only the reference."""
    from nnslim.quant import w8a8

    def saturating(a, b):  # what vpmaddubsw does: u8 (a + 128) x s8 products summed in pairs, saturated to int16
        u = (a.long() + 128).view(a.shape[0], -1, 2)
        pairs = torch.einsum("mkp,kpn->mkn", u, b.long().reshape(-1, 2, b.shape[1])).clamp(-32768, 32767)
        return (pairs.sum(1) - 128 * b.long().sum(0)).int()

    small_a = torch.randint(-20, 20, (3, 64), dtype=torch.int8)
    small_b = torch.randint(-20, 20, (64, 5), dtype=torch.int8)
    assert torch.equal(saturating(small_a, small_b).long(), small_a.long() @ small_b.long())  # exact below saturation
    w8a8.cpu_int_mm_exact.cache_clear()
    try:
        monkeypatch.setattr(torch, "_int_mm", saturating)
        assert not w8a8.cpu_int_mm_exact()
        assert set(W8A8Linear.from_linear(nn.Linear(64, 32), "int8")._candidates(torch.randn(3, 64))) == {"dequant"}
        w8a8.cpu_int_mm_exact.cache_clear()
        monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.long() @ b.long()).int())
        assert w8a8.cpu_int_mm_exact()
    finally:
        w8a8.cpu_int_mm_exact.cache_clear()  # later tests probe the real torch._int_mm again


def test_rows_quantization_is_per_token():
    x = torch.randn(3, 64)
    x[1] *= 100
    q, s = quantize_rows_torch(x, "int8")
    assert q.dtype == torch.int8 and s.shape == (3,)
    assert torch.allclose(q.float() * s[:, None], x, atol=float(s.max()) * 0.51)
    assert s[1] > 50 * s[0]


def test_llama_fp8_int8_and_smoothquant(tiny_llama, tmp_path):
    from nnslim import artifact
    from nnslim.testbeds import ModuleTestbed

    before = copy.deepcopy(tiny_llama.state_dict())
    ids = torch.randint(0, 256, (1, 16))
    ref = tiny_llama(input_ids=ids).logits
    for cfg in [Fp8Config(), Int8W8A8Config(), Int8W8A8Config(smoothquant=0.5)]:
        q = quantize_w8a8(tiny_llama, cfg, llama_samples(4))
        assert sum(isinstance(m, W8A8Linear) for m in q.modules()) == 14
        out = q(input_ids=ids).logits
        assert float((out - ref).norm() / ref.norm()) < 0.1
    artifact.save(q, tmp_path, testbed=ModuleTestbed(tiny_llama, {"input_ids": ids}))
    back = artifact.load(tmp_path, model=copy.deepcopy(tiny_llama))
    assert torch.equal(back(input_ids=ids).logits, q(input_ids=ids).logits)
    for k, v in tiny_llama.state_dict().items():
        assert torch.equal(v, before[k])
    fp8 = quantize_w8a8(tiny_llama, Fp8Config(fast_accum=False))
    assert not any(m.fast_accum for m in fp8.modules() if isinstance(m, W8A8Linear))
    fp8 = quantize_w8a8(tiny_llama, Fp8Config())  # fast accumulation is a candidate by default
    artifact.save(fp8, tmp_path / "fp8", testbed=ModuleTestbed(tiny_llama, {"input_ids": ids}))
    back = artifact.load(tmp_path / "fp8", model=copy.deepcopy(tiny_llama))
    assert all(m.fast_accum for m in back.modules() if isinstance(m, W8A8Linear))


def test_bad_w8a8_options(tiny_llama):
    from nnslim.recipe import make_step

    with pytest.raises(NnslimError, match="unknown key 'format' for method 'fp8'"):
        make_step({"method": "fp8", "format": "int4"})
    with pytest.raises(NnslimError, match="unknown key 'smoothquant' for method 'fp8'"):
        make_step({"method": "fp8", "smoothquant": 0.5})
    with pytest.raises(NnslimError, match="smoothquant=1.5 is not allowed"):
        Int8W8A8Config(smoothquant=1.5)
    with pytest.raises(NnslimError, match="smoothquant needs calibration data"):
        quantize_w8a8(tiny_llama, Int8W8A8Config(smoothquant=0.5))


def test_dtype_cast_keeps_codes_and_scales():
    """model.to(bfloat16) (the bf16 method, `nnslim generate --dtype bf16`) casts only what is float in the
    model's sense: fp8 codes stay fp8, channel scales fp32, and the layer computes the same."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    for fmt, storage in (("fp8", torch.float8_e4m3fn), ("int8", torch.int8)):
        q = W8A8Linear.from_linear(lin, fmt)
        x = torch.randn(3, 32)
        ref = q(x)
        q.to(torch.bfloat16)
        assert q.qweight.dtype == storage and q.wscale.dtype == torch.float32 and q.bias.dtype == torch.bfloat16
        assert float((q(x.to(torch.bfloat16)).float() - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_fp8_on_a_gpu_without_fp8_is_one_clear_error(monkeypatch):
    """fp8 W8A8 and the fp8 KV cache on a GPU below compute capability 8.9 (no fp8 tensor cores): an error that
    names the option and what to use instead, never a silent fall-back to the float reference (checked on CPU
    by reporting capability 8.0 for any CUDA device)."""
    from nnslim.runtime.kvcache import check_kv_format
    from nnslim.runtime.rowquant import require_fp8

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    cuda = torch.device("cuda", 0)
    with pytest.raises(NnslimError, match=r"method='fp8' needs a GPU with fp8 \(compute capability 8.9 or newer\); "
                                          r"this one is 8.0: use method='int8-w8a8'"):
        require_fp8(cuda, "method='fp8'", "use method='int8-w8a8' (or an int4 method) on this GPU")
    with pytest.raises(NnslimError, match="kv_cache='fp8' needs a GPU with fp8.*use kv_cache='int8'"):
        check_kv_format("fp8", cuda)
    check_kv_format("int8", cuda)
    require_fp8(torch.device("cpu"), "method='fp8'", "")  # CPUs run the reference: nothing to refuse
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    require_fp8(cuda, "method='fp8'", "")
