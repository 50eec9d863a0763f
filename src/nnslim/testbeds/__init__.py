"""Embedded real testbeds: each a model, disjoint calibration/evaluation data and a metric."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import NnslimError, bad_value, short_repr
from .base import HF_META_FILES, ModuleTestbed, Testbed, check_hf_dir
from .digits import DigitsTestbed
from .minilm import TextEncoderTestbed
from .smollm2 import CausalLMTestbed

TESTBEDS: dict[str, Callable[[], Testbed]] = {
    "digits-cnn": DigitsTestbed,
    "minilm": TextEncoderTestbed,
    "smollm2": CausalLMTestbed,
}


def get_testbed(name: str, **options) -> Testbed:
    if name not in TESTBEDS:
        raise bad_value("testbed", name, list(TESTBEDS))
    return TESTBEDS[name](**options)


def testbed_for_hf_dir(path: str | Path, trust_remote_code: bool = False, weights: bool = True,
                       name: str | None = None) -> Testbed:
    """A testbed for a user's Hugging Face model directory: causal LMs get perplexity, encoders fidelity.

    weights=False: the architecture comes from config.json alone (an artifact's copy of it)."""
    path = Path(path)
    config = check_hf_dir(path, trust_remote_code)
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise NnslimError(f"{str(path / 'config.json')!r}: architectures={short_repr(archs)} is not a list of names")
    name = name or f"hf:{path}"
    cls = CausalLMTestbed if any(a.endswith("ForCausalLM") for a in archs) else TextEncoderTestbed
    return cls(path, name=name, trust_remote_code=trust_remote_code, weights=weights)


__all__ = ["TESTBEDS", "Testbed", "ModuleTestbed", "get_testbed", "testbed_for_hf_dir",
           "DigitsTestbed", "TextEncoderTestbed", "CausalLMTestbed"]
