"""The real MiniLM and SmolLM2 testbeds (slow: they load real weights)."""
import numpy as np
import pytest

from nnslim.runtime import TorchRunner
from nnslim.testbeds import text

pytestmark = pytest.mark.slow


def test_minilm_reference_metrics_are_perfect(minilm):
    tb, model = minilm
    m = tb.evaluate(TorchRunner(model))
    assert m["cos_mean"] == pytest.approx(1.0, abs=1e-6) and m["cos_min"] == pytest.approx(1.0, abs=1e-6)
    assert m["spearman"] == pytest.approx(1.0, abs=1e-9) and m["top10_overlap"] == 1.0


def test_minilm_metrics_detect_damage(minilm):
    import copy

    import torch

    tb, model = minilm
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    m = tb.evaluate(TorchRunner(damaged))
    assert m["cos_mean"] < 0.99 and m["top10_overlap"] < 1.0


def test_minilm_inputs_and_calibration(minilm):
    tb, _ = minilm
    x = tb.example_inputs(batch=4, seq=32)
    assert x["input_ids"].shape == (4, 32) and x["attention_mask"].shape == (4, 32)
    assert set(tb.eval_sentences()).isdisjoint(text.sentences("calibration"))
    calib = tb.calibration(10)
    assert len(calib) == 10 and calib[0]["input_ids"].shape[0] == 1


@pytest.fixture(scope="module")
def smollm2():
    from nnslim.testbeds import get_testbed

    tb = get_testbed("smollm2", n_seq=2, seq_len=128, n_prompts=1, new_tokens=4)
    return tb, tb.load_model()


def test_smollm2_perplexity_and_answer(smollm2):
    tb, model = smollm2
    m = tb.evaluate(TorchRunner(model))
    assert 3 < m["perplexity"] < 60
    assert m["gen_agreement"] == 1.0
    ids = tb.tokenizer("The capital of France is", return_tensors="np")["input_ids"].astype(np.int64)
    first = tb.generate(TorchRunner(model), ids)[:2]
    assert "Paris" in tb.tokenizer.decode(first)


def test_smollm2_calibration_and_eval_tokens_differ(smollm2):
    tb, _ = smollm2
    calib = np.concatenate([c["input_ids"] for c in tb.calibration(2, seq_len=64)], axis=1)
    ev = tb.example_inputs(batch=1, seq=128)["input_ids"]
    assert calib.shape == (1, 128) and not np.array_equal(calib, ev)
    assert tb.model_dir.joinpath("config.json").exists()


def test_a_gguf_file_is_a_model_and_a_peft_adapter_is_refused_clearly(smollm2, tmp_path):
    """--model FILE.gguf: llama.cpp's format read like the Hugging Face dir it converts to (the same cache entry as
    the smollm2 testbed's); a LoRA adapter folder gets a one-line error that says to merge it."""
    import torch

    from nnslim.errors import NnslimError
    from nnslim.loading import resolve
    from nnslim.testbeds.smollm2 import smollm2_gguf

    root, name = smollm2_gguf()
    r = resolve(str(root / name))
    assert r.testbed.task == "causal-lm" and r.source == str(root / name)
    ids = torch.as_tensor(r.testbed.example_inputs(batch=1, seq=16)["input_ids"])
    with torch.no_grad():
        assert torch.equal(r.model(input_ids=ids), smollm2[1](input_ids=ids))
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(NnslimError, match="PEFT adapter .*merge"):
        resolve(str(tmp_path))
