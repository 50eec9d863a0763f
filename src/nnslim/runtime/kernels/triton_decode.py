"""Fused Triton kernels for Llama-family decoding (runtime/decode.py): the small operations between
the linears, which otherwise cost more than the linears themselves at batch 1 once weights are int4.

  add_rmsnorm   h += delta (residual, in h's dtype), then x = weight * rmsnorm(h)  (one pass)
  rope_cache    rotary embedding of q and k from the fused qkv output, k and v written into the
                static KV cache at their positions (optionally as int8 / fp8 codes + one scale per
                head and position), q written head-major for attention
  decode_attention  one query token per sequence against the cache up to its position (online softmax,
                reading int8 / fp8 caches directly)
  silu_mul      silu(gate) * up from the fused gate/up output

Each matches the Hugging Face Llama modules' arithmetic (fp32 inside, rounded to the model dtype
where HF rounds) within rounding; tests compare them with plain torch on CPU in Triton's interpreter.
"""
from __future__ import annotations

import torch

from .pdl import launch_options
from .triton_int4 import tl, triton
from ..rowquant import ROW_FORMATS, PreQuantized

if triton is not None:
    from .pdl import wait_then_release
    from .triton_w8a8 import quantize_row

    FLIP = tl.constexpr(-0x7F7F7F80)  # 0x80808080 as int32: each int8 code's sign bit flipped (code + 128)

