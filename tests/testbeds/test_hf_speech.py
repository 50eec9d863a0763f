"""Speech models built from configs (random weights): Whisper as Optimum's speech seq2seq ONNX layout whose cached
steps match transformers, wav2vec2 / HuBERT CTC and an audio classifier through the CLI, the user's .wav / .npz
clips (resampled, labels from sub-folders), and the errors of audio data."""
from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import nnslim
from nnslim.errors import NnslimError
from nnslim.runtime.onnx_seq2seq import FILES as SEQ2SEQ_FILES

from hf_zoo import SPEECH, _build  # noqa: E402


pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("speechzoo")
    return {kind: _build(kind, root) for kind in SPEECH}


def _write_wav(path: Path, audio: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.repeat(audio[:, None], channels, 1)
    scaled = (np.clip(data, -1, 1) * (2 ** (8 * width - 1) - 1)).astype({2: "<i2", 4: "<i4"}[width])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(scaled.tobytes())


def test_speech_tasks_are_read_from_the_config(zoo):
    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.speech import AudioEncoderTestbed, SpeechSeq2SeqTestbed

    for kind, task in SPEECH.items():
        tb = testbed_for_hf_dir(zoo[kind])
        assert tb.task == task
        assert isinstance(tb, SpeechSeq2SeqTestbed if task == "speech-seq2seq" else AudioEncoderTestbed)
        assert "synthetic" in tb.describe()["data"]
    whisper = testbed_for_hf_dir(zoo["whisper"])
    ex = whisper.example_inputs(batch=3)
    # no preprocessor_config.json: Whisper's extractor from the config (16 mel bins, 100 frames = 2 x positions)
    assert ex["input_features"].shape == (3, 16, 100) and ex["decoder_input_ids"].shape[0] == 3
    ctc = testbed_for_hf_dir(zoo["wav2vec2-ctc"]).example_inputs(batch=2)
    assert set(ctc) == {"input_values"} and ctc["input_values"].shape == (2, 4 * 16000)
    assert abs(float(ctc["input_values"][0].mean())) < 1e-3  # normalized per clip, as wav2vec2's extractor does


def test_whisper_deploys_as_optimums_speech_layout_whose_steps_match_transformers(zoo, tmp_path):
    import onnx
    from transformers import WhisperForConditionalGeneration

    from nnslim.runtime import make_runner

    whisper = str(zoo["whisper"])
    res = nnslim.compress(whisper, "int8-dynamic", out=tmp_path / "d", report=False)
    meta = json.loads((res.out / "nnslim.json").read_text())
    assert meta["format"] == "onnx" and set(SEQ2SEQ_FILES) <= set(meta["files"])
    inputs = {name: [i.name for i in onnx.load(str(res.out / name), load_external_data=False).graph.input]
              for name in SEQ2SEQ_FILES}
    assert inputs["encoder_model.onnx"] == ["input_features"]  # Optimum's speech export: no encoder mask
    assert inputs["decoder_model.onnx"] == ["input_ids", "encoder_hidden_states"]
    assert inputs["decoder_with_past_model.onnx"][0] == "input_ids"
    assert "encoder_attention_mask" not in inputs["decoder_with_past_model.onnx"]
    metrics = nnslim.evaluate(str(res.out), testbed=whisper)["metrics"]
    assert metrics["top1_agreement"] > 0.9 and metrics["logits_cos_mean"] > 0.99

    # float export: the encoder once, the first decoder on 2 tokens, then the decoder with past one token at a time
    res = nnslim.compress(whisper, {"steps": [{"method": "onnx"}]}, out=tmp_path / "f", report=False)
    assert any("decoder step with past" in n for n in res.notes)
    enc, first, with_past = make_runner(nnslim.load(res.out)).parts
    gen = torch.Generator().manual_seed(0)
    feats, tgt = torch.randn(2, 16, 100, generator=gen), torch.randint(3, 300, (2, 6), generator=gen)
    with torch.no_grad():
        ref = WhisperForConditionalGeneration.from_pretrained(whisper).eval()(
            input_features=feats, decoder_input_ids=tgt).logits.numpy()
    states = enc.run_all({"input_features": feats.numpy()})["last_hidden_state"]
    out = first.run_all({"input_ids": tgt[:, :2].numpy(), "encoder_hidden_states": states})
    as_past = (lambda o, part: {k.replace("present.", "past_key_values."): v for k, v in o.items() if part in k})
    cross, got = as_past(out, ".encoder."), [out["logits"]]
    for t in range(2, 6):
        out = with_past.run_all({"input_ids": tgt[:, t:t + 1].numpy(), **as_past(out, ".decoder."), **cross})
        got.append(out["logits"])
    got = np.concatenate(got, axis=1)
    assert got.shape == ref.shape and np.abs(got - ref).max() / max(1.0, np.abs(ref).max()) < 1e-4


@pytest.mark.parametrize("kind,method", [("wav2vec2-ctc", "int8-dynamic"), ("hubert-ctc", "int8-dynamic"),
                                         ("wav2vec2-ctc", "int8"), ("wav2vec2-cls", "fp16"),
                                         ("hubert-ctc", "int4-rtn")])
def test_cli_compresses_audio_models_into_artifacts_that_reload(zoo, tmp_path, kind, method):
    """weight_norm of the position conv is folded before the steps; the artifact rebuilt from its own config
    folds it too (torch artifacts), so it reloads and is measured against the original."""
    from nnslim.cli import main

    out = tmp_path / "a"
    options = ["--set", "samples=8"] if method == "int8" else []
    assert main(["compress", "--model", str(zoo[kind]), "--method", method, *options, "--out", str(out),
                 "--no-report"]) == 0
    metrics = nnslim.evaluate(str(out), testbed=str(zoo[kind]))["metrics"]
    # static int8 keeps the convolutional front end float: 0.83 cosine on the CTC model when it was quantized
    assert metrics["top1_agreement"] > 0.5 and metrics["logits_cos_mean"] > (0.99 if method == "int8" else 0.9)
    assert ("ctc_output_match" in metrics) == (SPEECH[kind] == "ctc")


def test_user_clips_from_wav_folders_and_npz(zoo, tmp_path):
    """8 kHz stereo 16-bit and 32-bit .wav clips are averaged to mono and resampled to 16 kHz; sub-folder names
    are labels (accuracy), a .txt beside each clip its transcript; an .npz gives waveforms and their rate."""
    from nnslim.testbeds.audio import read_audio, synthetic_clip

    rng = np.random.default_rng(0)
    for i, label in enumerate(["yes", "no", "up", "yes"]):
        clip = synthetic_clip(1.0, 8000, 10 + i)
        _write_wav(tmp_path / "clips" / label / f"{i}.wav", clip, 8000, channels=2, width=2 if i % 2 else 4)
        (tmp_path / "clips" / label / f"{i}.txt").write_text(f"word {i}\n")
    records = read_audio(tmp_path / "clips", "eval", 16000)
    assert len(records) == 4 and records.labels_from_folders and sorted(set(records.labels)) == ["no", "up", "yes"]
    assert all(abs(len(c) - 16000) <= 1 for c in records.audio) and records.texts[0] == "word 1"  # no/1.wav first
    ref = synthetic_clip(1.0, 8000, 13)
    got = records.audio[[i for i, t in enumerate(records.texts) if t == "word 3"][0]][::2]
    assert np.corrcoef(got[100:-100], ref[100:-100])[0, 1] > 0.99  # the same clip after resampling (every 2nd)

    np.savez(tmp_path / "clips.npz", audio=rng.standard_normal((5, 24000)).astype(np.float32) * 0.1,
             sampling_rate=np.int64(24000), labels=np.array([0, 1, 2, 0, 1]))
    npz = read_audio(tmp_path / "clips.npz", "calibration", 16000)
    assert len(npz) == 5 and npz.audio[0].shape == (16000,) and npz.labels == [0, 1, 2, 0, 1]

    res = nnslim.evaluate(str(zoo["wav2vec2-cls"]), eval_data=str(tmp_path / "clips"))
    assert res["metrics"]["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # the 4 clips' folder labels, by name


def test_audio_data_errors_name_the_field_and_what_is_allowed(zoo, tmp_path):
    from nnslim.testbeds.audio import read_audio
    from nnslim.testbeds.speech import SpeechSeq2SeqTestbed

    (tmp_path / "a.mp3").write_bytes(b"ID3")
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVE")
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 3)))
    (tmp_path / "texts.txt").write_text("hello\nworld\n")
    cases = [(tmp_path / "a.mp3", "suffix '.mp3' is not allowed"), (tmp_path / "bad.wav", "not a readable PCM"),
             (tmp_path / "x.npz", "allowed: a numeric [clips, samples] array"), (tmp_path / "none", "file not found")]
    for path, message in cases:
        with pytest.raises(NnslimError, match=message.replace("[", r"\[").replace("(", r"\(")):
            read_audio(path, "calibration", 16000)
    with pytest.raises(NnslimError, match="suffix '.txt' is not allowed; allowed: a folder of .wav"):
        nnslim.evaluate(str(zoo["wav2vec2-ctc"]), eval_data=str(tmp_path / "texts.txt"))
    with pytest.raises(NnslimError, match="--eval: ctc models take audio"):
        nnslim.evaluate(str(zoo["wav2vec2-ctc"]), eval_data=["hello", "world"])
    (tmp_path / "s2t").mkdir()
    (tmp_path / "s2t" / "config.json").write_text(json.dumps({"model_type": "speech_to_text",
                                                               "decoder_start_token_id": 2}))
    with pytest.raises(NnslimError, match="no preprocessor_config.json"):
        SpeechSeq2SeqTestbed(tmp_path / "s2t").example_inputs()


