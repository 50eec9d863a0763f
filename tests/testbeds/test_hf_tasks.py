"""Hugging Face models of every supported task, built from configs (random weights) and saved as a user
would: the task is read from the config, each gets its own data and metric, the user's data files are
read, and the CLI compresses them into artifacts that reload."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nnslim
from nnslim.errors import NnslimError

from hf_zoo import TASKS, TOKENIZER, _build  # noqa: E402


pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfzoo")
    return {kind: _build(kind, root) for kind in TASKS}


@pytest.mark.parametrize("kind", list(TASKS))
def test_task_is_read_from_the_config(zoo, kind):
    from nnslim.testbeds import testbed_for_hf_dir

    tb = testbed_for_hf_dir(zoo[kind])
    assert tb.task == TASKS[kind]
    metrics = nnslim.evaluate(str(zoo[kind]))["metrics"]
    first = {"causal-lm": "perplexity", "feature-extraction": "cos_mean"}.get(TASKS[kind], "top1_agreement")
    assert first in metrics
    if first != "perplexity":  # the fp32 model against itself
        assert metrics[first] == pytest.approx(1.0)


def test_unknown_task_names_the_known_ones_and_the_flag(tmp_path, zoo):
    d = tmp_path / "odd"
    shutil.copytree(zoo["bert"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BertForSomethingNew"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NnslimError, match="not known; known tasks: .*--task"):
        nnslim.evaluate(str(d))
    assert "cos_mean" in nnslim.evaluate(str(d), task="feature-extraction")["metrics"]


def test_gpt2_conv1d_becomes_linear_with_the_same_outputs(zoo):
    from transformers import GPT2LMHeadModel

    from nnslim.testbeds import testbed_for_hf_dir

    ref = GPT2LMHeadModel.from_pretrained(str(zoo["gpt2"])).eval()
    ours = testbed_for_hf_dir(zoo["gpt2"]).load_model()
    assert not any(type(m).__name__ == "Conv1D" for m in ours.modules())
    ids = torch.randint(0, 30522, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_classifier_keeps_its_head_through_int8(zoo, tmp_path):
    res = nnslim.compress(str(zoo["bert-cls"]), "int8", out=tmp_path / "a", report=False)
    from nnslim.runtime import make_runner

    out = make_runner(res.model)({"input_ids": np.ones((2, 7), np.int64), "attention_mask": np.ones((2, 7), np.int64)})
    assert out.shape == (2, 3)  # 3 logits, not a pooled embedding
    assert nnslim.evaluate(res.out, testbed=str(zoo["bert-cls"]))["metrics"]["top1_agreement"] >= 0.8


def test_testbed_name_with_an_hf_dir_uses_the_users_model(zoo):
    res = nnslim.evaluate(str(zoo["gpt2"]), testbed="smollm2")
    assert res["params"] < 5_000_000  # the ~2M GPT-2, not SmolLM2's 134.5M
    with pytest.raises(NnslimError, match="--testbed='digits-cnn'"):
        nnslim.evaluate(str(zoo["gpt2"]), testbed="digits-cnn")


def _write_data(tmp_path: Path) -> dict[str, Path]:
    texts = [f"Sentence number {i} talks about compressing neural networks." for i in range(40)]
    labels = ["LABEL_0", "LABEL_1", "LABEL_2"]
    files = {"txt": tmp_path / "d.txt", "jsonl": tmp_path / "d.jsonl", "csv": tmp_path / "d.csv"}
    files["txt"].write_text("\n".join(texts) + "\n")
    files["jsonl"].write_text("".join(json.dumps({"sentence": t, "label": labels[i % 3]}) + "\n"
                                      for i, t in enumerate(texts)))
    files["csv"].write_text("body,label\n" + "".join(f"\"{t}\",{i % 3}\n" for i, t in enumerate(texts)))
    return files


def test_user_text_files_feed_calibration_and_eval(zoo, tmp_path):
    from nnslim.loading import UserData, apply_user_data
    from nnslim.testbeds import testbed_for_hf_dir

    files = _write_data(tmp_path)
    tb = testbed_for_hf_dir(zoo["bert-cls"])
    apply_user_data(tb, UserData(files["txt"], files["jsonl"]))
    assert len(tb.calibration()) == 40
    assert "d.jsonl:sentence" in tb.describe()["data"]
    metrics = nnslim.evaluate(str(zoo["bert-cls"]), eval_data=str(files["jsonl"]))["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["top1_agreement"] == pytest.approx(1.0)
    metrics = nnslim.evaluate(str(zoo["bert-cls"]), eval_data=str(files["csv"]), text_column="body")["metrics"]
    assert "accuracy" in metrics
    with pytest.raises(NnslimError, match="--text-column='nope' is not a column"):
        nnslim.evaluate(str(zoo["bert-cls"]), eval_data=str(files["csv"]), text_column="nope")
    with pytest.raises(NnslimError, match="has no column named text"):
        nnslim.evaluate(str(zoo["bert-cls"]), eval_data=str(files["csv"]))


def test_regression_and_multilabel_heads_are_measured_as_such(zoo, tmp_path):
    """num_labels = 1 (a score): top-1 of one output and the cosine of one value are always perfect, so they would
    report any damage as none; the testbed measures correlation and relative RMSE vs fp32 (and vs numeric labels)."""
    from hf_zoo import _tokenizer_files
    from transformers import BertConfig, BertForSequenceClassification

    from nnslim.runtime import TorchRunner
    from nnslim.testbeds import testbed_for_hf_dir

    torch.manual_seed(0)
    d = tmp_path / "reg"
    BertForSequenceClassification(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, num_labels=1)).eval().save_pretrained(str(d))
    _tokenizer_files(d)
    tb = testbed_for_hf_dir(d)
    tb.n_eval = 64
    model = tb.load_model()
    same = tb.evaluate(TorchRunner(model))
    assert tb.primary_metric == "pearson_vs_fp32" and "top1_agreement" not in same
    assert same["pearson_vs_fp32"] == 1.0 and same["rel_rmse_vs_fp32"] == 0.0
    with torch.no_grad():
        model.model.classifier.bias.add_(0.5)  # a shift: the correlations keep it, the errors show it
    shifted = tb.evaluate(TorchRunner(model))
    assert shifted["pearson_vs_fp32"] == pytest.approx(1.0) and shifted["max_abs_diff"] == pytest.approx(0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    damaged = tb.evaluate(TorchRunner(model))
    assert damaged["pearson_vs_fp32"] < 0.99 and damaged["rel_rmse_vs_fp32"] > 0.1
    data = tmp_path / "scores.csv"
    data.write_text("text,label\n" + "".join(f"sentence number {i},{i / 10}\n" for i in range(20)))
    metrics = nnslim.evaluate(str(d), eval_data=str(data))["metrics"]
    assert metrics["pearson_vs_fp32"] == pytest.approx(1.0) and metrics["label_rmse"] > 0
    # a multi-label head: its per-label decisions (logit > 0) are what agree or not
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "problem_type": "multi_label_classification",
                                               "id2label": {"0": "a", "1": "b", "2": "c"},
                                               "label2id": {"a": 0, "b": 1, "c": 2}}))
    BertForSequenceClassification.from_pretrained(str(d), ignore_mismatched_sizes=True).save_pretrained(str(d))
    tb = testbed_for_hf_dir(d)
    tb.n_eval = 64
    metrics = tb.evaluate(TorchRunner(tb.load_model()))
    assert tb.primary_metric == "multilabel_agreement" and metrics["multilabel_agreement"] == 1.0


def test_saved_dataset_folder_and_parquet_are_read(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow reads Arrow / Parquet files")
    import pyarrow.parquet as pq

    from nnslim.testbeds.sources import read_texts

    table = pa.table({"text": ["a first text", "a second text"], "label": [0, 1]})
    pq.write_table(table, str(tmp_path / "d.parquet"))
    (tmp_path / "ds").mkdir()
    with pa.OSFile(str(tmp_path / "ds" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    for spec in (tmp_path / "d.parquet", tmp_path / "ds"):
        records = read_texts(spec, "eval")
        assert records.texts == ["a first text", "a second text"] and records.labels == [0, 1]


def test_image_data_from_a_folder_and_npz(zoo, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("LABEL_0", "LABEL_1"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    np.savez(tmp_path / "imgs.npz", images=rng.random((6, 3, 32, 32), dtype=np.float32), labels=np.arange(6) % 4)
    for spec in (tmp_path / "imgs", tmp_path / "imgs.npz"):
        metrics = nnslim.evaluate(str(zoo["vit"]), eval_data=str(spec))["metrics"]
        assert metrics["top1_agreement"] == pytest.approx(1.0) and "accuracy" in metrics


def test_llm_eval_on_short_user_text_and_missing_tokenizer(zoo, tmp_path):
    files = _write_data(tmp_path)
    assert nnslim.evaluate(str(zoo["llama"]), eval_data=str(files["txt"]))["metrics"]["perplexity"] > 1
    d = tmp_path / "notok"
    shutil.copytree(zoo["llama"], d)
    for name in TOKENIZER:
        (d / name).unlink(missing_ok=True)
    with pytest.raises(NnslimError, match="has no tokenizer"):
        nnslim.evaluate(str(d))


@pytest.mark.parametrize("kind,method", [("gpt2", "int4-rtn"), ("distilbert-tok", "int8"), ("vit", "int8"),
                                         ("qwen2", "prune-structured"), ("bert-qa", "onnx")])
def test_cli_compresses_every_task_into_a_portable_artifact(zoo, tmp_path, kind, method):
    from nnslim.cli import main

    out = tmp_path / "out"
    extra = ["--set", "group_size=32"] if method == "int4-rtn" else []
    assert main(["compress", "--model", str(zoo[kind]), "--method", method, *extra, "--out", str(out),
                 "--no-report"]) == 0
    meta = json.loads((out / "nnslim.json").read_text())
    assert str(tmp_path) not in json.dumps(meta) and str(zoo[kind].parent) not in json.dumps(meta)
    assert meta["architecture"].get("task", TASKS[kind]) == TASKS[kind] or meta.get("format") == "onnx"
    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))  # copied elsewhere, it still loads on its own
    for f in moved.iterdir():
        assert f.stat().st_mode & 0o044 == 0o044, f"{f.name} is not readable by others"
    metrics = nnslim.evaluate(str(moved), testbed=str(zoo[kind]))["metrics"]
    assert metrics


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "nnslim.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("nnslim ")


@pytest.mark.parametrize("kind,step", [("llama", {"method": "int4-rtn", "group_size": 32}),
                                       ("qwen2", {"method": "int4-rtn", "group_size": -1}),
                                       ("llama", {"method": "int8-weight-only"})])
def test_int_llm_is_a_compressed_tensors_checkpoint_transformers_loads(zoo, tmp_path, kind, step):
    """The artifact is a standard HF checkpoint (compressed-tensors pack-quantized): transformers loads it
    with no nnslim code and gives nnslim's logits; nnslim loads it back into its packed layers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    res = nnslim.compress(str(zoo[kind]), {"steps": [step]}, out=tmp_path / "a", report=False)
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (res.out / "tokenizer.json").is_file()
    ours = nnslim.load(res.out)
    assert sum(isinstance(m, WeightOnlyLinear) for m in ours.modules()) == 14  # 7 Linears x 2 blocks
    hf = AutoModelForCausalLM.from_pretrained(str(res.out)).eval()
    AutoTokenizer.from_pretrained(str(res.out))
    ids = torch.randint(0, 30522, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,fmt,dtype", [("int8-w8a8", "int-quantized", torch.int8),
                                              ("fp8", "float-quantized", torch.float8_e4m3fn)])