if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(h_ptr, d_ptr, w_ptr, out_ptr, q_ptr, s_ptr, D, eps, HAS_DELTA: tl.constexpr,
                            BLOCK: tl.constexpr, QUANT: tl.constexpr, QMAX: tl.constexpr, PDL: tl.constexpr):
        wait_then_release(PDL)
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
        out = (w * y).to(out_ptr.dtype.element_ty)
        if QUANT == 0:
            tl.store(out_ptr + row * D + offs, out, mask=mask)
        else:  # the rounded output, quantized per row for the next W8A8 linear (its own quantizer skipped)
            q, scale = quantize_row(out.to(tl.float32), QMAX, QUANT == 2)
            tl.store(q_ptr + row * D + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
            tl.store(s_ptr + row, scale)

    @triton.jit
    def _quantize_store(o1, o2, dst, sc_ptr, i, m, D: tl.constexpr, QUANT: tl.constexpr, QMAX: tl.constexpr):
        """Store one head's vector (two halves, fp32) into the cache: as is, or as int8 / fp8 codes with one
        scale (absmax / QMAX) per vector. int8 rounds half to even (the 1.5 * 2**23 trick), like torch.round."""
        if QUANT == 0:
            tl.store(dst + i, o1.to(dst.dtype.element_ty), mask=m)
            tl.store(dst + D // 2 + i, o2.to(dst.dtype.element_ty), mask=m)
        else:
            amax = tl.maximum(tl.max(tl.abs(o1), axis=0), tl.max(tl.abs(o2), axis=0))
            sc = tl.maximum(amax, 1e-12) / QMAX
            tl.store(sc_ptr, sc)
            c1 = o1 / sc
            c2 = o2 / sc
            if QUANT == 1:
                c1 = tl.minimum(tl.maximum((c1 + 12582912.0) - 12582912.0, -QMAX), QMAX)
                c2 = tl.minimum(tl.maximum((c2 + 12582912.0) - 12582912.0, -QMAX), QMAX)
            tl.store(dst + i, c1.to(dst.dtype.element_ty), mask=m)
            tl.store(dst + D // 2 + i, c2.to(dst.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, T, L, stride_qkv,
                           H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                           QUANT: tl.constexpr, QMAX: tl.constexpr, BY_POS: tl.constexpr, PDL: tl.constexpr):
        wait_then_release(PDL)
        r = tl.program_id(0)  # row of the [B * T] tokens
        b = r // T
        t = r % T
        hh = tl.program_id(1)  # query heads first, then kv heads
        i = tl.arange(0, HALF)
        m = i < D // 2
        if BY_POS:  # cos / sin: tables over all cache positions
            c = tl.load(pos_ptr + t)
        else:  # cos / sin: one row per token
            c = t
        c1 = tl.load(cos_ptr + c * D + i, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + c * D + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + c * D + i, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + c * D + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        src = qkv_ptr + r * stride_qkv + hh * D
        x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + D // 2 + i, mask=m, other=0.0).to(tl.float32)
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
        if hh < H:
            dst = q_ptr + ((b * H + hh) * T + t) * D
            tl.store(dst + i, o1.to(q_ptr.dtype.element_ty), mask=m)
            tl.store(dst + D // 2 + i, o2.to(q_ptr.dtype.element_ty), mask=m)
        else:
            kh = hh - H
            slot = (b * KVH + kh) * L + tl.load(pos_ptr + t)
            _quantize_store(o1, o2, k_ptr + slot * D, ks_ptr + slot, i, m, D, QUANT, QMAX)
            vsrc = qkv_ptr + r * stride_qkv + (H + KVH + kh) * D
            v1 = tl.load(vsrc + i, mask=m, other=0.0).to(tl.float32)
            v2 = tl.load(vsrc + D // 2 + i, mask=m, other=0.0).to(tl.float32)
            _quantize_store(v1, v2, v_ptr + slot * D, vs_ptr + slot, i, m, D, QUANT, QMAX)

    @triton.jit
    def _softmax_step(s, lm, m_i):
        """One block of the online softmax: scores s [BLOCK_L] of the valid positions lm against the running max
        m_i -> (unnormalised probabilities, the factor rescaling what was summed so far, the new max)."""
        s = tl.where(lm, s, -1e30)
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        return tl.where(lm, tl.exp(s - m_new), 0.0), tl.exp(m_i - m_new), m_new

    @triton.jit
    def _decode_attention_split_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, L, scale,
                                       H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                       BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr,
                                       SCALED: tl.constexpr, EARLY_V: tl.constexpr, PDL: tl.constexpr):
        """Split s of (sequence b, head h): online softmax over cache positions [s * CHUNK, (s + 1) * CHUNK)
        that are <= pos; writes its running max, denominator and unnormalised output (flash-decoding).
        SCALED: the cache holds int8 / fp8 codes with one scale per (sequence, kv head, position), applied
        to the scores and to the softmax weights (the cache is never dequantized in memory)."""
        wait_then_release(PDL)
        bh = tl.program_id(0)
        sp = tl.program_id(1)
        nsplit = tl.num_programs(1)
        kh = (bh // H) * (H // GROUP) + (bh % H) // GROUP  # b * KVH + kv head
        n = tl.load(pos_ptr) + 1  # cache entries 0..pos are valid
        d = tl.arange(0, BLOCK_D)
        dm = d < D
        q = tl.load(q_ptr + bh * D + d, mask=dm, other=0.0).to(tl.float32) * scale
        m_i = tl.max(tl.full((BLOCK_L,), -1e30, tl.float32), axis=0)
        l_i = tl.sum(tl.zeros((BLOCK_L,), tl.float32), axis=0)
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for start in range(0, CHUNK, BLOCK_L):
            offs = sp * CHUNK + start + tl.arange(0, BLOCK_L)
            lm = offs < n
            ptrs = (kh * L + offs)[:, None] * D + d[None, :]
            k = tl.load(k_ptr + ptrs, mask=lm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            if EARLY_V:  # V's load issued with K's, before the softmax arithmetic
                v = tl.load(v_ptr + ptrs, mask=lm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], axis=1)
            if SCALED:
                s = s * tl.load(ks_ptr + kh * L + offs, mask=lm, other=0.0)
            p, alpha, m_new = _softmax_step(s, lm, m_i)
            if not EARLY_V:
                v = tl.load(v_ptr + ptrs, mask=lm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            pv = p
            if SCALED:
                pv = p * tl.load(vs_ptr + kh * L + offs, mask=lm, other=0.0)
            acc = acc * alpha + tl.sum(pv[:, None] * v, axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(m_ptr + bh * nsplit + sp, m_i)
        tl.store(l_ptr + bh * nsplit + sp, l_i)
        tl.store(acc_ptr + (bh * nsplit + sp) * D + d, acc, mask=dm)

    @triton.jit
    def _code_f32(w, J: tl.constexpr):
        """Byte J of int32 words w ^ 0x80808080 (each int8 code + 128) in fp32 without a conversion instruction
        (I2F runs at a quarter of the FMA rate): byte | 0x4B000000 is the float 2**23 + 128 + code, exact."""
        b = ((w >> (8 * J)) & 0xFF) | 0x4B000000
        return b.to(tl.float32, bitcast=True) - 8388736.0

    @triton.jit
    def _decode_attention_int8_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, L, scale,
                                      H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                      BLOCK_W: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr,
                                      EARLY_V: tl.constexpr, PDL: tl.constexpr):
        """_decode_attention_split_kernel for an int8 cache read as int32 words of 4 codes (k_ptr / v_ptr:
        the cache viewed as int32): code j of word i is dimension 4 i + j; q and the output are split the
        same way, so each code costs a shift, one logic op, one add and its FMA."""
        wait_then_release(PDL)
        bh = tl.program_id(0)
        sp = tl.program_id(1)
        nsplit = tl.num_programs(1)
        kh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
        n = tl.load(pos_ptr) + 1
        W: tl.constexpr = D // 4
        i = tl.arange(0, BLOCK_W)
        im = i < W
        qb = q_ptr + bh * D + 4 * i
        q0 = tl.load(qb, mask=im, other=0.0).to(tl.float32) * scale
        q1 = tl.load(qb + 1, mask=im, other=0.0).to(tl.float32) * scale
        q2 = tl.load(qb + 2, mask=im, other=0.0).to(tl.float32) * scale
        q3 = tl.load(qb + 3, mask=im, other=0.0).to(tl.float32) * scale
        m_i = tl.max(tl.full((BLOCK_L,), -1e30, tl.float32), axis=0)
        l_i = tl.sum(tl.zeros((BLOCK_L,), tl.float32), axis=0)
        a0 = tl.zeros((BLOCK_W,), tl.float32)
        a1 = tl.zeros((BLOCK_W,), tl.float32)
        a2 = tl.zeros((BLOCK_W,), tl.float32)
        a3 = tl.zeros((BLOCK_W,), tl.float32)
        for start in range(0, CHUNK, BLOCK_L):
            offs = sp * CHUNK + start + tl.arange(0, BLOCK_L)
            lm = offs < n
            ptrs = (kh * L + offs)[:, None] * W + i[None, :]
            wm = lm[:, None] & im[None, :]
            kw = tl.load(k_ptr + ptrs, mask=wm, other=0) ^ FLIP
            if EARLY_V:
                vw = tl.load(v_ptr + ptrs, mask=wm, other=0) ^ FLIP
            s = tl.sum(_code_f32(kw, 0) * q0[None, :] + _code_f32(kw, 1) * q1[None, :]
                       + _code_f32(kw, 2) * q2[None, :] + _code_f32(kw, 3) * q3[None, :], axis=1)
            s = s * tl.load(ks_ptr + kh * L + offs, mask=lm, other=0.0)
            p, alpha, m_new = _softmax_step(s, lm, m_i)
            if not EARLY_V:
                vw = tl.load(v_ptr + ptrs, mask=wm, other=0) ^ FLIP
            pv = (p * tl.load(vs_ptr + kh * L + offs, mask=lm, other=0.0))[:, None]
            a0 = a0 * alpha + tl.sum(pv * _code_f32(vw, 0), axis=0)
            a1 = a1 * alpha + tl.sum(pv * _code_f32(vw, 1), axis=0)
            a2 = a2 * alpha + tl.sum(pv * _code_f32(vw, 2), axis=0)
            a3 = a3 * alpha + tl.sum(pv * _code_f32(vw, 3), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(m_ptr + bh * nsplit + sp, m_i)
        tl.store(l_ptr + bh * nsplit + sp, l_i)
        ob = acc_ptr + (bh * nsplit + sp) * D + 4 * i
        tl.store(ob, a0, mask=im)
        tl.store(ob + 1, a1, mask=im)
        tl.store(ob + 2, a2, mask=im)
        tl.store(ob + 3, a3, mask=im)

    @triton.jit
    def _cache_tile(ptr, rows, d, dm, lm, D: tl.constexpr, CODES: tl.constexpr, DOT: tl.constexpr):
        """Rows `rows` of a [*, D] cache as a [BLOCK_L, BLOCK_D] tile in DOT (masked rows / columns 0); CODES:
        int8 / fp8 codes, converted through fp32 (exact; for int8 the compiler emits packed half adds, no I2F)."""
        t = tl.load(ptr + rows[:, None] * D + d[None, :], mask=lm[:, None] & dm[None, :], other=0.0)
        if CODES:
            return t.to(tl.float32).to(DOT)
        return t.to(DOT)

    @triton.jit
    def _decode_attention_dot_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, L, scale,
                                     H: tl.constexpr, KVH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                     BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                                     CHUNK: tl.constexpr, SCALED: tl.constexpr, DOT: tl.constexpr,
                                     PRECISION: tl.constexpr, PDL: tl.constexpr):
        """Split s of (sequence b, kv head kh) for the GROUP query heads that share it, as rows of tensor-core
        products (padded to BLOCK_G >= 16 rows): scores = q K^T, out += p V with p rounded to DOT (as
        flash attention does; HF's eager attention rounds the probabilities to the model dtype too). Writes
        the same partials as _decode_attention_split_kernel."""
        wait_then_release(PDL)
        bk = tl.program_id(0)
        sp = tl.program_id(1)
        nsplit = tl.num_programs(1)
        b = bk // KVH
        kh = bk % KVH
        n = tl.load(pos_ptr) + 1
        g = tl.arange(0, BLOCK_G)
        gm = g < GROUP
        bh = b * H + kh * GROUP + g  # the query heads of this kv head
        d = tl.arange(0, BLOCK_D)
        dm = d < D
        q = tl.load(q_ptr + bh[:, None] * D + d[None, :], mask=gm[:, None] & dm[None, :], other=0.0).to(DOT)
        m_i = tl.full((BLOCK_G,), -1e30, tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        for start in range(0, CHUNK, BLOCK_L):
            offs = sp * CHUNK + start + tl.arange(0, BLOCK_L)
            lm = offs < n
            rows = bk * L + offs  # cache [B, KVH, L, D]: row (b * KVH + kh) * L + position
            k = _cache_tile(k_ptr, rows, d, dm, lm, D, SCALED, DOT)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            if SCALED:
                s = s * tl.load(ks_ptr + rows, mask=lm, other=0.0)[None, :]
            s = tl.where(lm[None, :], s, -1e30)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.where(lm[None, :], tl.exp(s - m_new[:, None]), 0.0)
            alpha = tl.exp(m_i - m_new)
            v = _cache_tile(v_ptr, rows, d, dm, lm, D, SCALED, DOT)
            pv = p
            if SCALED:
                pv = p * tl.load(vs_ptr + rows, mask=lm, other=0.0)[None, :]
            acc = acc * alpha[:, None] + tl.dot(pv.to(DOT), v, input_precision=PRECISION)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        tl.store(m_ptr + bh * nsplit + sp, m_i, mask=gm)
        tl.store(l_ptr + bh * nsplit + sp, l_i, mask=gm)
        tl.store(acc_ptr + (bh * nsplit + sp)[:, None] * D + d[None, :], acc, mask=gm[:, None] & dm[None, :])

    @triton.jit
    def _decode_attention_reduce_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, NSPLIT: tl.constexpr, BLOCK_S: tl.constexpr,
                                        D: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
        wait_then_release(PDL)
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
    def _silu_mul_kernel(gu_ptr, out_ptr, INTER, BLOCK: tl.constexpr, PDL: tl.constexpr):
        wait_then_release(PDL)
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < INTER
        g = tl.load(gu_ptr + row * 2 * INTER + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * INTER + INTER + offs, mask=mask, other=0.0).to(tl.float32)
        a = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)  # HF rounds silu's output
        tl.store(out_ptr + row * INTER + offs, (a * u).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                quant: str | None = None) -> torch.Tensor | PreQuantized:
    """h [T, D] (updated in place: h += delta) -> weight * rmsnorm(h) [T, D]; with quant ("int8" / "fp8")
    that output quantized per row instead (PreQuantized: what the next W8A8 linear would have computed)."""
    t, d = h.shape
    block = triton.next_power_of_2(d)
    args = dict(HAS_DELTA=delta is not None, BLOCK=block, num_warps=4 if block <= 4096 else 8,
                **launch_options(h.device))
    if quant is None:
        out = torch.empty_like(h)
        _add_rmsnorm_kernel[(t,)](h, delta if delta is not None else h, weight, out, out, out, d, eps, QUANT=0,
                                  QMAX=1.0, **args)
        return out
    storage, qmax = ROW_FORMATS[quant]
    q = torch.empty((t, d), dtype=storage, device=h.device)
    s = torch.empty((t,), dtype=torch.float32, device=h.device)
    _add_rmsnorm_kernel[(t,)](h, delta if delta is not None else h, weight, h, q, s, d, eps,
                              QUANT=2 if quant == "fp8" else 1, QMAX=qmax, **args)
    return PreQuantized(q, s, h.dtype)


QUANT_CODES = {None: (0, 1.0), torch.int8: (1, 127.0), torch.float8_e4m3fn: (2, 448.0)}


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, heads: int, kv_heads: int, k_scale: torch.Tensor | None = None,
               v_scale: torch.Tensor | None = None, by_position: bool = False) -> torch.Tensor:
    """qkv [B * T, (heads + 2 kv_heads) * D] (B sequences of T tokens at the same positions), cos/sin [T, D]
    (by_position: tables [>= max position + 1, D] read at pos), pos [T] -> q [B, heads, T, D] (rotated); rotated
    k and v are written into k_cache/v_cache [B, kv_heads, L, D] at pos: as they are, or, with k_scale/v_scale
    [B, kv_heads, L], as int8 / fp8 codes with one scale per (sequence, head, position)."""
    rows = qkv.shape[0]
    b, _, length, d = k_cache.shape
    t = rows // b
    quant, qmax = QUANT_CODES[None if k_scale is None else k_cache.dtype]
    q = torch.empty((b, heads, t, d), dtype=qkv.dtype, device=qkv.device)
    _rope_cache_kernel[(rows, heads + kv_heads)](qkv, cos, sin, pos, q, k_cache, v_cache,
                                                 k_cache if k_scale is None else k_scale,
                                                 v_cache if v_scale is None else v_scale, t, length,
                                                 qkv.stride(0), H=heads, KVH=kv_heads, D=d,
                                                 HALF=triton.next_power_of_2(d // 2), QUANT=quant, QMAX=qmax,
                                                 BY_POS=by_position, num_warps=1,
                                                 **launch_options(qkv.device))
    return q


# split-K decode attention launch per cache format: positions per iteration, programs to aim for, V loaded
# with K, int8 codes read as 32-bit words (WORDS: _decode_attention_int8_kernel), query heads as rows of tensor-core
# products (DOT: _decode_attention_dot_kernel, with num_stages); chosen by benchmarks/gpu_decode_attention.py on the
# H200 (16512 positions; 2026-12-03: bf16 134 -> 84 us, int8 90 -> 68 us against the earlier 64 / 1024 / late V;
# 2026-12-05: bf16 on tensor cores 81 us, int8 words 63 us, BENCHMARKS 9g; 2026-12-06 on an H100: int8 words with
# 256 positions per step 68.1 us against 72.8 with 128, BENCHMARKS 9k)
ATTENTION_CONFIG = {"model": dict(BLOCK_L=64, PROGRAMS=4096, EARLY_V=False, num_warps=4, num_stages=3, DOT=True),
                    "int8": dict(BLOCK_L=256, PROGRAMS=4096, EARLY_V=False, num_warps=4, WORDS=True),
                    "fp8": dict(BLOCK_L=128, PROGRAMS=4096, EARLY_V=False, num_warps=4)}


_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32} if triton else {}


def cache_format(k_cache: torch.Tensor) -> str:
    return {torch.int8: "int8", torch.float8_e4m3fn: "fp8"}.get(k_cache.dtype, "model")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                     scale: float, chunk: int | None = None, k_scale: torch.Tensor | None = None,
                     v_scale: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """q [B, H, 1, D] of the token at pos[0] -> attention output [B, H * D] over cache entries 0..pos
    (k_scale/v_scale: the cache holds codes, see rope_cache). The cache length is split in chunks (by
    default enough for the launch's PROGRAMS), one program per (sequence, head, chunk), then one reduction per
    (sequence, head): the launch shape depends only on the cache size, so it is captured once in a CUDA
    graph."""
    b, heads, d = q.shape[0], q.shape[1], q.shape[-1]
    kv_heads, length = k_cache.shape[1], k_cache.shape[2]
    cfg = {**ATTENTION_CONFIG[cache_format(k_cache)], **(config or {})}
    block_l = cfg["BLOCK_L"]
    if chunk is None:
        units = b * (kv_heads if cfg.get("DOT", False) else heads)  # programs per split
        per = -(-length // max(1, cfg["PROGRAMS"] // units))
        chunk = max(block_l, -(-per // block_l) * block_l)
    nsplit = triton.cdiv(length, chunk)
    m = torch.empty((b * heads, nsplit), dtype=torch.float32, device=q.device)
    den = torch.empty_like(m)
    acc = torch.empty((b * heads, nsplit, d), dtype=torch.float32, device=q.device)
    out = torch.empty((b, heads * d), dtype=q.dtype, device=q.device)
    block_d = triton.next_power_of_2(d)
    scaled = k_scale is not None
    pdl = launch_options(q.device)
    if cfg.get("DOT", False) and d >= 16 and min(chunk, block_l) >= 16:  # tl.dot: every dimension >= 16
        group = heads // kv_heads
        dot = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.float32
        _decode_attention_dot_kernel[(b * kv_heads, nsplit)](
            q, k_cache, v_cache, k_scale if scaled else k_cache, v_scale if scaled else v_cache, pos, m, den, acc,
            length, scale, H=heads, KVH=kv_heads, GROUP=group, D=d, BLOCK_G=max(16, triton.next_power_of_2(group)),
            BLOCK_D=block_d, BLOCK_L=min(chunk, block_l), CHUNK=chunk, SCALED=scaled,
            DOT=_TL_DTYPES[dot], PRECISION="ieee" if dot == torch.float32 else "tf32",
            num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 3), **pdl)
    elif cfg.get("WORDS", False) and k_cache.dtype == torch.int8 and d % 4 == 0:
        _decode_attention_int8_kernel[(b * heads, nsplit)](q, k_cache.view(torch.int32), v_cache.view(torch.int32),
                                                           k_scale, v_scale, pos, m, den, acc, length, scale,
                                                           H=heads, GROUP=heads // kv_heads, D=d,
                                                           BLOCK_W=triton.next_power_of_2(d // 4),
                                                           BLOCK_L=min(chunk, block_l), CHUNK=chunk,
                                                           EARLY_V=cfg["EARLY_V"], num_warps=cfg["num_warps"], **pdl)
    else:
        _decode_attention_split_kernel[(b * heads, nsplit)](q, k_cache, v_cache, k_scale if scaled else k_cache,
                                                            v_scale if scaled else v_cache, pos, m, den, acc,
                                                            length, scale, H=heads, GROUP=heads // kv_heads, D=d,
                                                            BLOCK_D=block_d, BLOCK_L=min(chunk, block_l),
                                                            CHUNK=chunk, SCALED=scaled, EARLY_V=cfg["EARLY_V"],
                                                            num_warps=cfg["num_warps"], **pdl)
    _decode_attention_reduce_kernel[(b * heads,)](m, den, acc, out, NSPLIT=nsplit,
                                                  BLOCK_S=triton.next_power_of_2(nsplit), D=d, BLOCK_D=block_d,
                                                  num_warps=4, **pdl)
    return out


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """gu [T, 2I] (gate then up) -> silu(gate) * up [T, I]."""
    t, two_i = gu.shape
    inter = two_i // 2
    out = torch.empty((t, inter), dtype=gu.dtype, device=gu.device)
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(inter, block))](gu, out, inter, BLOCK=block, num_warps=4,
                                                     **launch_options(gu.device))
    return out
