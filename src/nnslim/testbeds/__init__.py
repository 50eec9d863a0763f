"""Embedded real testbeds: each a model, disjoint calibration/evaluation data and a metric."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import NnslimError, bad_value, short_repr
from .base import HF_META_FILES, HFTestbed, ModuleTestbed, Testbed, check_hf_dir
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
                       name: str | None = None, task: str | None = None) -> Testbed:
    """A testbed for a user's Hugging Face model dir, by its task (from config.json unless `task` is given):
    causal LMs get perplexity, classifiers top-1 agreement, encoders embedding fidelity.

    weights=False: the architecture comes from config.json alone (an artifact's copy of it)."""
    from .classifier import TEXT_HEADS, ImageClassifierTestbed, TextClassifierTestbed
    from .tasks import check_task, detect_task

    path = Path(path)
    config = check_hf_dir(path, trust_remote_code)
    task = check_task(task if task is not None else detect_task(config, path / "config.json"))
    name = name or f"hf:{path.name}"
    options = dict(name=name, trust_remote_code=trust_remote_code, weights=weights)
    if task == "causal-lm":
        return CausalLMTestbed(path, **options)
    if task == "seq2seq":
        from .seq2seq import Seq2SeqTestbed

        return Seq2SeqTestbed(path, **options)
    if task in ("speech-seq2seq", "ctc", "audio-classification"):
        from .speech import AudioEncoderTestbed, SpeechSeq2SeqTestbed

        return SpeechSeq2SeqTestbed(path, **options) if task == "speech-seq2seq" else \
            AudioEncoderTestbed(path, task, **options)
    if task == "feature-extraction":
        from .tasks import feature_modality

        if feature_modality(config, path / "config.json") == "image":
            from .image_encoder import ImageEncoderTestbed

            return ImageEncoderTestbed(path, **options)
        return TextEncoderTestbed(path, **options)
    if task == "fill-mask":
        from .masked_lm import MaskedLMTestbed

        return MaskedLMTestbed(path, **options)
    if task in TEXT_HEADS:
        return TextClassifierTestbed(path, task, **options)
    if task == "semantic-segmentation":
        from .segmentation import SegmentationTestbed

        return SegmentationTestbed(path, **options)
    if task == "depth-estimation":
        from .depth import DepthTestbed

        return DepthTestbed(path, **options)
    if task == "multiple-choice":
        from .multiple_choice import MultipleChoiceTestbed

        return MultipleChoiceTestbed(path, **options)
    if task == "image-text-to-text":
        from .vision_language import ImageTextTestbed

        return ImageTextTestbed(path, **options)
    if task == "object-detection":
        from .detection import DetectionTestbed

        return DetectionTestbed(path, **options)
    return ImageClassifierTestbed(path, **options)


__all__ = ["TESTBEDS", "Testbed", "ModuleTestbed", "get_testbed", "testbed_for_hf_dir",
           "DigitsTestbed", "TextEncoderTestbed", "CausalLMTestbed", "HFTestbed"]
