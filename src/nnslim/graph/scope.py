"""Ignored / target scopes by layer name (a module and everything inside it), glob ("*.lm_head", "*conv*", as
ModelOpt's wildcards match the whole name), regex ("re:...", searched) or type ("type:ClassName")."""
from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Iterable

import torch
from torch import nn

from ..errors import NnslimError


def _plain(entry: str, name: str, module: nn.Module | None) -> bool:
    if entry.startswith("re:"):
        return re.search(entry[3:], name) is not None
    if entry.startswith("type:"):
        return any(cls.__name__ == entry[5:] for cls in type(module).__mro__)
    if any(c in entry for c in "*?["):
        return fnmatchcase(name, entry)
    return name == entry or name.startswith(entry + ".")


def matches(entry: str, name: str, module: nn.Module | None = None) -> bool:
    """Whether an `ignore` entry covers the module `name`: a layer name (and what is inside it) or a glob, also
    against the name with leading components dropped ('bert.pooler.dense' covers nnslim's wrapped
    'model.bert.pooler.dense'; 'dense' every layer named dense; not for an entry starting with an index: '0' is
    only the top-level sequence's first layer), else a bare regex matched against the whole name (pruning's first
    syntax, still read); 're:' (searched) and 'type:' as they are."""
    if entry.startswith(("re:", "type:")):
        return _plain(entry, name, module)
    parts = name.split(".")
    tails = (0,) if entry.split(".")[0].isdigit() else range(len(parts))
    if any(_plain(entry, ".".join(parts[k:]), module) for k in tails):
        return True
    if not any(c in entry for c in "\\.^$*+?{}[]|()"):
        return False
    try:
        return re.fullmatch(entry, name) is not None
    except re.error:  # a glob such as '*conv*' is no regex
        return False


def check_scope(model: nn.Module, ignore: Iterable[str], types: tuple[type, ...] = (), field: str = "ignore") -> None:
    """Every `ignore` entry must cover some layer of the model: a typo would otherwise silently compress what it
    meant to keep. The error lists layers of `types` (else any with a weight)."""
    ignore = list(ignore)
    check_patterns(ignore, field)
    named = list(model.named_modules())
    for entry in ignore:
        if not any(matches(entry, n, m) for n, m in named if n):
            sample = [n for n, m in named if n and types and isinstance(m, types)] or \
                [n for n, m in named if n and isinstance(getattr(m, "weight", None), torch.Tensor)]
            raise NnslimError(f"{field} entry {entry!r} matches no layer of the model; layers look like: "
                              f"{', '.join(sample)[:300]}")


def check_patterns(ignore: Iterable[str], field: str = "ignore") -> None:
    """Validate scope entries up front (before any work): strings, and regexes that compile."""
    for entry in ignore:
        if not isinstance(entry, str) or not entry:
            raise NnslimError(f"{field} entry {entry!r} is not allowed; allowed: a layer name, a glob ('*conv*'), "
                              "'re:REGEX' or 'type:ClassName'")
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as e:
                raise NnslimError(f"{field} entry {entry!r} is not a valid regex: {e}") from None


def select_layers(model: nn.Module, types: tuple[type, ...], ignore: Iterable[str] = (),
                  field: str = "ignore") -> dict[str, nn.Module]:
    """Named modules of `types`, minus those matched by `ignore`. An entry matching no layer of the
    model is an error naming it (a typo would otherwise silently quantize everything)."""
    ignore = list(ignore)
    check_scope(model, ignore, types, field)
    named = list(model.named_modules())
    return {n: m for n, m in named if n and isinstance(m, types) and not any(matches(e, n, m) for e in ignore)}


HEAD = "re:(^|\\.)(lm_head|classifier|score)$"  # output heads: kept as they are unless asked


def output_heads(model: nn.Module) -> set[str]:
    """Names of the output heads: by name (lm_head / classifier / score) and, for transformers models, the module
    the model's own get_output_embeddings() returns (Whisper's proj_out, T5's lm_head, ...)."""
    named = list(model.named_modules())
    heads = {n for n, m in named if n and matches(HEAD, n, m)}
    for _, m in named:
        get = getattr(m, "get_output_embeddings", None)
        if callable(get) and hasattr(m, "config"):
            try:
                out = get()
            except (AttributeError, NotImplementedError, TypeError):  # a model class with no output embedding
                continue
            heads.update(n for n, other in named if n and other is out and isinstance(out, nn.Linear))
    return heads


