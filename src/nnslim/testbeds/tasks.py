"""The task of a Hugging Face model dir, read from its config with transformers' own auto-model mappings.

`architectures` in config.json names the class the checkpoint was saved from; the task is the auto
mapping that lists that class (GPT2LMHeadModel and LlamaForCausalLM are both causal LMs). A config
without architectures falls back to its model_type (a bare encoder). Unknown: a clear error naming
the tasks nnslim knows and the --task flag that forces one.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import NnslimError, short_repr

# task -> name of the transformers mapping (modeling_auto.*_MAPPING_NAMES), most specific first.
TASK_MAPPINGS = {
    # before causal-lm: that mapping lists some vision-language classes too (Gemma3ForConditionalGeneration)
    "image-text-to-text": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "seq2seq": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "speech-seq2seq": "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "token-classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "question-answering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "semantic-segmentation": "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "object-detection": "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "ctc": "MODEL_FOR_CTC_MAPPING_NAMES",
    "depth-estimation": "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "audio-classification": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "multiple-choice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "fill-mask": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",  # after seq2seq: it lists BART's generator too
    "feature-extraction": "MODEL_MAPPING_NAMES",
    # recognised, so that the refusal names the task (no testbed yet: their outputs, data and metric differ)
    "universal-segmentation": "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
    "pretraining": "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
}
# Tasks nnslim has a testbed for (data, metric, export); the others are detected and refused clearly.
SUPPORTED = ("causal-lm", "seq2seq", "speech-seq2seq", "sequence-classification", "token-classification",
             "question-answering", "fill-mask", "image-classification", "semantic-segmentation",
             "object-detection", "ctc", "depth-estimation", "image-text-to-text", "multiple-choice",
             "audio-classification", "feature-extraction")


def _mapping(name: str) -> dict:
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, name, {}) or {}


def _classes(mapping: dict) -> set[str]:
    out: set[str] = set()
    for value in mapping.values():
        out.update(value if isinstance(value, (tuple, list)) else [value])
    return out


def detect_task(config: dict, where: str | Path = "config.json") -> str:
    """The task of an HF config (a dict of config.json), from its architectures, else its model_type."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise NnslimError(f"{str(where)!r}: architectures={short_repr(archs)} is not a list of names")
    for arch in archs:
        for task, mapping in TASK_MAPPINGS.items():
            if arch in _classes(_mapping(mapping)):
                return task
    model_type = config.get("model_type")
    known_type = isinstance(model_type, str) and model_type in _mapping(TASK_MAPPINGS["feature-extraction"])
    if known_type and (not archs or all(_is_base_class(a) for a in archs)):  # T5EncoderModel, CLIPVisionModel
        return "feature-extraction"
    raise NnslimError(f"{str(where)!r}: the task of architectures={short_repr(archs)} (model_type="
                      f"{short_repr(model_type)}) is not known; known tasks: {', '.join(SUPPORTED)}; force one "
                      "with --task (task= in Python)")


def _is_base_class(name: str) -> bool:
    """A transformers model class without a task head (T5EncoderModel, CLIPVisionModel, BertModel)."""
    import transformers

    return name.endswith("Model") and not name.endswith("PreTrainedModel") and hasattr(transformers, name)


def feature_class(config: dict):
    """The transformers class a feature-extraction model is built with: the config's own architecture where it
    is a base class (T5EncoderModel: AutoModel would build the whole encoder-decoder), else AutoModel."""
    import transformers

    archs = config.get("architectures") or []
    if len(archs) == 1 and isinstance(archs[0], str) and _is_base_class(archs[0]):
        return getattr(transformers, archs[0])
    return transformers.AutoModel


def feature_modality(config: dict, where: str | Path = "config.json") -> str:
    """'image' or 'text': what the feature-extraction model takes (its class's main input). A dual encoder
    (CLIP, SigLIP: a text and a vision tower) is refused: each tower is its own model."""
    if isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict):
        raise NnslimError(f"{str(where)!r}: {short_repr(config.get('model_type'))} is a dual (text + image) encoder, "
                          "which nnslim has no testbed for yet; compress its towers as their own models (e.g. "
                          "CLIPVisionModel / CLIPTextModel saved with save_pretrained)")
    cls = feature_class(config)
    if cls.__name__ == "AutoModel":
        name = _mapping("MODEL_MAPPING_NAMES").get(config.get("model_type"))
        import transformers

        cls = getattr(transformers, name, None) if isinstance(name, str) else None
    main = getattr(cls, "main_input_name", "input_ids")
    if main in ("input_values", "input_features"):
        raise NnslimError(f"{str(where)!r}: a bare speech encoder ({short_repr(config.get('model_type'))}) has no "
                          "feature-extraction testbed yet; a CTC or audio-classification head has one")
    return "image" if main == "pixel_values" else "text"


def check_task(task: str) -> str:
    if task not in SUPPORTED:
        from ..errors import bad_value

        if task in TASK_MAPPINGS:
            raise NnslimError(f"task {task!r} is recognised but nnslim has no testbed for it yet (its metric, "
                              f"data and export are not written); supported: {', '.join(SUPPORTED)}")
        raise bad_value("--task", task, list(SUPPORTED))
    return task
