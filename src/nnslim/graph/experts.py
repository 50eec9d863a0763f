"""Mixture-of-experts blocks whose experts are stored as 3D tensors - transformers 5's fused `*Experts`
modules (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek, gpt-oss, ...: `gate_up_proj` [E, 2I, H] or `up_proj`,
`down_proj` [E, H, I], transposed in some) - split into one nn.Linear per expert and projection.

Every method that works on Linear layers (weight-only and W8A8 quantization, pruning, low-rank) then
reaches the experts, which hold most of such a model's weights; without the split they would stay float
with nothing said. A split block computes what the fused one computes (checked on random routing when
it is split); blocks whose experts are all still plain float Linears at save time are joined back, so a
float / pruned artifact keeps transformers' own layout.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import NnslimError, first_line

_UP = ("gate_up_proj", "up_proj")  # the first projection's name, gated or not


def _is_fused(m: nn.Module) -> bool:
    """A transformers experts module (decorated with use_experts_implementation) holding 3D weights."""
    up = next((n for n in _UP if isinstance(getattr(m, n, None), nn.Parameter)), None)
    down = getattr(m, "down_proj", None)
    return (up is not None and isinstance(down, nn.Parameter) and getattr(m, up).dim() == 3 and down.dim() == 3
            and hasattr(m, "is_transposed") and hasattr(m, "has_gate") and isinstance(getattr(m, "num_experts", None),
                                                                                      int))


def fused_experts(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and _is_fused(m)}


class Expert(nn.Module):
    """One expert: its first projection (`gate_up_proj`, or `up_proj` when ungated) and `down_proj`."""

    def __init__(self, up_name: str, up: nn.Linear, down: nn.Linear):
        super().__init__()
        self.up_name = up_name
        setattr(self, up_name, up)
        self.down_proj = down

    def up(self) -> nn.Module:
        return getattr(self, self.up_name)


class SplitExperts(nn.Module):
    """Drop-in for a fused experts module: same forward (hidden [T, H], top_k_index [T, k], top_k_weights
    [T, k]) over children "0".."E-1". The fused module, emptied of its weights, is kept outside the module
    tree for its gating function (`_apply_gate`, which may read its own attributes) and to be joined back."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        up_name = next(n for n in _UP if isinstance(getattr(fused, n, None), nn.Parameter))
        self.num_experts = fused.num_experts
        self.has_gate = bool(fused.has_gate)
        self.up_name = up_name
        transposed, bias = bool(fused.is_transposed), bool(getattr(fused, "has_bias", False))
        up_w, down_w = getattr(fused, up_name), fused.down_proj
        up_b = getattr(fused, f"{up_name}_bias", None) if bias else None
        down_b = getattr(fused, "down_proj_bias", None) if bias else None
        for e in range(self.num_experts):
            self.add_module(str(e), Expert(up_name, _linear(up_w[e], up_b, e, transposed),
                                           _linear(down_w[e], down_b, e, transposed)))
        if getattr(fused, "has_post_expert_norm", False):
            self.post_expert_norm = fused.post_expert_norm
        for name in (up_name, "down_proj", f"{up_name}_bias", "down_proj_bias"):
            fused._parameters.pop(name, None)
        object.__setattr__(self, "shell", fused)  # not a child: no state, not listed among the modules
        self.transposed, self.bias = transposed, bias

    def expert(self, e: int) -> Expert:
        return self._modules[str(e)]

    every_token = False  # set while calibrating (all_experts_see_every_token): same output, more compute

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
        hit = range(self.num_experts) if self.every_token else torch.unique(top_k_index).tolist()
        for e in hit:
            if not 0 <= e < self.num_experts:  # expert-parallel sentinels
                continue
            tokens, slot = torch.where(top_k_index == e)
            rows = slice(None) if self.every_token else tokens
            h = self._expert_forward(self.expert(e), hidden_states[rows])
            if self.every_token:
                h = h[tokens]
            out.index_add_(0, tokens, (h * top_k_weights[tokens, slot, None]).float())
        return out.to(hidden_states.dtype)

    def _expert_forward(self, expert: Expert, x: torch.Tensor) -> torch.Tensor:
        h = expert.up()(x)
        h = type(self.shell)._apply_gate(self.shell, h) if self.has_gate else self.shell.act_fn(h)
        h = expert.down_proj(h)
        return self.post_expert_norm(h) if hasattr(self, "post_expert_norm") else h

    def joinable(self) -> bool:
        return all(type(getattr(self.expert(e), n)) is nn.Linear
                   for e in range(self.num_experts) for n in (self.up_name, "down_proj"))

    def join(self) -> nn.Module:
        """The fused module again, its weights stacked from the (plain float) expert Linears."""
        shell = self.shell
        for n, attr in ((self.up_name, "weight"), ("down_proj", "weight")) + (
                ((f"{self.up_name}_bias", "bias"), ("down_proj_bias", "bias")) if self.bias else ()):
            lin = self.up_name if n.startswith(self.up_name) else "down_proj"
            parts = [getattr(getattr(self.expert(e), lin), attr).detach() for e in range(self.num_experts)]
            if attr == "weight" and self.transposed:
                parts = [p.t() for p in parts]
            shell._parameters[n] = nn.Parameter(torch.stack(parts).contiguous(), requires_grad=False)
        if hasattr(self, "post_expert_norm"):
            shell.post_expert_norm = self.post_expert_norm
        return shell


