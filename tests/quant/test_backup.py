"""int8 backup precision (NNCF's backup mode): the embedding tables and the head a low-bit weight format leaves
out, stored int8 per row; a head tied to the embedding shares its codes; saved and reloaded as it ran."""
import copy

import pytest
import torch
from torch import nn

from conftest import apply_step
from nnslim import Int4RtnConfig, Int8WeightOnlyConfig, NnslimError
from nnslim.quant.weight_only.embedding import WeightOnlyEmbedding, quantize_backup
from nnslim.quant.weight_only.modules import WeightOnlyLinear


def _llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def test_tied_head_shares_the_int8_table_and_stays_close():
    lm = _llama(tied=True)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    float_backup, _ = apply_step(lm, Int4RtnConfig(group_size=32, backup="float"))
    q, notes = apply_step(lm, Int4RtnConfig(group_size=32, backup="int8"))
    emb, head = q.model.embed_tokens, q.lm_head
    assert isinstance(emb, WeightOnlyEmbedding) and isinstance(head, WeightOnlyLinear)
    assert head.bits == 8 and head.group == 64  # per output channel
    assert torch.equal(emb.qweight, head.qweight) and torch.equal(emb.scales, head.scales)
    assert any("1 tied to a table, sharing its codes" in n for n in notes)
    assert any("head int8, embeddings int8" in n for n in notes)
    # a lookup dequantizes its rows within half a step of the float table
    w = lm.model.embed_tokens.weight.detach()
    err = (emb(ids) - w[ids]).abs()
    assert torch.all(err <= emb.scales[ids] / 2 + 1e-6)
    with torch.no_grad():
        ref = float_backup(input_ids=ids).logits
        out = q(input_ids=ids).logits
    assert float((out - ref).norm() / ref.norm()) < 0.02  # int8 on top of int4: a small extra error
    assert isinstance(float_backup.model.embed_tokens, nn.Embedding)
    assert type(float_backup.lm_head) is nn.Linear


def test_auto_is_float_without_an_export_and_untied_heads_get_their_own_codes():
    lm = _llama(tied=False)
    q, notes = apply_step(lm, Int8WeightOnlyConfig())
    assert type(q.model.embed_tokens) is nn.Embedding and type(q.lm_head) is nn.Linear
    assert any("backup=auto: no export step follows" in n for n in notes)
    q = copy.deepcopy(lm)
    notes = quantize_backup(q)
    assert notes == ["backup int8 (per row, symmetric): 1 embedding table(s) and 1 head(s) (0 tied to a table, "
                     "sharing its codes)"]
    assert not torch.equal(q.model.embed_tokens.qweight, q.lm_head.qweight)
    q = copy.deepcopy(lm)
    assert "0 tied" not in " ".join(quantize_backup(q, ignore=("lm_head",)))
    assert type(q.lm_head) is nn.Linear


def test_max_norm_tables_are_refused():
    with pytest.raises(NnslimError, match="max_norm=1.0.*backup: float"):
        quantize_backup(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)))


def test_save_load_roundtrip(tmp_path):
    from nnslim import artifact
    from nnslim.testbeds import ModuleTestbed

    lm = _llama(tied=True)
    q, _ = apply_step(lm, Int4RtnConfig(group_size=32, backup="int8"))
    ids = torch.randint(0, 256, (1, 20))
    artifact.save(q, tmp_path, testbed=ModuleTestbed(lm, {"input_ids": ids}))
    assert '"weight_only_embedding"' in (tmp_path / "nnslim.json").read_text()
    back = artifact.load(tmp_path, model=_llama(tied=True))
    assert isinstance(back.model.embed_tokens, WeightOnlyEmbedding)
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, q(input_ids=ids).logits)


