"""2:4 semi-structured Linear: the pruned weight runs on sparse tensor cores on CUDA.

SemiSparseLinear holds the 2:4 weight (dense layout, zeros included, so CPU and the reference path
need nothing special) and on CUDA picks per (shape, M bucket) by measurement among:
  cusparselt  torch._cslt_sparse_mm on the weight compressed once, with the algorithm from
              torch._cslt_sparse_mm_search cached per shape and M bucket;
  cutlass     torch's CUTLASS semi-structured kernel (torch refuses it on some GPUs, e.g. sm_90:
              then it is simply not a candidate);
  dense       F.linear on the dense weight (wins at small M, where the sparse kernels lose).
Measured on an H100 (benchmarks/gpu_sparse24.py): under CUDA graphs cuSPARSELt is 1.32-1.50x bf16 at
M >= 2048; called eagerly, torch's binding spends ~1 ms of host time per call (plan set-up), so it
loses below M = 8192. The choice is therefore timed the way the model runs (`cuda_graphs`).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NnslimError
from ..graph.modules import register_packed, replace_module
from ..runtime.kernels.select import choose, m_bucket
from .masks import check_nm

_ALG: dict[tuple, int] = {}


def is_2of4(weight: torch.Tensor) -> bool:
    w = weight.detach().reshape(weight.shape[0], -1, 4)
    return bool(((w != 0).sum(-1) <= 2).all())


@register_packed("semi_sparse")
class SemiSparseLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=torch.float32,
                 cuda_graphs: bool = False):
        super().__init__()
        # cuSPARSELt calls cost ~1 ms of host time each in torch's binding: they only pay off when the
        # model runs under CUDA graphs. The kernel choice is timed the way the model will run.
        self.cuda_graphs = cuda_graphs
        if in_features % 64 or out_features % 32:
            raise NnslimError(f"2:4 sparse kernels need in_features % 64 == 0 and out_features % 32 == 0; "
                              f"got {in_features}x{out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=dtype))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self._cache: dict[str, tuple] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "") -> "SemiSparseLinear":
        if not is_2of4(linear.weight):
            raise NnslimError(f"layer {name!r}: weight is not 2:4 sparse (prune it with pattern 2:4 first)")
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new.to(linear.weight.device)

    @classmethod
    def from_packed_config(cls, cfg: dict, dtype: torch.dtype) -> "SemiSparseLinear":
        return cls(cfg["in_features"], cfg["out_features"], cfg["bias"], dtype)

    def packed_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}  # compressed layouts follow the weight's device/dtype
        return super()._apply(fn, *args, **kwargs)

    def _prep(self, name: str, build: Callable[[], tuple]) -> tuple:
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    def _cusparselt(self, x2d: torch.Tensor) -> torch.Tensor:
        (packed,) = self._prep("cusparselt", lambda: (torch._cslt_compress(self.weight),))
        m = x2d.shape[0]
        pad = (-m) % 16
        xp = F.pad(x2d, (0, 0, 0, pad)) if pad else x2d
        key = (self.out_features, self.in_features, m_bucket(m), str(x2d.dtype))
        if key not in _ALG and not torch.cuda.is_current_stream_capturing():
            with warnings.catch_warnings():  # deprecated name, kept by torch 2.11-2.13
                warnings.simplefilter("ignore")
                _ALG[key] = int(torch._cslt_sparse_mm_search(packed, xp.t(), bias=self.bias, transpose_result=True))
        y = torch._cslt_sparse_mm(packed, xp.t(), bias=self.bias, transpose_result=True, alg_id=_ALG.get(key, 0))
        if y.shape[0] != xp.shape[0]:
            y = y.t()
        return y[:m]

    def _cutlass(self, x2d: torch.Tensor) -> torch.Tensor:
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        def build():
            old = SparseSemiStructuredTensor._FORCE_CUTLASS
            SparseSemiStructuredTensor._FORCE_CUTLASS = True
            try:
                with warnings.catch_warnings():  # "prototype stage"
                    warnings.simplefilter("ignore")
                    return (to_sparse_semi_structured(self.weight),)
            finally:
                SparseSemiStructuredTensor._FORCE_CUTLASS = old
        (sw,) = self._prep("cutlass", build)
        return F.linear(x2d, sw, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        if x.device.type != "cuda" or x.dtype not in (torch.float16, torch.bfloat16):
            return F.linear(x, self.weight, self.bias)
        cands = {"dense": lambda: F.linear(x2d, self.weight, self.bias),
                 "cusparselt": lambda: self._cusparselt(x2d),
                 "cutlass": lambda: self._cutlass(x2d)}
        timing = "graph" if self.cuda_graphs else "eager"
        key = ("2:4", timing, x.device.index, self.out_features, self.in_features, m_bucket(x2d.shape[0]),
               str(x.dtype))
        name = choose(key, cands, x.device, timing=timing)
        return cands[name]().reshape(*x.shape[:-1], self.out_features)


def semi_sparse(model: nn.Module, notes: list[str] | None = None, cuda_graphs: bool = False) -> nn.Module:
    """Replace (in place) every 2:4-sparse Linear whose shape the kernels support by SemiSparseLinear.
    cuda_graphs=True when the model will run under CUDA graphs (the sparse kernels then win at M >= 1024)."""

    done, skipped = 0, []
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear and is_2of4(mod.weight) and mod.weight.abs().sum() > 0:
            try:
                check_nm(mod.in_features, (2, 4), name)
                new = SemiSparseLinear.from_linear(mod, name)
                new.cuda_graphs = cuda_graphs
                replace_module(model, name, new)
                done += 1
            except NnslimError:
                skipped.append(name)
    if notes is not None:
        notes.append(f"2:4 kernels: {done} Linear layers use SemiSparseLinear (cuSPARSELt/CUTLASS on CUDA, "
                     f"dense elsewhere)" + (f"; kept dense (shape unsupported): {skipped[:5]}" if skipped else ""))
    return model