def _linear(w: torch.Tensor, b: torch.Tensor | None, e: int, transposed: bool) -> nn.Linear:
    w = w.detach().t() if transposed else w.detach()  # nn.Linear's weight is [out, in]
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w.contiguous() if transposed else w.clone(), requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b[e].detach().clone(), requires_grad=False)
    return lin


def _check(fused: nn.Module, split: SplitExperts, name: str, hidden: int) -> None:
    """The split block against the fused one on 16 tokens routed at random (k = 2, or 1 for one expert)."""
    p = split.expert(0).down_proj.weight
    g = torch.Generator().manual_seed(0)
    k = min(2, split.num_experts)
    x = torch.randn(16, hidden, generator=g).to(p)
    index = torch.stack([torch.randperm(split.num_experts, generator=g)[:k] for _ in range(16)]).to(p.device)
    weights = torch.rand(16, k, generator=g).to(p)
    try:
        with torch.no_grad():
            want, got = fused(x, index, weights), split(x, index, weights)
    except Exception as e:
        raise NnslimError(f"{name}: the MoE experts block could not be split into per-expert Linear layers "
                          f"({first_line(e)}); list it in `ignore` to leave its experts float") from None
    err = float((want.float() - got.float()).norm() / want.float().norm().clamp_min(1e-12))
    if err > (1e-4 if p.dtype == torch.float32 else 2e-2):
        raise NnslimError(f"{name}: the MoE experts block split into per-expert Linear layers computes something "
                          f"else than the fused one (relative error {err:.2g}); list it in `ignore` to leave its "
                          "experts float")


def split_experts(model: nn.Module, names: list[str] | None = None, check: bool = True,
                  what: str = "quantize") -> list[str]:
    """Replace fused experts modules (all, or those `names`) by SplitExperts in place; returns their names.
    `check` runs each split block against the fused one (not possible on the meta device). A model streamed
    from its shards reads each expert's rows of the stored 3D tensors (graph/streaming.py); `what` the
    method does with them: only quantization is supported there yet."""
    from .modules import replace_module
    from .streaming import source_of

    found = fused_experts(model)
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise NnslimError(f"split_experts entry {missing[0]!r} is no fused MoE experts module of the model")
        found = {n: found[n] for n in names}
    source = source_of(model)
    if found and source is not None and what != "quantize":
        raise NnslimError(f"to {what} the MoE experts of a checkpoint streamed from its shards is not supported yet "
                          "(quantization is); load the model whole, or list the experts in `ignore`")
    for name, fused in found.items():
        w = getattr(fused, next(n for n in _UP if isinstance(getattr(fused, n, None), nn.Parameter)))
        hidden = w.shape[1] if fused.is_transposed else w.shape[2]
        reference = None
        if check and not w.is_meta:
            import copy

            reference = copy.deepcopy(fused)
        split = SplitExperts(fused)
        if reference is not None:
            _check(reference, split, name, hidden)
        replace_module(model, name, split)
        if source is not None:
            source.split_block(name, split.up_name, split.transposed,
                               getattr(getattr(fused, "config", None), "model_type", None))
            source.stored_dtypes(split, name)
    return list(found)


ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


def routers(model: nn.Module) -> set[str]:
    """The nn.Linear routers of mixture-of-experts blocks: a Linear named gate / router / shared_expert_gate
    beside an `experts` child (transformers 5's routers are their own modules; older and remote-code MoE
    models route through a Linear). Every method keeps them float, as llm-compressor does: a few bits of
    error there change which experts run."""
    out = set()
    for name, m in model.named_modules():
        if "experts" in m._modules:
            out |= {f"{name}.{c}" if name else c for c, child in m._modules.items()
                    if c in ROUTER_NAMES and isinstance(child, nn.Linear)}
    return out


def routers_note(model: nn.Module) -> str:
    found = routers(model)
    return f"; {len(found)} MoE router Linears float" if found else ""


def experts_blocks(model: nn.Module) -> list[str]:
    """Names of the mixture-of-experts blocks of `model`, fused or split."""
    return [n for n, m in model.named_modules() if n and (isinstance(m, SplitExperts) or _is_fused(m))]


def structure_note(model: nn.Module, who: str) -> list[str]:
    """The note a structural method adds for a model with mixture-of-experts blocks, which it leaves whole."""
    blocks = experts_blocks(model)
    if not blocks:
        return []
    held = sum(p.numel() for n in blocks for p in model.get_submodule(n).parameters())
    total = sum(p.numel() for p in model.parameters())
    return [f"{who}: the {len(blocks)} mixture-of-experts blocks ({held / max(total, 1):.0%} of the parameters) are "
            "not structurally pruned yet (their experts keep every neuron); unstructured / N:M pruning and "
            "quantization do reach them"]


def split_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SplitExperts)]


def join_experts(model: nn.Module) -> list[str]:
    """Join every split block whose experts are still plain float Linears back into the fused module, in
    place; returns the names of the blocks left split (their experts were quantized or changed)."""
    from .modules import replace_module

    left = []
    for name in split_names(model):
        m = model.get_submodule(name)
        if m.joinable():
            replace_module(model, name, m.join())
        else:
            left.append(name)
    return left


@contextlib.contextmanager
def all_experts_see_every_token(module: nn.Module):
    """While calibrating: every expert of the split blocks in `module` runs on every token (the output
    still sums only the routed ones), so each expert's statistics cover the whole calibration set and
    no expert is left without any (llm-compressor's calibrate_all_experts)."""
    blocks = [m for m in module.modules() if isinstance(m, SplitExperts)]
    for m in blocks:
        m.every_token = True
    try:
        yield
    finally:
        for m in blocks:
            m.every_token = False
