"""WeightOnlyLinear: a Linear whose weight is stored as packed low-bit codes + group scales/zeros.

The forward runs the fastest implementation measured for the shape (runtime/kernels/select.py):
  dequant        reference: dequantize to the activation dtype, then F.linear (any device)
  cpu-int4pack   torch's CPU int4 packed matmul (_weight_int4pack_mm_for_cpu)
  cpu-int8pack   torch's int8 weight-only matmul (_weight_int8pack_mm), per-channel symmetric int8
  triton-int4-i  nnslim's own Triton GEMV (M == 1) / GEMM, launch configuration i (CUDA)
  triton-int4k-i nnslim's K-major Triton GEMV (M <= 4) straight from the stored packed codes (CUDA)
  triton-int4p-i nnslim's Triton GEMV (M <= 4) on a permuted layout: one FMA per code (CUDA)
  triton-int4x-i nnslim's Triton GEMV (M <= 4, bf16) from the stored codes, two codes per bf16x2 FMA (CUDA)
  triton-int4tc-i nnslim's tensor-core GEMM (M > 1) from the stored codes, dequantized in registers (CUDA)
  triton-int4dq  one Triton kernel dequantizes the stored codes, then cuBLAS (M >= 64; CUDA)
  tinygemm       torch's CUDA int4 packed matmul (_weight_int4pack_mm), bf16
Kernel-specific layouts are built on first use and kept next to the canonical buffers (not saved).
"""
from __future__ import annotations

from typing import Callable, Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import NnslimError, env_choice
from ...graph.modules import PackedLinear, register_packed
from ...runtime.fuse import value_key
from ...runtime.kernels import select
from .formats import WeightSpec, dequantize_codes, pack, per_byte, unpack

Kernel = Literal["auto", "dequant", "cpu-int4pack", "cpu-int8pack", "cpu-int4pack-bf16", "cpu-int8pack-bf16",
                 "triton-int4", "tinygemm"]
KERNELS = get_args(Kernel)