def test_a_table_shared_by_several_paths_is_replaced_at_all_of_them():
    """T5's `shared`, encoder.embed_tokens and decoder.embed_tokens hold one tied weight: all three become one
    int8 table (quantizing each module alone would store three)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1,
                                             num_heads=4, vocab_size=128, decoder_start_token_id=0)).eval()
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
    notes = quantize_backup(t5)
    # the tied token table once, and each block's relative-position bias table (a lookup too)
    assert "3 embedding table(s) and 1 head(s) (1 tied" in notes[0]
    assert isinstance(t5.shared, WeightOnlyEmbedding)
    assert t5.encoder.embed_tokens is t5.shared and t5.decoder.embed_tokens is t5.shared


def test_t5_tables_survive_save_load_and_the_onnx_export(tmp_path):
    """The one int8 table T5 holds at three paths is saved once and rebuilt at all three (nnslim.json
    quantized_aliases); its ONNX export finds it in the encoder and both decoders."""
    import json

    import numpy as np
    import onnx

    import nnslim
    from hf_zoo import _build
    from nnslim.runtime import TorchRunner

    src = _build("t5", tmp_path / "zoo")
    res = nnslim.compress(str(src), [{"method": "int4-rtn", "group_size": 32, "backup": "int8"}],
                          out=tmp_path / "t", report=False)
    meta = json.loads((tmp_path / "t" / "nnslim.json").read_text())
    assert set(meta["quantized_aliases"].values()) == {"model.shared"}
    back = nnslim.load(tmp_path / "t")
    assert back.model.encoder.embed_tokens is back.model.shared is back.model.decoder.embed_tokens
    feed = {"input_ids": np.full((1, 5), 7), "attention_mask": np.ones((1, 5), np.int64),
            "decoder_input_ids": np.ones((1, 3), np.int64)}
    assert np.array_equal(TorchRunner(back)(feed), TorchRunner(res.model)(feed))
    onnx_res = nnslim.compress(str(src), [{"method": "int4-rtn", "group_size": 32}, {"method": "onnx"}],
                               out=tmp_path / "o", report=False)
    for f in onnx_res.model.graphs:  # (files: the graphs and their external data)
        inits = onnx.load(str(f)).graph.initializer
        tables = [i for i in inits if list(i.dims) == [30522, 64]]  # the vocabulary x d_model token table
        assert [i.data_type for i in tables] == [onnx.TensorProto.INT8], f


def test_bad_backup_value_is_one_clear_error():
    with pytest.raises(NnslimError, match="backup='int4' is not allowed; allowed: auto, float, int8"):
        Int4RtnConfig(backup="int4")


def test_scaled_word_embeddings_are_int8_tables_with_their_factor(tmp_path):
    """BART's (and Gemma's) scaled word embedding is a lookup times embed_scale: an int8 table keeping the
    factor; its learned positions (another forward) stay float; the tied head shares the table in ONNX."""
    import numpy as np
    import onnx

    import nnslim
    from hf_zoo import _build
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128, max_position_embeddings=64, scale_embedding=True)).eval()
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        ref = bart.model.shared(ids)
    notes = quantize_backup(bart)
    assert "1 embedding table(s)" in notes[0] and "1 tied" in notes[0]
    emb = bart.model.shared
    assert isinstance(emb, WeightOnlyEmbedding) and emb.embed_scale == pytest.approx(32 ** 0.5)
    assert bart.model.encoder.embed_tokens is emb
    assert type(bart.model.encoder.embed_positions).__name__ == "BartLearnedPositionalEmbedding"
    with torch.no_grad():
        err = float((emb(ids) - ref).abs().max())
    assert err <= float(emb.scales.max()) * emb.embed_scale / 2 + 1e-5
    src = _build("bart", tmp_path / "zoo")
    res = nnslim.compress(str(src), [{"method": "int4-rtn", "group_size": 32}, {"method": "onnx"}],
                          out=tmp_path / "o", report=False)
    for f in res.model.graphs:
        tables = [i for i in onnx.load(str(f)).graph.initializer if list(i.dims) == [30522, 64]]
        assert [i.data_type for i in tables] == [onnx.TensorProto.INT8], f
    few = tmp_path / "few.txt"  # each seq2seq evaluation generates the fp32 reference for every sentence
    few.write_text("\n".join(f"Sentence {i} is about making models smaller." for i in range(8)))
    metrics = nnslim.evaluate(str(tmp_path / "o"), testbed=str(src), eval_data=str(few))["metrics"]
    assert metrics and all(np.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics
