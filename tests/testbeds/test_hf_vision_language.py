"""Vision-language models (image-text-to-text: LLaVA here): image + prompt -> text, measured teacher-forced on the
fp32 model's greedy answer; the language model is compressed, the image encoder and projector kept unless asked;
ONNX methods refused before any work."""
from __future__ import annotations

import json

import pytest
from safetensors import safe_open

import nnslim
from nnslim.errors import NnslimError

from hf_zoo import _build  # noqa: E402

pytestmark = pytest.mark.usefixtures("exact_cpu_kernels")  # tests/conftest.py


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return _build("llava", tmp_path_factory.mktemp("zoo"))


def _dtypes(folder) -> dict[str, str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_llava_is_measured_on_its_own_answers_and_its_language_model_quantized(llava, tmp_path):
    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.vision_language import ImageTextTestbed

    tb = testbed_for_hf_dir(llava)
    assert isinstance(tb, ImageTextTestbed) and tb.task == "image-text-to-text"
    feed = tb.example_inputs()
    assert {"input_ids", "attention_mask", "pixel_values"} <= set(feed) and feed["pixel_values"].shape[-1] == 32
    assert int((feed["input_ids"] == 30522).sum()) == 16  # the chat template placed the image: 4 x 4 patches
    ref = nnslim.evaluate(str(llava))["metrics"]
    assert ref["top1_agreement"] == 1.0 and ref["logits_cos_min"] == pytest.approx(1.0)
    from nnslim.runtime.base import TorchRunner  # the report's decode rate: the model's own generate() and cache

    tokens, rate = TorchRunner(tb.load_model()).decode(tb.decode_prompt(), 4)
    assert len(tokens) == 4 and rate > 0
    res = nnslim.compress(str(llava), "int4-rtn", out=tmp_path / "q", report=False)
    metrics = nnslim.evaluate(str(res.out), testbed=str(llava))["metrics"]
    assert 0.3 < metrics["top1_agreement"] < 1 and 0.98 < metrics["logits_cos_mean"] < 1
    assert metrics["perplexity_of_fp32_output"] > ref["perplexity_of_fp32_output"] * 0.9
    # the artifact: processor files beside it, codes for the language model only
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json"} <= {p.name for p in res.out.iterdir()}
    dtypes = _dtypes(res.out)
    assert any(k.startswith("model.language_model.layers.0.self_attn.q_proj.weight_packed") for k in dtypes)
    vision = [k for k in dtypes if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))]
    assert vision and all(dtypes[k] == "F32" and "packed" not in k for k in vision)


def test_llava_vision_tower_quantized_when_asked(llava, tmp_path):
    step = {"method": "int4-rtn", "group_size": 32, "quantize_vision": True}
    res = nnslim.compress(str(llava), {"steps": [step]}, out=tmp_path / "q", report=False)
    dtypes = _dtypes(res.out)
    assert any(k.startswith("model.vision_tower.") and k.endswith("weight_packed") for k in dtypes)
    assert any(k.startswith("model.multi_modal_projector.") and k.endswith("weight_packed") for k in dtypes)
    assert json.loads((res.out / "config.json").read_text())["quantization_config"]


def test_llava_onnx_methods_refused_before_any_work(llava, tmp_path):
    with pytest.raises(NnslimError, match=r"step 0 \('int8-dynamic'\) is deployed as an ONNX export, which nnslim "
                                          "cannot do yet for vision-language models"):
        nnslim.compress(str(llava), "int8-dynamic", out=tmp_path / "q", report=False)
    assert not (tmp_path / "q").exists()


def test_llava_structured_pruning_keeps_the_vision_tower_and_writes_its_text_config(llava, tmp_path):
    """The language model's FFN neurons and heads go, the image encoder and projector stay; the widths land in the
    saved text_config, so transformers builds the pruned model from the folder."""
    import transformers

    res = nnslim.compress(str(llava), {"steps": [{"method": "prune-structured", "ratio": 0.5}]}, out=tmp_path / "p",
                          report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "hf"
    before, after = (json.loads((d / "config.json").read_text()) for d in (llava, res.out))
    assert after["vision_config"]["intermediate_size"] == before["vision_config"]["intermediate_size"]
    assert after["text_config"]["intermediate_size"] < before["text_config"]["intermediate_size"]
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(res.out))
    assert model.model.language_model.layers[0].mlp.up_proj.out_features == after["text_config"]["intermediate_size"]
    assert any("image encoder and projector kept" in n for n in res.notes)


def test_gemma3_image_tokens_typed_and_pruned_into_a_transformers_folder(tmp_path):
    """Gemma 3 (listed by the causal-LM mapping too) is measured as a vision-language model: its processor's
    token_type_ids (1 at image tokens) grow with the answer; structured pruning leaves the SigLIP tower's pooling
    attention as the config builds it, so the pruned folder loads in transformers."""
    import transformers

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.vision_language import ImageTextTestbed

    src = _build("gemma3-vl", tmp_path)
    tb = testbed_for_hf_dir(src)
    feed = tb.example_inputs()
    assert isinstance(tb, ImageTextTestbed) and int(feed["token_type_ids"].sum()) == 4
    assert tb.example_inputs(batch=2)["pixel_values"].shape[0] == 2  # one image list per sample, padded prompts
    assert tb._extend(feed, feed["input_ids"][:, :2])["token_type_ids"][0, -2:].tolist() == [0, 0]
    assert nnslim.evaluate(str(src))["metrics"]["top1_agreement"] == 1.0
    res = nnslim.compress(str(src), {"steps": [{"method": "prune-structured", "ratio": 0.5}]}, out=tmp_path / "p",
                          report=False)
    assert json.loads((res.out / "nnslim.json").read_text())["format"] == "hf"
    transformers.AutoModelForImageTextToText.from_pretrained(str(res.out))


def test_llava_reads_the_users_image_text_pairs(llava, tmp_path):
    """A table naming image files (relative to it) and prompts, or a folder of images (each asked PROMPT): images of
    any size, the processor resizes them; a table without an image column is refused naming what is allowed."""
    import numpy as np
    from PIL import Image

    from nnslim.testbeds import testbed_for_hf_dir
    from nnslim.testbeds.vision_language import PROMPT, read_image_texts

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(3):
        Image.fromarray((rng.random((20 + 6 * i, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "question": f"What is in picture {i}?"})
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    pairs = read_image_texts(table, "eval")
    assert [im.shape for im in pairs.images] == [(20, 30, 3), (26, 30, 3), (32, 30, 3)] and pairs.texts[2] == rows[2][
        "question"]
    folder = read_image_texts(tmp_path / "imgs", "calibration")
    assert len(folder.images) == 3 and folder.texts == []
    tb = testbed_for_hf_dir(llava)
    tb.use_data(folder, pairs)
    assert tb._pairs("calibration", 8)[0][1] == PROMPT and tb._pairs("eval", 8)[1][1] == rows[1]["question"]
    metrics = nnslim.evaluate(str(llava), eval_data=str(table))["metrics"]
    assert metrics["top1_agreement"] == 1.0
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "no image here"}))
    with pytest.raises(NnslimError, match="has no image path column"):
        read_image_texts(tmp_path / "bad.jsonl", "eval")
