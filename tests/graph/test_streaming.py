"""Big checkpoints, layer by layer from their shards (issue 19): a model built on the meta device, each layer /
decoder block read from the safetensors shards just before it is compressed, gives bit for bit the result of
the same method on the model loaded whole in the same dtype."""
from __future__ import annotations

import json

import pytest
import torch

import nnslim
from nnslim import Int4GptqConfig, Int4RtnConfig, NnslimError

from conftest import llama_samples
from hf_zoo import _tokenizer_files


def _checkpoint(tmp_path, tied: bool, vocab: int = 256):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tied)
    d = tmp_path / f"ckpt-{tied}"
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(d), max_shard_size="60KB")
    _tokenizer_files(d)
    assert (d / "model.safetensors.index.json").is_file()  # several shards
    return d


def _whole(d):
    from nnslim.testbeds import testbed_for_hf_dir

    tb = testbed_for_hf_dir(d)
    tb.load_dtype = torch.bfloat16
    return tb.load_model()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_rtn_equals_in_memory_and_saves(tmp_path, tied):
    d = _checkpoint(tmp_path, tied)
    streamed = nnslim.load(d, stream=True)
    assert all(p.is_meta for p in streamed.parameters())
    q = nnslim.quantize(streamed, Int4RtnConfig(group_size=32), inplace=True)
    assert not any(t.is_meta for t in [*q.parameters(), *q.buffers()])
    ref = nnslim.quantize(_whole(d), Int4RtnConfig(group_size=32))
    _same(q, ref)
    out = nnslim.save(q, tmp_path / "out")
    back = nnslim.load(out)
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), ref(ids))


def test_streamed_gptq_equals_in_memory(tmp_path, monkeypatch):
    from nnslim.graph.streaming import ShardSource

    d = _checkpoint(tmp_path, False)
    samples = llama_samples(n=4, seq=32)
    cfg = Int4GptqConfig(group_size=32, samples=4, seq_len=32, device="cpu")
    read, real_read, real_settle = [], ShardSource.read, ShardSource.settle
    monkeypatch.setattr(ShardSource, "read", lambda self, name: read.append(name) or real_read(self, name))
    monkeypatch.setattr(ShardSource, "settle", lambda self, model: read.append("settle") or real_settle(self, model))
    q = nnslim.quantize(nnslim.load(d, stream=True), cfg, calibration=samples, inplace=True)
    calibration = read[:read.index("settle")]  # (settle then reads the rest: the model is returned whole)
    # calibration read the embeddings once (for the first block's inputs) and never the head
    assert sum(n.endswith("model.embed_tokens.weight") for n in calibration) == 1
    assert not any(n.endswith("lm_head.weight") for n in calibration)
    monkeypatch.undo()
    ref = nnslim.quantize(_whole(d), cfg, calibration=samples)
    _same(q, ref)


def test_missing_or_mismatched_shards_are_refused_before_work(tmp_path):
    d = _checkpoint(tmp_path, False)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (d / shard).rename(d / "moved.safetensors")
    with pytest.raises(NnslimError, match=f"shard .*{shard}.* is missing"):
        nnslim.load(d, stream=True)
    (d / "moved.safetensors").rename(d / shard)
    key = next(k for k, f in index["weight_map"].items() if f == shard)
    index["weight_map"][key] = sorted(set(index["weight_map"].values()))[0]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(NnslimError, match="do not match their index"):
        nnslim.load(d, stream=True)
    with pytest.raises(NnslimError, match="stream=True"):
        nnslim.load(tmp_path, stream=True)


