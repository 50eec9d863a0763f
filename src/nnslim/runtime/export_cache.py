"""Opt-in cache of ONNX exports keyed by what the export reads: NNSLIM_EXPORT_CACHE=<folder>.

torch.export-based ONNX export of even a small transformer takes 15-45 s on a slow CPU, and the same module is
often exported again (the original model's float ONNX baseline of every report; a test suite compressing one
testbed many ways). With the variable set, `export_onnx` stores each export's files under a key computed from the
module's printed structure, the code of every submodule's class's methods (edited forward code is another key),
every parameter and buffer (names, dtypes, shapes and bytes), the plain attributes and configs of every submodule
(not a config's `_name_or_path`: the folder it was loaded from), the example inputs (names, dtypes, shapes and
values), the dynamic axes, opset, output names and file name, and torch's version; an export with the same key
copies the stored files instead. An attribute the key cannot read (an object) makes the key unique to this process:
a miss, never a wrong hit. Only exports made by torch.export are stored (the TorchScript fallback traces the
example's values). Off unless the variable is set (the test suite sets it for its own run); entries are written
whole to a temp folder, then renamed into place. Computing the key reads every weight once (seconds for a 7B
model), which is why it is opt-in.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import NnslimError

ENV = "NNSLIM_EXPORT_CACHE"
_PLAIN = (bool, int, float, str, type(None))
_PROVENANCE = ("_name_or_path", "_commit_hash")  # config entries naming where a model came from, not what it computes


def _plain(value) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _code_digest(h, code) -> None:
    """The bytecode, names and constants of a function's code, nested functions' code included."""
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            _code_digest(h, const)
        elif isinstance(const, frozenset):  # its order follows string hashing, which differs between processes
            h.update(repr(sorted(map(repr, const))).encode())
        else:
            h.update(repr(const).encode())


@functools.lru_cache(maxsize=None)
def _class_digest(cls: type) -> str:
    """The class's name and the code of its methods and its bases' (a changed forward is another export)."""
    h = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}".encode())
    for c in cls.__mro__:
        if c.__module__.startswith("torch.nn") or c is object:
            continue
        h.update(f"|{c.__module__}.{c.__qualname__}".encode())
        for name, attr in sorted(vars(c).items()):
            fn = getattr(attr, "__func__", attr)  # staticmethod / classmethod
            if hasattr(fn, "__code__"):
                h.update(name.encode())
                _code_digest(h, fn.__code__)
    return h.hexdigest()


def _tensor_digest(h, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.is_meta:
        h.update(b"meta")
        return
    data = t.cpu().contiguous().reshape(-1)
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")


def fingerprint(module: torch.nn.Module, parts: tuple) -> str:
    """sha256 of everything the ONNX export of module(*args) reads (see the module docstring)."""
    h = hashlib.sha256()
    h.update(f"torch {torch.__version__}|{type(module).__module__}.{type(module).__qualname__}|".encode())
    h.update(repr(module).encode())
    for name, sub in module.named_modules(remove_duplicate=False):
        h.update(f"|{name}:{_class_digest(type(sub))}|".encode())
        for key in sorted(vars(sub)):
            value = vars(sub)[key]
            if key.startswith("_"):
                continue
            if _plain(value) or isinstance(value, (torch.dtype, torch.device, enum.Enum)):
                h.update(f"{key}={value!r};".encode())
            elif callable(value) and hasattr(value, "__qualname__") and not hasattr(value, "__self__"):
                h.update(f"{key}={getattr(value, '__module__', '')}.{value.__qualname__};".encode())  # a function
            elif hasattr(value, "to_dict"):  # transformers configs (where it was loaded from is not exported)
                items = sorted((k, v) for k, v in value.to_dict().items() if k not in _PROVENANCE)
                h.update(f"{key}={items!r};".encode())
            else:  # an object the key cannot read: unique to this process and object, so never a false hit
                h.update(f"{key}@{os.getpid()}:{id(value)};".encode())
    for name, t in module.named_parameters(remove_duplicate=False):
        _tensor_digest(h, "p:" + name, t)
    for name, t in module.named_buffers(remove_duplicate=False):
        _tensor_digest(h, "b:" + name, t)
    file_name, input_names, args, dynamic_axes, opset, output_names = parts
    h.update(f"|{file_name}|{input_names}|{dynamic_axes}|{opset}|{output_names}|".encode())
    for name, t in zip(input_names, args):
        _tensor_digest(h, "x:" + name, t)
    return h.hexdigest()


class Entry:
    def __init__(self, folder: Path):
        self.folder = folder

    def restore(self, into: Path) -> bool:
        """Copy the stored files into `into`; False when there are none (a miss)."""
        if not (self.folder / ".complete").exists():
            return False
        for f in self.folder.iterdir():
            if f.name != ".complete":
                shutil.copyfile(f, into / f.name)
        return True

    def store(self, produced: Path) -> None:
        """Keep the files of a finished export (written to a temp folder, then renamed into place)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".entry-", dir=self.folder.parent))
        try:
            for f in produced.iterdir():
                shutil.copyfile(f, tmp / f.name)
            (tmp / ".complete").write_text("")
            os.replace(tmp, self.folder)
        except OSError:  # another process stored the same key first
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def entry(module: torch.nn.Module, parts: tuple) -> Entry | None:
    """The cache entry of this export, or None when NNSLIM_EXPORT_CACHE is not set."""
    root = os.environ.get(ENV)
    if not root:
        return None
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise NnslimError(f"{ENV}={root!r}: cannot create or write that folder ({e.strerror or e}); point it at a "
                          "writable folder or unset it") from None
    return Entry(Path(root) / fingerprint(module, parts))