@register_packed("weight_only")
class WeightOnlyLinear(PackedLinear):
    ROWWISE = ("qweight", "scales", "zeros", "bias")  # dim 0 = output features (runtime/fuse.py)

    def __init__(self, in_features: int, out_features: int, bits: int, group: int, symmetric: bool,
                 bias: bool, dtype: torch.dtype = torch.float32, input_scale: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group, self.symmetric = bits, group, symmetric
        n_groups = in_features // group
        packed = -(-in_features // per_byte(bits))
        self.register_buffer("qweight", torch.zeros(out_features, packed, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=dtype))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        # AWQ: x is multiplied by this per-input-channel vector before the matmul (None when folded).
        self.register_buffer("input_scale", torch.ones(in_features, dtype=dtype) if input_scale else None)
        self.kernel = "auto"
        self._prepared: dict[tuple, tuple] = {}
        self._used: set[str] = set()  # prepared layouts read by the kernels chosen so far
        self._recording = False

    @classmethod
    def from_codes(cls, linear: nn.Linear, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   spec: WeightSpec, input_scale: torch.Tensor | None = None,
                   device: torch.device | None = None) -> "WeightOnlyLinear":
        """The packed layer of `linear` (on `device`, default the linear's: give one when the linear is an
        empty skeleton on the meta device; its bias is then left to be loaded)."""
        group = linear.in_features // scale.shape[1]
        dtype = linear.weight.dtype
        mod = cls(linear.in_features, linear.out_features, spec.bits, group, spec.symmetric,
                  linear.bias is not None, dtype, input_scale is not None)
        dev = linear.weight.device if device is None else device
        mod.to(dev)
        mod.qweight.copy_(pack(codes, spec.bits))
        mod.scales.copy_(scale.to(dtype))
        mod.zeros.copy_(zero.to(torch.uint8))
        if linear.bias is not None and not linear.bias.is_meta:
            mod.bias.copy_(linear.bias.detach())
        if input_scale is not None:
            mod.input_scale.copy_(input_scale.to(dtype))
        return mod

    def concat_key(self) -> tuple:
        """Layers with equal keys can be concatenated along the output features."""
        return (self.in_features, self.bits, self.group, self.symmetric, self.bias is None, self.scales.dtype,
                self.qweight.device, value_key(self.input_scale))

    @classmethod
    def from_packed_config(cls, cfg: dict, dtype: torch.dtype) -> "WeightOnlyLinear":
        return cls(cfg["in_features"], cfg["out_features"], cfg["bits"], cfg["group"], cfg["symmetric"], cfg["bias"],
                   dtype, cfg.get("input_scale", False))

    def empty_like(self, out_features: int) -> "WeightOnlyLinear":
        return WeightOnlyLinear(self.in_features, out_features, self.bits, self.group, self.symmetric,
                                self.bias is not None, self.scales.dtype, self.input_scale is not None)

    def _apply(self, fn, *args, **kwargs):
        self._prepared = {}  # kernel layouts belong to the old device/dtype: rebuilt on next use
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        g = "channel" if self.group == self.in_features else self.group
        return (f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={g}, "
                f"{'sym' if self.symmetric else 'asym'}, kernel={self.kernel}")

    def codes(self) -> torch.Tensor:
        return unpack(self.qweight, self.bits, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_codes(self.codes(), self.scales, self.zeros, dtype or self.scales.dtype)

    def onnx_qdq_spec(self) -> dict:
        """Integer weights for an ONNX export (runtime/qdq.py): signed codes, group-wise scales and zero points
        (blocked DequantizeLinear, opset 21). No activation quantization: weight-only."""
        if self.input_scale is not None:
            raise NnslimError("ONNX export of a weight-only layer with an unfolded AWQ input scale is not "
                              "supported yet; export without AWQ, or keep the torch artifact")
        offset = 1 << (self.bits - 1)
        return {"kind": "linear", "bits": self.bits, "group": self.group,
                "qweight": (self.codes() - offset).to(torch.int8), "w_scale": self.scales.detach().float(),
                "w_zp": (self.zeros.to(torch.int32) - offset).to(torch.int8), "per_channel": True,
                "dynamic": False, "input_scale": None, "act_scale": None, "act_zp": None, "act_bits": None}

    def unwrapped(self) -> nn.Linear:
        """The float Linear with the dequantized weight (what the ONNX exporter traces)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=self.scales.dtype, device=self.qweight.device)
        with torch.no_grad():
            lin.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def float_dtype(self) -> torch.dtype:
        return self.scales.dtype

    def packed_config(self) -> dict:
        return {"bits": self.bits, "group": self.group, "symmetric": self.symmetric,
                "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "input_scale": self.input_scale is not None}

    # --- kernels -------------------------------------------------------------------------------
    def _prep(self, name: str, device: torch.device, build: Callable[[], tuple]) -> tuple:
        key = (name, str(device), self.qweight.data_ptr())
        if self._recording:
            self._used.add(name)
        if key not in self._prepared:
            self._prepared = {k: v for k, v in self._prepared.items() if k[2] == self.qweight.data_ptr()}
            with torch.no_grad():
                self._prepared[key] = build()
        return self._prepared[key]

    def _candidates(self, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
        """The kernels that can run x here, each as a call of no arguments (the selector times these)."""
        return {n: (lambda f=f: f(self, x)) for n, f in self._candidate_fns(x).items()}

    def _candidate_fns(self, x: torch.Tensor) -> dict[str, Callable[["WeightOnlyLinear", torch.Tensor], torch.Tensor]]:
        """{name: fn(layer, x)} of the kernels that can run x here (depends on x's device, dtype and rows only)."""
        out: dict[str, Callable] = {}
        dev, k, g = x.device, self.in_features, self.group
        if dev.type == "cuda":
            if self.bits == 4 and k % 32 == 0 and g % 32 == 0:
                from ...runtime.kernels import triton_int4

                if triton_int4.available():
                    configs = triton_int4.GEMV_CONFIGS if x.shape[0] == 1 else triton_int4.GEMM_CONFIGS
                    for i, cfg in enumerate(configs):
                        out[f"triton-int4-{i}"] = lambda m, x, c=cfg: m._triton_int4(x, c)
            if self.bits == 4 and x.shape[0] > 1:
                from ...runtime.kernels import triton_int4

                if triton_int4.available():
                    bucket = max(16, select.m_bucket(x.shape[0]))
                    from ...runtime.kernels import triton_int4_mma

                    m = x.shape[0]
                    for i, cfg in enumerate(triton_int4.TC_CONFIGS):
                        if triton_int4_mma.tile_offered(cfg, m, bucket) and triton_int4.tc_fits(k, g, cfg["BLOCK_K"]):
                            out[f"triton-int4tc-{i}"] = lambda m, x, c=cfg: m._triton_int4tc(x, c)
                    for i, cfg in enumerate(triton_int4_mma.MMA_CONFIGS):
                        if triton_int4_mma.tile_offered(cfg, m, bucket) and triton_int4_mma.supports(x, k, g, cfg["BLOCK_K"]):
                            out[f"triton-int4mma-{i}"] = lambda m, x, c=cfg: m._triton_int4mma(x, c)
                    if x.shape[0] >= 64 and triton_int4.tc_fits(k, g, 32):
                        out["triton-int4dq"] = lambda m, x: F.linear(x, m._triton_dequant(x.dtype))
            if self.bits == 4 and x.shape[0] <= 4:
                from ...runtime.kernels import triton_int4

                if triton_int4.available():
                    for i, cfg in enumerate(triton_int4.KMAJOR_CONFIGS):
                        if triton_int4.kmajor_tile(k, g, cfg["BLOCK_K"]) is not None:
                            out[f"triton-int4k-{i}"] = lambda m, x, c=cfg: m._triton_int4k(x, c)
                    from ...runtime.kernels import triton_int4_gemv

                    for i, cfg in enumerate(triton_int4_gemv.X2_CONFIGS):
                        if triton_int4_gemv.supports(x, k, g, cfg["BLOCK_K"]):
                            out[f"triton-int4x-{i}"] = lambda m, x, c=cfg: m._triton_int4x(x, c)
                    if triton_int4.perm_tile_words(k, g) is not None:
                        for i, cfg in enumerate(triton_int4.PERM_CONFIGS):
                            out[f"triton-int4p-{i}"] = lambda m, x, c=cfg: m._triton_int4p(x, c)
            if self.bits == 4 and x.shape[0] == 1:
                from ...runtime.kernels import cuda_int4_gemv

                if cuda_int4_gemv.offered() and cuda_int4_gemv.supports(x, k, g):
                    for i, cfg in enumerate(cuda_int4_gemv.CONFIGS):
                        out[f"cuda-int4-{i}"] = lambda m, x, c=cfg: m._cuda_int4(x, c)
            if self.bits == 4:
                from ...runtime.kernels import cuda_int4_mma_gemv

                if cuda_int4_mma_gemv.offered() and cuda_int4_mma_gemv.supports(x, k, g):
                    for i, cfg in enumerate(cuda_int4_mma_gemv.CONFIGS):
                        if cuda_int4_mma_gemv.fits(cfg, x.shape[0]):
                            out[f"cuda-int4mma-{i}"] = lambda m, x, c=cfg: m._cuda_int4mma(x, c)
                from ...runtime.kernels import cuda_int4_mma_gemm as cg

                if cg.supports(x, k, g) and cg.offered():
                    for i, cfg in enumerate(cg.CONFIGS):
                        if cg.fits(cfg, g, x.shape[0]):
                            out[f"cuda-int4mmag-{i}"] = lambda m, x, c=cfg: m._cuda_int4mmag(x, c)
                from ...runtime.kernels import gluon_int4_gemm as gg

                if x.shape[0] > 16 and gg.offered() and gg.supports(x, k, g):  # (NNSLIM_GLUON_GEMM=0: left out)
                    for i, cfg in enumerate(gg.WS_CONFIGS):
                        if gg.fits(k, g, cfg, self.out_features) and cfg["BM"] <= max(64, select.m_bucket(x.shape[0])):
                            out[f"gluon-int4ws-{i}"] = lambda m, x, c=cfg: m._gluon_int4ws(x, c)
            if self.bits == 4 and x.dtype == torch.bfloat16 and g in (32, 64, 128, 256) and k % 128 == 0:
                out["tinygemm"] = lambda m, x: m._tinygemm(x)
        elif dev.type == "cpu":
            # torch's packed CPU kernels run 4-40x faster on bf16 activations than on fp32 ones (AVX2, BENCHMARKS
            # 3e): fp32 inputs also get a candidate that rounds x to bf16 and returns fp32 (NNSLIM_CPU_PACKED_BF16=0
            # keeps fp32 activations exact)
            bf16_too = x.dtype == torch.float32 and env_choice("NNSLIM_CPU_PACKED_BF16", ("0", "1"), "1") == "1"
            if self.bits == 4 and g in (32, 64, 128, 256) and k % 32 == 0 and x.dtype in (torch.float32,
                                                                                           torch.bfloat16):
                out["cpu-int4pack"] = lambda m, x: m._cpu_int4(x)
                if bf16_too:
                    out["cpu-int4pack-bf16"] = lambda m, x: m._cpu_int4(x.to(torch.bfloat16)).float()
            # torch 2.13's _weight_int8pack_mm crashes the process (SIGSEGV) on bf16 rows when K % 16 != 0 (M > 1,
            # AVX512-BF16 EPYC): offered for K a multiple of 16 only
            if self.bits == 8 and self.symmetric and g == k and k % 16 == 0 and x.dtype in (torch.float32,):
                out["cpu-int8pack"] = lambda m, x: m._int8pack(x)
                if bf16_too:
                    out["cpu-int8pack-bf16"] = lambda m, x: m._int8pack(x.to(torch.bfloat16)).float()
        out["dequant"] = lambda m, x: F.linear(x, m.dequantized_weight(x.dtype))
        return out

    def _triton_int4(self, x, config=None):
        from ...runtime.kernels import triton_int4

        wk, st, zt = self._prep(f"triton-int4-{x.dtype}", x.device, lambda: triton_int4.to_kernel_layout(
            self.codes(), self.scales.to(x.dtype), None if self.symmetric else self.zeros))
        return triton_int4.int4_matmul(x.contiguous(), wk, st, zt, self.group, 8, config,
                                       self._workspace(x, config))

    def _workspace(self, x, config):
        """Split-K partials and zeroed counters kept per layer for last-CTA configurations (M == 1)."""
        if config is None or "BLOCK_M" in config or config["SPLIT_K"] == 1 or x.shape[0] != 1:
            return None
        split, tiles = config["SPLIT_K"], -(-self.out_features // config["BLOCK_N"])
        return self._prep(f"triton-int4-ws{split}x{tiles}", x.device, lambda: (
            torch.empty(split * self.out_features, dtype=torch.float32, device=x.device),
            torch.zeros(tiles, dtype=torch.int32, device=x.device)))

    def _triton_int4p(self, x, config):
        from ...runtime.kernels import triton_int4

        bw = triton_int4.perm_tile_words(self.in_features, self.group)
        wp = self._prep(f"triton-int4-perm{bw}", x.device, lambda: (triton_int4.to_kernel_layout_perm(self.codes(), bw),))[0]
        return triton_int4.int4_gemv_perm(x.contiguous(), wp, bw, self._scales_as(x), None if self.symmetric else self.zeros,
                                          self.group, config, self._workspace(x, config))

    def _scales_as(self, x):
        if self.scales.dtype == x.dtype:
            return self.scales
        return self._prep(f"scales-{x.dtype}", x.device, lambda: (self.scales.to(x.dtype),))[0]

    def _triton_int4k(self, x, config):
        from ...runtime.kernels import triton_int4

        return triton_int4.int4_gemv_kmajor(x.contiguous(), self.qweight, self._scales_as(x),
                                            None if self.symmetric else self.zeros, self.group, config,
                                            self._workspace(x, config))

    def _triton_int4x(self, x, config):
        from ...runtime.kernels import triton_int4_gemv

        return triton_int4_gemv.int4_gemv_x2(x, self.qweight, self._scales_as(x), None if self.symmetric else self.zeros,
                                             self.group, config, self._workspace(x, config))

    def _cuda_int4(self, x, config):
        from ...runtime.kernels import cuda_int4_gemv

        return cuda_int4_gemv.int4_gemv_cuda(x, self.qweight, self._scales_as(x), None if self.symmetric else self.zeros,
                                             self.group, config)

    def _mma_layout(self, x):
        """The tensor-core GEMV's layout, read by the GEMV (M <= 32) and the GEMM built on it: one copy."""
        from ...runtime.kernels import cuda_int4_mma_gemv as cm

        return self._prep(f"cuda-int4mma-{x.dtype}", x.device, lambda: (
            cm.to_layout(self.qweight, self.in_features, self.group), cm.pair_rows(self._scales_as(x)),
            None if self.symmetric else cm.pair_rows(cm.neg_offsets(self.zeros, x.dtype))))

    def _cuda_int4mma(self, x, config):
        from ...runtime.kernels import cuda_int4_mma_gemv as cm

        return cm.int4_gemv_mma(x, self._mma_layout(x), self.out_features, self.group, config)

    def _cuda_int4mmag(self, x, config):
        from ...runtime.kernels import cuda_int4_mma_gemm as cg

        return cg.int4_gemm_mma(x, self._mma_layout(x), self.out_features, self.group, config)

    def _triton_int4tc(self, x, config):
        from ...runtime.kernels import triton_int4

        return triton_int4.int4_gemm_tc(x.contiguous(), self.qweight, self._scales_as(x),
                                        None if self.symmetric else self.zeros, self.group, config)

    def _triton_int4mma(self, x, config):
        from ...runtime.kernels import triton_int4_mma

        wp = self._prep("triton-int4-mma", x.device, lambda: (triton_int4_mma.to_mma_layout(self.qweight),))[0]
        return triton_int4_mma.int4_gemm_mma(x.contiguous(), wp, self._scales_as(x),
                                             None if self.symmetric else self.zeros, self.group, config)

    def _gluon_int4ws(self, x, config):
        from ...runtime.kernels import gluon_int4_gemm as gg, triton_int4_mma

        wp = self._prep("triton-int4-mma", x.device, lambda: (triton_int4_mma.to_mma_layout(self.qweight),))[0]
        desc = self._prep(f"gluon-codes-{config['BN']}x{config['BK']}", x.device,
                          lambda: (gg.codes_descriptor(wp, config),))[0]  # the weight's TMA descriptor, built once
        return gg.int4_gemm_ws(x.contiguous(), wp, self._scales_as(x), None if self.symmetric else self.zeros,
                               self.group, config, desc)

    def _triton_dequant(self, dtype):
        from ...runtime.kernels import triton_int4

        return triton_int4.int4_dequantize(self.qweight, self.scales, None if self.symmetric else self.zeros,
                                           self.group, dtype)

    def _tinygemm(self, x):
        def build():
            codes = self.codes()
            packed_u8 = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
            w = torch.ops.aten._convert_weight_to_int4pack(packed_u8.contiguous(), 8)
            s = self.scales.float()
            sz = torch.stack([s.t(), ((8 - self.zeros.float()) * s).t()], dim=-1).to(torch.bfloat16)
            return w, sz.contiguous()

        w, sz = self._prep("tinygemm", x.device, build)
        return torch.ops.aten._weight_int4pack_mm(x.contiguous(), w, self.group, sz)

    def _cpu_int4(self, x):
        def build():
            w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().contiguous(), 2)
            s = self.scales.float()
            sz = torch.stack([s.t(), ((8 - self.zeros.float()) * s).t()], dim=-1).contiguous()
            return w, sz

        w, sz = self._prep("cpu-int4pack", x.device, build)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), w, self.group, sz.to(x.dtype))

    def _int8pack(self, x):
        def build():
            w = (self.codes() - self.zeros.to(torch.int32)).to(torch.int8).contiguous()
            return w, self.scales[:, 0].to(x.dtype).contiguous()

        w, s = self._prep(f"cpu-int8pack-{x.dtype}", x.device, build)
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), w, s)

    def compact(self) -> None:
        """Free kernel layouts built only while timing candidates (call after warm-up)."""
        self._prepared = {k: v for k, v in self._prepared.items() if k[0] in self._used}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            x2 = x2 * self.input_scale.to(x2.dtype)
        if self.kernel in ("auto",):
            key = ("wo", x2.device.type, self.bits, self.group, self.symmetric, str(x2.dtype),
                   self.out_features, self.in_features, select.m_bucket(x2.shape[0]))
            fn = select.chosen_fn(self, key, x2, self._candidate_fns)
        else:
            fns = self._candidate_fns(x2)
            if self.kernel == "dequant":
                name = "dequant"
            elif self.kernel in fns:
                name = self.kernel
            elif self.kernel == "triton-int4" and any(c.startswith("triton-int4-") for c in fns):
                name = next(c for c in fns if c.startswith("triton-int4-"))
            else:
                raise NnslimError(f"kernel={self.kernel!r} cannot run this layer here (device {x2.device.type}, "
                                  f"{x2.dtype}, int{self.bits}, group {self.group}); available: {', '.join(fns)}")
            fn = fns[name]
        state = self.__dict__  # (a plain attribute: set without nn.Module.__setattr__, a few us per call on a GPU host)
        state["_recording"] = True  # layouts the chosen kernel reads are kept by compact()
        try:
            y = fn(self, x2)
        finally:
            state["_recording"] = False
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


def set_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """Force one kernel (see KERNELS) for every quantized linear of `model`."""
    if kernel not in KERNELS:
        raise NnslimError(f"kernel={kernel!r} is not allowed; allowed: {', '.join(KERNELS)}")
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.kernel = kernel
    return model
