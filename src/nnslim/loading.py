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
from .runtime import OnnxModel, make_runner
from .testbeds import TESTBEDS, ModuleTestbed, Testbed, get_testbed, testbed_for_hf_dir
from .validate import check_finite_data


def load(path: str | Path, model: torch.nn.Module | None = None):
    """Load an nnslim artifact dir, an ONNX file or a Hugging Face model dir (see resolve)."""
    return resolve(path, skeleton=model).model


@dataclass
class Resolved:
    model: Any  # torch.nn.Module or OnnxModel
    testbed: Testbed | None
    source: str | None  # how a fresh process reloads it (for peak-memory measurement)


def resolve(model, testbed: Testbed | str | None = None, example_inputs: dict | None = None,
            calibration: list | None = None, dynamic_axes: dict | None = None,
            skeleton: torch.nn.Module | None = None, trust_remote_code: bool = False) -> Resolved:
    """Turn what the user gave (testbed name, path, nn.Module) into a model plus its testbed.

    `testbed` may be a testbed name or a Hugging Face model dir (its data, metric and reference model).
    A folder's own code (HF auto_map) runs only with trust_remote_code=True.
    """
    if isinstance(testbed, str):
        testbed = testbed_arg(testbed, trust_remote_code)
    if isinstance(model, torch.nn.Module):
        if testbed is None:
            if example_inputs is None:
                raise NnslimError("example_inputs is required for a torch.nn.Module without a testbed: "
                                  "a dict of named input tensors, e.g. {'x': torch.randn(8, 3, 32, 32)}")
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
    if path.is_file() and path.suffix == ".onnx":
        check_onnx(path)
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
    if path.is_dir() and (path / "config.json").is_file():
        tb = testbed or testbed_for_hf_dir(path, trust_remote_code)
        return Resolved(tb.load_model(), tb, str(path))
    if path.is_file() and path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        raise NnslimError(f"--model={text!r} is a bare weights file with no architecture; give a Hugging Face "
                          "model dir, an nnslim artifact dir, an .onnx file, or pass the module in Python")
    raise NnslimError(f"--model={text!r} is not a model nnslim can read; allowed: a testbed name, an .onnx "
                      "file, an nnslim artifact dir (with nnslim.json), a Hugging Face model dir (with config.json)")


def testbed_arg(text: str, trust_remote_code: bool) -> Testbed:
    """--testbed: a testbed name, or a Hugging Face model dir whose data and model are the reference."""
    if text in TESTBEDS:
        return get_testbed(text)
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file() and not (path / META_FILE).is_file():
        return testbed_for_hf_dir(path, trust_remote_code)
    raise bad_value("--testbed", text, [*TESTBEDS, "a Hugging Face model dir"])


def _check_onnx_inputs(path: Path, testbed: Testbed) -> None:
    """The testbed must feed exactly the inputs the ONNX graph needs (checked before any run)."""
    if isinstance(testbed, ModuleTestbed) or not testbed.input_names:
        return
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    needed = {i.name: len(i.type.tensor_type.shape.dim) for i in proto.graph.input if i.name not in inits}
    fed = {k: np.ndim(v) for k, v in testbed.export_example().items()}
    if fed != needed:
        raise NnslimError(f"testbed {testbed.name!r} feeds inputs {_ranks(fed)} but {str(path)!r} takes "
                          f"{_ranks(needed)}; pass the --testbed this model was made for")


def _ranks(inputs: dict[str, int]) -> str:
    return ", ".join(f"{k} (rank {r})" for k, r in inputs.items())


def load_for_run(source: str, backend: str | None = None):
    """A runner for a model given by its source string (used by the peak-memory child process).

    ONNX files go straight to the runtime (no checker pass), so only the runtime's memory is measured.
    """
    path = Path(source)
    if path.is_dir() and (path / META_FILE).is_file():
        meta = find_meta(path)
        if meta.get("format") == "onnx":
            path = path / meta.get("file", "model.onnx")
    if path.is_file() and path.suffix == ".onnx":
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
