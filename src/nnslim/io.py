"""Atomic writes, safe loading (safetensors / ONNX only) and artifact metadata."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import NnslimError

META_FILE = "nnslim.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temp file next to `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Create `out`; refuse a non-empty existing directory unless overwrite is set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NnslimError(f"--out={str(out)!r} exists and is not a directory; give a new directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NnslimError(
            f"--out={str(out)!r} exists and is not empty; choose an empty directory or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result, for nnslim.json and reports."""
    from importlib import metadata

    names = ["nnslim", "torch", "transformers", "onnx", "onnxruntime", "openvino", "numpy"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system()}


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NnslimError(f"{str(path)!r} not found: not an nnslim artifact directory") from None
    except json.JSONDecodeError as e:
        raise NnslimError(f"{str(path)!r} is not valid JSON: {e}") from None


def find_meta(path: str | Path) -> dict[str, Any] | None:
    """nnslim.json of an artifact dir, or of the dir holding an artifact file; None if absent."""
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    if (directory / META_FILE).is_file():
        return read_meta(directory)
    return None


def load_safetensors(path: str | Path) -> dict:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise NnslimError(f"weights file {str(path)!r} not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on corrupt headers
        raise NnslimError(f"{str(path)!r} is not a valid safetensors file: {e}") from None


def check_onnx(path: str | Path):
    """Parse an ONNX file and return its ModelProto; a clear error if it does not parse."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise NnslimError(f"--model={str(path)!r}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NnslimError(f"--model={str(path)!r} is not a valid ONNX model: {first}") from None
    return proto
