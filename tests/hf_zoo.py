"""Small random Hugging Face models of every supported task, built from configs and saved as a user would
(save_pretrained + a real tokenizer): used by the tests and by benchmarks/hf_ecosystem.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _tokenizer_files(d: Path) -> None:
    """MiniLM's real WordPiece tokenizer (vocab 30522), shipped by a package: no download."""
    from nnslim.testbeds.minilm import minilm_dir

    for name in TOKENIZER:
        if (minilm_dir() / name).is_file():
            shutil.copyfile(minilm_dir() / name, d / name)


def _build(kind: str, root: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, num_attention_heads=4, vocab_size=30522)
    bert = tf.BertConfig(hidden_size=64, intermediate_size=128, **small)
    models = {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=64, intermediate_size=128,
                                                            num_key_value_heads=2, **small)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(hidden_size=64, intermediate_size=128,
                                                            num_key_value_heads=2, **small)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=30522)),
        "bert-cls": lambda: tf.BertForSequenceClassification(tf.BertConfig(**{**bert.to_dict(), "num_labels": 3})),
        "distilbert-tok": lambda: tf.DistilBertForTokenClassification(tf.DistilBertConfig(
            dim=64, hidden_dim=128, n_layers=2, n_heads=4, vocab_size=30522, num_labels=5)),
        "bert-qa": lambda: tf.BertForQuestionAnswering(bert),
        "bert-mc": lambda: tf.BertForMultipleChoice(bert),
        "bert": lambda: tf.BertModel(bert),
        "bert-mlm": lambda: tf.BertForMaskedLM(bert),  # bert-base-uncased / roberta-base are saved with this head
        "t5": lambda: tf.T5ForConditionalGeneration(tf.T5Config(
            d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=30522,
            pad_token_id=0, decoder_start_token_id=0, eos_token_id=102)),
        "bart": lambda: tf.BartForConditionalGeneration(tf.BartConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128, vocab_size=30522, pad_token_id=0,
            bos_token_id=101, eos_token_id=102, decoder_start_token_id=102)),
        "vit": lambda: tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, num_labels=4)),
    }
    models.update(_more(tf, small))
    models.update(_wider(tf, small))
    models.update(_speech(tf))
    d = root / kind
    models[kind]().eval().save_pretrained(str(d))
    if kind in ("segformer", "detr"):  # its config has no image size: the preprocessor's (512 x 512 for the real ones)
        (d / "preprocessor_config.json").write_text('{"size": {"height": 64, "width": 64}, "image_mean": '
                                                    '[0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}')
    if TASKS.get(kind, MORE.get(kind)) not in ("image-classification", *SPEECH.values()) and kind not in IMAGE_ENCODERS:
        _tokenizer_files(d)
    if kind == "llava":
        _llava_processor(tf, d)
    if kind == "gemma3-vl":
        _gemma3_processor(tf, d)
    return d


GEMMA3_CHAT = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == "
               "'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _gemma3_processor(tf, d: Path) -> None:
    """Gemma 3's processor: image soft / begin / end tokens (ids 30522-30524, the config's), a SigLIP image processor
    at 32 x 32, 4 soft tokens per image (token_type_ids mark them), a chat template placing the image."""
    tok = tf.AutoTokenizer.from_pretrained(str(d), extra_special_tokens={
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    assert tok.convert_tokens_to_ids(["<image_soft_token>", "<start_of_image>", "<end_of_image>"]) == [30522, 30523,
                                                                                                       30524]
    tf.Gemma3Processor(image_processor=tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                       chat_template=GEMMA3_CHAT, image_seq_length=4).save_pretrained(str(d))


LLAVA_CHAT = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}"
              "{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _llava_processor(tf, d: Path) -> None:
    """LLaVA's processor as llava-hf saves it: the tokenizer with an <image> token (id 30522, the config's
    image_token_index), a CLIP image processor at the tower's 32 x 32, a chat template placing the image."""
    tok = tf.AutoTokenizer.from_pretrained(str(d))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert tok.convert_tokens_to_ids("<image>") == 30522
    images = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tf.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                      num_additional_image_tokens=1, image_token="<image>",
                      chat_template=LLAVA_CHAT).save_pretrained(str(d))


