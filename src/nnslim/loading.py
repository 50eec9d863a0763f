"""Resolve what the user gave into a model, its data source (testbed) and its data.

A model may be a testbed name, a path (.onnx file, nnslim artifact dir, Hugging Face model dir) or
an nn.Module; data may be in any form nnslim.data accepts. Nothing here compresses or measures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifact
from .errors import NnslimError, bad_value
from .io import META_FILE, check_onnx, find_meta
from .progress import warn
from .graph.modules import plain_module
from .runtime import OnnxModel, make_runner
from .runtime.base import defaultable
from .runtime.onnx_seq2seq import is_seq2seq_layout
from .testbeds import TESTBEDS, HFTestbed, ModuleTestbed, Testbed, get_testbed, testbed_for_hf_dir
from .validate import check_finite_data


def load(path: str | Path, model: torch.nn.Module | None = None, stream: bool = False,
         trust_remote_code: bool = False, offload_dir: str | Path | None = None):
    """Load an nnslim artifact dir, an ONNX file or a Hugging Face model dir (see resolve).

    model: a skeleton of the artifact's class for a model nnslim cannot rebuild alone (your own nn.Module class).
    It is filled in place and returned, as ModelOpt's restore does: its weights are replaced and its layers swapped
    for the artifact's compressed or pruned ones; give a fresh instance (or a copy), not a model you still use.

    stream=True (a Hugging Face dir of safetensors shards): the model is built with its parameters on the
    meta device (in the checkpoint's dtypes) and the layer-wise methods (int4-rtn / gptq / awq,
    int8-weight-only, fp8 / int8-w8a8, magnitude / 2:4 / Wanda / SparseGPT pruning) read each layer or
    decoder block from the shards just before they compress it: host memory holds one block of float
    weights plus what is already compressed, not the float model; nnslim.evaluate gives its perplexity
    block by block and nnslim.save writes it (it is not for forward passes). With
    `offload_dir` (a folder with room for the checkpoint's size) what is compressed goes to disk block by
    block too (accelerate's offload files, removed with the model) and host memory holds about one block."""
    if offload_dir is not None and not stream:
        raise bad_value("offload_dir", str(offload_dir), "used with stream=True only")
    if stream:
        return load_streamed(path, trust_remote_code, offload_dir)
    return resolve(path, skeleton=model, trust_remote_code=trust_remote_code).model


def load_streamed(path: str | Path, trust_remote_code: bool = False, offload_dir: str | Path | None = None
                  ) -> torch.nn.Module:
    from .ecosystem import _hf_root
    from .graph.streaming import ATTR, ShardSource
    from .testbeds import testbed_for_hf_dir

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise bad_value("path", str(path), "a Hugging Face model directory (config.json + safetensors shards) "
                        "for stream=True")
    source = ShardSource(directory)  # every shard checked before anything is built
    if offload_dir is not None:
        source.offload_to(offload_dir)  # (refused here when its disk has too little room)
    testbed = testbed_for_hf_dir(directory, trust_remote_code)
    model = artifact._empty_model(testbed)
    root = _hf_root(model)
    source.prefix = root[1] if root is not None else ""
    source.model_type = getattr(getattr(root[0], "config", None), "model_type", None) if root is not None else None
    source.stored_dtypes(model)  # meta tensors in the checkpoint's dtypes (bf16 stays bf16)
    setattr(model, ATTR, source)
    model.nnslim_testbed = testbed  # what nnslim.save records as its architecture
    return model


@dataclass
class Resolved:
    model: Any  # torch.nn.Module or OnnxModel
    testbed: Testbed | None
    source: str | None  # how a fresh process reloads it (for peak-memory measurement)


@dataclass
class UserData:
    """The user's data files for a testbed: calibration and/or evaluation (paths or lists of texts), and
    which columns hold the text and the label (auto-detected when None)."""

    calibration: Any = None
    evaluation: Any = None
    text_column: str | None = None
    label_column: str | None = None

    def __bool__(self) -> bool:
        return self.calibration is not None or self.evaluation is not None


def _is_file_data(value) -> bool:
    """A path, a list of texts, or a list of (first, second) text pairs: data the testbed tokenizes."""
    def text_or_pair(v):
        return isinstance(v, str) or (isinstance(v, (list, tuple)) and len(v) == 2
                                      and all(isinstance(t, str) for t in v))

    return isinstance(value, (str, Path)) or (isinstance(value, (list, tuple)) and bool(value)
                                              and all(text_or_pair(v) for v in value))


def split_user_data(calibration, evaluation=None, text_column: str | None = None,
                    label_column: str | None = None) -> tuple[Any, UserData]:
    """Calibration given as a file path or a list of texts goes to the testbed (UserData); samples in any
    other form stay calibration samples for the steps. Returns (samples or None, UserData)."""
    data = UserData(None, evaluation, text_column, label_column)
    if _is_file_data(calibration):
        data.calibration, calibration = calibration, None
    if evaluation is not None and not _is_file_data(evaluation):
        raise NnslimError(f"eval data of type {type(evaluation).__name__} is not allowed; allowed: a file path "
                          "(.txt, .jsonl, .csv, .parquet, a saved dataset, an image or .wav folder, .wav, .npz) or a "
                          "list of texts")
    return calibration, data


def _records(value, what: str, testbed, data: UserData):
    from .testbeds.sources import Records, read_images, read_texts

    if isinstance(value, (list, tuple)):
        items = list(value)
        pairs = bool(items) and isinstance(items[0], (list, tuple))
        for i, item in enumerate(items):
            ok = (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(t, str) for t in item)) \
                if pairs else isinstance(item, str)
            if not ok:
                raise NnslimError(f"{what}[{i}]={str(item)[:60]!r} is not allowed; allowed: a list of texts, or of "
                                  "(first, second) text pairs, all of one kind")
        if not items:
            raise NnslimError(f"{what}=[] holds no text")
        if pairs:
            return Records(texts=[a for a, _ in items], pairs=[b for _, b in items],
                           origin=f"{len(items)} text pairs given")
        return Records(texts=items, origin=f"{len(items)} texts given")
    if getattr(testbed, "task", None) == "multiple-choice":
        from .testbeds.multiple_choice import read_choices

        return read_choices(value, what, data.text_column)
    if getattr(testbed, "task", None) == "image-text-to-text":
        from .testbeds.vision_language import read_image_texts

        return read_image_texts(value, what, data.text_column)
    if testbed.input_names == ("pixel_values",):
        return read_images(value, what, getattr(testbed, "size", None))
    if getattr(testbed, "sampling_rate", None):
        from .testbeds.audio import read_audio

        return read_audio(value, what, testbed.sampling_rate)
    return read_texts(value, what, data.text_column, data.label_column)


def apply_user_data(testbed: Testbed | None, data: UserData | None) -> None:
    """Give the testbed the user's calibration / evaluation files (before any of its data is read)."""
    if not data:
        if data is not None and (data.text_column or data.label_column):
            raise NnslimError("--text-column / --label-column need --calibration or --eval")
        return
    if testbed is None or not hasattr(testbed, "use_data"):
        name = getattr(testbed, "name", None)
        raise NnslimError(f"--calibration / --eval files are read for Hugging Face models; testbed {name!r} has "
                          "its own data (pass samples in Python: calibration=[...])")
    calibration = _records(data.calibration, "calibration", testbed, data) if data.calibration is not None else None
    evaluation = _records(data.evaluation, "eval", testbed, data) if data.evaluation is not None else None
    testbed.use_data(calibration, evaluation)


def resolve(model, testbed: Testbed | str | None = None, example_inputs: dict | None = None,
            calibration: list | None = None, dynamic_axes: dict | None = None,
            skeleton: torch.nn.Module | None = None, trust_remote_code: bool = False,
            task: str | None = None, data: UserData | None = None) -> Resolved:
    """Turn what the user gave (testbed name, path, nn.Module) into a model plus its testbed, and give the
    testbed the user's data files.

    `testbed` may be a testbed name or a Hugging Face model dir (its data, metric and reference model).
    `task` forces the task of a Hugging Face dir (else read from its config). A folder's own code (HF
    auto_map) runs only with trust_remote_code=True.
    """
    r = _resolve(model, testbed, example_inputs, calibration, dynamic_axes, skeleton, trust_remote_code, task)
    apply_user_data(r.testbed, data)
    return r


def _resolve(model, testbed, example_inputs, calibration, dynamic_axes, skeleton, trust_remote_code,
             task) -> Resolved:
    if isinstance(testbed, str):
        testbed = testbed_arg(testbed, trust_remote_code, task)
    if isinstance(model, torch.nn.Module):
        model = plain_module(model)
        if testbed is None:
            if example_inputs is None and calibration:  # as nncf.quantize: the first calibration sample
                example_inputs = calibration[0]
            if example_inputs is None:
                raise NnslimError("example_inputs (or calibration data) is required for a torch.nn.Module "
                                  "without a testbed: a dict of named input tensors, e.g. "
                                  "{'x': torch.randn(8, 3, 32, 32)}")
            testbed = ModuleTestbed(model, example_inputs, calibration, dynamic_axes)
        return Resolved(model, testbed, None)
    if isinstance(model, OnnxModel):
        model = model.path
    if not isinstance(model, (str, Path)):
        raise NnslimError(f"model of type {type(model).__name__} is not allowed; allowed: a testbed name "
                          f"({', '.join(TESTBEDS)}), a path (.onnx file, nnslim artifact dir, Hugging Face "
                          "model dir) or a torch.nn.Module")
    text = str(model)
    if text == "":
        raise NnslimError("--model='' is not allowed; give a testbed name, an .onnx file, an nnslim artifact "
                          "dir or a Hugging Face model dir")
    name = text[len("testbed:"):] if text.startswith("testbed:") else text
    if name in TESTBEDS and (text != name or os.sep not in text):
        if text == name and Path(text).exists():
            # A bare testbed name always means the testbed; say so when a path of that name exists too.
            warn(f"--model={text!r} is the testbed {text!r}; a path of that name exists and is not used "
                 f"(write ./{text} for the path)")
        tb = testbed or get_testbed(name)
        return Resolved(tb.load_model(), tb, f"testbed:{name}")
    if text != name:
        raise bad_value("--model", text, [f"testbed:{t}" for t in TESTBEDS])
    path = Path(text)
    if not path.exists():
        raise NnslimError(f"--model={text!r} is neither a testbed ({', '.join(TESTBEDS)}) nor an existing path")
    if path.is_dir() and is_seq2seq_layout(path / "encoder_model.onnx") and not (path / META_FILE).is_file():
        path = path / "encoder_model.onnx"  # an encoder-decoder exported by Optimum: its three graphs
    if path.is_file() and path.suffix == ".onnx":
        for graph in OnnxModel(path).graphs:
            check_onnx(graph)
        meta = find_meta(path)
        if testbed is None and meta:
            testbed = artifact.testbed_from_architecture(meta.get("architecture", {}), path.parent,
                                                         trust_remote_code)
        if testbed is not None:
            _check_onnx_inputs(path, testbed)
        return Resolved(OnnxModel(path), testbed, str(path))
    if path.is_dir() and (path / META_FILE).is_file():
        loaded = artifact.load(path, model=skeleton, trust_remote_code=trust_remote_code)
        meta = find_meta(path)
        tb = testbed or artifact.testbed_from_architecture(meta.get("architecture", {}), path, trust_remote_code)
        if isinstance(loaded, OnnxModel) and tb is not None:
            _check_onnx_inputs(loaded.path, tb)
        return Resolved(loaded, tb, str(path))
    if path.is_file() and path.suffix.lower() == ".gguf":  # llama.cpp's format: dequantized once into the cache
        from .testbeds.gguf import converted_gguf_dir

        own = testbed_for_hf_dir(converted_gguf_dir(path), False, task=task or getattr(testbed, "task", None) or None)
        return Resolved(own.load_model(), _testbed_for_hf_model(own, testbed), str(path))
    if path.is_dir() and (path / "config.json").is_file():
        own = testbed_for_hf_dir(path, trust_remote_code, task=task or getattr(testbed, "task", None) or None)
        return Resolved(own.load_model(), _testbed_for_hf_model(own, testbed), str(path))
    if path.is_dir() and (path / "adapter_config.json").is_file():
        raise NnslimError(f"--model={text!r} is a PEFT adapter (adapter_config.json), not a whole model; merge it "
                          "into its base model (peft: model.merge_and_unload(), then save_pretrained) and give that "
                          "folder")
    if path.is_file() and path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        raise NnslimError(f"--model={text!r} is a bare weights file with no architecture; give a Hugging Face "
                          "model dir, an nnslim artifact dir, an .onnx file, or pass the module in Python")
    raise NnslimError(f"--model={text!r} is not a model nnslim can read; allowed: a testbed name, an .onnx "
                      "file, an nnslim artifact dir (with nnslim.json), a Hugging Face model dir (with config.json), "
                      "a .gguf file")


def testbed_arg(text: str, trust_remote_code: bool, task: str | None = None) -> Testbed:
    """--testbed: a testbed name, or a Hugging Face model dir whose data and model are the reference."""
    if text in TESTBEDS:
        return get_testbed(text)
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file() and not (path / META_FILE).is_file():
        return testbed_for_hf_dir(path, trust_remote_code, task=task)
    raise bad_value("--testbed", text, [*TESTBEDS, "a Hugging Face model dir"])


def _testbed_for_hf_model(own: Testbed, given: Testbed | None) -> Testbed:
    """The testbed for a Hugging Face dir given as --model. The model always comes from --model: a
    built-in --testbed gives only its task (its tokenizer and reference model belong to another model);
    an HF dir as --testbed is the reference the model is compared with."""
    if given is None:
        return own
    if not isinstance(given, HFTestbed):
        raise NnslimError(f"--testbed={given.name!r} feeds {', '.join(given.input_names) or 'its own inputs'}; "
                          f"the Hugging Face model given as --model is a {own.task} model: drop --testbed or "
                          "pass a Hugging Face dir as --testbed")
    if given.name in TESTBEDS:
        warn(f"--testbed={given.name!r}: the model comes from --model; the testbed gives its task "
             f"({given.task}) and default data only, and the model is compared with itself before compression")
        return own
    if given.task != own.task:
        raise NnslimError(f"--testbed={str(given.model_dir)!r} is a {given.task} model but --model is a {own.task} "
                          "model; pass the dir the model was compressed from")
    return given


def _check_onnx_inputs(path: Path, testbed: Testbed) -> None:
    """The testbed must feed exactly the inputs the ONNX graph needs (checked before any run)."""
    if isinstance(testbed, ModuleTestbed) or not testbed.input_names:
        return
    needed = _graph_inputs(path)
    fed = {k: np.ndim(v) for k, v in testbed.export_example().items()}
    if "input_ids" in fed:  # filled in by the runners when the graph takes them (Optimum exports do)
        fed.update({k: rank for k, rank in needed.items() if defaultable(k) and k not in fed})
    if fed != needed:
        raise NnslimError(f"testbed {testbed.name!r} feeds inputs {_ranks(fed)} but {str(path)!r} takes "
                          f"{_ranks(needed)}; pass the --testbed this model was made for")


def _graph_inputs(path: Path) -> dict[str, int]:
    """{input name: rank} of an ONNX graph or an OpenVINO IR (an encoder-decoder layout: the whole model's)."""
    if len(OnnxModel(path).graphs) > 1:
        from .runtime.onnx_seq2seq import layout_inputs

        return layout_inputs(path)
    if OnnxModel(path).is_ir:
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return {p.get_any_name(): p.get_partial_shape().rank.get_length() for p in model.inputs}
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in proto.graph.input if i.name not in inits}