def test_w8a8_llm_is_a_compressed_tensors_checkpoint_transformers_loads(zoo, tmp_path, method, fmt, dtype):
    """W8A8 as llm-compressor writes W8A8-INT8 / FP8-dynamic: 8-bit codes and per-channel scales under the HF
    names, per-token dynamic activations in the config; transformers loads it with no nnslim code and computes
    nnslim's function (its per-token int8 scale is absmax / 127.5, nnslim's and vLLM's absmax / 127: within 2%
    of the logits' range); nnslim reads it back into W8A8Linear bit for bit."""
    from transformers import AutoModelForCausalLM

    from nnslim.quant.w8a8 import W8A8Linear

    res = nnslim.compress(str(zoo["llama"]), method, out=tmp_path / "a", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "compressed-tensors"
    qc = json.loads((res.out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == fmt and len(qc["config_groups"]) == 1
    group = qc["config_groups"]["group_0"]
    assert len(group["targets"]) == 14 and group["input_activations"]["strategy"] == "token"
    assert group["input_activations"]["dynamic"] and group["weights"]["strategy"] == "channel"
    from safetensors import safe_open

    with safe_open(str(res.out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight").dtype == dtype
    ours = nnslim.load(res.out)
    layers = [m for m in ours.modules() if isinstance(m, W8A8Linear)]
    assert len(layers) == 14
    mine = dict(res.model.named_modules())
    for name, m in ours.named_modules():
        if isinstance(m, W8A8Linear):
            assert torch.equal(m.qweight, mine[name].qweight) and torch.equal(m.wscale, mine[name].wscale)
    hf = AutoModelForCausalLM.from_pretrained(str(res.out)).eval()
    ids = torch.randint(0, 30522, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(ids)
        assert float((hf(ids).logits - want).abs().max()) <= 0.02 * float(want.abs().max())


def test_pruning_survives_w8a8_into_each_artifact(zoo, tmp_path):
    """2:4 masks then int8 W8A8: the compressed-tensors checkpoint holds codes zero in 2 of every 4 weights, as
    nnslim and transformers read it; structural pruning then W8A8: nnslim's layout (the reason printed), the removed
    neurons still removed after the reload."""
    from transformers import AutoModelForCausalLM

    from nnslim.quant.w8a8 import W8A8Linear

    res = nnslim.compress(str(zoo["llama"]), {"steps": [{"method": "prune-2of4"}, {"method": "int8-w8a8"}]},
                          out=tmp_path / "s", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "compressed-tensors"
    for m in (m for m in nnslim.load(res.out).modules() if isinstance(m, W8A8Linear)):
        assert ((m.qweight.view(m.out_features, -1, 4) != 0).sum(-1) <= 2).all()
    hf = AutoModelForCausalLM.from_pretrained(str(res.out))
    up = hf.model.layers[0].mlp.up_proj
    assert ((up.weight.view(up.out_features, -1, 4) != 0).sum(-1) <= 2).all()
    res = nnslim.compress(str(zoo["llama"]), {"steps": [{"method": "prune-structured", "ratio": 0.5,
                                                         "head_ratio": 0.0}, {"method": "int8-w8a8"}]},
                          out=tmp_path / "p", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "torch"
    up = nnslim.load(res.out).get_submodule("lm.model.layers.0.mlp.up_proj")
    assert isinstance(up, W8A8Linear) and up.out_features == 64  # 128 FFN neurons, half removed


def test_encoder_decoder_int4_is_a_compressed_tensors_checkpoint_transformers_loads(zoo, tmp_path):
    """BART (encoder and decoder quantized, the tied embedding stored once): transformers loads the int4
    artifact as a seq2seq LM and gives nnslim's logits; nnslim loads it back into its packed layers."""
    from transformers import AutoModelForSeq2SeqLM

    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    res = nnslim.compress(str(zoo["bart"]), {"steps": [{"method": "int4-rtn", "group_size": 32}]},
                          out=tmp_path / "a", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "compressed-tensors"
    ours = nnslim.load(res.out)
    assert sum(isinstance(m, WeightOnlyLinear) for m in ours.modules()) == 32  # 2 x 6 encoder + 2 x 10 decoder
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(res.out)).eval()
    ids, dec = torch.randint(1, 30522, (2, 12)), torch.randint(1, 30522, (2, 5))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits
        torch.testing.assert_close(theirs, ours(ids, torch.ones_like(ids), dec), rtol=1e-4, atol=1e-4)


def test_gpt2_int4_says_it_is_not_a_transformers_checkpoint(zoo, tmp_path, capfd):
    res = nnslim.compress(str(zoo["gpt2"]), {"steps": [{"method": "int4-rtn", "group_size": 32}]},
                          out=tmp_path / "a", report=False)
    assert "Conv1D" in capfd.readouterr().err
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "torch"


@pytest.mark.parametrize("kind,step", [("qwen2", {"method": "prune-structured", "ratio": 0.5}),
                                       ("llama", {"method": "prune-structured", "ratio": 0.5, "head_ratio": 0.5}),
                                       ("gpt2", {"method": "fp16"}),
                                       ("gpt2", {"method": "prune-structured", "ratio": 0.5, "head_ratio": 0.0}),
                                       ("bert-cls", {"method": "prune-structured", "ratio": 0.5, "head_ratio": 0.0,
                                                     "ignore": ["bert.pooler.dense"]}),
                                       ("bert-cls", {"method": "prune-magnitude", "sparsity": 0.5}),
                                       ("bert-mlm", {"method": "prune-structured", "ratio": 0.5, "head_ratio": 0.0}),
                                       ("vit", {"method": "prune-structured", "ratio": 0.5})])
def test_float_and_pruned_artifacts_are_transformers_checkpoints(zoo, tmp_path, kind, step):
    """Float / fp16 / pruned results are saved as transformers saves them, the config updated to the pruned
    shapes, so from_pretrained rebuilds them with no nnslim code and gives nnslim's outputs."""
    import transformers

    res = nnslim.compress(str(zoo[kind]), {"steps": [step]}, out=tmp_path / "a", report=False)
    meta = json.loads((res.out / "nnslim.json").read_text())
    assert meta["format"] == "hf"
    auto = {"causal-lm": transformers.AutoModelForCausalLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "image-classification": transformers.AutoModelForImageClassification,
            "fill-mask": transformers.AutoModelForMaskedLM}[TASKS[kind]]
    hf = auto.from_pretrained(str(res.out)).eval()
    ours = nnslim.load(res.out)
    ids = torch.randint(0, 30522, (2, 16))
    with torch.no_grad():
        if TASKS[kind] == "image-classification":  # the patch projection sets the hidden size: kept
            x = torch.randn(2, 3, 32, 32)
            theirs, mine = hf(pixel_values=x).logits, ours(x)
        elif TASKS[kind] == "causal-lm":
            theirs, mine = hf(ids).logits, ours(ids)
        else:
            mask = torch.ones_like(ids)
            theirs, mine = hf(input_ids=ids, attention_mask=mask).logits, ours(ids, mask)
    torch.testing.assert_close(theirs.float(), mine.float(), rtol=1e-3, atol=1e-3)
    if kind == "bert-mlm":  # the head tied to the token embedding stays tied (one table, not two)
        assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    if step["method"] == "prune-structured":
        original, pruned = (json.loads((d / "config.json").read_text()) for d in (zoo[kind], res.out))
        key = "n_inner" if kind == "gpt2" else "intermediate_size"
        assert pruned[key] < (original[key] or 4 * original["n_embd"])  # GPT-2's unset n_inner: 4 x hidden


def test_pruned_heads_a_config_cannot_hold_say_how_to_get_a_checkpoint(zoo, tmp_path, capfd):
    """BERT derives its head size from the hidden size, and its pooler's width is the hidden size: with heads
    or pooler outputs removed the artifact stays in nnslim's layout, and the warning names the layers and the
    options that keep a transformers checkpoint (the parametrized test above takes them)."""
    res = nnslim.compress(str(zoo["bert-cls"]), {"steps": [{"method": "prune-structured", "ratio": 0.5}]},
                          out=tmp_path / "a", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "torch"
    err = capfd.readouterr().err
    assert "no BertForSequenceClassification config gives the pruned outputs of bert.encoder.layer.0.attention" in err
    assert "head_ratio=0" in err and "ignore=['bert.pooler.dense']" in err


def test_onnx_with_token_type_ids_as_optimum_exports_it(zoo, tmp_path):
    """Optimum's BERT exports take token_type_ids too: nnslim feeds zeros instead of failing on the key."""
    from transformers import BertForSequenceClassification

    class Three(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = BertForSequenceClassification.from_pretrained(str(zoo["bert-cls"])).eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    ids = torch.ones(2, 8, dtype=torch.long)
    path = tmp_path / "model.onnx"
    torch.onnx.export(Three(), (ids, ids, torch.zeros_like(ids)), str(path), dynamo=True,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                      dynamic_shapes=({0: "b", 1: "s"}, {0: "b", 1: "s"}, {0: "b", 1: "s"}))
    for backend in ("onnxruntime", "openvino"):
        metrics = nnslim.evaluate(str(path), testbed=str(zoo["bert-cls"]), backend=backend)["metrics"]
        assert metrics["top1_agreement"] == pytest.approx(1.0)


def test_onnx_outputs_are_named_as_the_ecosystem_names_them(zoo, tmp_path):
    import onnx

    res = nnslim.compress(str(zoo["bert-qa"]), "onnx", out=tmp_path / "a", report=False)
    assert [o.name for o in onnx.load(str(res.out / "model.onnx"), load_external_data=False).graph.output] == ["logits"]
    assert {"config.json", "tokenizer.json"} <= {p.name for p in res.out.iterdir()}


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_reaches_onnx_as_blocked_dq_that_ort_runs_as_matmulnbits(zoo, tmp_path, symmetric):
    """Weight-only int4 exports as INT4 weights + group-wise scales (blocked DequantizeLinear, opset 21);
    ONNX Runtime fuses each into its MatMulNBits int4 kernel. Outputs match the torch int4 model."""
    import onnx
    import onnxruntime as ort

    from nnslim.runtime import make_runner

    # backup auto: int8 embedding and head before an export, float without one; the torch run asks for int8
    torch_res = nnslim.compress(str(zoo["llama"]), {"steps": [
        {"method": "int4-rtn", "group_size": 32, "symmetric": symmetric, "backup": "int8"}]},
        out=tmp_path / "t", report=False)
    res = nnslim.compress(str(zoo["llama"]), {"steps": [
        {"method": "int4-rtn", "group_size": 32, "symmetric": symmetric}, {"method": "onnx"}]},
        out=tmp_path / "o", report=False)
    proto = onnx.load(str(res.out / "model.onnx"))
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    blocked = [n for n in dq if any(a.name == "block_size" and a.i == 32 for a in n.attribute)]
    assert len(blocked) == 14 and len(dq) == 15  # + the lm_head, int8 per channel
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(res.out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node) == 15
    feed = {"input_ids": np.random.default_rng(0).integers(0, 30522, (2, 12)).astype(np.int64)}
    ours, theirs = make_runner(torch_res.model)(feed), make_runner(res.model)(feed)
    # ORT's MatMulNBits computes with int8 activations by default (accuracy_level 4): close, not bit-equal
    err = np.abs(theirs - ours).max() / np.abs(ours).max()
    cos = (theirs * ours).sum() / np.linalg.norm(theirs) / np.linalg.norm(ours)
    assert err < 0.02 and cos > 0.999, (err, cos)


def test_pruned_then_int4_keeps_both_in_nnslims_layout(zoo, tmp_path, capfd):
    """prune-structured -> int4: compressed-tensors cannot describe the pruned config, so the artifact is
    nnslim's layout (said on stderr); the removed structure and the int4 layers both survive the reload."""
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    res = nnslim.compress(str(zoo["llama"]), {"steps": [{"method": "prune-structured", "ratio": 0.5},
                                                        {"method": "int4-rtn", "group_size": 32}]},
                          out=tmp_path / "a", report=False)
    assert "structurally pruned" in capfd.readouterr().err
    meta = json.loads((res.out / "nnslim.json").read_text())
    assert meta["format"] == "torch" and meta["structured_plan"] and meta["quantized_layers"]
    model = nnslim.load(res.out)
    downs = [m for n, m in model.named_modules() if n.endswith("mlp.down_proj")]
    assert downs and all(isinstance(m, WeightOnlyLinear) and m.in_features == 64 for m in downs)


def test_tied_embedding_is_stored_once_and_retied(tmp_path):
    """A tied lm_head is the embedding: the compressed-tensors file holds it once (not two float copies) and
    both transformers and nnslim tie it again on load."""
    import transformers
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from hf_zoo import _tokenizer_files

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=30522, tie_word_embeddings=True)
    src = tmp_path / "tied"
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(str(src))
    _tokenizer_files(src)
    res = nnslim.compress(str(src), {"steps": [{"method": "int4-rtn", "group_size": 32}]}, out=tmp_path / "a",
                          report=False)
    with safe_open(str(res.out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    ours, hf = nnslim.load(res.out), AutoModelForCausalLM.from_pretrained(str(res.out)).eval()
    ids = torch.randint(0, 30522, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)



def test_masked_lm_metrics_at_the_masked_tokens(zoo, tmp_path):
    """fill-mask (BertForMaskedLM, the head bert-base / roberta-base are saved with): a seeded 15% of each text's
    real tokens masked, never a special token; masked_token_accuracy scores a prediction against the text's own
    token (an oracle that answers the original ids scores 1); the ONNX artifact is Optimum's fill-mask layout."""
    import onnx

    from nnslim.testbeds import testbed_for_hf_dir

    tb = testbed_for_hf_dir(zoo["bert-mlm"])
    tb.n_eval = 16
    texts = tb.eval_sentences()
    enc, labels = tb._masked(texts[:8], 0)
    again, _ = tb._masked(texts[:8], 0)
    plain = tb._encode(texts[:8])
    real = (plain["attention_mask"] == 1) & ~np.isin(plain["input_ids"], tb.tokenizer.all_special_ids)
    masked = labels >= 0
    assert np.array_equal(enc["input_ids"], again["input_ids"]) and (masked <= real).all()
    assert (enc["input_ids"][masked] == tb.tokenizer.mask_token_id).all()
    assert np.array_equal(labels[masked], plain["input_ids"][masked])
    assert masked.sum(1).min() >= 1 and 0.1 < masked.sum() / real.sum() < 0.2
    assert any((c["input_ids"] == tb.tokenizer.mask_token_id).any() for c in tb.calibration(8))

    step = tb.default_batch
    answers = {tb._masked(texts[i:i + step], i)[0]["input_ids"].tobytes(): tb._encode(texts[i:i + step])["input_ids"]
               for i in range(0, len(texts), step)}

    def oracle(feed):
        ids = answers[np.asarray(feed["input_ids"]).tobytes()]
        return np.eye(tb.tokenizer.vocab_size, dtype=np.float32)[ids] * 20

    metrics = tb.evaluate(oracle)
    assert metrics["masked_token_accuracy"] == 1.0 and metrics["masked_lm_loss"] < 1e-3
    assert nnslim.evaluate(str(zoo["bert-mlm"]))["metrics"]["masked_token_accuracy"] < 0.05  # random weights

    res = nnslim.compress(str(zoo["bert-mlm"]), "onnx", out=tmp_path / "o", report=False)
    graph = onnx.load(str(res.out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert {i.name for i in graph.input} <= {"input_ids", "attention_mask", "token_type_ids"}
