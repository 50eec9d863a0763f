"""Greedy decoding with a static KV cache for Llama-family Hugging Face models (Llama, SmolLM, Mistral,
Qwen2-style: q/k/v/o projections, RMSNorm, rotary embeddings, grouped-query attention; Qwen3's per-head q/k
norms). A model that has anything else (windows shorter than the cache, soft-capping, post-norms,
layers without rotary) is refused with the reason, and a self-check of the prefill against the model's own
forward refuses what the structure does not show (scaled residuals): callers then use the model's own cache.

One decode step has fixed shapes, so on CUDA it is captured once in a CUDA graph and replayed per
token: no per-token Python or launch overhead, which otherwise dominates batch-1 decode. The layers
are called as modules, so quantized linears (WeightOnlyLinear, W8A8Linear) run their own kernels.
`batch` sequences (prompts of one length) decode together: every linear then sees M = batch rows.
`kv_cache` stores the cache in the model dtype or as int8 / fp8 codes with per-(head, position)
scales (runtime/kvcache.py). W8A8 (fp8 / int8) q/k/v and gate/up linears get their input quantized per token
by the fused RMSNorm kernel before them (`norm_quant`), not by a kernel of their own.

With `fused=True` (the default on CUDA when Triton is installed and the model fits: Llama-style RMSNorm,
SiLU-gated MLP), q/k/v and gate/up are concatenated into single linears (runtime/fuse.py; the model's
own weights become views of the concatenated ones, values unchanged) and the small operations between
linears run as fused Triton kernels (kernels/triton_decode.py): per layer ~10 kernels instead of
~40, which is what lets a faster int4 linear show in tokens/s. Rotary cos / sin are read from tables built
once per decoder; on sm_90+ these kernels launch as programmatic dependents (kernels/pdl.py).
"""
from __future__ import annotations

import os
import time

import torch
from torch.nn import functional as F

from ..errors import NnslimError, first_line
from .kvcache import KVCache
from .kernels import pdl


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


_LAYER_PARTS = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTN_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj"}
_QK_NORMS = ("q_norm", "k_norm")  # per-head RMSNorms of queries and keys before rotary (Qwen3)


def _extra_parts(module: torch.nn.Module, known: set[str]) -> list[str]:
    return [n for n, m in module.named_children()
            if n not in known and not isinstance(m, (torch.nn.Dropout, torch.nn.Identity))]


def _structure_blocker(lm: torch.nn.Module, base: torch.nn.Module, max_len: int) -> str | None:
    """Why this decoder (pre-norm blocks: x + attn(norm(x)), x + mlp(norm(x)); rotary over the whole head;
    full causal attention) would compute something else than the model; None when nothing says so."""
    cfg = lm.config
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, name, None) is not None:
            return f"{name}={getattr(cfg, name)}"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for i, layer in enumerate(base.layers):
        a = layer.self_attn
        extra = _extra_parts(layer, _LAYER_PARTS)
        extra += [f"self_attn.{n}" for n in _extra_parts(a, _ATTN_PARTS | set(_QK_NORMS))]
        norms = {n: tuple(getattr(getattr(a, n), "weight", torch.empty(0)).shape) for n in _QK_NORMS if hasattr(a, n)}
        extra += [f"self_attn.{n} over {shape} (not per head)" for n, shape in norms.items() if shape != (head_dim,)]
        if extra:
            return f"layer {i} has {', '.join(extra)}, which it does not run"
        if getattr(a, "use_rope", True) in (0, False):
            return f"layer {i} has no rotary embedding"
        window = getattr(a, "sliding_window", None) if hasattr(a, "sliding_window") else (
            getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None)
        if isinstance(window, int) and window < max_len:
            return (f"layer {i} attends to a sliding window of {window} positions, fewer than max_len={max_len} "
                    "(this decoder attends to all of them)")
    return None


