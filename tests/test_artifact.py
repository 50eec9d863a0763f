import numpy as np
import pytest
import torch

import nnslim
from nnslim.errors import NnslimError
from zoo import TwoLayer
from nnslim.runtime import TorchRunner, make_runner


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_cast_round_trip_and_caller_untouched(tmp_path, digits, method):
    tb, model = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nnslim.compress("digits-cnn", method, out=tmp_path / method, report=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = tb.example_inputs(batch=16)
    loaded = nnslim.load(tmp_path / method)
    assert next(loaded.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[method]
    np.testing.assert_array_equal(TorchRunner(res.model)(x), TorchRunner(loaded)(x))
    assert tb.evaluate(TorchRunner(loaded))["accuracy"] >= 0.96
    assert (tmp_path / method / "model.safetensors").stat().st_size < 0.6 * 1.24e6


def test_onnx_round_trip(tmp_path, digits):
    tb, _ = digits
    res = nnslim.compress("digits-cnn", "onnx", out=tmp_path / "o", report=False)
    x = tb.example_inputs(batch=7)
    again = nnslim.load(tmp_path / "o")
    np.testing.assert_array_equal(make_runner(res.model)(x), make_runner(again)(x))


def test_user_module_needs_skeleton(tmp_path):
    torch.manual_seed(0)
    model = TwoLayer()
    x = {"x": torch.randn(8, 16)}
    res = nnslim.compress(model, "fp16", example_inputs=x, out=tmp_path / "m")
    assert res.report.variants[1].metrics["output_cos_min"] > 0.999
    assert model.a.weight.dtype == torch.float32  # caller's model untouched
    with pytest.raises(NnslimError, match="pass model="):
        nnslim.load(tmp_path / "m")
    loaded = nnslim.load(tmp_path / "m", model=TwoLayer())
    assert torch.equal(loaded.a.weight, res.model.a.weight)


def test_module_without_example_inputs_is_a_clear_error(tmp_path):
    with pytest.raises(NnslimError, match=r"example_inputs \(or calibration data\) is required"):
        nnslim.compress(TwoLayer(), "fp16")
    # as nncf.quantize: with calibration data and no example, the first sample is the example
    data = [torch.randn(4, 16) for _ in range(3)]
    res = nnslim.compress(TwoLayer(), "fp16", calibration=data, out=tmp_path / "o")
    assert res.report is not None and (tmp_path / "o" / "nnslim.json").is_file()


def test_corrupt_artifacts(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    with pytest.raises(NnslimError, match="not an nnslim artifact"):
        from nnslim.io import read_meta
        read_meta(d)
    (d / "nnslim.json").write_text("{not json")
    with pytest.raises(NnslimError, match="not valid JSON"):
        nnslim.load(d)
    (d / "nnslim.json").write_text('{"format": "pickle"}')
    with pytest.raises(NnslimError, match="format='pickle' is not allowed"):
        nnslim.load(d)
    (d / "nnslim.json").write_text('{"format": "torch", "architecture": {"kind": "testbed", "name": "digits-cnn"}}')
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(NnslimError, match="does not match|not a valid"):
        nnslim.load(d)


def test_outputs_written_atomically_no_temp_left(tmp_path):
    nnslim.compress("digits-cnn", "fp16", out=tmp_path / "a", report=False)
    from nnslim.io import MANIFEST

    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".") and p.name != MANIFEST]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging dir beside it


@pytest.mark.slow
def test_hugging_face_directory_as_model():
    from nnslim.testbeds.minilm import minilm_dir

    res = nnslim.evaluate(str(minilm_dir()))
    assert res["testbed"].startswith("hf:") and res["metrics"]["cos_mean"] == pytest.approx(1.0, abs=1e-6)


def test_hf_testbed_artifact_is_a_transformers_checkpoint(tmp_path):
    """A float result of an HF testbed (minilm) is written by save_pretrained and loads in its dtype, both
    in nnslim (compared with the original by the testbed) and in transformers."""
    import json

    import torch
    from transformers import AutoModel

    import nnslim
    from nnslim.testbeds import get_testbed

    res = nnslim.compress("minilm", "fp16", out=tmp_path / "a", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "hf"
    model = nnslim.load(res.out)
    assert next(model.parameters()).dtype == torch.float16
    assert AutoModel.from_pretrained(str(res.out)).dtype == torch.float16
    few = get_testbed("minilm", n_eval=24)  # fp16 matmuls are slow on CPUs without fp16 arithmetic
    assert nnslim.evaluate(res.out, testbed=few)["metrics"]["cos_mean"] > 0.999


def test_torchscript_module_is_a_clear_error(tmp_path):
    scripted = torch.jit.script(TwoLayer().eval())
    with pytest.raises(NnslimError, match="TorchScript module .* pass the nn.Module it was scripted from"):
        nnslim.compress(scripted, "int8-weight-only", calibration=[torch.randn(2, 16)], out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_torch_compile_wrapper_is_looked_through(tmp_path):
    """A torch.compile'd model: the module it wraps is compressed (layer names without `_orig_mod.`), so the
    artifact loads into a plain instance of the class."""
    torch.manual_seed(0)
    plain = TwoLayer().eval()
    res = nnslim.compress(torch.compile(plain), "int8-weight-only", calibration=[torch.randn(2, 16)],
                          out=tmp_path / "c", report=False)
    assert type(res.model) is TwoLayer
    loaded = nnslim.load(tmp_path / "c", model=TwoLayer())
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x), res.model(x))


@pytest.mark.parametrize("method,fmt", [("prune-magnitude", "hf"), ("fp16", "hf"), ("int4-rtn", "compressed-tensors"),
                                        ("prune-structured", "torch")])
def test_a_transformers_object_artifact_loads_without_model(tmp_path, method, fmt):
    """A transformers model passed as an object: float / pruned results are save_pretrained folders (transformers
    loads them), and every artifact of it loads by nnslim.load(dir) alone, through the transformers class its
    config.json names."""
    import json

    import torch
    import transformers as tf

    import nnslim

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, num_labels=3)
    model = tf.BertForSequenceClassification(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 300, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
             for _ in range(4)]
    res = nnslim.compress(model, method, calibration=calib, example_inputs=calib[0], out=tmp_path / "a", report=False)
    meta = json.loads((tmp_path / "a" / "nnslim.json").read_text())
    assert meta["format"] == fmt and "config.json" in meta["files"]
    with torch.no_grad():
        ref = res.model(**calib[0]).logits
        back = nnslim.load(tmp_path / "a")
        assert type(back) is tf.BertForSequenceClassification
        torch.testing.assert_close(back(**calib[0]).logits, ref)
        if fmt != "torch":
            theirs = tf.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "a")).eval()
            assert float((theirs(**calib[0]).logits.float() - ref.float()).abs().max()) < 2e-3


