"""Speech models on this CPU: nnslim int8-dynamic vs ONNX Runtime's quantize_dynamic (what Optimum's ORTQuantizer
runs for these models), side by side in one run, on full-size shapes with random weights (seeded; no speech model
ships on PyPI, and nothing is downloaded):

- Whisper-tiny-shaped (d_model 384, 4 + 4 layers, 80 mels, a 30 s window of 3000 frames, vocab 51865): the three
  graphs of Optimum's speech layout, run as a transcription is: the encoder once, the first decoder on the start
  token, then the decoder with past one token at a time (`--tokens`, greedy, batch 1).
- wav2vec2-base-shaped CTC (hidden 768, 12 layers, the 7-conv waveform front end): one graph on `--seconds` of
  audio, batch 1.

  python benchmarks/speech_cpu.py [--models whisper,wav2vec2] [--tokens 32] [--seconds 10] [--rounds 5]

Each variant: median latency of interleaved rounds (2 intra-op threads), the ratio vs the fp32 ONNX graph(s) in the
same run, size, and fidelity vs fp32 on synthetic clips (Whisper: the share of greedy tokens equal to the fp32
graph's, position by position; wav2vec2: logits cosine and per-frame top-1 agreement). Random weights make the
fidelity a check of equivalence, not of accuracy.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lstm_int8_cpu import _flags  # noqa: E402


def _whisper(d: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=51865, num_mel_bins=80, encoder_layers=4, decoder_layers=4, d_model=384, encoder_attention_heads=6,
        decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, max_source_positions=1500,
        max_target_positions=448, decoder_start_token_id=50257, pad_token_id=50256, eos_token_id=50256,
        bos_token_id=50256, begin_suppress_tokens=None, suppress_tokens=None)).eval().save_pretrained(str(d))
    return d


def _wav2vec2(d: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(vocab_size=32)).eval().save_pretrained(str(d))
    return d


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_dynamic(src: Path, dst: Path, names: list[str]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        quantize_dynamic(str(src / n), str(dst / n), weight_type=QuantType.QInt8)
    return dst


def _size_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.iterdir() if p.suffix in (".onnx", ".onnx_data", ".data")
               or p.name.endswith(".onnx_data")) / 1e6


def _transcribe(sess, features: np.ndarray, start: int, tokens: int) -> list[int]:
    enc, dec, past_dec = sess
    states = enc.run(None, {"input_features": features})[0]
    names = [o.name for o in dec.get_outputs()]
    out = dict(zip(names, dec.run(None, {"input_ids": np.array([[start]], np.int64), "encoder_hidden_states": states})))
    got = [int(out["logits"][0, -1].argmax())]
    cross = {k.replace("present.", "past_key_values."): v for k, v in out.items() if ".encoder." in k}
    past_names = [o.name for o in past_dec.get_outputs()]
    for _ in range(tokens - 1):
        feed = {"input_ids": np.array([[got[-1]]], np.int64), **cross,
                **{k.replace("present.", "past_key_values."): v for k, v in out.items() if ".decoder." in k}}
        out = dict(zip(past_names, past_dec.run(None, feed)))
        got.append(int(out["logits"][0, -1].argmax()))
    return got


def _timed(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_whisper(work: Path, args) -> None:
    import nnslim
    from nnslim.runtime.onnx_seq2seq import FILES
    from nnslim.testbeds import testbed_for_hf_dir

    src = _whisper(work / "whisper")
    fp32 = nnslim.compress(str(src), {"steps": [{"method": "onnx"}]}, out=work / "w-fp32", report=False).out
    ours = nnslim.compress(str(src), "int8-dynamic", out=work / "w-nnslim", report=False).out
    rival = _ort_dynamic(fp32, work / "w-ort", list(FILES))
    dirs = {"fp32 ONNX": fp32, "nnslim int8-dynamic": ours, "ORT quantize_dynamic": rival}
    sessions = {k: [_session(d / n) for n in FILES] for k, d in dirs.items()}
    tb = testbed_for_hf_dir(src)
    clips = tb.features(tb.clips("eval")[0][: args.clips])["input_features"]
    start = 50257
    one = clips[:1]
    enc_t = _timed({k: (lambda s=s: s[0].run(None, {"input_features": one})) for k, s in sessions.items()}, args.rounds)
    full_t = _timed({k: (lambda s=s: _transcribe(s, one, start, args.tokens)) for k, s in sessions.items()},
                    args.rounds)
    ref = [_transcribe(sessions["fp32 ONNX"], clips[i:i + 1], start, args.tokens) for i in range(len(clips))]
    print(f"\n## Whisper-tiny-shaped (random weights), 30 s window, batch 1, {args.tokens} greedy tokens")
    print("| variant | encoder ms | transcription ms | vs fp32 | size MB | greedy tokens = fp32's |")
    print("|---|---|---|---|---|---|")
    for k, s in sessions.items():
        got = [_transcribe(s, clips[i:i + 1], start, args.tokens) for i in range(len(clips))]
        same = np.mean([a == b for r, g in zip(ref, got) for a, b in zip(r, g)])
        print(f"| {k} | {enc_t[k] * 1e3:.1f} | {full_t[k] * 1e3:.1f} | {full_t['fp32 ONNX'] / full_t[k]:.2f}x | "
              f"{_size_mb(dirs[k]):.1f} | {same:.3f} |")


def bench_wav2vec2(work: Path, args) -> None:
    import nnslim
    from nnslim.testbeds import testbed_for_hf_dir

    src = _wav2vec2(work / "wav2vec2")
    fp32 = nnslim.compress(str(src), {"steps": [{"method": "onnx"}]}, out=work / "v-fp32", report=False).out
    ours = nnslim.compress(str(src), "int8-dynamic", out=work / "v-nnslim", report=False).out
    rival = _ort_dynamic(fp32, work / "v-ort", ["model.onnx"])
    dirs = {"fp32 ONNX": fp32, "nnslim int8-dynamic": ours, "ORT quantize_dynamic": rival}
    if args.static:  # static int8 (QDQ, run here by ONNX Runtime): the default keeps the 1-D conv front end float;
        from nnslim.quant import ptq  # the second row as before session 55 (every conv quantized), all else equal

        for label, float_types in (("nnslim int8 static", ptq.TRANSFORMER_FLOAT_STATIC),
                                   ("nnslim int8 static, 1-D convs quantized (before)", ())):
            kept, ptq.TRANSFORMER_FLOAT_STATIC = ptq.TRANSFORMER_FLOAT_STATIC, float_types
            try:
                dirs[label] = nnslim.compress(str(src), {"method": "int8", "samples": args.static},
                                              out=work / f"v-static{len(dirs)}", report=False).out
            finally:
                ptq.TRANSFORMER_FLOAT_STATIC = kept
    sessions = {k: _session(d / "model.onnx") for k, d in dirs.items()}
    tb = testbed_for_hf_dir(src)
    tb.clip_seconds = args.seconds
    clips = [tb.features([c]) for c in tb.clips("eval")[0][: args.clips]]
    t = _timed({k: (lambda s=s: s.run(None, clips[0])) for k, s in sessions.items()}, args.rounds)
    ref = [sessions["fp32 ONNX"].run(None, c)[0] for c in clips]
    print(f"\n## wav2vec2-base-shaped CTC (random weights), {args.seconds:g} s of 16 kHz audio, batch 1")
    print("| variant | ms | vs fp32 | size MB | logits cosine (min) | frames top-1 = fp32's |")
    print("|---|---|---|---|---|---|")
    for k, s in sessions.items():
        out = [s.run(None, c)[0] for c in clips]
        cos = [float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(ref, out)]
        agree = np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(ref, out)])
        print(f"| {k} | {t[k] * 1e3:.1f} | {t['fp32 ONNX'] / t[k]:.2f}x | {_size_mb(dirs[k]):.1f} | "
              f"{np.mean(cos):.4f} ({min(cos):.4f}) | {agree:.3f} |")


def main():
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="whisper,wav2vec2")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--static", type=int, default=0, metavar="SAMPLES",
                    help="also static int8 of wav2vec2 with this many calibration clips, front end float (the "
                         "default) and quantized (as before)")
    args = ap.parse_args()
    print(f"# speech models on {platform.processor() or platform.machine()} ({_flags()}), onnxruntime "
          f"{ort.__version__}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    work = Path(tempfile.mkdtemp(prefix="nnslim-speech-"))
    try:
        for name in args.models.split(","):
            {"whisper": bench_whisper, "wav2vec2": bench_wav2vec2}[name](work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
