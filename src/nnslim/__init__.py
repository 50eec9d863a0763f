"""nnslim: make trained PyTorch models smaller and faster, and prove it with measured numbers.

Verbs: quantize, prune, distill, compress, evaluate, benchmark, generate, save, load, export_onnx.
One config per method, importable from here (nnslim.Int8Config, nnslim.Int4GptqConfig, ...; the full
list: nnslim.methods()). Data in any form: tensors, tuples, dicts, iterables, DataLoaders or
nnslim.Dataset(data, transform).
"""
from .api import benchmark, compress, distill, evaluate, export_onnx, generate, load, prune, quantize, save
from .data import Dataset
from .errors import NnslimError
from .recipe import Recipe, methods
from .testbeds import get_testbed

__version__ = "0.1.0"

VERBS = ["quantize", "prune", "distill", "compress", "evaluate", "benchmark", "generate", "save", "load",
         "export_onnx"]


def _configs() -> dict[str, type]:
    return {m.config_cls.__name__: m.config_cls for m in methods().values()}


def __getattr__(name: str):
    """Method configs (Int8Config, StructuredPruneConfig, ...) come from the registry of methods."""
    if name[:1].isupper():
        configs = _configs()
        if name in configs:
            return configs[name]
    raise AttributeError(f"module 'nnslim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_configs()))


__all__ = [*VERBS, "Dataset", "NnslimError", "Recipe", "methods", "get_testbed", *sorted(_configs())]
