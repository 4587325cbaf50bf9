"""Tiny models of every supported video-LLM family, with their processor, tokenizer and chat template.

``dna-vlm tiny-model --family F`` (:func:`dna_vlm.tiny.default.build_tiny_model`) writes one: real HF classes at tiny
sizes, random weights, the family's own processor class (its image / video processors sized for 32 px
frames) and a locally built byte-level BPE tokenizer carrying the family's special tokens, so
``AutoProcessor.from_pretrained`` + ``AutoModelForImageTextToText.from_pretrained`` load it offline and
``dna_vlm.data.prompting.build_inputs`` builds training and evaluation batches from (T, H, W, 3) frames.

Each builder takes the tokenizer and returns ``(model, processor)``. A :class:`Kit` bundles one builder with
the special tokens its tokenizer needs and how its chat template renders a video; the one table of families,
:data:`dna_vlm.tiny.families.FAMILIES`, says which family has which kit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["INTERNVL_TOKENS", "LLAVA_TOKENS", "QWEN_IMAGE", "QWEN_TOKENS", "QWEN_VIDEO", "Kit"]

PX = 32  # frame side the image / video processors resize to (every family's tower takes 32 px here)
V_HIDDEN, V_LAYERS, V_HEADS = 64, 2, 4
T_HIDDEN, T_LAYERS, T_HEADS, T_KV = 64, 2, 4, 2
NORM = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


@dataclass(frozen=True)
class Kit:
    """How to build one family: its special tokens, the chat template's video / image placeholders and the
    (tokenizer -> (model, processor)) builder."""

    build: Callable  # tokenizer -> (model, processor)
    video_placeholder: str  # what the chat template writes for a {"type": "video"} item
    image_placeholder: str
    special: tuple[str, ...] = ()  # special tokens beyond PAD / IM_START / IM_END
    token_attrs: dict = field(default_factory=dict)  # tokenizer attributes (e.g. InternVL's image tokens)


def _text(tokenizer, **kw) -> dict:
    """A tiny Qwen2 LM config (dict) for ``tokenizer``'s vocabulary."""
    d = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=T_HIDDEN,
        intermediate_size=2 * T_HIDDEN,
        num_hidden_layers=T_LAYERS,
        num_attention_heads=T_HEADS,
        num_key_value_heads=T_KV,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return d | kw


