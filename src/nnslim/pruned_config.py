"""The transformers config of a structurally pruned Hugging Face model: FFN widths and head counts fitted to the
pruned layers, per sub-config where the model has them (a vision-language model's text_config / vision_config),
checked by building the model from the new config on the meta device (ecosystem.write_hf saves it)."""
from __future__ import annotations

import copy

import torch
from torch import nn

FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff")
HEAD_KEYS = (("num_attention_heads", "num_key_value_heads"),)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_meta(hf: nn.Module, config) -> nn.Module | None:
    try:
        with torch.device("meta"):
            built = type(hf)._from_config(config)
    except Exception:  # a config transformers rejects: not expressible
        return None
    if getattr(hf, "nnslim_conv1d", None):
        from .graph.modules import linear_conv1d

        built = linear_conv1d(built)
    if any(hasattr(m, "nnslim_weight_norm") for m in hf.modules()):  # compared in the folded form
        from .graph.modules import fold_foreign_parametrizations

        fold_foreign_parametrizations(built)
    return built


def pruned_config(hf: nn.Module):
    """(config, None): a copy of hf.config whose shapes are those of the (structurally pruned) model; or
    (None, why) when the config cannot express them (widths that differ per layer, heads of a model that
    derives the head size from the hidden size). Checked by building the model from the new config on the meta
    device."""
    config = copy.deepcopy(hf.config)
    want = _shapes(hf)
    fresh = build_meta(hf, config)
    if fresh is None:
        return None, f"transformers cannot build {type(hf).__name__} from its own config"
    if _shapes(fresh) == want:
        return config, None
    parts = _config_parts(fresh, config)
    changed: dict[int, set[int]] = {}  # original output width -> new widths of the layers that shrank (all parts)
    for part, prefix in parts:
        inside = _part_changes(fresh, want, prefix, [p for _, p in parts if p != prefix and p.startswith(prefix)])
        for width, new in inside.items():
            changed.setdefault(width, set()).update(new)
        _fit_part(hf, config, part, inside, want)
    built = build_meta(hf, config)
    got = _shapes(built) if built is not None else _shapes(fresh)
    if got == want:
        return config, None
    shrunk = sorted({k.rsplit(".", 1)[0] for k, shape in want.items()
                     if k.endswith(".weight") and k in got and shape[:1] != got[k][:1]})
    why = [f"no {type(hf).__name__} config gives the pruned outputs of "
           f"{', '.join(shrunk[:4]) + (f' and {len(shrunk) - 4} more' if len(shrunk) > 4 else '') or 'its layers'}"]
    if any(len(new) > 1 for new in changed.values()):
        why.append("its layers were pruned to different widths (prune with scope uniform)")
    attention = [n for n in shrunk if "attn" in n or "attention" in n]
    if attention:
        why.append("it derives the head size from the hidden size, so a pruned head count cannot be written "
                   "(prune with head_ratio=0: FFN neurons only)")
    other = [n for n in shrunk if n not in attention]
    if other:
        why.append(f"keep {'them' if len(other) == len(shrunk) else 'the others'} with ignore={other[:4]}")
    return None, "; ".join(why)


def _config_parts(fresh: nn.Module, config) -> list[tuple[object, str]]:
    """(config, module prefix) of the model and of each sub-model with a config of its own (a vision-language
    model's text and vision parts: their widths live in text_config / vision_config)."""
    from transformers import PretrainedConfig

    own = [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]  # saved with the config (a
    parts: list[tuple[object, str]] = [(config, "")]  # stack's private copy, T5's, is not: its widths are the top's)
    for name, m in fresh.named_modules():
        sub = getattr(m, "config", None)
        if name and any(sub is v for v in own) and all(sub is not p for p, _ in parts):
            parts.append((sub, name + "."))
    return parts


def _part_changes(fresh: nn.Module, want: dict, prefix: str, deeper: list[str]) -> dict[int, set[int]]:
    """{original output width: new widths} of the Linears under `prefix` (not under a deeper part's) that shrank."""
    changed: dict[int, set[int]] = {}
    for name, m in fresh.named_modules():
        key = f"{name}.weight"
        if not isinstance(m, nn.Linear) or key not in want or not key.startswith(prefix):
            continue
        if any(key.startswith(d) for d in deeper):
            continue
        new_out = want[key][0]
        if new_out != m.out_features:
            changed.setdefault(m.out_features, set()).add(new_out)
    return changed


def _fit_part(hf: nn.Module, config, part, changed: dict[int, set[int]], want: dict) -> None:
    """Set `part`'s (config or a sub-config of it) FFN width and head counts to what its pruned layers give."""
    for key in FFN_KEYS:
        old = getattr(part, key, None)
        if isinstance(old, int) and len(changed.get(old, ())) == 1:
            setattr(part, key, next(iter(changed[old])))
        elif old is None and key in part.to_dict():  # unset: derived (GPT-2's n_inner, 4 x hidden)
            _set_derived_width(hf, config, part, key, changed, want)
    heads_key, kv_key = HEAD_KEYS[0]
    heads = getattr(part, heads_key, None)
    heads = heads if isinstance(heads, int) else None  # Swin: one head count per stage (a list)
    hidden = getattr(part, "hidden_size", None)
    head_dim = getattr(part, "head_dim", None) or (hidden // heads if heads and isinstance(hidden, int) else None)
    if heads and isinstance(head_dim, int):
        q_width = heads * head_dim
        if len(changed.get(q_width, ())) == 1:
            before = copy.deepcopy(config)
            saved = {k: getattr(part, k, None) for k in ("head_dim", heads_key, kv_key)}
            part.head_dim = head_dim
            new_heads = next(iter(changed[q_width])) // head_dim
            kv = getattr(part, kv_key, None)
            if kv and kv * head_dim != q_width and len(changed.get(kv * head_dim, ())) == 1:
                setattr(part, kv_key, next(iter(changed[kv * head_dim])) // head_dim)
            elif kv and kv * head_dim == q_width:  # no GQA: keys / values shrink with the queries
                setattr(part, kv_key, new_heads)
            setattr(part, heads_key, new_heads)
            unchanged = build_meta(hf, before)
            if unchanged is not None and _shapes(unchanged) == _shapes(build_meta(hf, config) or unchanged):
                # the head count changes no shape (BERT: head size = hidden / heads): what shrank to the
                # attention width was another layer (a pooler), and a new head count would be wrong
                for k, v in saved.items():
                    setattr(part, k, v)


def _set_derived_width(hf: nn.Module, config, part, key: str, changed: dict[int, set[int]], want: dict) -> None:
    """Set an unset width key of `part` to the one pruned width that makes more layers of the rebuilt model match."""
    def matches():
        built = build_meta(hf, config)
        return -1 if built is None else sum(want.get(k) == v for k, v in _shapes(built).items())

    best, best_value = matches(), None
    for new in changed.values():
        if len(new) != 1:
            continue
        setattr(part, key, next(iter(new)))
        score = matches()
        if score > best:
            best, best_value = score, next(iter(new))
    setattr(part, key, best_value)
