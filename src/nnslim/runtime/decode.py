"""Greedy decoding with a static KV cache for Llama-family Hugging Face models (Llama, SmolLM, Mistral,
Qwen2-style: q/k/v/o projections, RMSNorm, rotary embeddings, grouped-query attention).

One decode step has fixed shapes, so on CUDA it is captured once in a CUDA graph and replayed per
token: no per-token Python or launch overhead, which otherwise dominates batch-1 decode. The layers
are called as modules, so quantized linears (WeightOnlyLinear, W8A8Linear) run their own kernels.
"""
from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from ..errors import NnslimError


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class StaticDecoder:
    def __init__(self, lm: torch.nn.Module, max_len: int, use_graph: bool | None = None):
        base = getattr(lm, "model", None)
        if base is None or not hasattr(base, "layers") or not hasattr(lm, "lm_head"):
            raise NnslimError(f"StaticDecoder supports Llama-family causal LMs (model.layers, lm_head); "
                              f"got {type(lm).__name__}")
        attn = base.layers[0].self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise NnslimError(f"StaticDecoder: attention module {type(attn).__name__} has no {name}")
        self.lm, self.base = lm, base
        cfg = lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        p = next(lm.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.max_len = max_len
        shape = (1, self.kv_heads, max_len, self.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in base.layers]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in base.layers]
        self.kpos = torch.arange(max_len, device=self.device)
        self.use_graph = (self.device.type == "cuda") if use_graph is None else use_graph
        self._graph = None

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [1, vocab] of the last of `ids` [1, T] at positions `pos` [T]; fills the KV cache."""
        t = ids.shape[1]
        h = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(h, pos[None])
        cos, sin = cos[:, None], sin[:, None]
        mask = (self.kpos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, L]
        for i, layer in enumerate(self.base.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(1, t, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i].index_copy_(2, pos, k.to(self.dtype))
            self.v[i].index_copy_(2, pos, v.to(self.dtype))
            o = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask,
                                               enable_gqa=self.kv_heads != self.heads)
            h = h + a.o_proj(o.transpose(1, 2).reshape(1, t, self.heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = self.base.norm(h[:, -1:])
        return self.lm.lm_head(h)[:, -1]

    def _capture(self):
        self._tok = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: kernel choice and compilation happen outside the capture
                self.forward(self._tok, self._pos)
        torch.cuda.current_stream().wait_stream(stream)
        for m in self.lm.modules():  # free kernel layouts that were only built for timing
            if hasattr(m, "compact"):
                m.compact()
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self.forward(self._tok, self._pos)

    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        if not self.use_graph:
            return self.forward(token.view(1, 1), torch.tensor([position], device=self.device))
        if self._graph is None:
            self._capture()
        self._tok.copy_(token.view(1, 1))
        self._pos.fill_(position)
        self._graph.replay()
        return self._logits

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], float]:
        """Greedy tokens after `prompt` [1, P] and the decode rate in tokens/s (prefill excluded)."""
        p = prompt.shape[1]
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
        rate = new_tokens / (time.perf_counter() - start)
        return [int(t) for t in torch.cat(out)], rate