def _tid(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def _clip_vision() -> dict:
    return dict(
        model_type="clip_vision_model", hidden_size=V_HIDDEN, intermediate_size=2 * V_HIDDEN,
        num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS, image_size=PX, patch_size=8,
        projection_dim=V_HIDDEN,
    )  # fmt: skip


def _clip_image_kwargs() -> dict:
    return dict(size={"shortest_edge": PX}, crop_size={"height": PX, "width": PX}, **NORM)


# ------------------------------------------------------------------------------------------- LLaVA-style
def build_llava(tok):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    cfg = LlavaConfig(
        vision_config=_clip_vision(), text_config=_text(tok), image_token_index=_tid(tok, "<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=16,
    )  # fmt: skip
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessor(**_clip_image_kwargs()), tokenizer=tok, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    return LlavaForConditionalGeneration(cfg), proc


def build_llava_next_video(tok):
    from transformers import (
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
    )

    cfg = LlavaNextVideoConfig(
        vision_config=_clip_vision(), text_config=_text(tok), image_token_index=_tid(tok, "<image>"),
        video_token_index=_tid(tok, "<video>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_grid_pinpoints=[[PX, PX]], spatial_pool_stride=2,
    )  # fmt: skip
    proc = LlavaNextVideoProcessor(
        image_processor=LlavaNextImageProcessor(image_grid_pinpoints=[[PX, PX]], **_clip_image_kwargs()),
        video_processor=LlavaNextVideoVideoProcessor(**_clip_image_kwargs()), tokenizer=tok, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    return LlavaNextVideoForConditionalGeneration(cfg), proc


def build_video_llava(tok):
    from transformers import (
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
        VideoLlavaProcessor,
        VideoLlavaVideoProcessor,
    )

    cfg = VideoLlavaConfig(
        vision_config=_clip_vision(), text_config=_text(tok), image_token_index=_tid(tok, "<image>"),
        video_token_index=_tid(tok, "<video>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_seq_length=16, video_seq_length=8 * 17,
    )  # fmt: skip
    proc = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**_clip_image_kwargs()),
        video_processor=VideoLlavaVideoProcessor(**_clip_image_kwargs()), tokenizer=tok, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    return VideoLlavaForConditionalGeneration(cfg), proc


# ------------------------------------------------------------------------------------------- Qwen-VL
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 4, 2, 2
QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_ids(tok) -> dict:
    return dict(
        image_token_id=_tid(tok, "<|image_pad|>"), video_token_id=_tid(tok, "<|video_pad|>"),
        vision_start_token_id=_tid(tok, "<|vision_start|>"), vision_end_token_id=_tid(tok, "<|vision_end|>"),
    )  # fmt: skip


def _qwen_processors(image_cls, video_cls, video_size: dict | None = None, **extra):
    """Image and video processors sized so a 32 px frame keeps 32 px (8x8 patches of 4 px)."""
    px2 = PX * PX
    common = dict(patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL, **NORM)
    size = {"shortest_edge": px2, "longest_edge": px2}
    return image_cls(size=size, **common), video_cls(size=video_size or size, **common, **extra)


def _qwen_text(tok) -> dict:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return _text(tok, rope_parameters=rope)


def _qwen_vision(**kw) -> dict:
    d = dict(depth=V_LAYERS, hidden_size=V_HIDDEN, num_heads=V_HEADS, patch_size=QWEN_PATCH,
             spatial_merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL)  # fmt: skip
    return d | kw


def build_qwen2_vl(tok):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    vision = _qwen_vision(embed_dim=V_HIDDEN, mlp_ratio=2)
    cfg = Qwen2VLConfig(vision_config=vision, text_config=_qwen_text(tok), **_qwen_ids(tok))
    image, video = _qwen_processors(Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
    proc = Qwen2VLProcessor(image_processor=image, video_processor=video, tokenizer=tok)
    return Qwen2VLForConditionalGeneration(cfg), proc


def build_qwen2_5_vl(tok):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    # window = 16 px = 2x2 merge units: layer 0 is windowed, layer 1 full (fullatt_block_indexes)
    vision = _qwen_vision(intermediate_size=2 * V_HIDDEN, out_hidden_size=T_HIDDEN, window_size=16,
                          fullatt_block_indexes=[1])  # fmt: skip
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(tok), **_qwen_ids(tok))
    image, video = _qwen_processors(Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
    proc = Qwen2_5_VLProcessor(image_processor=image, video_processor=video, tokenizer=tok)
    return Qwen2_5_VLForConditionalGeneration(cfg), proc


def build_qwen3_vl(tok):
    from transformers import (
        Qwen2VLImageProcessorFast,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    vision = _qwen_vision(intermediate_size=2 * V_HIDDEN, out_hidden_size=T_HIDDEN,
                          num_position_embeddings=64, deepstack_visual_indexes=[0])  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
            "mrope_interleaved": True}  # fmt: skip
    text = _text(tok, model_type="qwen3_vl_text", head_dim=T_HIDDEN // T_HEADS, rope_parameters=rope)
    cfg = Qwen3VLConfig(vision_config=vision, text_config=text, **_qwen_ids(tok))
    # Qwen3-VL's video size is a budget over all frames (T*H*W); frames are used as sampled (no resampling)
    image, video = _qwen_processors(
        Qwen2VLImageProcessorFast, Qwen3VLVideoProcessor,
        video_size={"shortest_edge": PX * PX, "longest_edge": PX * PX * 64}, do_sample_frames=False,
    )  # fmt: skip
    proc = Qwen3VLProcessor(image_processor=image, video_processor=video, tokenizer=tok)
    return Qwen3VLForConditionalGeneration(cfg), proc


# ------------------------------------------------------------------------------------------- VideoLLaMA3
def build_video_llama_3(tok):
    from transformers import (
        VideoLlama3Config,
        VideoLlama3ForConditionalGeneration,
        VideoLlama3ImageProcessor,
        VideoLlama3Processor,
        VideoLlama3VideoProcessor,
    )

    vision = dict(hidden_size=V_HIDDEN, intermediate_size=2 * V_HIDDEN, num_hidden_layers=V_LAYERS,
                  num_attention_heads=V_HEADS, patch_size=QWEN_PATCH)  # fmt: skip
    cfg = VideoLlama3Config(
        vision_config=vision, text_config=_text(tok), image_token_id=_tid(tok, "<|image_pad|>"),
        video_token_id=_tid(tok, "<|video_pad|>"),
    )  # fmt: skip
    px2 = PX * PX
    common = dict(patch_size=QWEN_PATCH, **NORM)
    image = VideoLlama3ImageProcessor(min_pixels=px2, max_pixels=px2, merge_size=1, **common)
    video = VideoLlama3VideoProcessor(
        size={"shortest_edge": px2, "longest_edge": px2}, merge_size=2, use_token_compression=False, **common
    )
    proc = VideoLlama3Processor(image_processor=image, video_processor=video, tokenizer=tok)
    return VideoLlama3ForConditionalGeneration(cfg), proc


# ------------------------------------------------------------------------------------------- InternVL
INTERNVL_TOKENS = {
    "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}  # fmt: skip


def build_internvl(tok):
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    vision = dict(
        model_type="internvl_vision", hidden_size=V_HIDDEN, intermediate_size=2 * V_HIDDEN,
        num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS, image_size=[PX, PX], patch_size=[8, 8],
        use_qk_norm=True, attention_bias=True, use_mean_pooling=False, layer_scale_init_value=1.0,
    )  # fmt: skip
    cfg = InternVLConfig(
        vision_config=vision, text_config=_text(tok), image_token_id=_tid(tok, "<IMG_CONTEXT>"),
        image_seq_length=4, downsample_ratio=0.5, vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    size = {"height": PX, "width": PX}
    image = GotOcr2ImageProcessor(size=size, crop_to_patches=False, **NORM)
    video = InternVLVideoProcessor(size=size, **NORM)
    proc = InternVLProcessor(image_processor=image, video_processor=video, tokenizer=tok, image_seq_length=4)
    return InternVLForConditionalGeneration(cfg), proc


LLAVA_TOKENS = ("<image>", "<video>")
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