def _wider(tf, small: dict) -> dict:
    """WIDER: the architectures of a 2026-12-07 probe beyond MORE (benchmarks/hf_ecosystem.py --kinds wider): a
    state-space LM, multi-head latent attention, attention whose q/k/v read inputs of different widths (MobileBERT),
    windowed / block-sparse / pooling encoders, vision towers of dual encoders."""
    dec = dict(hidden_size=64, intermediate_size=128, num_key_value_heads=2, **small)
    enc = dict(hidden_size=64, intermediate_size=128, **small)
    s2s = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
               encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128, vocab_size=30522,
               pad_token_id=0, eos_token_id=102)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    return {
        "cohere": lambda: tf.CohereForCausalLM(tf.CohereConfig(**dec)),
        "glm4": lambda: tf.Glm4ForCausalLM(tf.Glm4Config(head_dim=16, pad_token_id=0, **dec)),
        "starcoder2": lambda: tf.Starcoder2ForCausalLM(tf.Starcoder2Config(**dec)),
        "gptj": lambda: tf.GPTJForCausalLM(tf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                         vocab_size=30522)),
        "codegen": lambda: tf.CodeGenForCausalLM(tf.CodeGenConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                                  vocab_size=30522)),
        "mamba": lambda: tf.MambaForCausalLM(tf.MambaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=30522,
                                                            state_size=8)),
        "deepseekv3": lambda: tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(
            hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=30522, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
            topk_group=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16)),
        "phimoe": lambda: tf.PhimoeForCausalLM(tf.PhimoeConfig(num_local_experts=4, num_experts_per_tok=2, **dec)),
        "pegasus": lambda: tf.PegasusForConditionalGeneration(tf.PegasusConfig(decoder_start_token_id=0, **s2s)),
        "m2m100": lambda: tf.M2M100ForConditionalGeneration(tf.M2M100Config(decoder_start_token_id=102, **s2s)),
        "longformer-cls": lambda: tf.LongformerForSequenceClassification(tf.LongformerConfig(
            num_labels=2, attention_window=8, **enc)),
        "bigbird-cls": lambda: tf.BigBirdForSequenceClassification(tf.BigBirdConfig(
            num_labels=2, attention_type="original_full", **enc)),
        "funnel-cls": lambda: tf.FunnelForSequenceClassification(tf.FunnelConfig(
            num_labels=2, d_model=64, n_head=4, d_head=16, d_inner=128, block_sizes=[1, 1], vocab_size=30522)),
        "mobilebert-cls": lambda: tf.MobileBertForSequenceClassification(tf.MobileBertConfig(
            num_labels=2, hidden_size=64, embedding_size=32, intra_bottleneck_size=32, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, vocab_size=30522)),
        "clip-vision": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision)),
        "siglip-vision": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**vision)),
        "mobilevit-cls": lambda: tf.MobileViTForImageClassification(tf.MobileViTConfig(
            image_size=64, num_labels=4, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 80])),
        "swinv2-cls": lambda: tf.Swinv2ForImageClassification(tf.Swinv2Config(
            patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=4, image_size=32)),
        "levit-cls": lambda: tf.LevitForImageClassification(tf.LevitConfig(
            image_size=64, num_labels=4, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
            key_dim=[8, 8, 8])),
    }


def _speech(tf) -> dict:
    """Speech models (SPEECH): Whisper with a 1 s window (100 mel frames; the real ones take 3000), wav2vec2 /
    HuBERT with the real convolution strides (320 samples a frame), as CTC recognizers and a classifier."""
    w2v = dict(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    return {
        "whisper": lambda: tf.WhisperForConditionalGeneration(tf.WhisperConfig(
            vocab_size=300, num_mel_bins=16, encoder_layers=2, decoder_layers=2, d_model=64,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
            max_source_positions=50, max_target_positions=64, decoder_start_token_id=1, pad_token_id=0,
            eos_token_id=2, bos_token_id=1, begin_suppress_tokens=None, suppress_tokens=None)),
        "wav2vec2-ctc": lambda: tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(**w2v)),
        "hubert-ctc": lambda: tf.HubertForCTC(tf.HubertConfig(**w2v)),
        "wav2vec2-cls": lambda: tf.Wav2Vec2ForSequenceClassification(tf.Wav2Vec2Config(
            num_labels=3, id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2}, **w2v)),
    }


