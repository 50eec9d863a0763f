"""nnslim: make trained PyTorch models smaller and faster, and prove it with measured numbers."""
from .api import benchmark, compare, compress, distill, evaluate, export_onnx, load, prune, quantize, resolve, save
from .distill.trainer import DistillConfig
from .prune.oneshot import MagnitudePruneConfig, PruneConfig, SparseGptConfig, TwoFourPruneConfig, WandaConfig
from .prune.structured import StructuredPruneConfig
from .quant.ptq import Int8Config, Int8DynamicConfig
from .quant.w8a8 import Fp8Config, Int8W8A8Config
from .quant.weight_only.methods import (Int4AwqConfig, Int4GptqConfig, Int4RtnConfig, Int8WeightOnlyConfig,
                                        WeightOnlyConfig)
from .data import Dataset
from .errors import NnslimError
from .recipe import Recipe, make_step, methods, parse_recipe
from .testbeds import TESTBEDS, get_testbed

__version__ = "0.1.0"

__all__ = ["prune", "distill", "DistillConfig", "StructuredPruneConfig", "PruneConfig", "MagnitudePruneConfig", "TwoFourPruneConfig", "WandaConfig", "SparseGptConfig",
           "benchmark", "compare", "compress", "evaluate", "export_onnx", "load", "quantize", "resolve", "save",
           "Int8Config", "Int8DynamicConfig", "Fp8Config", "Int8W8A8Config", "WeightOnlyConfig",
           "Int4RtnConfig", "Int4GptqConfig", "Int4AwqConfig", "Int8WeightOnlyConfig",
           "Dataset", "NnslimError", "Recipe", "make_step", "methods", "parse_recipe", "TESTBEDS", "get_testbed"]

# Importing the subpackages nnslim.prune / nnslim.distill above bound those names; the public verbs win.
from .api import distill, prune  # noqa: E402,F811