def _logit_gap(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest absolute logit difference, relative to the largest reference logit (at least 1)."""
    return float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))


class StaticDecoder:
    def __init__(self, lm: torch.nn.Module, max_len: int, use_graph: bool | None = None,
                 fused: bool | None = None, batch: int = 1, kv_cache: str = "model", norm_quant: bool = True):
        base = getattr(lm, "model", None)
        if base is None or not hasattr(base, "layers") or not hasattr(lm, "lm_head"):
            raise NnslimError(f"StaticDecoder supports Llama-family causal LMs (model.layers, lm_head); "
                              f"got {type(lm).__name__}")
        attn = base.layers[0].self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise NnslimError(f"StaticDecoder: attention module {type(attn).__name__} has no {name}")
        why = _structure_blocker(lm, base, max_len)
        if why is not None:
            raise NnslimError(f"StaticDecoder does not implement {type(lm).__name__}: {why}")
        self.lm, self.base = lm, base
        cfg = lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        p = next(lm.parameters())
        self.device, self.dtype = p.device, p.dtype
        if not isinstance(batch, int) or batch < 1:
            raise NnslimError(f"batch={batch!r} is not allowed; allowed: an integer >= 1")
        if not isinstance(max_len, int) or max_len < 1:
            raise NnslimError(f"max_len={max_len!r} is not allowed; allowed: an integer >= 1")
        self.max_len, self.batch = max_len, batch
        self.cache = KVCache(kv_cache, len(base.layers), batch, self.kv_heads, max_len, self.head_dim, self.dtype,
                             self.device)
        self.kpos = torch.arange(max_len, device=self.device)
        self.scale = getattr(attn, "scaling", None) or self.head_dim ** -0.5
        self.use_graph = (self.device.type == "cuda") if use_graph is None else use_graph
        self._graph = None
        self.fused, self.fused_note, self._rope = None, "fused=False", None
        if fused or fused is None:
            why = self._fusion_blocker(bool(fused))
            if why is None:
                self.fused = self._fuse()
                # W8A8 q/k/v and gate/up take their input quantized by the RMSNorm kernel before them
                self._norm_quant = [tuple(getattr(m, "prequantized_input", None) if norm_quant else None
                                          for m in pair) for pair in self.fused]
                self.fused_note = "fused: q/k/v and gate/up concatenated, Triton norm/rotary/attention/SiLU kernels"
                self._rope = self._rotary_tables()
                if pdl.enabled(self.device):
                    self.fused_note += ", launched as programmatic dependents (NNSLIM_PDL=0 turns it off)"
            elif fused:
                raise NnslimError(f"StaticDecoder(fused=True): {why}")
            else:
                self.fused_note = f"not fused: {why}"
        self._verify()

    @torch.no_grad()
    def _verify(self) -> None:
        """The decoder's prefill must give the model's own last-token logits on a short random prompt: what the
        structural checks cannot see (scaled residuals or logits, layers without rotary, other norms) makes it
        refuse the model, so callers fall back to the model's own cache instead of decoding wrong tokens."""
        n = min(8, self.max_len)
        vocab = getattr(self.base.embed_tokens, "num_embeddings", None) or self.lm.config.vocab_size
        ids = torch.randint(0, vocab, (self.batch, n), generator=torch.Generator().manual_seed(0)).to(self.device)
        try:
            ref = self.lm(input_ids=ids, use_cache=False).logits[:, -1].float()
            got = self.forward(ids, torch.arange(n, device=self.device)).float()
        except NnslimError:
            raise
        except Exception as e:  # noqa: BLE001 - a layout this decoder misreads fails here, named in one line
            raise NnslimError(f"StaticDecoder cannot run {type(self.lm).__name__}: {first_line(e)}") from e
        err = _logit_gap(got, ref)
        # half precision: fused kernels and concatenated linears round differently from the model's own path
        # (what differs in structure, e.g. Granite's scaled residuals, is off by tens of percent)
        tolerance = 1e-3 if self.dtype == torch.float32 else 0.1
        if err <= tolerance:
            return
        noise = self._rounding_noise(ids, ref) if self.dtype != torch.float32 else 0.0
        if err <= 2 * noise:
            # a model whose own logits move this much under one rounding of its input (random weights, activation-
            # quantized layers: 8 random fp8 layers 0.19 on an H100, BENCHMARKS 9t) cannot be checked more finely
            self.fused_note += (f"; self-check: prefill logits {err:.3g} from the model's forward, within twice what "
                                f"one rounding of its input moves them ({noise:.3g})")
            return
        raise NnslimError(f"StaticDecoder does not reproduce {type(self.lm).__name__}: its prefill logits differ "
                          f"from the model's own forward by {err:.3g} (relative) > {tolerance}"
                          + (f" (one rounding of the input moves them by {noise:.3g})" if noise else ""))

    def _rounding_noise(self, ids: torch.Tensor, ref: torch.Tensor) -> float:
        """How far the model's own last-token logits move when its input embeddings are scaled by 1 + 2^-8 (about
        one bf16 rounding): the resolution at which any reimplementation of it can be checked. 0 when the model
        takes no inputs_embeds."""
        try:
            with torch.no_grad():
                emb = self.base.embed_tokens(ids)
                moved = self.lm(inputs_embeds=(emb.float() * (1 + 2 ** -8)).to(emb.dtype), use_cache=False)
            return _logit_gap(moved.logits[:, -1].float(), ref)
        except Exception:  # noqa: BLE001 - a model without inputs_embeds: checked at the fixed tolerance only
            return 0.0

    def _fusion_blocker(self, explicit: bool) -> str | None:
        from .fuse import concat_blocker
        from .kernels import triton_int4

        if not triton_int4.available():
            return "triton is not installed"
        if self.head_dim % 2:
            return f"head_dim {self.head_dim} is odd"
        norms = [self.base.norm] + [n for layer in self.base.layers
                                    for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        for n in norms:
            if not (hasattr(n, "weight") and hasattr(n, "variance_epsilon")) or "Gemma" in type(n).__name__:
                return f"norm {type(n).__name__} is not a Llama-style RMSNorm"
        for layer in self.base.layers:
            mlp = layer.mlp
            act = getattr(mlp, "act_fn", None)
            silu = isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"
            if not all(hasattr(mlp, k) for k in ("gate_proj", "up_proj", "down_proj")) or not silu:
                return f"MLP {type(mlp).__name__} is not a SiLU-gated gate/up/down MLP"
            a = layer.self_attn
            for group in ((a.q_proj, a.k_proj, a.v_proj), (mlp.gate_proj, mlp.up_proj)):
                why = concat_blocker(list(group))
                if why is not None:
                    return f"cannot be concatenated: {why}"
        if self.device.type != "cuda" and not (explicit and os.environ.get("TRITON_INTERPRET") == "1"):
            return f"fused kernels need CUDA (device is {self.device.type})"
        return None

    def _fuse(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        from .fuse import concat_linears

        out = []
        for layer in self.base.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv = concat_linears([a.q_proj, a.k_proj, a.v_proj])
            gate_up = concat_linears([mlp.gate_proj, mlp.up_proj])
            if qkv is None or gate_up is None:
                raise NnslimError(f"StaticDecoder: cannot concatenate the linears of {type(layer).__name__}")
            out.append((qkv, gate_up))
        return out

    def _rotary_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos / sin [max_len, head_dim] of every cache position, computed once by the model's rotary module
        (a position's values do not depend on the others: the same numbers as per step, without its ~10 small
        kernels per step); None for rope types that rescale with the length seen (dynamic, longrope)."""
        rotary = self.base.rotary_emb
        if getattr(rotary, "rope_type", "default") in ("dynamic", "longrope"):
            return None
        cos, sin = rotary(torch.zeros(1, 1, dtype=self.dtype, device=self.device), self.kpos[None])
        return cos[0].contiguous(), sin[0].contiguous()

    def _prefill_from_zero(self, t: int, pos: torch.Tensor) -> bool:
        """A prompt written from position 0 attends to its own fresh keys and values (causal), as Hugging
        Face does, not to the (possibly quantized) cache; later chunks read the cache with a mask."""
        return t > 1 and int(pos[0]) == 0

    def _cache_attention(self, i: int, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        k, v = self.cache.read(i, q.dtype)
        mask = (self.kpos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, L]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                              enable_gqa=self.kv_heads != self.heads)

    def _fresh_attention(self, q, k, v) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                              enable_gqa=self.kv_heads != self.heads)

    def _forward_fused(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        from .kernels import triton_decode as K

        b, t = ids.shape
        h = self.base.embed_tokens(ids)
        tables = self._rope is not None
        if tables:
            cos, sin = self._rope
        else:
            cos, sin = (c[0].contiguous() for c in self.base.rotary_emb(h, pos[None]))
        fresh = self._prefill_from_zero(t, pos)
        if fresh:
            rows = pos if tables else slice(None)
            c4, s4 = cos[rows][None, None], sin[rows][None, None]
        h = h.reshape(b * t, -1).contiguous()  # residual stream [B * T, hidden], updated in place by add_rmsnorm
        delta = None
        hd = self.head_dim
        for i, (layer, (qkv, gate_up)) in enumerate(zip(self.base.layers, self.fused)):
            n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
            q_in, gu_in = self._norm_quant[i]
            x = K.add_rmsnorm(h, delta, n1.weight, n1.variance_epsilon, q_in)
            y = qkv(x)
            a = layer.self_attn
            if hasattr(a, "q_norm"):  # Qwen3: per-head RMSNorm of q and k, in place, before the rotary kernel
                y = y.contiguous()  # a GEMM that computes y.T may return a transposed view
                heads = y.view(b * t, self.heads + 2 * self.kv_heads, hd)
                q_part, k_part = slice(0, self.heads), slice(self.heads, self.heads + self.kv_heads)
                heads[:, q_part] = a.q_norm(heads[:, q_part])
                heads[:, k_part] = a.k_norm(heads[:, k_part])
            kc, vc, ks, vs = self.cache.kernel_args(i)
            q = K.rope_cache(y, cos, sin, pos, kc, vc, self.heads, self.kv_heads, ks, vs, by_position=tables)
            if t == 1:
                o = K.decode_attention(q, kc, vc, pos, self.scale, k_scale=ks, v_scale=vs)
            else:
                if fresh:
                    kv = y.view(b, t, self.heads + 2 * self.kv_heads, hd)[:, :, self.heads:].transpose(1, 2)
                    k = kv[:, : self.kv_heads]
                    k = k * c4 + _rotate_half(k) * s4
                    o = self._fresh_attention(q, k.to(q.dtype), kv[:, self.kv_heads:])
                else:
                    o = self._cache_attention(i, q, pos)
                o = o.transpose(1, 2).reshape(b * t, self.heads * hd)
            x = K.add_rmsnorm(h, layer.self_attn.o_proj(o), n2.weight, n2.variance_epsilon, gu_in)
            delta = layer.mlp.down_proj(K.silu_mul(gate_up(x)))
        x = K.add_rmsnorm(h, delta, self.base.norm.weight, self.base.norm.variance_epsilon)
        return self.lm.lm_head(x.view(b, t, -1)[:, -1])

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] of the last of `ids` [B, T] at positions `pos` [T]; fills the KV cache."""
        if ids.shape[0] != self.batch:
            raise NnslimError(f"ids has batch {ids.shape[0]}; this decoder was built for batch={self.batch}")
        if self.fused is not None:
            return self._forward_fused(ids, pos)
        b, t = ids.shape
        h = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(h, pos[None])
        cos, sin = cos[:, None], sin[:, None]
        fresh = self._prefill_from_zero(t, pos)
        for i, layer in enumerate(self.base.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(b, t, self.heads, self.head_dim)
            k = a.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
            if hasattr(a, "q_norm"):
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = a.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.cache.write(i, k, v, pos)
            o = self._fresh_attention(q, k, v) if fresh else self._cache_attention(i, q, pos)
            h = h + a.o_proj(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = self.base.norm(h[:, -1:])
        return self.lm.lm_head(h)[:, -1]

    def _capture(self):
        self._tok = torch.zeros(self.batch, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: kernel choice and compilation happen outside the capture
                self.forward(self._tok, self._pos)
        torch.cuda.current_stream().wait_stream(stream)
        extra = [m for pair in self.fused or [] for m in pair]
        for m in [*self.lm.modules(), *extra]:  # free kernel layouts that were only built for timing
            if hasattr(m, "compact"):
                m.compact()
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self.forward(self._tok, self._pos)

    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """Logits [B, vocab] after one token per sequence (token [B]) at `position`."""
        if not 0 <= position < self.max_len:
            raise NnslimError(f"position={position} is not allowed; allowed: 0..{self.max_len - 1} (max_len)")
        if not self.use_graph:
            return self.forward(token.view(self.batch, 1), torch.tensor([position], device=self.device))
        if self._graph is None:
            self._capture()
        self._tok.copy_(token.view(self.batch, 1))
        self._pos.fill_(position)
        self._graph.replay()
        return self._logits

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> tuple[list, float]:
        """Greedy tokens after `prompt` [B, P] (one list per sequence; a flat list for batch 1) and the decode
        rate in tokens/s summed over the batch (prefill excluded). The B prompts share one length."""
        b, p = prompt.shape
        if b != self.batch:
            raise NnslimError(f"prompt has batch {b}; this decoder was built for batch={self.batch}")
        if p + new_tokens > self.max_len:
            raise NnslimError(f"prompt ({p}) + new_tokens ({new_tokens}) exceeds max_len={self.max_len}")
        prompt = prompt.to(self.device)
        if self.use_graph and self._graph is None:
            self._capture()  # before the prefill: warm-up writes scratch values into the cache
        logits = self.forward(prompt, torch.arange(p, device=self.device))
        nxt = logits.argmax(-1)
        out = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(new_tokens):
            out.append(nxt)
            logits = self.step(nxt, p + i)
            nxt = logits.argmax(-1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        rate = b * new_tokens / (time.perf_counter() - start)
        tokens = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(b)]
        return (tokens[0] if b == 1 else tokens), rate

    @torch.no_grad()
    def score(self, ids: torch.Tensor, prefill: int) -> torch.Tensor:
        """Teacher-forced next-token logits [B, T - prefill, vocab] for ids [B, T]: ids[:, :prefill] as one
        prompt, then one token at a time through the cache (what the cache format changes), for perplexity
        and agreement measurements of a quantized KV cache."""
        b, t = ids.shape
        if not 1 <= prefill < t or t > self.max_len:
            raise NnslimError(f"prefill={prefill} must be in [1, {t - 1}] and the length {t} <= max_len={self.max_len}")
        ids = ids.to(self.device)
        logits = [self.forward(ids[:, :prefill], torch.arange(prefill, device=self.device))]
        for i in range(prefill, t - 1):
            logits.append(self.step(ids[:, i], i).float().clone())  # a graph replays into one buffer
        return torch.stack([lg.float() for lg in logits], dim=1)