def _more(tf, small: dict) -> dict:
    """Architectures beyond the tests' set (benchmarks/hf_ecosystem.py --kinds more): fused or per-head
    parameters, shared layers, channels-first norms, windowed attention."""
    enc = dict(hidden_size=64, intermediate_size=128, **small)
    dec = dict(hidden_size=64, intermediate_size=128, num_key_value_heads=2, **small)
    s2s = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
               encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128, vocab_size=30522,
               pad_token_id=0, eos_token_id=102)
    image = dict(num_labels=4, image_size=32)
    return {
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**dec)),
        "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(pad_token_id=0, **dec)),
        "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(head_dim=16, **dec)),
        "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(hidden_size=64, ffn_dim=128, word_embed_proj_dim=64, **small)),
        "bloom": lambda: tf.BloomForCausalLM(tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=30522)),
        "gpt-neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**enc)),
        "falcon": lambda: tf.FalconForCausalLM(tf.FalconConfig(hidden_size=64, **small)),
        "phi": lambda: tf.PhiForCausalLM(tf.PhiConfig(**enc)),
        "llava": lambda: tf.LlavaForConditionalGeneration(tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=32, patch_size=8, projection_dim=64),
            text_config=tf.LlamaConfig(**{**dec, "vocab_size": 30523}), image_token_index=30522)),
        "gemma3-vl": lambda: tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
            text_config=dict(**{**dec, "vocab_size": 30525}, head_dim=16, sliding_window=64),
            vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8),
            mm_tokens_per_image=4, image_token_index=30522, boi_token_index=30523, eoi_token_index=30524)),
        "roberta-cls": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(num_labels=2, **enc)),
        # feature extraction beyond text encoders: an image backbone and an encoder-only T5 (added 2026-12-07)
        "dinov2": lambda: tf.Dinov2Model(tf.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                         mlp_ratio=2, patch_size=8, image_size=32)),
        "t5-encoder": lambda: tf.T5EncoderModel(tf.T5Config(d_model=64, d_ff=128, d_kv=16, num_layers=2,
                                                            num_heads=4, vocab_size=30522)),
        "roberta-mlm": lambda: tf.RobertaForMaskedLM(tf.RobertaConfig(**enc)),
        "detr": lambda: tf.DetrForObjectDetection(tf.DetrConfig(  # transformers' own ResNet backbone: no timm
            use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=tf.ResNetConfig(
                embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], out_features=["stage4"]),
            d_model=64, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=16, num_labels=3)),
        "yolos": lambda: tf.YolosForObjectDetection(tf.YolosConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=[64, 64],
            patch_size=16, num_detection_tokens=10, num_labels=3)),
        "dpt-depth": lambda: tf.DPTForDepthEstimation(tf.DPTConfig(  # a ViT backbone, reassembled at 4 depths
            hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, image_size=64,
            patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=32, head_in_index=-1)),
        "segformer": lambda: tf.SegformerForSemanticSegmentation(tf.SegformerConfig(
            hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4],
            decoder_hidden_size=32, num_labels=5)),
        "deberta-cls": lambda: tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(num_labels=2, **enc)),
        "albert-cls": lambda: tf.AlbertForSequenceClassification(tf.AlbertConfig(embedding_size=32, num_labels=2,
                                                                                 **enc)),
        "electra-tok": lambda: tf.ElectraForTokenClassification(tf.ElectraConfig(embedding_size=32, num_labels=3,
                                                                                 **enc)),
        "xlmr-qa": lambda: tf.XLMRobertaForQuestionAnswering(tf.XLMRobertaConfig(**enc)),
        "mpnet": lambda: tf.MPNetModel(tf.MPNetConfig(**enc)),
        "deit-cls": lambda: tf.DeiTForImageClassification(tf.DeiTConfig(patch_size=8, **enc, **image)),
        "swin-cls": lambda: tf.SwinForImageClassification(tf.SwinConfig(
            patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 2], window_size=4, **image)),
        "convnext-cls": lambda: tf.ConvNextForImageClassification(tf.ConvNextConfig(
            num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], **image)),
        "resnet-cls": lambda: tf.ResNetForImageClassification(tf.ResNetConfig(
            hidden_sizes=[32, 64], depths=[1, 1], embedding_size=32, num_labels=4)),
        # newer families: per-head q/k norms, sliding-window / soft-capped attention, scaled residuals,
        # alternating local / global attention, depthwise and squeeze-excite convolutions, grouped convolutions
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=16, **dec)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(head_dim=16, sliding_window=8, **dec)),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(head_dim=16, sliding_window=8, **dec)),
        "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(eos_token_id=102, pad_token_id=0, **dec)),
        "granite": lambda: tf.GraniteForCausalLM(tf.GraniteConfig(residual_multiplier=0.5, logits_scaling=2.0, **dec)),
        "smollm3": lambda: tf.SmolLM3ForCausalLM(tf.SmolLM3Config(bos_token_id=101, eos_token_id=102, pad_token_id=0,
                                                                  **dec)),
        "stablelm": lambda: tf.StableLmForCausalLM(tf.StableLmConfig(**dec)),
        "modernbert-cls": lambda: tf.ModernBertForSequenceClassification(tf.ModernBertConfig(
            num_labels=2, global_attn_every_n_layers=2, local_attention=16, pad_token_id=0, bos_token_id=101,
            eos_token_id=102, cls_token_id=101, sep_token_id=102, **enc)),
        "mobilenetv2-cls": lambda: tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(depth_multiplier=0.35,
                                                                                           **image)),
        "efficientnet-cls": lambda: tf.EfficientNetForImageClassification(tf.EfficientNetConfig(
            width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320, **image)),
        "regnet-cls": lambda: tf.RegNetForImageClassification(tf.RegNetConfig(
            hidden_sizes=[32, 64], depths=[1, 1], embedding_size=32, groups_width=8, num_labels=4)),
        "dinov2-cls": lambda: tf.Dinov2ForImageClassification(tf.Dinov2Config(patch_size=8, **enc, **image)),
        "beit-cls": lambda: tf.BeitForImageClassification(tf.BeitConfig(patch_size=8, **enc, **image)),
        # mixture-of-experts: experts stored as 3D tensors (gpt-oss: transposed, with biases, interleaved gate / up,
        # its own gating function); Qwen2-MoE adds a shared expert
        "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **dec)),
        "qwen2moe": lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
            moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2, **dec)),
        "qwen3moe": lambda: tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(moe_intermediate_size=32, num_experts=4,
                                                                     num_experts_per_tok=2, head_dim=16, **dec)),
        "gptoss": lambda: tf.GptOssForCausalLM(tf.GptOssConfig(
            num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=8, pad_token_id=0,
            eos_token_id=102, layer_types=["sliding_attention", "full_attention"], **dec)),
        "mbart": lambda: tf.MBartForConditionalGeneration(tf.MBartConfig(bos_token_id=101, decoder_start_token_id=102,
                                                                         **s2s)),
        "marian": lambda: tf.MarianMTModel(tf.MarianConfig(decoder_start_token_id=0, **s2s)),
    }