def test_compressed_tensors_shards_written_one_at_a_time(tmp_path, monkeypatch):
    """Large compressed-tensors checkpoints are written as shards + index (one shard converted at a time); both
    nnslim and transformers load them."""
    from transformers import AutoModelForCausalLM

    from nnslim import ecosystem

    d = _checkpoint(tmp_path, False)
    q = nnslim.quantize(nnslim.load(d, stream=True), Int4RtnConfig(group_size=32), inplace=True)
    monkeypatch.setattr(ecosystem, "SHARD_BYTES", 40_000)
    out = nnslim.save(q, tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        ref = q(ids)
        torch.testing.assert_close(nnslim.load(out)(ids), ref)
        hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        torch.testing.assert_close(hf(ids).logits.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_cli_stream(tmp_path, capsys):
    """`nnslim compress --stream`: the streamed artifact equals the in-memory one; its report is perplexity before
    and after, block by block, equal to the whole model's; what it cannot do is refused before any work."""
    from nnslim.cli import main

    d = _checkpoint(tmp_path, True, vocab=30522)  # the tokenizer's (the report evaluates real text)
    assert main(["compress", "--model", str(d), "--method", "int4-rtn", "--set", "group_size=32", "--stream",
                 "--no-report", "--out", str(tmp_path / "s")]) == 0
    ref = nnslim.quantize(_whole(d), Int4RtnConfig(group_size=32))
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        assert torch.equal(nnslim.load(tmp_path / "s")(ids), ref(ids))
    (tmp_path / "off").mkdir()
    capsys.readouterr()
    text = tmp_path / "eval.txt"  # the user's evaluation text (a few windows: the test stays quick)
    text.write_text("\n".join(f"Line {i} of the evaluation text, about weights, blocks and shards." for i in range(150)))
    assert main(["compress", "--model", str(d), "--method", "int4-rtn", "--set", "group_size=32", "--stream",
                 "--offload-dir", str(tmp_path / "off"), "--eval", str(text), "--out", str(tmp_path / "r")]) == 0
    assert "perplexity" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    before, after = (row["metrics"]["perplexity"] for row in report["variants"])
    assert [row["latency_ms"] for row in report["variants"]] == [None, None]  # not measured, not invented
    from nnslim.loading import UserData, apply_user_data
    from nnslim.testbeds import testbed_for_hf_dir

    tb = testbed_for_hf_dir(d)
    apply_user_data(tb, UserData(evaluation=str(text)))
    windows = tb.eval_windows()
    from nnslim.eval.metrics import perplexity, token_nll

    for model, want in ((_whole(d), before), (ref, after)):
        nll = count = 0
        for row in windows:
            with torch.no_grad():
                s_, c = token_nll(model(torch.as_tensor(row[None])).float().numpy(), row[None])
            nll, count = nll + s_, count + c
        assert perplexity(nll, count) == pytest.approx(want, rel=1e-6)
    assert nnslim.evaluate(nnslim.load(d, stream=True), testbed=tb)["metrics"]["perplexity"] == pytest.approx(
        before, rel=1e-9)
    assert not any((tmp_path / "off").iterdir())  # the offload folder went with the model
    for extra, needle in ((["--method", "fp16"], "--stream works with"),
                          (["--recipe", str(_two_steps(tmp_path))], "--stream runs one step")):
        assert main(["compress", "--model", str(d), "--stream", "--out", str(tmp_path / "x"), *extra]) == 2
        assert needle in capsys.readouterr().err
    assert main(["compress", "--model", str(d), "--method", "int4-rtn", "--offload-dir", str(tmp_path),
                 "--out", str(tmp_path / "x")]) == 2
    assert "--offload-dir" in capsys.readouterr().err


def _two_steps(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("- method: prune-magnitude\n- method: int4-rtn\n")
    return path


def _saved_equal(q, ref, out):
    """Artifacts written from `q` and from the in-memory `ref` hold the same tensors."""
    from nnslim.io import load_safetensors

    a, b = nnslim.save(q, out / "a"), nnslim.save(ref, out / "b", testbed=q.nnslim_testbed)
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files == sorted(p.name for p in b.glob("*.safetensors"))
    for name in files:
        ta, tb = load_safetensors(a / name), load_safetensors(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    return a


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_offloaded_blocks_equal_in_memory(tmp_path, method):
    """With offload_dir, finished layers / blocks go to disk and back to meta as they are done (host memory
    holds about one block); the artifact is the same bit for bit, and the offload folder goes with the model."""
    import gc

    d = _checkpoint(tmp_path, True)
    cfg = (Int4RtnConfig(group_size=32) if method == "rtn"
           else Int4GptqConfig(group_size=32, samples=4, seq_len=32, device="cpu"))
    data = llama_samples(n=4, seq=32) if method == "gptq" else None
    spill = tmp_path / "spill"
    spill.mkdir()
    streamed = nnslim.load(d, stream=True, offload_dir=spill)
    q = nnslim.quantize(streamed, cfg, calibration=data, inplace=True)
    layers = [m for m in q.modules() if type(m).__name__ == "WeightOnlyLinear"]
    assert layers and all(m.qweight.is_meta for m in layers)  # on disk, not in memory
    (folder,) = list(spill.iterdir())
    assert any(folder.glob("*.dat"))
    out = _saved_equal(q, nnslim.quantize(_whole(d), cfg, calibration=data), tmp_path)
    assert all(m.qweight.is_meta for m in layers)  # writing read them back one layer at a time
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(nnslim.load(out)(ids), nnslim.quantize(_whole(d), cfg, calibration=data)(ids))
    del q, streamed, layers
    gc.collect()
    assert not folder.exists()


def test_offload_dir_refused_without_room_or_stream(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    d = _checkpoint(tmp_path, False)
    with pytest.raises(NnslimError, match="offload_dir=.*stream=True"):
        nnslim.load(d, offload_dir=tmp_path)
    with pytest.raises(NnslimError, match="offload_dir=.*not a directory"):
        nnslim.load(d, stream=True, offload_dir=tmp_path / "nope")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(NnslimError, match=r"offload_dir=.*GiB free.*needs up to"):
        nnslim.load(d, stream=True, offload_dir=tmp_path)


@pytest.mark.parametrize("method", ["prune-magnitude", "prune-2of4", "wanda", "sparsegpt", "fp8",
                                    "int8-w8a8", "int8-weight-only"])
def test_every_layerwise_method_streams_and_offloads(tmp_path, method):
    """Pruning (magnitude, 2:4, Wanda, SparseGPT), W8A8 and int8 weight-only run streamed with offloaded blocks
    and give the in-memory result bit for bit, in the artifact too."""
    from nnslim.recipe import make_step

    d = _checkpoint(tmp_path, False)
    options = {"samples": 4, "seq_len": 32, "device": "cpu"} if method in ("wanda", "sparsegpt") else {}
    cfg = make_step({"method": method, **options}, "test")
    data = llama_samples(n=4, seq=32)
    verb = nnslim.prune if method.startswith("prune") or method in ("wanda", "sparsegpt") else nnslim.quantize
    spill = tmp_path / "spill"
    spill.mkdir()
    q = verb(nnslim.load(d, stream=True, offload_dir=spill), cfg, calibration=data, inplace=True)
    assert any(t.is_meta for t in q.parameters()) or any(t.is_meta for t in q.buffers())  # offloaded
    ref = verb(_whole(d), cfg, calibration=data)
    out = _saved_equal(q, ref, tmp_path)
    assert all(t.is_meta for t in q.parameters())  # every writer read the offloaded layers back one at a time
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(nnslim.load(out)(ids), ref(ids))


def test_streamed_backup_int8_equals_in_memory_and_offload_says_it_cannot(tmp_path):
    from nnslim.quant.weight_only.embedding import WeightOnlyEmbedding

    d = _checkpoint(tmp_path, True)
    cfg = Int4RtnConfig(group_size=32, backup="int8")
    q = nnslim.quantize(nnslim.load(d, stream=True), cfg, inplace=True)
    assert sum(isinstance(m, WeightOnlyEmbedding) for m in q.modules()) == 1
    _same(q, nnslim.quantize(_whole(d), cfg))
    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(NnslimError, match="backup='int8' is not supported yet for a model streamed with an offload"):
        nnslim.quantize(nnslim.load(d, stream=True, offload_dir=spill), cfg, inplace=True)


@pytest.mark.parametrize("offload", [False, True])
def test_streamed_gptq_spread_over_two_devices_equals_in_memory(tmp_path, monkeypatch, offload):
    """Issue 18 with issue 19: a checkpoint streamed from its shards (and offloaded) calibrated with each block's
    work spread over two devices (two CPU "devices" run the GPUs' code path) gives the in-memory spread result
    bit for bit."""
    import nnslim.quant.weight_only.driver as driver

    monkeypatch.setattr(driver, "resolve_devices", lambda name, gpus: [torch.device("cpu")] * 2)
    d = _checkpoint(tmp_path, False)
    cfg = Int4GptqConfig(group_size=32, samples=4, seq_len=32, device="cpu")
    samples = llama_samples(n=5, seq=32)
    spill = tmp_path / "spill"
    spill.mkdir()
    streamed = nnslim.load(d, stream=True, offload_dir=spill if offload else None)
    q = nnslim.quantize(streamed, cfg, calibration=samples, inplace=True)
    ref = nnslim.quantize(_whole(d), cfg, calibration=samples)
    if offload:
        _saved_equal(q, ref, tmp_path)
    else:
        _same(q, ref)


def test_a_streamed_model_counts_all_its_parameters(tmp_path):
    """Its parameters are all on the meta device (data_ptr 0): the report's count must not take them for one
    shared tensor (it printed the first one's size)."""
    from nnslim.eval.compare import param_count

    d = _checkpoint(tmp_path, tied=True)
    assert param_count(nnslim.load(d, stream=True)) == param_count(_whole(d))