# The image encoder and projector of a vision-language model (LLaVA's vision_tower / multi_modal_projector, Qwen2-VL's
# visual, Idefics' vision_model / connector, ...): kept as they are unless asked, as llm-compressor's and ModelOpt's
# VLM recipes keep them (their error reaches every image token; they are a small share of the weights).
VISION = ("re:(^|\\.)(vision_tower|vision_model|visual|vision_encoder|multi_modal_projector|mm_projector|"
          "vision_projection|connector)(\\.|$)")


def is_vision_language(model: nn.Module) -> bool:
    """A transformers model whose config has a vision and a text part and whose class generates text (LLaVA,
    Qwen2-VL, Gemma 3, ...; not a dual encoder such as CLIP)."""
    config = next((m.config for _, m in model.named_modules() if getattr(m, "config", None) is not None), None)
    has_parts = all(getattr(config, f, None) is not None for f in ("vision_config", "text_config"))
    return has_parts and any(isinstance(getattr(m, "lm_head", None), nn.Module) for _, m in model.named_modules())


def vision_linears(model: nn.Module) -> set[str]:
    """Names of the Linears inside a vision-language model's image encoder and projector (empty for others)."""
    if not is_vision_language(model):
        return set()
    parts = [n for n, m in model.named_modules() if n and matches(VISION, n, m)]
    return {n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(n == p or n.startswith(p + ".") for p in parts)}


def select_linears(model: nn.Module, ignore: Iterable[str] = (), include_head: bool = False,
                   what: str = "quantize", include_vision: bool = False) -> dict[str, nn.Linear]:
    """The nn.Linear layers a method works on: minus `ignore`, minus the output head unless asked, minus a
    vision-language model's image encoder and projector unless asked (said once), minus
    mixture-of-experts routers (graph/experts.py). Fused MoE experts blocks (3D weights) not ignored as a whole are first split into per-expert
    Linears in place (graph/experts.py), so the method reaches the experts."""
    from .experts import fused_experts, routers, split_experts

    ignore = list(ignore)
    check_patterns(ignore)
    fused = [n for n, m in fused_experts(model).items() if not any(matches(e, n, m) for e in ignore)]
    if fused:
        split_experts(model, fused, what=what)
    split_mha(model, ignore)
    layers = select_layers(model, (nn.Linear,), ignore)
    kept = routers(model)
    layers = {n: m for n, m in layers.items() if n not in kept}
    if what != "prune":  # a mask keeps the weight a tensor the model can read; a replaced layer does not
        read = direct_reads(model)
        layers = {n: m for n, m in layers.items() if n not in read}
    else:  # a mask on a weight another module owns too (a tied embedding) would untie it, or zero the other's
        tied = tied_linears(model)
        if any(n in tied for n in layers):
            from ..progress import warn

            names = [n for n in layers if n in tied]
            warn(f"{len(names)} Linear(s) kept unpruned ({', '.join(names[:3])}): their weight is shared with "
                 f"{', '.join(sorted({tied[n] for n in names}))[:200]} (tied)", once=True)
            layers = {n: m for n, m in layers.items() if n not in tied}
    if not include_head:
        heads = output_heads(model)
        layers = {n: m for n, m in layers.items() if n not in heads}
    vision = set() if include_vision else vision_linears(model) & set(layers)
    if vision:
        from ..progress import warn

        layers = {n: m for n, m in layers.items() if n not in vision}
        how = " (quantize_vision: true quantizes them too)" if what == "quantize" else ""
        warn(f"{len(vision)} Linear(s) of the vision-language model's image encoder and projector kept as they are "
             f"({sorted(vision)[0]}, ...): the language model is what is {what}d{how}", once=True)
    if not layers:
        raise NnslimError(f"{type(model).__name__} has no nn.Linear layer left to {what} "
                          f"(ignore={list(ignore)}, head included: {include_head})")
    return layers


