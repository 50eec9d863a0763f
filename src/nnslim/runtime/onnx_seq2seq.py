"""Encoder-decoders (T5, BART, Marian, ...; Whisper and other speech models) in ONNX as Optimum's
`text2text-generation-with-past` / `automatic-speech-recognition-with-past` exports lay them out, so
`ORTModelForSeq2SeqLM.from_pretrained(DIR)` (`ORTModelForSpeechSeq2Seq` for speech) loads the artifact:

  encoder_model.onnx             input_ids, attention_mask (speech: input_features) -> last_hidden_state
  decoder_model.onnx             encoder_attention_mask (not for speech), input_ids, encoder_hidden_states
                                 -> logits, present.{i}.decoder.key/.value, present.{i}.encoder.key/.value
  decoder_with_past_model.onnx   encoder_attention_mask (not for speech), input_ids,
                                 past_key_values.{i}.decoder/encoder.key/.value
                                 -> logits, present.{i}.decoder.key/.value

The encoder's inputs are the wrapper's `encoder_inputs` (text: input_ids and attention_mask; speech:
input_features, which has no mask). The first decoder step computes the cross-attention keys/values from the
encoder's states; later steps read them (and the growing self-attention cache) from the past. nnslim evaluates the
artifact by running the encoder then the first decoder on the whole target (teacher forcing), and checks a step
with past against torch. The two decoders hold the same weights: share_decoder_weights stores them once, in one
external data file both graphs refer to (Optimum's unmerged export writes them twice; its merged decoder needs an
If node).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NnslimError
from .base import OnnxModel, Runner
from .onnx_llm import PAST, PRESENT
from .onnx_export import one_exporter_for_all_parts

ENCODER_FILE, DECODER_FILE, WITH_PAST_FILE = "encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"
SHARED_DATA = "decoder_model.onnx_data"  # the weights the two decoders share (Optimum's external-data name)
FILES = (ENCODER_FILE, DECODER_FILE, WITH_PAST_FILE)


# The same three graphs as OpenVINO IRs, named as optimum-intel's OVModelForSeq2SeqLM reads them.
IR_FILES = {name: f"openvino_{name[:-len('.onnx')]}.xml" for name in FILES}


def names_of(path: Path) -> tuple[str, ...]:
    """The layout's file names for a graph of this kind (.onnx or OpenVINO .xml)."""
    return FILES if Path(path).suffix == ".onnx" else tuple(IR_FILES.values())


def is_seq2seq_layout(path: Path) -> bool:
    """Is this file (ONNX or OpenVINO IR) the encoder of an encoder-decoder written in Optimum's layout?"""
    path, names = Path(path), names_of(path)
    return path.name == names[0] and (path.parent / names[1]).is_file()


def layout_files(path: Path) -> list[Path]:
    """The graphs of the layout whose encoder is `path` (those present)."""
    return [p for p in (Path(path).parent / n for n in names_of(path)) if p.is_file()]


class _Part(nn.Module):
    """One graph of the layout; holds the HF model (its quantized / pruned layers included)."""

    def __init__(self, hf: nn.Module, n_layers: int):
        super().__init__()
        self.hf, self.n_layers = hf, n_layers