def _ranks(inputs: dict[str, int]) -> str:
    return ", ".join(f"{k} (rank {r})" for k, r in inputs.items())


def load_for_run(source: str, backend: str | None = None):
    """A runner for a model given by its source string (used by the peak-memory child process).

    ONNX files go straight to the runtime (no checker pass), so only the runtime's memory is measured.
    """
    path = Path(source)
    if path.is_dir() and (path / META_FILE).is_file():
        meta = find_meta(path)
        if meta.get("format") in ("onnx", "openvino"):
            path = path / meta.get("file", "model.onnx")
    if path.is_file() and path.suffix in (".onnx", ".xml"):
        return make_runner(OnnxModel(path), backend)
    return make_runner(resolve(source).model, backend)


def normalize_data(arguments: dict, model) -> None:
    """Example inputs and calibration/training data in any accepted form (nnslim.data) -> input dicts."""
    from .data import as_inputs, as_samples

    if not isinstance(model, torch.nn.Module):
        return
    if arguments.get("example_inputs") is not None:
        arguments["example_inputs"] = as_inputs(arguments["example_inputs"], model)
    example = arguments.get("example_inputs")
    names = list(example) if isinstance(example, dict) else None
    for key in ("calibration", "data"):
        if arguments.get(key) is not None:
            arguments[key] = as_samples(arguments[key], model, key, names)
            check_finite_data(arguments[key], key)
