import pytest
import torch
from torch import nn

from conftest import llama_samples
from nnslim import NnslimError
from nnslim.graph.layerwise import find_blocks, run_layerwise


def test_blocks_chain_reproduces_the_model(tiny_llama):
    name, blocks = find_blocks(tiny_llama)
    assert name == "model.layers" and len(blocks) == 2
    samples = llama_samples(3, 16)
    seen = []

    def process(i, block_name, block, inputs, kwargs):
        seen.append((i, block_name, len(inputs)))

    outs = []
    handle = tiny_llama.model.norm.register_forward_pre_hook(lambda m, a: outs.append(a[0]))
    try:
        with torch.no_grad():
            for s in samples:
                tiny_llama(**s)
    finally:
        handle.remove()
    captured = []

    def last(i, block_name, block, inputs, kwargs):
        process(i, block_name, block, inputs, kwargs)
        if i == len(blocks) - 1:
            from nnslim.graph.layerwise import call_block
            captured.extend(call_block(block, h, kw) for h, kw in zip(inputs, kwargs))

    run_layerwise(tiny_llama, samples, last)
    assert seen == [(0, "model.layers.0", 3), (1, "model.layers.1", 3)]
    for a, b in zip(captured, outs):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_blocks_is_a_clear_error():
    with pytest.raises(NnslimError, match="no list of repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
