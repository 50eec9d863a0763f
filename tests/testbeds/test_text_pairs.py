"""Sentence pairs (NLI, paraphrase, cross-encoders, extractive QA): two text columns are tokenized as one sequence
with segment ids, token_type_ids reach the model and its ONNX graph, labels stay aligned with their rows."""
from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
import torch

import nnslim
from nnslim.errors import NnslimError
from nnslim.testbeds.sources import read_texts

from hf_zoo import _build  # noqa: E402

PREMISES = ["The cat sat on the mat all afternoon.", "A man is playing a guitar on stage.",
            "Two children are running through a field.", "The market was closed on Sunday.",
            "She wrote the report before the meeting.", "The train left the station late.",
            "A dog is swimming in the lake.", "He bought bread at the bakery."]
HYPOTHESES = ["An animal is resting.", "Someone is making music.", "Kids are outside.", "Nobody could shop.",
              "The report was late.", "The train was on time.", "An animal is in the water.", "He went shopping."]


def _write(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def bert_cls(tmp_path_factory):
    return _build("bert-cls", tmp_path_factory.mktemp("pairs"))


def test_pair_columns_are_found_and_rows_stay_aligned(tmp_path):
    rows = [{"premise": p, "hypothesis": h, "label": i % 3} for i, (p, h) in enumerate(zip(PREMISES, HYPOTHESES))]
    rows[2]["premise"] = "  "  # an empty text is skipped with its pair and its label
    rec = read_texts(_write(tmp_path / "nli.csv", rows, ["premise", "hypothesis", "label"]), "eval")
    assert rec.pairs is not None and len(rec.texts) == len(rec.pairs) == len(rec.labels) == 7
    assert rec.texts[2] == PREMISES[3] and rec.pairs[2] == HYPOTHESES[3] and rec.labels[2] == "0"
    picked = read_texts(tmp_path / "nli.csv", "eval", text_column="hypothesis,premise")
    assert picked.texts[0] == HYPOTHESES[0] and picked.pairs[0] == PREMISES[0]
    single = read_texts(tmp_path / "nli.csv", "eval", text_column="hypothesis")
    assert single.pairs is None
    with pytest.raises(NnslimError, match="--text-column='a,b,c' is not allowed"):
        read_texts(tmp_path / "nli.csv", "eval", text_column="a,b,c")
    with pytest.raises(NnslimError, match="--text-column='nope' is not a column"):
        read_texts(tmp_path / "nli.csv", "eval", text_column="premise,nope".split(",")[1])


def test_pair_classifier_compresses_with_segment_ids(tmp_path, bert_cls):
    rows = [{"sentence1": p, "sentence2": h, "label": i % 3} for i, (p, h) in enumerate(zip(PREMISES, HYPOTHESES))]
    ev = _write(tmp_path / "eval.csv", rows[:4] * 4, ["sentence1", "sentence2", "label"])
    cal = _write(tmp_path / "cal.csv", rows[4:] * 4, ["sentence1", "sentence2", "label"])
    res = nnslim.compress(str(bert_cls), "int8-dynamic", out=tmp_path / "q", eval_data=str(ev), calibration=str(cal),
                          repeats=2, memory=False)
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    text = res.report.to_terminal()
    assert "accuracy" in text and "top1_agreement" in text
    # the testbed tokenizes each row as one pair: [CLS] first [SEP] second [SEP], second segment = 1
    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.loading import apply_user_data, UserData

    tb = testbed_for_hf_dir(bert_cls)
    apply_user_data(tb, UserData(None, str(ev), None, None))
    enc = tb.example_inputs(batch=2, seq=32)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    sep = tb.tokenizer.sep_token_id
    ids, types = enc["input_ids"][0], enc["token_type_ids"][0]
    assert (ids == sep).sum() == 2 and types.max() == 1 and types[: int(np.argmax(ids == sep)) + 1].max() == 0
    # the model sees the segments: logits differ from the same tokens with all-zero segment ids
    m = tb.load_model()
    t = {k: torch.as_tensor(v) for k, v in enc.items()}
    with torch.no_grad():
        a = m(**t)
        b = m(t["input_ids"], t["attention_mask"])
    assert not torch.allclose(a, b)


def test_pairs_mixed_with_single_texts_or_for_an_encoder_are_refused(tmp_path, bert_cls):
    pairs = _write(tmp_path / "p.csv", [{"premise": p, "hypothesis": h} for p, h in zip(PREMISES, HYPOTHESES)],
                   ["premise", "hypothesis"])
    single = tmp_path / "s.txt"
    single.write_text("\n".join(PREMISES), encoding="utf-8")
    with pytest.raises(NnslimError, match="evaluation data holds sentence pairs and the calibration data single"):
        nnslim.compress(str(bert_cls), "int8-dynamic", out=tmp_path / "o", eval_data=str(pairs),
                        calibration=str(single), report=False)
    enc_dir = _build("bert", tmp_path)
    with pytest.raises(NnslimError, match="sentence pairs, which a feature-extraction model does not take"):
        nnslim.evaluate(str(enc_dir), eval_data=str(pairs))
    assert json.loads((enc_dir / "config.json").read_text())["architectures"] == ["BertModel"]


def test_pairs_given_in_python(tmp_path, bert_cls):
    pairs = list(zip(PREMISES, HYPOTHESES))
    r = nnslim.evaluate(str(bert_cls), eval_data=pairs)
    assert r["metrics"]["top1_agreement"] == pytest.approx(1.0)
    res = nnslim.compress(str(bert_cls), "int8-weight-only", calibration=pairs[:4], eval_data=pairs[4:],
                          out=tmp_path / "w", report=False)
    assert res.out is not None
    with pytest.raises(NnslimError, match=r"eval\[1\]=.* is not allowed; allowed: a list of texts, or of"):
        nnslim.evaluate(str(bert_cls), eval_data=[("a", "b"), "c"])
