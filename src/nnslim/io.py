"""Atomic writes, safe loading (safetensors / ONNX only) and artifact metadata."""
from __future__ import annotations

import contextlib
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


def cache_dir(sub: str = "") -> Path:
    """nnslim's cache ($NNSLIM_CACHE or ~/.cache/nnslim; `sub` a folder inside it), created if missing."""
    root = os.environ.get("NNSLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nnslim")
    path = Path(root) / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temp file next to `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: a serving user must be able to read it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def json_safe(obj: Any) -> Any:
    """obj with NaN/Inf floats as null (JSON has no NaN: a NaN would make the file invalid JSON)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


MANIFEST = ".nnslim-manifest"  # the entries nnslim wrote into an output dir: --overwrite replaces only those
_STAGING = ".nnslim-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out_path(out: str | Path, overwrite: bool, field: str = "--out") -> Path:
    """Validate an output directory before any work: a usable name, not a file, empty or nnslim's own."""
    if str(out).strip() == "":
        raise NnslimError(f"{field}='' is not allowed; give the path of a new or empty directory")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NnslimError(f"{field}={str(out)!r} exists and is not a directory; give a new directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise NnslimError(f"{field}={str(out)!r} exists and is not empty; choose an empty directory or "
                              "pass --overwrite")
        try:
            ours = set(json.loads((out / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            ours = set()
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and p.name != MANIFEST)
        if foreign:
            raise NnslimError(f"{field}={str(out)!r}: {foreign[0]!r} was not written by nnslim; --overwrite "
                              "replaces only nnslim's own output: move it or choose another directory")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path, prefix: str) -> None:
    """Delete temp dirs `prefix<pid>-*` in `parent` left by nnslim processes that were killed."""
    import shutil

    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


class StagedDir:
    """An output directory built in a temp dir beside it and swapped in whole on commit().

    A kill at any moment leaves the old directory or the new one, never a mix; a failure or
    interruption removes the temp dir (and a later run removes one left by a killed process).
    """

    def __init__(self, out: str | Path, overwrite: bool, field: str = "--out"):
        self.out = check_out_path(out, overwrite, field).absolute()
        parent = self.out.parent
        prefix = f".{self.out.name}{_STAGING}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale(parent, prefix)
            self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
            os.chmod(self.path, 0o777 & ~_umask())
        except OSError as e:
            raise NnslimError(f"{field}={str(out)!r} cannot be written: {e.strerror or e}") from None
        self.committed = False

    def commit(self) -> Path:
        """Record what is inside, then swap the staged dir in place of `out`."""
        import shutil

        from .errors import check_terminated

        check_terminated()  # never swap in an artifact after a SIGTERM, even one that was caught and dropped
        entries = sorted(p.name for p in self.path.iterdir())
        (self.path / MANIFEST).write_text(json.dumps(entries) + "\n")
        if not self.out.exists():
            os.rename(self.path, self.out)
        elif _exchange(self.path, self.out):
            shutil.rmtree(self.path, ignore_errors=True)  # the old dir, now at the staging name
        else:
            old = self.path.with_name(self.path.name + "-old")
            os.rename(self.out, old)
            os.rename(self.path, self.out)
            shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.out

    def discard(self) -> None:
        import shutil

        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "StagedDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def scratch_dir(prefix: str = "nnslim-") -> Path:
    """A private temp dir for intermediate files, removed at interpreter exit (or by a later run if killed)."""
    import atexit
    import shutil

    base = Path(tempfile.gettempdir())
    remove_stale(base, prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base))
    atexit.register(shutil.rmtree, path, True)
    return path


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


def determinism_info() -> dict[str, Any]:
    """What changes the bits of a result besides the seed and library versions: thread counts (float sums
    are split across threads), the CPU kernel family torch dispatches to, deterministic-algorithm mode."""
    import torch

    info = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    return info


# The CPU features that decide which int8 / low-precision kernels a runtime can use.
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16")


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot-product instructions


def cpu_flags() -> list[str]:
    """Which of INT8_FLAGS this CPU has (from /proc/cpuinfo; empty where that is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in INT8_FLAGS if f in have]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "cpu_flags": flags,
            "int8_dot_product": any(f in flags for f in INT8_DOT_FLAGS)}


MAX_META_BYTES = 16 << 20


def read_json_object(path: str | Path, missing: str = "") -> dict[str, Any]:
    """A JSON file holding an object: bounded in size, valid JSON, a mapping; a clear error otherwise
    (`missing` is added to the not-found error)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise NnslimError(f"{str(path)!r} is {path.stat().st_size} bytes; allowed: at most {MAX_META_BYTES}")
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NnslimError(f"{str(path)!r} not found{missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise NnslimError(f"{str(path)!r} is not valid JSON: {str(e)[:200]}") from None
    except OSError as e:
        raise NnslimError(f"{str(path)!r} cannot be read: {e.strerror or e}") from None
    if not isinstance(obj, dict):
        raise NnslimError(f"{str(path)!r} must hold a JSON object, not {type(obj).__name__}")
    return obj


def read_meta(directory: str | Path) -> dict[str, Any]:
    """nnslim.json as a dict: bounded in size, valid JSON, a mapping; a clear error otherwise."""
    path = Path(directory) / META_FILE
    meta = read_json_object(path, ": not an nnslim artifact directory")
    for key, kind in (("architecture", dict), ("quantized_layers", dict), ("structured_plan", list),
                      ("sparse_storage", dict), ("files", list)):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise NnslimError(f"{str(path)!r}: {key} must be a JSON {kind.__name__.replace('dict', 'object')}, "
                              f"not {type(meta[key]).__name__}")
    return meta


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2"}


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None,
                      fetch: Callable[[str], Any] | None = None) -> None:
    """A safetensors file (the format safetensors.torch.save_file writes) written tensor by tensor from the
    tensors' memory; `fetch(name)` gives the values of tensors passed on the meta device, read one at a time
    while writing (a streamed model's single-file save never holds all of them)."""
    import struct

    import torch

    names = {getattr(torch, v): k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, t in tensors.items():
        if t.dtype not in names:
            raise NnslimError(f"tensor {key!r} has dtype {t.dtype}, which safetensors cannot store here")
        n = t.numel() * t.element_size()
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for key, t in tensors.items():
            if t.numel():
                value = fetch(key) if t.is_meta else t
                if tuple(value.shape) != tuple(t.shape) or value.dtype != t.dtype:
                    raise NnslimError(f"tensor {key!r}: read {tuple(value.shape)} {value.dtype}, expected "
                                      f"{tuple(t.shape)} {t.dtype}")
                flat = value.detach().cpu().contiguous().reshape(-1)
                f.write(memoryview(flat.view(torch.uint8).numpy()))


@contextlib.contextmanager
def big_allocations_mapped(threshold: int = 128 * 1024):
    """While loading a model: glibc serves every allocation over `threshold` (128 KB) with its own mmap, so a tensor freed
    after conversion goes back to the system instead of leaving a hole in the heap that the next, larger
    tensor cannot reuse (measured: peak RSS of an int4 load 1.26-1.52x the file -> 1.05x); compute-heavy
    loops pass a larger threshold, as each mapped allocation costs a system call and page faults (GPTQ's
    per-column temporaries with 128 KB: more than half of its time in the kernel). Afterwards the
    threshold is 32 MB, where glibc's own adaptive threshold ends up, and freed heap memory is trimmed.
    Elsewhere (not glibc) it does nothing."""
    import ctypes
    import ctypes.util

    libc = None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(-3, threshold) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    try:
        yield
    finally:
        if ok:
            libc.mallopt(-3, 32 * 1024 * 1024)
            trim_heap()


def trim_heap() -> None:
    """Give free heap memory back to the system (glibc's malloc_trim; elsewhere nothing): between the
    blocks of a streamed model, so that small freed temporaries do not add up block after block."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class SafetensorsReader:
    """Tensors of a safetensors file read with plain file reads into fresh tensors, one at a time (no mmap:
    the process's memory is the tensors it keeps, never the file's pages as well)."""

    def __init__(self, path: str | Path):
        import json
        import struct

        self.path = Path(path)
        self.file = open(self.path, "rb")  # noqa: SIM115  (closed by close())
        try:
            (n,) = struct.unpack("<Q", self.file.read(8))
            header = json.loads(self.file.read(n))
        except Exception as e:
            self.file.close()
            raise NnslimError(f"{str(path)!r} is not a valid safetensors file: {str(e)[:200]}") from None
        header.pop("__metadata__", None)
        self.base, self.header = 8 + n, header

    def keys(self) -> list[str]:
        return list(self.header)

    def get_tensor(self, name: str, row: int | None = None):
        """The tensor `name`, or only its `row` along the first axis (read alone: one expert of a 3D tensor)."""
        import math

        import torch

        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = getattr(torch, _ST_DTYPES[info["dtype"]])
        need = math.prod(info["shape"]) * torch.empty((), dtype=dtype).element_size()
        if end - start != need or self.base + end > self.path.stat().st_size:  # checked before allocating
            raise NnslimError(f"{str(self.path)!r} is truncated or corrupt: tensor {name!r} spans bytes {start}..{end}, "
                              f"its shape needs {need}, the file has {self.path.stat().st_size - self.base}")
        shape = info["shape"]
        if row is not None:
            if not shape or not 0 <= row < shape[0]:
                raise NnslimError(f"{str(self.path)!r}: tensor {name!r} of shape {shape} has no row {row}")
            size = need // shape[0]
            start, end, shape = start + row * size, start + (row + 1) * size, shape[1:]
        t = torch.empty(shape, dtype=dtype)
        self.file.seek(self.base + start)
        if t.numel() and self.file.readinto(t.view(-1).view(torch.uint8).numpy()) != end - start:
            raise NnslimError(f"{str(self.path)!r} is truncated (tensor {name!r})")
        return t

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stored_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a safetensors file, read from its header only (nothing allocated)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types on corrupt headers
        raise NnslimError(f"{str(path)!r} is not a valid safetensors file: {str(e)[:200]}") from None


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


def onnx_external_files(path: str | Path, proto=None) -> list[str]:
    """Names of the external-data files an ONNX model refers to, checked to lie in the model's own folder.

    Locations are resolved against the model's directory (never the working directory); absolute
    locations or ones that leave the folder are refused.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    proto = proto if proto is not None else onnx.load(str(path), load_external_data=False)
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:  # Constant nodes may hold external tensors too
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    root = path.parent.resolve()
    names: list[str] = []
    for t in tensors:
        if not uses_external_data(t):
            continue
        location = ExternalDataInfo(t).location
        target = (root / location).resolve()
        if Path(location).is_absolute() or root not in target.parents:
            raise NnslimError(f"--model={str(path)!r}: tensor {t.name!r} points at external data {location!r} "
                              "outside the model's folder; only files beside the model are read")
        if not target.is_file():
            raise NnslimError(f"--model={str(path)!r}: external data file {location!r} of tensor {t.name!r} is "
                              f"missing from {str(root)!r}")
        rel = str(target.relative_to(root))
        if rel not in names:
            names.append(rel)
    return names


def check_onnx(path: str | Path):
    """Parse an ONNX file and return its ModelProto; a clear error if it does not parse."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise NnslimError(f"--model={str(path)!r}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NnslimError(f"--model={str(path)!r} is not a valid ONNX model: {first}") from None
    onnx_external_files(path, proto)
    try:
        # By path: the checker then resolves external data against the model's folder, not the CWD.
        onnx.checker.check_model(str(path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NnslimError(f"--model={str(path)!r} is not a valid ONNX model: {first}") from None
    return proto
