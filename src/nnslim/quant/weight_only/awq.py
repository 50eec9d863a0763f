"""AWQ (Lin et al. 2023): activation-aware weight quantization.

For Linears that read the same input x (e.g. q/k/v, or gate/up), search a per-input-channel scale
s = mean|x|^alpha (normalised) over a grid of alpha, minimising || x W^T - (x/s) Q(W s)^T || on
calibration tokens; then search, per weight group, the clipping ratio of the range that minimises the
group's output error. With `fold` (the default) the 1/s goes into what produces x, as AutoAWQ and
llm-compressor fold it, so the artifact is a plain int4 checkpoint (compressed-tensors: transformers / vLLM):
a normalization whose output is x (found by tensor identity while the block runs; folded only if a probe shows
the norm's output scaled by exactly 1/s: weight, and bias, / s, or Gemma's (1 + weight)), or the Linear whose
output multiplies into x (up_proj -> down_proj, w3 -> w2 in gated MLPs) or is x per channel (v_proj -> o_proj
where every value channel reaches one o_proj input: no grouped-query sharing): its output rows / s, in its
quantization scales when it is already quantized. Linears with no such producer keep s = 1 (the clip search
only). `fold: false`: the quantized layer applies 1/s to its input (input_scale) wherever the search chose a
scale: any producer works, the artifact is nnslim's own layout.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ...graph.modules import replace_module
from ...recipe import register_method
from .driver import CalibratedConfig, calibrating, quantize_weight_only
from .formats import WeightSpec, dequantize_codes, fake_quantize_weight, group_qparams, quantize_codes
from .modules import WeightOnlyLinear


@dataclass(frozen=True)
class Int4AwqConfig(CalibratedConfig):
    """int4 weights by AWQ (activation-aware scales + clipping search)."""
    ranges = {**CalibratedConfig.ranges, "grid": (1, 10_000)}
    grid: int = 20  # scale-search points
    clip_search: bool = True
    fold: bool = True  # 1/s folded into x's producer (a plain int4 checkpoint), else applied by the layer


def _outputs(x: torch.Tensor, ws: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x @ w.t() for w in ws], dim=1)


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], spec: WeightSpec, group: int,
                  grid: int = 20, max_tokens: int = 2048) -> torch.Tensor:
    """Best per-input-channel scale s [K] for Linears sharing input x [T, K] (fp32)."""
    x = x[:: max(1, x.shape[0] // max_tokens)]
    x_mean = x.abs().mean(dim=0)
    ref = _outputs(x, weights)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for i in range(grid):
        alpha = i / grid
        s = x_mean.clamp(min=1e-4) ** alpha
        s = s / (s.max() * s.min()).sqrt()
        qs = [fake_quantize_weight(w * s[None, :], spec, group) / s[None, :] for w in weights]
        loss = (ref - _outputs(x, qs)).pow(2).mean().item()
        if loss < best:
            best, best_s = loss, s
    return best_s


def search_clip(x: torch.Tensor, w: torch.Tensor, spec: WeightSpec, group: int, steps: int = 10,
                min_ratio: float = 0.5, max_tokens: int = 256) -> torch.Tensor:
    """Per-(output channel, group) clip ratio [N, G] of the weight range minimising the group's output error."""
    n, k = w.shape
    g_count = k // group
    xs = x[:: max(1, x.shape[0] // max_tokens)][:max_tokens]  # [T, K]
    xg = xs.reshape(xs.shape[0], g_count, group)  # [T, G, g]
    wg = w.reshape(n, g_count, group)
    ref = torch.einsum("tgi,ngi->ngt", xg, wg)  # per-group partial outputs
    best_err = torch.full((n, g_count), float("inf"), device=w.device)
    best_ratio = torch.ones(n, g_count, device=w.device)
    for i in range(steps + 1):
        ratio = 1.0 - (1.0 - min_ratio) * i / steps
        scale, zero = group_qparams(w, spec, group, clip=ratio)
        q = dequantize_codes(quantize_codes(w, scale, zero, spec), scale, zero).reshape(n, g_count, group)
        err = (torch.einsum("tgi,ngi->ngt", xg, q) - ref).pow(2).mean(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def awq_quantize(w: torch.Tensor, s: torch.Tensor, x: torch.Tensor | None, spec: WeightSpec, group: int,
                 clip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, scale, zero of W diag(s) (the layer multiplies its input by 1/s), with clip search."""
    ws = w.float() * s[None, :]
    ratio = search_clip(x / s[None, :], ws, spec, group) if clip and x is not None else 1.0
    scale, zero = group_qparams(ws, spec, group, clip=ratio)
    return quantize_codes(ws, scale, zero, spec), scale, zero


class Awq:
    """The per-block step: Linears that read the very same input tensor share one scale search."""

    def __init__(self, config: Int4AwqConfig, spec: WeightSpec):
        self.config, self.spec = config, spec
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.first: dict[str, torch.Tensor] = {}  # held so that tensor identity is meaningful

    def observe(self, name, module, x):
        mode = getattr(self, "mode", None)
        if mode is not None:
            mode.paused = True  # these reads of x are nnslim's, not the model's
        self.first.setdefault(name, x)
        flat = x.reshape(-1, x.shape[-1]).float()
        self.samples.setdefault(name, []).append(flat[:: max(1, flat.shape[0] // 256)])
        if mode is not None:
            mode.paused = False

    @property
    def not_spreadable(self) -> str | None:
        """Why this AWQ cannot be spread over GPUs (graph/spread.py), or None."""
        if self.config.fold:
            return ("its scales are folded into norms and Linears that other GPUs' shares of the block hold; pass "
                    "fold: false (the artifact is then nnslim's layout) or gpus: 1")
        return None

    def merge(self, others: list["Awq"]) -> None:
        """Add the input samples the other devices' copies of the block saw (spread calibration: sample j
        was on device j mod D), in the order one device would have seen them."""
        device = next(iter(self.first.values())).device
        for n in self.samples:
            shards = [self.samples[n]] + [o.samples.pop(n, []) for o in others]
            self.samples[n] = [shard[j].to(device) for j in range(max(map(len, shards)))
                               for shard in shards if j < len(shard)]

    @contextlib.contextmanager
    def watching(self, block: nn.Module):
        """While the block runs its first sample (graph/layerwise): the output of each of its normalizations and
        every torch call that reads one, so that finish() folds 1/s into a norm only where the group's Linears are
        all that read its output (not a post-norm block's residual add: BERT)."""
        self.norm_out: dict[str, torch.Tensor] = {}
        self.readers: dict[int, list] = {}  # id(norm output) -> [weight of each linear reading it, or None]

        def hook(name):
            def record(mod, args, out):
                if isinstance(out, torch.Tensor) and name not in self.norm_out:
                    self.norm_out[name] = out
                    self.readers[id(out)] = []
            return record
        handles = [m.register_forward_hook(hook(n)) for n, m in block.named_modules() if n and _is_norm(m)]
        self.mode = _Readers(self.readers)
        try:
            with self.mode:
                yield
        finally:
            self.mode = None
            for handle in handles:
                handle.remove()

    def subset(self, names: list[str], device) -> "Awq":
        """The samples of `names` on `device`; targets that shared an input still share it."""
        part = Awq(self.config, self.spec)
        moved: dict[int, torch.Tensor] = {}
        for n in names:
            x = self.first.pop(n)
            if id(x) not in moved:
                moved[id(x)] = x.to(device)
            part.first[n] = moved[id(x)]
            part.samples[n] = [t.to(device) for t in self.samples.pop(n)]
        return part

    def finish(self, block, modules, prefix):
        readers = getattr(self, "readers", {})
        norms = {id(t): n for n, t in getattr(self, "norm_out", {}).items()}
        groups: list[list[str]] = []
        order = {n: i for i, (n, _) in enumerate(block.named_modules())}
        # in the block's own order, whatever order the targets came in (a set's: it changes between processes):
        # a producer (up_proj, v_proj) is quantized before the fold of its consumer's 1/s reaches its scales
        for n in sorted(modules, key=lambda n: order.get(n, len(order))):
            match = next((g for g in groups if self.first[g[0]] is self.first[n]), None)
            if match is None:
                groups.append([n])
            else:
                match.append(n)
        producers = {}
        for g in groups:  # the norm whose output is the group's input and is read by the group's Linears alone
            key = id(self.first[g[0]])
            weights = sorted(id(modules[n].weight) for n in g)
            if key in norms and sorted(id(w) if w is not None else 0 for w in readers.get(key, [None])) == weights:
                producers[g[0]] = norms[key]
        self.first.clear()
        self.norm_out, self.readers = {}, {}
        for members in groups:
            x = torch.cat(self.samples[members[0]])
            group = self.spec.group_for(modules[members[0]].in_features)
            s = search_scales(x, [modules[n].weight.float() for n in members], self.spec, group, self.config.grid)
            if self.config.fold:
                norm = producers.get(members[0])
                done = (norm is not None and fold_into_norm(block.get_submodule(norm), s)) or \
                    fold_into_linear(block, members, modules, s)
                s = s if done else torch.ones_like(s)
            for n in members:
                codes, scale, zero = awq_quantize(modules[n].weight, s, x, self.spec, group, self.config.clip_search)
                replace_module(block, n, calibrating(WeightOnlyLinear.from_codes(
                    modules[n], codes, scale, zero, self.spec, input_scale=None if self.config.fold else 1.0 / s)))


class _Readers(torch.overrides.TorchFunctionMode):
    """Records, for each watched tensor (by id), the torch calls that read it: F.linear's weight, else None."""

    def __init__(self, readers: dict[int, list]):
        super().__init__()
        self.readers, self.paused = readers, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.readers and not self.paused and getattr(func, "__name__", "") != "__get__":  # x.shape: no read
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, torch.Tensor) and id(a) in self.readers:
                    weight = args[1] if func is torch.nn.functional.linear and len(args) > 1 else \
                        kwargs.get("weight") if func is torch.nn.functional.linear else None
                    self.readers[id(a)].append(weight if a is args[0] else None)
        return func(*args, **kwargs)


def _is_norm(m: nn.Module) -> bool:
    weight = getattr(m, "weight", None)
    return (isinstance(m, nn.LayerNorm) or "Norm" in type(m).__name__) and isinstance(weight, torch.Tensor) \
        and weight.dim() == 1


@torch.no_grad()
def fold_into_norm(norm: nn.Module, s: torch.Tensor) -> bool:
    """Make `norm`'s output x / s: its weight (and bias) / s, or for a norm computing (1 + weight) * x (Gemma)
    (1 + weight) / s - 1; checked on a probe, restored and False when neither gives x / s."""
    weight, bias = norm.weight, getattr(norm, "bias", None)
    if weight.shape != s.shape:
        return False
    probe = torch.randn(4, s.numel(), generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    try:
        want = norm(probe).float() / s.to(weight.device)
    except (RuntimeError, ValueError, TypeError):  # a norm over another layout (channels first): not folded
        return False
    if want.shape != probe.shape:
        return False
    saved = weight.detach().clone(), None if bias is None else bias.detach().clone()
    inv = (1.0 / s).to(weight.device)
    for plus_one in (0.0, 1.0):
        weight.copy_(((saved[0].float() + plus_one) * inv - plus_one).to(weight.dtype))
        if bias is not None:
            bias.copy_((saved[1].float() * inv).to(bias.dtype))
        if torch.allclose(norm(probe).float(), want, rtol=1e-2, atol=1e-4 * float(want.abs().max())):
            return True
    weight.copy_(saved[0])
    if bias is not None:
        bias.copy_(saved[1])
    return False


# gated MLPs (the producer's output multiplies into x) and attention (x is the value channels, mixed per head)
LINEAR_PRODUCERS = {"down_proj": "up_proj", "w2": "w3", "o_proj": "v_proj"}


@torch.no_grad()
def fold_into_linear(block: nn.Module, members: list[str], modules: dict, s: torch.Tensor) -> bool:
    """Divide the output rows of the Linear whose output x is made of (LINEAR_PRODUCERS, a sibling of the one
    member) by s: in its quantization scales if already quantized, else in its float weight; its bias too."""
    if len(members) != 1:
        return False
    parent, _, leaf = members[0].rpartition(".")
    source = LINEAR_PRODUCERS.get(leaf)
    if source is None:
        return False
    try:
        producer = block.get_submodule(f"{parent}.{source}" if parent else source)
    except AttributeError:
        return False
    if getattr(producer, "out_features", None) != modules[members[0]].in_features \
            or getattr(producer, "input_scale", None) is not None:
        return False  # grouped-query values are shared by several o_proj inputs: no one row per channel
    rows = producer.scales if isinstance(producer, WeightOnlyLinear) else \
        producer.weight if isinstance(producer, nn.Linear) else None
    if rows is None:
        return False
    inv = 1.0 / s
    rows.mul_(inv[:, None].to(rows.device, rows.dtype))
    if isinstance(producer, WeightOnlyLinear):
        producer._prepared = {}  # its kernel layouts hold the old scales
    if producer.bias is not None:
        producer.bias.mul_(inv.to(producer.bias.device, producer.bias.dtype))
    return True


@register_method("int4-awq", Int4AwqConfig, "int4 weight-only by AWQ (activation-aware scales, clip search)",
                 verb="quantize", frozen=True)
def _apply(model, config: Int4AwqConfig, ctx):
    data = ctx.calibration(config.samples, seq_len=config.seq_len, what="AWQ")
    return quantize_weight_only(model, config, data, inplace=True, notes=ctx.notes,
                                algorithm=lambda spec: Awq(config, spec), name="awq", exports_later="export" in ctx.later_stages)
