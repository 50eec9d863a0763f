"""A layer called more than once (ALBERT shares one encoder layer across its depth): the int8 ONNX export
rewrites every node that runs it, with the layer's int8 weight stored once, and the graph computes what the
fp32 model does."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import nnslim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_zoo import _tokenizer_files  # noqa: E402


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_albert_shared_layer_exports_once_per_weight(tmp_path, method):
    import onnxruntime as ort
    import transformers as tf

    torch.manual_seed(0)
    config = tf.AlbertConfig(embedding_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, vocab_size=30522, num_labels=2)
    model = tf.AlbertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "albert")
    _tokenizer_files(tmp_path / "albert")
    res = nnslim.compress(str(tmp_path / "albert"), {"steps": [{"method": method, **(
        {"samples": 16} if method == "int8" else {})}]}, out=tmp_path / "q", report=False)
    proto = onnx.load(str(res.out / "model.onnx"))
    names = [i.name for i in proto.graph.initializer if i.name.endswith(".weight_q")]
    assert len(names) == len(set(names))
    query = [n for n in names if ".attention.query." in n]
    assert len(query) == 1  # one shared layer, called 3 times: its weight once
    users = [n for n in proto.graph.node if any(i == query[0] for i in n.input)]
    assert len(users) == 3
    ids = torch.randint(1000, 2000, (2, 11))
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((2, 11), np.int64)}
    sess = ort.InferenceSession(str(res.out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: feed[i.name] if i.name in feed else np.zeros((2, 11), np.int64) for i in sess.get_inputs()}
    got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones(2, 11, dtype=torch.long)).logits.numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() + 1e-3