@pytest.mark.parametrize("method", ["int4-rtn", "prune-magnitude", "int8-dynamic"])
def test_weight_norm_layers_are_folded_and_reload_into_the_users_class(tmp_path, method):
    """torch's weight_norm parametrization (original0 / original1) broke the fold of nnslim's masks
    (AttributeError 'original') for every method; such layers are folded into the weights they compute first
    (a note says so), and nnslim.load(dir, model=...) folds the skeleton's the same way."""
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import weight_norm

    import nnslim

    def make():
        torch.manual_seed(0)
        return nn.Sequential(weight_norm(nn.Linear(32, 64)), nn.ReLU(), weight_norm(nn.Linear(64, 8))).eval()

    model = make()
    calib = [torch.randn(8, 32) for _ in range(4)]
    res = nnslim.compress(model, method, calibration=calib, example_inputs=calib[0], out=tmp_path / "a",
                          repeats=2, memory=False)
    assert any("parametrizations" in n and "folded" in n for n in res.notes)
    assert hasattr(model[0], "parametrizations")  # the caller's model keeps its own
    if method != "int8-dynamic":
        back = nnslim.load(tmp_path / "a", model=make())
        torch.testing.assert_close(back(calib[0]), res.model(calib[0]))
    assert res.report.variants[-1].metrics["output_cos_mean"] > (0.5 if method == "prune-magnitude" else 0.9)


def test_a_gpt2_object_reaches_its_conv1d_layers_and_exports_every_length(tmp_path):
    """GPT-2-family objects hold HF Conv1D, not nn.Linear: every Linear method said there was nothing to quantize
    (folders were converted, objects were not); int8 then exported at the example's length only, folding the
    position lookup into a constant (its quantized table 'not found in the graph')."""
    import json

    import numpy as np
    import torch
    import transformers as tf

    import nnslim
    from nnslim.runtime import make_runner

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64)
    model = tf.GPT2LMHeadModel(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 300, (2, 16))} for _ in range(4)]
    rtn = nnslim.compress(model, "int4-rtn", calibration=calib, out=tmp_path / "w", report=False)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # the caller's model is unchanged
    with torch.no_grad():
        back = nnslim.load(tmp_path / "w")
        torch.testing.assert_close(back(**calib[0]).logits, rtn.model(**calib[0]).logits)
    pruned = nnslim.compress(model, "prune-magnitude", calibration=calib, out=tmp_path / "p")  # with the report
    assert json.loads((tmp_path / "p" / "nnslim.json").read_text())["format"] == "hf"
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # its reload read the class only
    theirs = tf.GPT2LMHeadModel.from_pretrained(str(tmp_path / "p")).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(**calib[0]).logits, pruned.model(**calib[0]).logits, atol=1e-4, rtol=1e-4)
    q = nnslim.compress(model, "int8-dynamic", calibration=calib, out=tmp_path / "q", report=False)
    ids = torch.randint(0, 300, (3, 9))  # another batch and length than the example's
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    got = make_runner(q.model, "onnxruntime")({"input_ids": ids.numpy()})
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert got.shape == ref.shape and cos.min() > 0.99
