"""Fused Triton kernels for Llama-family decoding (runtime/decode.py): the small operations between
the linears, which otherwise cost more than the linears themselves at batch 1 once weights are int4.

  add_rmsnorm   h += delta (residual, in h's dtype), then x = weight * rmsnorm(h)  (one pass)
  rope_cache    rotary embedding of q and k from the fused qkv output, k and v written into the
                static KV cache at their positions, q written head-major for attention
  decode_attention  one query token against the cache up to its position (online softmax)
  silu_mul      silu(gate) * up from the fused gate/up output

Each matches the Hugging Face Llama modules' arithmetic (fp32 inside, rounded to the model dtype
where HF rounds) within rounding; tests compare them with plain torch on CPU in Triton's interpreter.
"""
from __future__ import annotations

import torch

from .triton_int4 import tl, triton

if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(h_ptr, d_ptr, w_ptr, out_ptr, D, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < D
        h = tl.load(h_ptr + row * D + offs, mask=mask, other=0.0)
        if HAS_DELTA:
            d = tl.load(d_ptr + row * D + offs, mask=mask, other=0.0)
            h = (h.to(tl.float32) + d.to(tl.float32)).to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + row * D + offs, h, mask=mask)
        x = h.to(tl.float32)
        var = tl.sum(x * x, axis=0) / D
        y = (x * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * D + offs, (w * y).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, T, L, stride_qkv,
                           H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr):
        t = tl.program_id(0)
        hh = tl.program_id(1)  # query heads first, then kv heads
        i = tl.arange(0, HALF)
        m = i < D // 2
        c1 = tl.load(cos_ptr + t * D + i, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + t * D + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + t * D + i, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + t * D + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        src = qkv_ptr + t * stride_qkv + hh * D
        x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
        if hh < H:
            dst = q_ptr + (hh * T + t) * D
        else:
            kh = hh - H
            p = tl.load(pos_ptr + t)
            dst = k_ptr + (kh * L + p) * D
            vsrc = qkv_ptr + t * stride_qkv + (H + KVH + kh) * D
            vdst = v_ptr + (kh * L + p) * D
            tl.store(vdst + i, tl.load(vsrc + i, mask=m, other=0.0), mask=m)
            tl.store(vdst + D // 2 + i, tl.load(vsrc + D // 2 + i, mask=m, other=0.0), mask=m)
        tl.store(dst + i, o1.to(q_ptr.dtype.element_ty), mask=m)
        tl.store(dst + D // 2 + i, o2.to(q_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _decode_attention_split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, L, scale,
                                       GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                                       BLOCK_L: tl.constexpr, CHUNK: tl.constexpr):
        """Split s of head h: online softmax over cache positions [s * CHUNK, (s + 1) * CHUNK) that are
        <= pos; writes its running max, denominator and unnormalised output (flash-decoding)."""
        h = tl.program_id(0)
        sp = tl.program_id(1)
        nsplit = tl.num_programs(1)
        kh = h // GROUP
        n = tl.load(pos_ptr) + 1  # cache entries 0..pos are valid
        d = tl.arange(0, BLOCK_D)
        dm = d < D
        q = tl.load(q_ptr + h * D + d, mask=dm, other=0.0).to(tl.float32) * scale
        m_i = tl.max(tl.full((BLOCK_L,), -1e30, tl.float32), axis=0)
        l_i = tl.sum(tl.zeros((BLOCK_L,), tl.float32), axis=0)
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for start in tl.static_range(0, CHUNK, BLOCK_L):
            offs = sp * CHUNK + start + tl.arange(0, BLOCK_L)
            lm = offs < n
            ptrs = (kh * L + offs)[:, None] * D + d[None, :]
            k = tl.load(k_ptr + ptrs, mask=lm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            s = tl.where(lm, tl.sum(k * q[None, :], axis=1), -1e30)
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            p = tl.where(lm, tl.exp(s - m_new), 0.0)
            alpha = tl.exp(m_i - m_new)
            v = tl.load(v_ptr + ptrs, mask=lm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(m_ptr + h * nsplit + sp, m_i)
        tl.store(l_ptr + h * nsplit + sp, l_i)
        tl.store(acc_ptr + (h * nsplit + sp) * D + d, acc, mask=dm)

    @triton.jit
    def _decode_attention_reduce_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, NSPLIT: tl.constexpr, BLOCK_S: tl.constexpr,
                                        D: tl.constexpr, BLOCK_D: tl.constexpr):
        h = tl.program_id(0)
        sp = tl.arange(0, BLOCK_S)
        sm = sp < NSPLIT
        d = tl.arange(0, BLOCK_D)
        dm = d < D
        m = tl.load(m_ptr + h * NSPLIT + sp, mask=sm, other=-1e30)
        l_s = tl.load(l_ptr + h * NSPLIT + sp, mask=sm, other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))
        acc = tl.load(acc_ptr + (h * NSPLIT + sp)[:, None] * D + d[None, :], mask=sm[:, None] & dm[None, :], other=0.0)
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l_s, axis=0)
        tl.store(o_ptr + h * D + d, out.to(o_ptr.dtype.element_ty), mask=dm)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, INTER, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < INTER
        g = tl.load(gu_ptr + row * 2 * INTER + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * INTER + INTER + offs, mask=mask, other=0.0).to(tl.float32)
        a = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)  # HF rounds silu's output
        tl.store(out_ptr + row * INTER + offs, (a * u).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """h [T, D] (updated in place: h += delta) -> weight * rmsnorm(h) [T, D]."""
    t, d = h.shape
    out = torch.empty_like(h)
    block = triton.next_power_of_2(d)
    _add_rmsnorm_kernel[(t,)](h, delta if delta is not None else h, weight, out, d, eps,
                              HAS_DELTA=delta is not None, BLOCK=block, num_warps=4 if block <= 4096 else 8)
    return out


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """qkv [T, (heads + 2 kv_heads) * D], cos/sin [T, D], pos [T] -> q [1, heads, T, D] (rotated); rotated k
    and v are written into k_cache/v_cache [1, kv_heads, L, D] at pos."""
    t = qkv.shape[0]
    d = k_cache.shape[-1]
    q = torch.empty((1, heads, t, d), dtype=qkv.dtype, device=qkv.device)
    _rope_cache_kernel[(t, heads + kv_heads)](qkv, cos, sin, pos, q, k_cache, v_cache, t, k_cache.shape[2],
                                              qkv.stride(0), H=heads, KVH=kv_heads, D=d,
                                              HALF=triton.next_power_of_2(d // 2), num_warps=1)
    return q


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                     scale: float, chunk: int = 64) -> torch.Tensor:
    """q [1, H, 1, D] of the token at pos[0] -> attention output [1, H * D] over cache entries 0..pos.
    The cache length is split in chunks, one program per (head, chunk), then one reduction per head:
    the launch shape depends only on the cache size, so it is captured once in a CUDA graph."""
    heads, d = q.shape[1], q.shape[-1]
    kv_heads, length = k_cache.shape[1], k_cache.shape[2]
    nsplit = triton.cdiv(length, chunk)
    m = torch.empty((heads, nsplit), dtype=torch.float32, device=q.device)
    den = torch.empty_like(m)
    acc = torch.empty((heads, nsplit, d), dtype=torch.float32, device=q.device)
    out = torch.empty((1, heads * d), dtype=q.dtype, device=q.device)
    block_d = triton.next_power_of_2(d)
    _decode_attention_split_kernel[(heads, nsplit)](q, k_cache, v_cache, pos, m, den, acc, length, scale,
                                                    GROUP=heads // kv_heads, D=d, BLOCK_D=block_d,
                                                    BLOCK_L=min(chunk, 64), CHUNK=chunk, num_warps=4)
    _decode_attention_reduce_kernel[(heads,)](m, den, acc, out, NSPLIT=nsplit, BLOCK_S=triton.next_power_of_2(nsplit),
                                              D=d, BLOCK_D=block_d, num_warps=4)
    return out


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """gu [T, 2I] (gate then up) -> silu(gate) * up [T, I]."""
    t, two_i = gu.shape
    inter = two_i // 2
    out = torch.empty((t, inter), dtype=gu.dtype, device=gu.device)
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(inter, block))](gu, out, inter, BLOCK=block, num_warps=4)
    return out