def test_default_clips_are_deterministic_and_the_splits_disjoint():
    from nnslim.testbeds.audio import synthetic_clips

    a, b = synthetic_clips("eval", 3, 0.5, 16000), synthetic_clips("eval", 3, 0.5, 16000)
    cal = synthetic_clips("calibration", 3, 0.5, 16000)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x in a for y in cal)
    assert all(x.dtype == np.float32 and 0.4 < np.abs(x).max() <= 0.5 for x in a)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    from nnslim.testbeds.speech import ctc_greedy

    best = np.array([[0, 3, 3, 0, 3, 5, 5, 0]])
    logits = np.eye(6)[best]
    assert ctc_greedy(logits, blank=0) == [(3, 3, 5)]


def _with_tokenizer(src: Path, dst: Path, kind: str) -> Path:
    """A copy of a zoo model with a tokenizer: letters for CTC (Wav2Vec2CTCTokenizer), a small byte-level BPE for
    Whisper (its vocabulary is the test model's 300 ids)."""
    import shutil

    import transformers as tf

    shutil.copytree(src, dst)
    if kind == "ctc":
        vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONISRHDLUCMFWYGPBVK'XJQZ"])}
        (dst / "vocab.json").write_text(json.dumps(vocab))
        tf.Wav2Vec2CTCTokenizer(str(dst / "vocab.json")).save_pretrained(str(dst))
        return dst
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(), decoders.ByteLevel()
    from nnslim.testbeds.text import sentences

    tok.train_from_iterator(sentences("calibration")[:2000], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tok.get_vocab_size() == 300  # every id the model can output decodes
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>").save_pretrained(str(dst))
    return dst


@pytest.mark.parametrize("kind", ["wav2vec2-ctc", "whisper"])
def test_transcripts_give_the_word_error_rate_of_each_variants_own_output(zoo, tmp_path, kind):
    """With a transcript beside every clip: `wer` of the model's own greedy transcription, the same for the torch
    model and its fp32 ONNX artifact (greedy through the ONNX layout: the encoder run once)."""
    from nnslim.testbeds.audio import synthetic_clip
    from nnslim.testbeds.speech import word_error_rate

    model = _with_tokenizer(zoo[kind], tmp_path / "m", SPEECH[kind])
    for i in range(3):
        _write_wav(tmp_path / "clips" / f"{i}.wav", synthetic_clip(1.0, 16000, 50 + i), 16000)
        (tmp_path / "clips" / f"{i}.txt").write_text("the cat sat")
    clips = str(tmp_path / "clips")
    torch_wer = nnslim.evaluate(str(model), eval_data=clips)["metrics"]["wer"]
    art = nnslim.compress(str(model), {"steps": [{"method": "onnx"}]}, out=tmp_path / "o", report=False).out
    assert nnslim.evaluate(str(art), testbed=str(model), eval_data=clips)["metrics"]["wer"] == pytest.approx(torch_wer)
    assert torch_wer >= 0 and word_error_rate(["the cat sat"], ["the cat"]) == pytest.approx(1 / 3)
    (tmp_path / "clips" / "2.txt").unlink()  # not every clip transcribed: no wer
    assert "wer" not in nnslim.evaluate(str(model), eval_data=clips)["metrics"]


def test_wav2vec2_fp16_is_a_transformers_checkpoint_with_its_weight_norm(zoo, tmp_path):
    """The position conv's weight_norm, folded for the methods, is stored back as transformers stores it (g, v):
    the fp16 artifact is a checkpoint transformers loads, with the original's outputs."""
    from safetensors import safe_open
    from transformers import AutoModelForCTC

    res = nnslim.compress(str(zoo["wav2vec2-ctc"]), "fp16", out=tmp_path / "h", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "hf"
    with safe_open(str(res.out / "model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if "pos_conv_embed" in k]
    assert sorted(keys) == sorted(f"wav2vec2.encoder.pos_conv_embed.conv.{k}" for k in
                                  ("bias", "parametrizations.weight.original0", "parametrizations.weight.original1"))
    x = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = AutoModelForCTC.from_pretrained(str(res.out)).float()(x).logits
        ref = AutoModelForCTC.from_pretrained(str(zoo["wav2vec2-ctc"]))(x).logits
    assert (got - ref).abs().max() < 1e-2 * max(1.0, float(ref.abs().max()))


def test_whisper_int4_keeps_its_tied_head_float_and_loads_in_transformers(zoo, tmp_path):
    """proj_out is Whisper's output head (get_output_embeddings), tied to the token embedding: kept float like
    any lm_head, so the int4 compressed-tensors checkpoint loads in transformers with the tie intact."""
    from transformers import AutoModelForSpeechSeq2Seq

    from nnslim.graph.scope import output_heads

    model = AutoModelForSpeechSeq2Seq.from_pretrained(str(zoo["whisper"]))
    assert output_heads(model) == {"proj_out"}
    res = nnslim.compress(str(zoo["whisper"]), {"steps": [{"method": "int4-rtn", "group_size": 32}]},
                          out=tmp_path / "q", report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "compressed-tensors"
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(str(res.out))
    assert type(loaded.proj_out) is torch.nn.Linear
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight


def test_pruned_then_int8_speech_model_deploys_as_onnx_with_both(zoo, tmp_path):
    """Compose: the widths structured pruning removed and the int8 weights of the next step both reach the ONNX
    artifact of a speech model, whose outputs stay close to the original's (30% of the FFN neurons of a random
    model, the waveform convolutions kept by a glob)."""
    import onnx

    model = str(zoo["wav2vec2-cls"])
    prune = [{"method": "prune-structured", "ratio": 0.3, "ignore": ["*feature_extractor*"]}]
    res = nnslim.compress(model, {"steps": [*prune, {"method": "int8-dynamic"}, {"method": "onnx"}]},
                          out=tmp_path / "o", report=False)
    graph = onnx.load(str(res.out / json.loads((res.out / "nnslim.json").read_text())["file"])).graph
    ops = {n.op_type for n in graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops or "DynamicQuantizeMatMul" in ops, ops
    dense = json.loads((zoo["wav2vec2-cls"] / "config.json").read_text())
    widths = {tuple(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2}
    assert widths and not any(dense["intermediate_size"] in w for w in widths) and any(
        round(dense["intermediate_size"] * 0.7) in w for w in widths), widths
    assert nnslim.evaluate(str(res.out), testbed=model)["metrics"]["logits_cos_mean"] > 0.99


def test_static_int8_keeps_speech_front_end_convolutions_float(zoo):
    """The transformer preset keeps 1-D convolutions (the waveform feature encoder, the positional conv) float in
    static int8, saying so: with them quantized the test-sized wav2vec2's logits cosine was 0.83, float 0.9999
    (the fidelity is asserted by the CLI test above); preset=cnn still quantizes them."""
    from nnslim.quant.ptq import Int8Config, target_layers

    model = nnslim.load(str(zoo["wav2vec2-ctc"]))
    notes = []
    kept = target_layers(model, Int8Config(), "transformer", notes=notes)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv1d)}
    assert convs and not convs & set(kept) and any("1-D convolutions kept float" in n for n in notes)
    assert convs <= set(target_layers(model, Int8Config(), "cnn"))
