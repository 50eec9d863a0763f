"""Feature extraction beyond sentence encoders: image backbones (DINOv2, ViTModel, CLIPVisionModel: the pooled
output as the embedding), encoder-only T5 (built as its own class, not AutoModel's encoder-decoder), and dual
encoders refused with a reason."""
from __future__ import annotations

import json

import pytest
import torch

import nnslim
from nnslim.errors import NnslimError

from hf_zoo import _build  # noqa: E402


pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("enczoo")
    return {kind: _build(kind, root) for kind in ("dinov2", "t5-encoder")}


def test_image_backbone_is_an_image_encoder_whose_artifacts_reload(zoo, tmp_path):
    import onnx
    from transformers import Dinov2Model

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.image_encoder import ImageEncoderTestbed

    tb = testbed_for_hf_dir(zoo["dinov2"])
    assert isinstance(tb, ImageEncoderTestbed) and tb.task == "feature-extraction"
    assert set(tb.example_inputs(2)) == {"pixel_values"}
    assert nnslim.evaluate(str(zoo["dinov2"]))["metrics"]["cos_mean"] == pytest.approx(1.0)
    res = nnslim.compress(str(zoo["dinov2"]), "int8", out=tmp_path / "q", report=False)
    graph = onnx.load(str(res.out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["image_embedding"]
    assert any(n.op_type in ("QLinearMatMul", "MatMulInteger", "QuantizeLinear") for n in graph.node)
    metrics = nnslim.evaluate(str(res.out), testbed=str(zoo["dinov2"]))["metrics"]
    assert metrics["cos_mean"] > 0.99 and 0 < metrics["top10_overlap"] <= 1
    half = nnslim.compress(str(zoo["dinov2"]), "fp16", out=tmp_path / "h", report=False).out
    assert json.loads((half / "nnslim.json").read_text())["format"] == "hf"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the checkpoint loads in transformers, pooled output = nnslim's before normalization
        pooled = Dinov2Model.from_pretrained(str(half)).float()(pixel_values=x).pooler_output
        ours = nnslim.load(half)(x)
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), ours.float(), atol=2e-3, rtol=0)


def test_encoder_only_t5_is_built_as_its_own_class(zoo, tmp_path):
    """T5EncoderModel's config says model_type t5, whose AutoModel is the encoder-decoder (it would need decoder
    inputs): the architecture's own class is built, from the weights and from an artifact's config alone."""
    from nnslim.testbeds import testbed_for_hf_dir

    tb = testbed_for_hf_dir(zoo["t5-encoder"])
    assert tb.task == "feature-extraction" and type(tb.load_model().encoder).__name__ == "T5EncoderModel"
    res = nnslim.compress(str(zoo["t5-encoder"]), {"steps": [{"method": "int4-rtn", "group_size": 32}]},
                          out=tmp_path / "q", report=False)
    metrics = nnslim.evaluate(str(res.out), testbed=str(zoo["t5-encoder"]))["metrics"]
    assert metrics["cos_mean"] > 0.95
    rebuilt = testbed_for_hf_dir(zoo["t5-encoder"], weights=False).load_model()
    assert type(rebuilt.encoder).__name__ == "T5EncoderModel"


def test_dual_encoders_and_bare_speech_encoders_are_refused_with_the_reason(tmp_path):
    from nnslim.testbeds.tasks import detect_task, feature_modality

    clip = {"model_type": "clip", "architectures": ["CLIPModel"], "text_config": {}, "vision_config": {}}
    assert detect_task(clip) == "feature-extraction"
    with pytest.raises(NnslimError, match="dual .text \\+ image. encoder.*CLIPVisionModel"):
        feature_modality(clip)
    with pytest.raises(NnslimError, match="bare speech encoder"):
        feature_modality({"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]})
    assert feature_modality({"model_type": "t5", "architectures": ["T5EncoderModel"]}) == "text"
    assert feature_modality({"model_type": "vit", "architectures": ["ViTModel"]}) == "image"
    from nnslim.testbeds.tasks import check_task

    assert detect_task({"architectures": ["DPTForDepthEstimation"]}) == "depth-estimation"  # a testbed since s55
    check_task("depth-estimation")
    assert detect_task({"architectures": ["Qwen2VLForConditionalGeneration"]}) == "image-text-to-text"  # since s56
    # listed by the causal-LM mapping too, but a vision-language model
    assert detect_task({"architectures": ["Gemma3ForConditionalGeneration"]}) == "image-text-to-text"
    check_task("image-text-to-text")
    assert detect_task({"architectures": ["BertForMultipleChoice"]}) == "multiple-choice"  # a testbed since s56
    for arch, task in [("Mask2FormerForUniversalSegmentation", "universal-segmentation")]:  # named, then refused
        assert detect_task({"architectures": [arch]}) == task
        with pytest.raises(NnslimError, match=f"task '{task}' is recognised but nnslim has no testbed"):
            check_task(task)
