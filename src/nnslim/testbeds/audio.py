"""Audio for speech models: the offline default (synthetic speech-like clips) and the user's own files.

Default: no recordings ship with nnslim and nothing is downloaded, so the default clips are synthetic: voiced
"syllables" (a gliding pitch with its harmonics shaped by two or three moving formants), noise bursts (fricative
like), pauses and a little background noise, each clip from its own seed (calibration and evaluation never share
one). They exercise the models' whole input range, but they are not speech: the metrics on them are fidelity to the
original model, not accuracy. The user's own clips (`--calibration` / `--eval`) replace either split:
- a folder of .wav files (PCM 8/16/24/32-bit, any rate, mono or several channels averaged), searched recursively;
  sub-folder names are the clips' labels (audio classification), and a .txt file of the same stem beside a clip is
  its transcript;
- a single .wav file;
- an .npz file with an array `audio` (or waveforms / input_values / x) of [clips, samples] float waveforms, an
  optional scalar `sampling_rate` (else the model's rate is assumed, with a warning) and optional `labels` (or y).
Clips at another rate are resampled to the model's with a polyphase filter (scipy).
"""
from __future__ import annotations

import wave
from math import gcd
from pathlib import Path

import numpy as np

from ..errors import NnslimError

AUDIO_FORMATS = "a folder of .wav files, a .wav file, or an .npz with an array named audio / waveforms / x"
MAX_CLIPS = 100_000


def synthetic_clip(seconds: float, rate: int, seed: int) -> np.ndarray:
    """One speech-like clip (float32 in about -0.5..0.5) of `seconds` at `rate`, from `seed`."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float64)
    pos = int(rng.uniform(0.05, 0.3) * rate)
    while pos < n:
        length = int(rng.uniform(0.08, 0.35) * rate)
        seg = min(length, n - pos)
        t = np.arange(seg) / rate
        if rng.random() < 0.75:  # voiced: pitch glide with harmonics under moving formants
            f0 = rng.uniform(85, 260) * (1 + rng.uniform(-0.25, 0.25) * t / max(t[-1], 1e-3)) if seg > 1 else \
                np.full(seg, 120.0)
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = rng.uniform([250, 800, 2000], [900, 2400, 3300])
            sound = np.zeros(seg)
            for h in range(1, int(min(40, (rate / 2 - 200) / f0.max()))):
                freq = h * f0
                gain = sum(np.exp(-((freq - f) / (0.12 * f + 60)) ** 2) for f in formants) / h ** 0.5
                sound += gain * np.sin(h * phase)
        else:  # unvoiced: band-limited noise
            noise = rng.standard_normal(seg)
            width = int(rng.integers(2, 6))
            sound = noise - np.convolve(noise, np.ones(width) / width, mode="same")
        envelope = np.sin(np.pi * np.arange(seg) / max(seg, 1)) ** rng.uniform(0.5, 2.0)
        out[pos:pos + seg] += rng.uniform(0.2, 1.0) * sound * envelope
        pos += seg + int(rng.exponential(0.08) * rate)  # a pause
    out += 0.003 * rng.standard_normal(n)
    peak = np.abs(out).max()
    return (0.5 * out / max(peak, 1e-9)).astype(np.float32)


def synthetic_clips(split: str, count: int, seconds: float, rate: int) -> list[np.ndarray]:
    """`count` default clips of a split; the two splits draw from disjoint seeds."""
    base = {"calibration": 1_000_000, "eval": 2_000_000}[split]
    return [synthetic_clip(seconds, rate, base + i) for i in range(count)]


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return audio.astype(np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(audio.astype(np.float64), target // g, rate // g).astype(np.float32)


def read_wav(path: Path, what: str) -> tuple[np.ndarray, int]:
    """A PCM .wav file -> (mono float32 in -1..1, its sampling rate)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (OSError, EOFError, wave.Error) as e:
        raise NnslimError(f"--{what}: {str(path)!r} is not a readable PCM .wav file ({str(e)[:120]}); allowed: "
                          "8/16/24/32-bit PCM (convert float or compressed audio, or pass an .npz of waveforms)"
                          ) from None
    if width == 3:  # 24-bit: widen to 32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        data = (np.pad(b, ((0, 0), (1, 0))).view("<i4")[:, 0]).astype(np.float64) / 2 ** 31
    elif width in (1, 2, 4):
        dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
        data = np.frombuffer(raw, dtype).astype(np.float64)
        data = (data - 128) / 128 if width == 1 else data / 2 ** (8 * width - 1)
    else:
        raise NnslimError(f"--{what}: {str(path)!r} has {8 * width}-bit samples; allowed: 8, 16, 24 or 32-bit PCM")
    if data.size == 0:
        raise NnslimError(f"--{what}: {str(path)!r} holds no samples")
    return data.reshape(-1, channels).mean(1).astype(np.float32), rate


