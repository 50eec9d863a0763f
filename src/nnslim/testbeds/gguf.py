"""GGUF models (llama.cpp's format) as input: the file is dequantized once by transformers' GGUF reader into a
Hugging Face safetensors dir in nnslim's cache, which is then read like any model dir. A GGUF holds tensors and
metadata only (no code), so reading one runs nothing from it."""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..errors import NnslimError
from ..io import cache_dir
from ..progress import stage, warn

BF16_ABOVE = 2 << 30  # a GGUF larger than this (2 GiB: ~1B parameters at 8 bits) is dequantized to bf16, not fp32


def converted_gguf_dir(gguf: Path, name: str | None = None) -> Path:
    """The Hugging Face dir (config, tokenizer, safetensors) of GGUF file `gguf`, converted on first use; the cache
    entry is `name` or one keyed by the file's path, size and modification time (a changed file converts again)."""
    gguf = Path(gguf)
    if name is None:
        st = gguf.stat()
        key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        name = f"gguf-{gguf.stem}-{key}"
    out = cache_dir() / name
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        if _cache_ok(out):
            return out
        warn(f"the cached conversion {str(out)!r} of {gguf.name} is damaged; converting the GGUF again")
        shutil.rmtree(out, ignore_errors=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if gguf.stat().st_size > BF16_ABOVE else torch.float32
    stage(f"converting {gguf.name} to a Hugging Face dir ({str(dtype).replace('torch.', '')}) in {out.parent}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
            lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype,
                                                      trust_remote_code=False)
        except ImportError as e:
            raise NnslimError(f"reading {gguf.name} needs the package gguf (pip install gguf): {e}") from None
        except Exception as e:  # a truncated or damaged GGUF, or an architecture transformers cannot read from GGUF
            raise NnslimError(f"{str(gguf)!r} could not be read as a GGUF model: "
                              f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None
    # The weights are already dequantized; drop the GGUF marker so it saves as plain safetensors.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    lm.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if out.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def _cache_ok(directory: Path) -> bool:
    """The converted dir parses: JSON configs and safetensors headers (cheap: no weights are read)."""
    import json

    from ..io import stored_shapes

    try:
        for name in ("config.json", "tokenizer_config.json"):
            json.loads((directory / name).read_text())
        weights = sorted(directory.glob("*.safetensors"))
        for w in weights:
            stored_shapes(w)
        return bool(weights)
    except (OSError, ValueError, NnslimError):
        return False
