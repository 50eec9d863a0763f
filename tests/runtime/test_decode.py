import pytest
import torch

from nnslim import NnslimError
from nnslim.quant.weight_only.methods import Int4RtnConfig, quantize_weight_only
from nnslim.runtime.decode import StaticDecoder


def _greedy_reference(lm, prompt, n):
    ids = prompt
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = lm(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


def test_static_decoder_matches_hf_greedy(tiny_llama):
    prompt = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    dec = StaticDecoder(tiny_llama, max_len=40, use_graph=False)
    tokens, rate = dec.generate(prompt, 10)
    assert tokens == _greedy_reference(tiny_llama, prompt, 10)
    assert rate > 0
    with torch.no_grad():  # logits at every step match the full recomputation
        ref = tiny_llama(input_ids=prompt, use_cache=False).logits[:, -1]
    dec2 = StaticDecoder(tiny_llama, max_len=40, use_graph=False)
    got = dec2.forward(prompt, torch.arange(12))
    assert torch.allclose(got, ref, atol=1e-5)


def test_static_decoder_runs_quantized_layers(tiny_llama):
    q = quantize_weight_only(tiny_llama, Int4RtnConfig(group_size=32))
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(4))
    tokens, _ = StaticDecoder(q, max_len=20, use_graph=False).generate(prompt, 6)
    assert tokens == _greedy_reference(q, prompt, 6)


def test_static_decoder_bad_input(tiny_llama):
    with pytest.raises(NnslimError, match="Llama-family"):
        StaticDecoder(torch.nn.Linear(2, 2), 8)
    with pytest.raises(NnslimError, match="exceeds max_len=10"):
        StaticDecoder(tiny_llama, 10, use_graph=False).generate(torch.zeros(1, 8, dtype=torch.long), 5)