TASKS = {"t5": "seq2seq", "bart": "seq2seq", "llama": "causal-lm", "qwen2": "causal-lm", "gpt2": "causal-lm", "bert-cls": "sequence-classification",
         "distilbert-tok": "token-classification", "bert-qa": "question-answering", "bert": "feature-extraction",
         "bert-mlm": "fill-mask", "vit": "image-classification"}
MORE = {**{k: "causal-lm" for k in ("mistral", "phi3", "gemma", "opt", "bloom", "gpt-neox", "falcon", "phi", "qwen3",
                                   "gemma2", "gemma3", "olmo2", "granite", "smollm3", "stablelm", "mixtral",
                                   "qwen2moe", "qwen3moe", "gptoss")},
        "modernbert-cls": "sequence-classification",
        "roberta-cls": "sequence-classification", "deberta-cls": "sequence-classification",
        "albert-cls": "sequence-classification", "electra-tok": "token-classification",
        "xlmr-qa": "question-answering", "mpnet": "feature-extraction", "dinov2": "feature-extraction",
        "t5-encoder": "feature-extraction", "roberta-mlm": "fill-mask", "segformer": "semantic-segmentation",
        "detr": "object-detection", "yolos": "object-detection", "dpt-depth": "depth-estimation",
        **{k: "image-classification" for k in ("deit-cls", "swin-cls", "convnext-cls", "resnet-cls", "mobilenetv2-cls",
                                               "efficientnet-cls", "regnet-cls", "dinov2-cls", "beit-cls")},
        "mbart": "seq2seq", "marian": "seq2seq"}
WIDER = {**{k: "causal-lm" for k in ("cohere", "glm4", "starcoder2", "gptj", "codegen", "mamba", "deepseekv3", "phimoe")},
         "pegasus": "seq2seq", "m2m100": "seq2seq",
         **{k: "sequence-classification" for k in ("longformer-cls", "bigbird-cls", "funnel-cls", "mobilebert-cls")},
         "clip-vision": "feature-extraction", "siglip-vision": "feature-extraction",
         **{k: "image-classification" for k in ("mobilevit-cls", "swinv2-cls", "levit-cls")}}
MORE.update(WIDER)
MORE.update({"llava": "image-text-to-text", "gemma3-vl": "image-text-to-text", "bert-mc": "multiple-choice"})
IMAGE_ENCODERS = ("dinov2", "segformer", "detr", "yolos", "clip-vision", "siglip-vision", "dpt-depth")  # image models of other tasks than image-classification: no tokenizer
SPEECH = {"whisper": "speech-seq2seq", "wav2vec2-ctc": "ctc", "hubert-ctc": "ctc", "wav2vec2-cls": "audio-classification"}
