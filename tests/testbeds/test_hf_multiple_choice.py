"""Multiple-choice heads: [batch, choices, seq] inputs, the chosen answer compared with fp32's, labels from the data
(the default data's too), ONNX with the three axes dynamic as Optimum exports them."""
from __future__ import annotations

import json

import numpy as np
import pytest

import nnslim
from nnslim.errors import NnslimError

from hf_zoo import _build  # noqa: E402

pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


def test_bert_multiple_choice_is_measured_and_deploys_as_onnx(tmp_path):
    import onnxruntime as ort

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.multiple_choice import MultipleChoiceTestbed

    src = _build("bert-mc", tmp_path)
    tb = testbed_for_hf_dir(src)
    assert isinstance(tb, MultipleChoiceTestbed)
    assert tb.example_inputs(batch=3, seq=16)["input_ids"].shape == (3, 4, 16)
    items = tb.items("eval")
    assert {right for _, _, right in items[:8]} == {0, 1, 2, 3}  # the right ending is not always first
    ctx, endings, right = items[5]
    assert ctx and len(endings) == 4 and len(set(endings)) == 4
    ref = nnslim.evaluate(str(src))["metrics"]
    assert ref["top1_agreement"] == 1.0 and 0 <= ref["choice_accuracy"] <= 1
    res = nnslim.compress(str(src), "int8-dynamic", out=tmp_path / "q", report=False)
    metrics = nnslim.evaluate(str(res.out), testbed=str(src))["metrics"]
    assert metrics["logits_cos_mean"] > 0.99
    sess = ort.InferenceSession(str(res.out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.shape == ["batch", "choices", "seq"] for i in sess.get_inputs())
    feed = {i.name: np.ones((1, 3, 9), np.int64) for i in sess.get_inputs()}  # other choice count and length
    assert sess.run(None, feed)[0].shape == (1, 3)


def test_multiple_choice_reads_the_users_items(tmp_path):
    from nnslim.testbeds.multiple_choice import read_choices

    listed = tmp_path / "items.jsonl"
    listed.write_text("\n".join(json.dumps({"question": f"q{i}", "choices": ["a", "b", "c"], "answer": i % 3})
                                for i in range(4)))
    rec = read_choices(listed, "eval")
    assert rec.texts[1] == "q1" and rec.pairs[1] == ["a", "b", "c"] and rec.labels == [0, 1, 2, 0]
    swag = tmp_path / "swag.csv"  # SWAG's layout: sent1, ending0..3, label
    swag.write_text("sent1,ending0,ending1,ending2,ending3,label\nHe opens the door,and leaves,x,y,z,0\n")
    rec = read_choices(swag, "calibration")
    assert rec.pairs == [["and leaves", "x", "y", "z"]] and rec.labels == [0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "label": 5}))
    with pytest.raises(NnslimError, match="label=5 is not the index of one of its 2 choices"):
        read_choices(bad, "eval")
    with pytest.raises(NnslimError, match="has no choices"):
        (tmp_path / "plain.jsonl").write_text(json.dumps({"text": "no choices"}))
        read_choices(tmp_path / "plain.jsonl", "eval")