def read_audio(spec: str | Path, what: str, rate: int):
    """Clips (mono float32 at `rate`), labels and transcripts of a user's audio file or folder (module doc)."""
    from ..progress import warn
    from .sources import Records, read_npz

    path = Path(spec)
    if not path.exists():
        raise NnslimError(f"--{what}={str(spec)!r}: file not found; allowed: {AUDIO_FORMATS}")
    if path.is_file() and path.suffix.lower() == ".npz":
        arrays = read_npz(path, what)
        key = next((k for k in ("audio", "waveforms", "input_values", "x", "X") if k in arrays), None)
        if key is None or arrays[key].ndim not in (1, 2) or not np.issubdtype(arrays[key].dtype, np.number):
            raise NnslimError(f"--{what}={str(spec)!r} holds {', '.join(arrays) or 'no arrays'}; allowed: a numeric "
                              "[clips, samples] array named audio / waveforms / input_values / x (and sampling_rate, "
                              "labels)")
        clips = np.atleast_2d(arrays[key]).astype(np.float32)
        if "sampling_rate" in arrays:
            src = int(arrays["sampling_rate"])
            if not 1000 <= src <= 384_000:
                raise NnslimError(f"--{what}={str(spec)!r}: sampling_rate={src} is not allowed; allowed: 1000-384000")
        else:
            src = rate
            warn(f"{path.name} gives no sampling_rate: its clips are taken as {rate} Hz (the model's rate)", once=True)
        label_key = next((k for k in ("labels", "label", "y") if k in arrays), None)
        records = Records(audio=[resample(c, src, rate) for c in clips], origin=path.name,
                          labels=arrays[label_key].tolist() if label_key else None)
    elif path.is_file() and path.suffix.lower() == ".wav":
        clip, src = read_wav(path, what)
        records = Records(audio=[resample(clip, src, rate)], origin=path.name, texts=_transcripts([path]))
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
        if not files:
            raise NnslimError(f"--{what}={str(spec)!r} holds no .wav files; allowed: {AUDIO_FORMATS}")
        clips = [resample(*read_wav(p, what), rate) for p in files[:MAX_CLIPS]]
        labelled = any(p.parent != path for p in files)
        records = Records(audio=clips, origin=path.name, texts=_transcripts(files[:MAX_CLIPS]),
                          labels=[p.parent.name if p.parent != path else None for p in files[:MAX_CLIPS]]
                          if labelled else None, labels_from_folders=labelled)
    else:
        raise NnslimError(f"--{what}={str(spec)!r}: suffix {path.suffix!r} is not allowed; allowed: {AUDIO_FORMATS}")
    if not records.audio:
        raise NnslimError(f"--{what}={str(spec)!r} holds no clips")
    short = [i for i, c in enumerate(records.audio) if len(c) < rate // 100]
    if short:
        raise NnslimError(f"--{what}={str(spec)!r}: clip {short[0]} is shorter than 10 ms; allowed: clips of 10 ms "
                          "or more")
    return records


def _transcripts(files: list[Path]) -> list[str]:
    """The transcript of each clip (a .txt of the same stem), or [] when not every clip has one."""
    texts = []
    for p in files:
        t = p.with_suffix(".txt")
        if not t.is_file():
            return []
        try:
            texts.append(" ".join(t.read_text(encoding="utf-8").split()))
        except (OSError, UnicodeDecodeError):
            return []
    return texts
