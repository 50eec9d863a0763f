"""Embedded real testbeds: each a model, disjoint calibration/evaluation data and a metric."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import bad_value
from .base import ModuleTestbed, Testbed
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


def testbed_for_hf_dir(path: str | Path) -> Testbed:
    """A testbed for a user's Hugging Face model directory: causal LMs get perplexity, encoders fidelity."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    archs = config.get("architectures") or []
    name = f"hf:{path}"
    if any(a.endswith("ForCausalLM") for a in archs):
        return CausalLMTestbed(path, name=name)
    return TextEncoderTestbed(path, name=name)


__all__ = ["TESTBEDS", "Testbed", "ModuleTestbed", "get_testbed", "testbed_for_hf_dir",
           "DigitsTestbed", "TextEncoderTestbed", "CausalLMTestbed"]