def tied_linears(model: nn.Module) -> dict[str, str]:
    """{Linear name: another module holding the same weight tensor} (a head tied to its embedding)."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for key, p in m._parameters.items():
            if p is not None and key == "weight":
                owners.setdefault(id(p), []).append(name)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and isinstance(m.weight, torch.Tensor):
            others = [o for o in owners.get(id(m.weight), []) if o != name]
            if others:
                out[name] = others[0]
    return out


# Linears whose weight the model reads itself instead of calling the layer (nn.MultiheadAttention passes
# `out_proj.weight` to F.multi_head_attention_forward; custom code may call F.linear(x, self.proj.weight)).
# A method that replaces the layer (packed codes, factors) would change nothing the model computes there, or
# hand it a weight with no values: those layers are kept as they are, and the method says so.
DIRECT_READ = "_nnslim_weight_read_by"


def direct_reads(model: nn.Module) -> dict[str, str]:
    """{Linear name: who reads its weight directly}, from the marks left by `find_direct_reads` and the
    layers known to be read that way (nn.MultiheadAttention's out_proj)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and isinstance(getattr(m, "out_proj", None), nn.Linear):
            out[f"{name}.out_proj" if name else "out_proj"] = f"{type(m).__name__} ({name or 'the model'})"
        elif isinstance(m, nn.Linear) and getattr(m, DIRECT_READ, None):
            out.setdefault(name, getattr(m, DIRECT_READ))
    return out


def split_mha(model: nn.Module, ignore: Iterable[str] = ()) -> list[str]:
    """Split the nn.MultiheadAttention blocks `ignore` does not name into called q/k/v/out Linears
    (graph/attention.py), so that a method working on Linears reaches them."""
    from .attention import split_attention

    names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and n
             and not any(matches(e, n, m) for e in ignore)]
    return split_attention(model, names) if names else []


def direct_reads_note(model: nn.Module) -> str:
    """The note of a method that replaces layers: the nn.MultiheadAttention blocks it reached as split Linears, and
    the Linears it kept because the model reads their weight directly."""
    from .attention import SplitMultiheadAttention

    n_split = sum(isinstance(m, SplitMultiheadAttention) for m in model.modules())
    split = f"; {n_split} nn.MultiheadAttention block(s) run as q/k/v/out Linears" if n_split else ""
    read = direct_reads(model)
    if not read:
        return split
    names = ", ".join(list(read)[:3]) + (f" and {len(read) - 3} more" if len(read) > 3 else "")
    readers = ", ".join(sorted(set(read.values())))[:200]
    return split + (f"; {len(read)} Linear(s) kept as they are ({names}): their weight is read directly by "
                    f"{readers}, not through the layer")


def find_direct_reads(model: nn.Module, run) -> dict[str, str]:
    """Run `run()` (one forward of `model`) watching every torch call: a Linear's weight passed to a torch
    function while neither that Linear nor another module owning the same tensor (a tied embedding) is
    running marks the Linear as read directly (attribute reads such as `.dtype` / `.shape` do not count).
    Returns what was found, as {name: reader}, and marks the modules so later selections skip them."""
    from torch.overrides import TorchFunctionMode

    owners: dict[int, list[nn.Module]] = {}
    linears = {}
    for name, m in model.named_modules():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(m)
        if isinstance(m, nn.Linear) and isinstance(m.weight, torch.Tensor):
            linears[id(m.weight)] = name
    active: list[nn.Module] = []  # the modules running now, innermost last
    found: dict[str, str] = {}

    def enter(mod, *_):
        active.append(mod)

    def leave(mod, *_):
        if active and active[-1] is mod:
            active.pop()

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            fname = getattr(func, "__name__", "")
            if active and fname not in _METADATA:  # (with no module running, the caller is not the model)
                for t in _tensors(args, kwargs):
                    name = linears.get(id(t))
                    if name is not None and name not in found and not any(
                            o is a for o in owners[id(t)] for a in active):
                        found[name] = f"{type(active[-1]).__name__} ({fname or func})"
            return func(*args, **kwargs)

    hooks = []
    try:
        for m in model.modules():
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave, always_call=True)]
        with Watch():
            run()
    finally:
        for h in hooks:
            h.remove()
    for name, reader in found.items():
        setattr(model.get_submodule(name), DIRECT_READ, reader)
    return found


# calls that read only what a packed layer's meta `weight` view also has
_METADATA = {"__get__", "is_floating_point", "is_complex", "dim", "size", "numel", "element_size", "stride",
             "is_contiguous", "__len__", "storage_offset", "__format__", "__repr__", "__hash__"}


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (x for x in a if isinstance(x, torch.Tensor))