def _cache_arg(hf: nn.Module) -> str:
    import inspect

    params = inspect.signature(hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _kv_names(n_layers: int, kinds=("decoder", "encoder")) -> list[str]:
    return [f"{i}.{kind}.{kv}" for i in range(n_layers) for kind in kinds for kv in ("key", "value")]


TEXT_INPUTS = ("input_ids", "attention_mask")
SPEECH_INPUTS = ("input_features",)


def encoder_inputs_of(model: nn.Module) -> tuple[str, ...]:
    """The encoder's inputs of an encoder-decoder wrapper: text (input_ids, attention_mask) unless it says."""
    names = tuple(getattr(model, "encoder_inputs", TEXT_INPUTS))
    if names not in (TEXT_INPUTS, SPEECH_INPUTS):
        raise NnslimError(f"encoder inputs {names} are not allowed; allowed: {TEXT_INPUTS} or {SPEECH_INPUTS}")
    return names


class Encoder(nn.Module):
    """The encoder stack alone (only its layers are in this graph), of text."""
    input_names = list(TEXT_INPUTS)
    output_names = ["last_hidden_state"]

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.encoder = hf.get_encoder()

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class SpeechEncoder(Encoder):
    """The encoder of a speech model: log-mel features [batch, mels, frames] -> states."""
    input_names = list(SPEECH_INPUTS)

    def forward(self, input_features):
        return self.encoder(input_features=input_features).last_hidden_state


def _flat(cache, n_layers: int, cross: bool) -> list[torch.Tensor]:
    out = []
    for i in range(n_layers):
        layers = [cache.self_attention_cache.layers[i]] + ([cache.cross_attention_cache.layers[i]] if cross else [])
        for la in layers:
            out += [la.keys, la.values]
    return out


class Decoder(_Part):
    """The first decoder step (any number of target tokens): computes the cross-attention keys/values."""
    input_names = ["encoder_attention_mask", "input_ids", "encoder_hidden_states"]

    @property
    def output_names(self) -> list[str]:
        return ["logits"] + [PRESENT + n for n in _kv_names(self.n_layers)]

    def forward(self, encoder_attention_mask, input_ids, encoder_hidden_states):
        return self.step(encoder_attention_mask, input_ids, encoder_hidden_states)

    def step(self, mask, input_ids, encoder_hidden_states):
        masked = {} if mask is None else {"attention_mask": mask}
        out = self.hf(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=input_ids, use_cache=True, **masked)
        return (out.logits, *_flat(out.past_key_values, self.n_layers, cross=True))


class SpeechDecoder(Decoder):
    """The first decoder step of a speech model (no encoder mask, as Optimum's speech export)."""
    input_names = ["input_ids", "encoder_hidden_states"]

    def forward(self, input_ids, encoder_hidden_states):
        return self.step(None, input_ids, encoder_hidden_states)


class DecoderWithPast(_Part):
    """A later step: self-attention cache and cross-attention keys/values come from the past."""
    input_names_base = ["encoder_attention_mask", "input_ids"]

    @property
    def input_names(self) -> list[str]:
        return self.input_names_base + [PAST + n for n in _kv_names(self.n_layers)]

    @property
    def output_names(self) -> list[str]:
        return ["logits"] + [PRESENT + n for n in _kv_names(self.n_layers, ("decoder",))]

    def forward(self, encoder_attention_mask, input_ids, *past):
        return self.step(encoder_attention_mask, input_ids, past)

    def step(self, mask, input_ids, past):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        config = self.hf.config
        own = DynamicCache(ddp_cache_data=[(past[4 * i], past[4 * i + 1]) for i in range(self.n_layers)], config=config)
        cross = DynamicCache(ddp_cache_data=[(past[4 * i + 2], past[4 * i + 3]) for i in range(self.n_layers)],
                             config=config)
        k = past[2]  # [batch, heads, encoder length, head dim]: the encoder states are only read through it
        states = k.new_zeros((k.shape[0], k.shape[2], _width(config)))
        masked = {} if mask is None else {"attention_mask": mask}
        out = self.hf(encoder_outputs=(states,), decoder_input_ids=input_ids, use_cache=True,
                      **{_cache_arg(self.hf): EncoderDecoderCache(own, cross)}, **masked)
        return (out.logits, *_flat(out.past_key_values, self.n_layers, cross=False))


class SpeechDecoderWithPast(DecoderWithPast):
    """A later step of a speech model's decoder (no encoder mask)."""
    input_names_base = ["input_ids"]

    def forward(self, input_ids, *past):
        return self.step(None, input_ids, past)


def _width(config) -> int:
    return int(getattr(config, "d_model", None) or config.hidden_size)


def decoder_layers(hf: nn.Module) -> int:
    """How many decoder layers keep a cache (read off one tiny decoder run on given encoder states: config names
    differ by architecture)."""
    from .base import model_device, model_dtype

    device = model_device(hf)
    ids = torch.ones((1, 1), dtype=torch.long, device=device)
    states = torch.zeros((1, 2, _width(hf.config)), dtype=model_dtype(hf), device=device)  # (a float dtype)
    with torch.no_grad():
        out = hf(encoder_outputs=(states,), decoder_input_ids=ids, use_cache=True)
    cache = out.past_key_values
    if not hasattr(cache, "self_attention_cache") or not hasattr(cache, "cross_attention_cache"):
        raise NnslimError(f"{type(hf).__name__} returns a {type(cache).__name__}, not an encoder-decoder KV cache: "
                          "it cannot be exported with past (onnx step option past: false)")
    return len(cache.self_attention_cache.layers)


def parts_of(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The three graphs of an encoder-decoder wrapper (a module with encoder_decoder() -> the HF model), or None."""
    make = getattr(model, "encoder_decoder", None)
    if not callable(make):
        return None
    hf = make()
    n = decoder_layers(hf)
    if encoder_inputs_of(model) == SPEECH_INPUTS:
        return [(ENCODER_FILE, SpeechEncoder(hf)), (DECODER_FILE, SpeechDecoder(hf, n)),
                (WITH_PAST_FILE, SpeechDecoderWithPast(hf, n))]
    return [(ENCODER_FILE, Encoder(hf)), (DECODER_FILE, Decoder(hf, n)), (WITH_PAST_FILE, DecoderWithPast(hf, n))]


def axes_of(name: str, part: nn.Module) -> dict[str, dict[int, str]]:
    """Dynamic axes of a graph. A speech encoder's frames stay fixed (Whisper takes exactly its window)."""
    if name == ENCODER_FILE:
        return {n: {0: "batch"} if n == "input_features" else {0: "batch", 1: "encoder_seq"} for n in part.input_names}
    axes = {"encoder_attention_mask": {0: "batch", 1: "encoder_seq"}, "input_ids": {0: "batch", 1: "decoder_seq"},
            "encoder_hidden_states": {0: "batch", 1: "encoder_seq"}}
    axes = {n: axes[n] for n in part.input_names if n in axes}
    for n in part.input_names:
        if n.startswith(PAST):
            axes[n] = {0: "batch", 2: "encoder_seq" if ".encoder." in n else "past_decoder_seq"}
    return axes


@torch.no_grad()
def feeds(parts: list[tuple[str, nn.Module]], sample: dict[str, np.ndarray], step: int = 1) -> dict[str, dict]:
    """Each graph's inputs for one sample of the whole model (input_ids, attention_mask, decoder_input_ids),
    computed in torch: the first decoder gets all but the last `step` target tokens, the one with past those
    last tokens after its cache. (Export examples use step 2, so no traced axis has length 1.)"""
    from .base import model_device, model_dtype

    (_, enc), (_, dec), (_, with_past) = parts
    device, dtype = model_device(dec), model_dtype(dec)
    enc_feed = {n: np.asarray(sample[n]) for n in enc.input_names}
    tgt = np.asarray(sample["decoder_input_ids"], dtype=np.int64)
    if tgt.shape[1] < step + 2:  # a past of at least 2 tokens
        tgt = np.tile(tgt, (1, -(-(step + 2) // tgt.shape[1])))
    as_t = (lambda v: torch.as_tensor(v, device=device).to(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating)
            else torch.as_tensor(v, device=device))
    states = enc(*(as_t(v) for v in enc_feed.values()))
    mask = enc_feed.get("attention_mask")
    masked = {} if "encoder_attention_mask" not in dec.input_names else {"encoder_attention_mask": mask}
    first = dec.step(None if mask is None or not masked else as_t(mask), as_t(tgt[:, :-step]), states)
    as_np = (lambda x: x.float().cpu().numpy())
    past = {PAST + n[len(PRESENT):]: as_np(v) for n, v in zip(dec.output_names[1:], first[1:])}
    return {ENCODER_FILE: enc_feed,
            DECODER_FILE: {**masked, "input_ids": tgt[:, :-step], "encoder_hidden_states": as_np(states)},
            WITH_PAST_FILE: {**masked, "input_ids": tgt[:, -step:], **past}}


def export_layout(parts: list[tuple[str, nn.Module]], example: dict[str, np.ndarray], directory: Path, export_part,
                  calibration=None) -> OnnxModel:
    """Export the graphs of parts_of(model) into `directory`. export_part(part, example, path, axes, calibration)
    writes one graph (float or quantized); calibration(n) -> samples of the whole model, turned into each graph's
    inputs once for all three graphs."""
    examples = feeds(parts, example, step=2)
    per_sample: dict[int, list[dict]] = {}

    def part_calibration(name: str, n: int) -> list[dict]:
        if n not in per_sample:
            per_sample[n] = [feeds(parts, s) for s in calibration(n)]
        return [f[name] for f in per_sample[n]]

    with one_exporter_for_all_parts():
        for name, part in parts:
            export_part(part, examples[name], Path(directory) / name, axes_of(name, part),
                        None if calibration is None else (lambda n, name=name: part_calibration(name, n)))
    return OnnxModel(Path(directory) / ENCODER_FILE)


def check_step_with_past(model: nn.Module, onnx_model: OnnxModel, sample: dict[str, np.ndarray], tolerance: float,
                         make_runner) -> float:
    """The first decoder on all but the last target token, then one step of the decoder with past fed its
    present keys/values: the step's logits must match torch's last-position logits on the whole target."""
    from .base import TorchRunner

    runner = make_runner(onnx_model)
    enc, dec, with_past = runner.parts
    tgt = np.asarray(sample["decoder_input_ids"], dtype=np.int64)
    masked = runner.masked(sample)
    states = enc.run_all({n: sample[n] for n in runner.encoder_inputs})
    first = dec.run_all({**masked, "input_ids": tgt[:, :-1], "encoder_hidden_states": states["last_hidden_state"]})
    feed = {**masked, "input_ids": tgt[:, -1:]}
    feed.update({PAST + k[len(PRESENT):]: v for k, v in first.items() if k.startswith(PRESENT)})
    got = np.asarray(with_past.run_all(feed)["logits"][:, -1], dtype=np.float32)
    ref = TorchRunner(model)(sample)[:, -1]
    err = float(np.abs(ref - got).max() / max(1.0, float(np.abs(ref).max())))
    if not err <= tolerance:
        raise NnslimError(f"the exported decoder with past differs from torch by {err:.3g} (relative) "
                          f"> tolerance={tolerance}")
    return err


def graph_inputs(path: Path) -> list[str]:
    """The input names of one graph of the layout (ONNX or OpenVINO IR), read without its weights."""
    path = Path(path)
    if path.suffix == ".xml":
        import openvino as ov

        return [p.get_any_name() for p in ov.Core().read_model(str(path)).inputs]
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def layout_inputs(path: Path) -> dict[str, int]:
    """{input name: rank} of the whole model a layout runs as: its encoder's inputs and decoder_input_ids."""
    ranks = {"input_features": 3}
    return {**{n: ranks.get(n, 2) for n in graph_inputs(path)}, "decoder_input_ids": 2}


class Seq2SeqRunner(Runner):
    """Runs the layout as the whole model: the encoder's inputs (input_ids, attention_mask; speech: input_features)
    and decoder_input_ids -> logits, through the encoder then the first decoder (teacher forcing over the whole
    target)."""

    def __init__(self, path: Path, make_part):
        files = [Path(path).parent / n for n in names_of(path)]
        missing = [str(f) for f in files[:2] if not f.is_file()]
        if missing:
            raise NnslimError(f"encoder-decoder ONNX layout incomplete: {', '.join(missing)} not found")
        self.encoder_inputs = tuple(graph_inputs(files[0]))
        self.parts = [make_part(f) if f.is_file() else None for f in files]  # the decoder with past is optional
        self.backend = self.parts[0].backend
        self.input_names = [*self.encoder_inputs, "decoder_input_ids"]

    def masked(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoders' encoder_attention_mask (text models): the given mask, else all ones."""
        if "attention_mask" not in self.encoder_inputs:
            return {}
        mask = inputs.get("attention_mask")
        return {"encoder_attention_mask": np.ones_like(inputs["input_ids"]) if mask is None else mask}

    def with_encoder(self, inputs: dict[str, np.ndarray]):
        """ids -> logits of the first decoder on these ids, the encoder run once for `inputs` (greedy decoding)."""
        enc, dec, _ = self.parts
        masked = self.masked(inputs)
        feed = {n: inputs[n] for n in self.encoder_inputs if n != "attention_mask"}
        if masked:
            feed["attention_mask"] = masked["encoder_attention_mask"]
        states = enc.run_all(feed)["last_hidden_state"]
        return lambda ids: np.asarray(dec.run_all({**masked, "input_ids": np.asarray(ids, np.int64),
                                                   "encoder_hidden_states": states})["logits"], dtype=np.float32)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.with_encoder(inputs)(inputs["decoder_input_ids"])


def share_decoder_weights(directory: Path, min_bytes: int = 1024) -> list[str]:
    """Store the initializers the two decoders have in common (same type, shape and bytes, at least min_bytes)
    once, in SHARED_DATA, which both graphs then refer to as external data; ONNX Runtime, OpenVINO and Optimum
    resolve it beside each graph. The files are rewritten through temporary names. Returns the notes."""
    import os

    import onnx
    from onnx import TensorProto
    from onnx.external_data_helper import set_external_data

    from ..io import onnx_external_files

    directory = Path(directory)
    paths = [directory / DECODER_FILE, directory / WITH_PAST_FILE]
    if not all(p.is_file() for p in paths):
        return []
    before = {directory / n for p in paths for n in onnx_external_files(p)}
    protos = [onnx.load(str(p)) for p in paths]

    def key(t) -> tuple | None:
        return (t.data_type, tuple(t.dims), t.raw_data) if len(t.raw_data) >= min_bytes else None

    common = {key(t) for t in protos[0].graph.initializer} & {key(t) for t in protos[1].graph.initializer}
    common.discard(None)
    if not common:
        return []
    tmp = directory / f".{SHARED_DATA}.{os.getpid()}.tmp"
    placed: dict[tuple, tuple[int, int]] = {}
    with open(tmp, "wb") as f:
        for t in protos[0].graph.initializer:
            k = key(t)
            if k in common and k not in placed:
                align = 4096 if len(t.raw_data) >= 1 << 20 else 64  # page-aligned big tensors can be mapped
                f.write(b"\0" * (-f.tell() % align))
                placed[k] = (f.tell(), len(t.raw_data))
                f.write(t.raw_data)
    internal = []
    for proto in protos:
        for t in proto.graph.initializer:
            k = key(t)
            if k in placed:
                offset, length = placed[k]
                set_external_data(t, SHARED_DATA, offset, length)  # (it needs raw_data still set)
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
        internal.append(proto.ByteSize())
    if max(internal) >= 2**31 - (1 << 24):
        os.unlink(tmp)
        return ["the two decoders keep their own weights: what they do not share is over 2 GB per graph"]
    written = []
    for proto, path in zip(protos, paths):
        graph_tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        onnx.save(proto, str(graph_tmp))
        written.append((graph_tmp, path))
    os.replace(tmp, directory / SHARED_DATA)
    for graph_tmp, path in written:
        os.replace(graph_tmp, path)
    for old in before - {directory / SHARED_DATA}:
        old.unlink(missing_ok=True)
    mb = sum(n for _, n in placed.values()) / 1e6
    return [f"the two decoders' {len(placed)} common weights ({mb:.1f} MB) are stored once, in {SHARED_DATA}, "
            "which both graphs refer to"]
