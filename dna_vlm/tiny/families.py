"""The one registry of tiny models of every supported family, built from configs of the real HF classes.

:data:`FAMILIES` maps each HF ``model_type`` to a :class:`Family`: the adapter that must pick it, a builder
``build(model_type, attn_implementation="eager", seed=0)`` -> ``(model, inputs)`` -- an fp32 model in eval mode
and a dict of keyword inputs for a FULL forward (a video where the model takes video, images otherwise; same
seed -> same weights and inputs, bit for bit) -- and, where ``dna-vlm tiny-model --family`` can write the family
with its processor and tokenizer, its :class:`~dna_vlm.tiny.kits.Kit`. Adding a family = one line here.

Used by the adapter tests, ``scripts/gpu_check_families.py`` and :mod:`dna_vlm.tiny.default`.

``packed_videos(model_type, model)`` gives, for the packed-sequence families (Qwen-VL, VideoLLaMA3), two
videos of different sizes: each alone and both packed in one batch, as the vision-feature inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dna_vlm.tiny import kits
from dna_vlm.tiny.kits import INTERNVL_TOKENS, LLAVA_TOKENS, QWEN_IMAGE, QWEN_TOKENS, QWEN_VIDEO, Kit

__all__ = ["FAMILIES", "Family", "build", "model_types", "packed_videos", "video_features"]

VOCAB = 128
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 120, 121, 122, 123
BOS, EOS, PAD = 1, 2, 0


@dataclass(frozen=True)
class Family:
    model_type: str
    adapter: str  # the adapter name (dna_vlm.adapters registry) that must pick this model
    build: Callable  # (attn_implementation, seed) -> (model, inputs)
    video: bool  # whether `inputs` is a video input
    kit: Kit | None = None  # for `dna-vlm tiny-model --family` (None: not offered there)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixels(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed + 1000))


def _ids(
    prefix: list[int], n_media: int, media_token: int, suffix_len: int = 4, seed: int = 0
) -> torch.Tensor:
    """input ids: prefix, the media placeholders, a few random text tokens (1, L)."""
    text = torch.randint(3, 100, (suffix_len,), generator=_gen(seed + 7)).tolist()
    return torch.tensor([[BOS, *prefix, *([media_token] * n_media), *text]])


def _instantiate(cls, config, attn_implementation: str, seed: int):
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def _qwen2_text(**kw) -> dict:
    d = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    d.update(kw)
    return d


def _with_mask(inputs: dict) -> dict:
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


# ---------------------------------------------------------------------------------------------- SigLIP
def build_llava_onevision(attn_implementation: str = "eager", seed: int = 0):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=Qwen2Config(**_qwen2_text()),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[32, 32]],
    )
    model = _instantiate(LlavaOnevisionForConditionalGeneration, config, attn_implementation, seed)
    frames = 2
    # per frame: 4x4 patches, pooled 2x2 -> 4 tokens; + one newline token per video
    n = frames * 4 + 1
    inputs = {
        "input_ids": _ids([], n, VIDEO_TOKEN, seed=seed),
        "pixel_values_videos": _pixels((1, frames, 3, 32, 32), seed),
    }
    return model, _with_mask(inputs)


def build_paligemma(attn_implementation: str = "eager", seed: int = 0):
    """Another SigLIP-based VLM (image only): the SigLIP adapter is picked by the tower, not the model type."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = GemmaConfig(**_qwen2_text(head_dim=16))
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, projection_dim=32
    )
    model = _instantiate(PaliGemmaForConditionalGeneration, config, attn_implementation, seed)
    ids = torch.tensor([[*([IMAGE_TOKEN] * 16), *_ids([], 0, IMAGE_TOKEN, seed=seed)[0].tolist()]])
    return model, _with_mask({"input_ids": ids, "pixel_values": _pixels((1, 3, 32, 32), seed)})


# ---------------------------------------------------------------------------------------------- CLIP
def _clip_vision(**kw):
    from transformers import CLIPVisionConfig

    d = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    d.update(kw)
    return CLIPVisionConfig(**d)


def _llama_text():
    from transformers import LlamaConfig

    return LlamaConfig(**_qwen2_text())


def build_llava_next_video(attn_implementation: str = "eager", seed: int = 0):
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    config = LlavaNextVideoConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text(),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[32, 32]],
        spatial_pool_stride=2,
    )
    model = _instantiate(LlavaNextVideoForConditionalGeneration, config, attn_implementation, seed)
    frames = 2
    n = frames * 4  # 4x4 patches (CLS dropped) avg-pooled by 2 -> 2x2 per frame
    inputs = {
        "input_ids": _ids([], n, VIDEO_TOKEN, seed=seed),
        "pixel_values_videos": _pixels((1, frames, 3, 32, 32), seed),
    }
    return model, _with_mask(inputs)


def build_video_llava(attn_implementation: str = "eager", seed: int = 0):
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    config = VideoLlavaConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text(),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = _instantiate(VideoLlavaForConditionalGeneration, config, attn_implementation, seed)
    frames = 2
    n = frames * (16 + 1)  # Video-LLaVA keeps every frame's tokens, CLS included
    # an image (16 tokens, CLS dropped) and a video: one forward through both towers
    inputs = {
        "input_ids": _ids([*([IMAGE_TOKEN] * 16)], n, VIDEO_TOKEN, seed=seed),
        "pixel_values_images": _pixels((1, 3, 32, 32), seed + 1),
        "pixel_values_videos": _pixels((1, frames, 3, 32, 32), seed),
    }
    return model, _with_mask(inputs)


def build_llava(attn_implementation: str = "eager", seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text(),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=16,
    )
    model = _instantiate(LlavaForConditionalGeneration, config, attn_implementation, seed)
    inputs = {
        "input_ids": _ids([], 16, IMAGE_TOKEN, seed=seed),
        "pixel_values": _pixels((1, 3, 32, 32), seed),
    }
    return model, _with_mask(inputs)


# ---------------------------------------------------------------------------------------------- Qwen-VL
PATCH, TEMPORAL, MERGE = 4, 2, 2


def _qwen_video(grid: tuple[int, int, int], seed: int, in_ch: int = 3) -> torch.Tensor:
    """Flattened Qwen-VL video patches for grid (t, h, w): (t*h*w, C * temporal * patch * patch)."""
    t, h, w = grid
    return _pixels((t * h * w, in_ch * TEMPORAL * PATCH * PATCH), seed)


def _qwen_inputs(grids: list[tuple[int, int, int]], seed: int, per_frame: bool = False) -> dict:
    """Qwen-VL video inputs; ``per_frame``: Qwen3-VL's layout, each temporal patch its own placeholder run
    (its processor puts a timestamp between them)."""
    ids = [BOS]
    for t, h, w in grids:
        runs = [h * w // (MERGE * MERGE)] * t if per_frame else [t * h * w // (MERGE * MERGE)]
        for n in runs:
            ids += [VISION_START, *([VIDEO_TOKEN] * n), VISION_END]
    ids += torch.randint(3, 100, (4,), generator=_gen(seed + 7)).tolist()
    pix = torch.cat([_qwen_video(g, seed + i) for i, g in enumerate(grids)])
    input_ids = torch.tensor([ids])
    inputs = {
        "input_ids": input_ids,
        "mm_token_type_ids": (input_ids == VIDEO_TOKEN).int() * 2,  # 0 text, 1 image, 2 video
        "pixel_values_videos": pix,
        "video_grid_thw": torch.tensor(grids),
    }
    return _with_mask(inputs)


def _qwen_ids() -> dict:
    return dict(
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )


def build_qwen2_vl(attn_implementation: str = "eager", seed: int = 0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,
            mlp_ratio=2,
            num_heads=2,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=TEMPORAL,
        ),
        text_config=_qwen2_text(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        ),
        **_qwen_ids(),
    )
    model = _instantiate(Qwen2VLForConditionalGeneration, config, attn_implementation, seed)
    return model, _qwen_inputs([(2, 4, 4)], seed)


def build_qwen2_5_vl(attn_implementation: str = "eager", seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=TEMPORAL,
            # window = 8 px = one 2x2 merge unit: layer 0 is windowed (4 windows per frame), layer 1 full
            window_size=8,
            fullatt_block_indexes=[1],
        ),
        text_config=_qwen2_text(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        ),
        **_qwen_ids(),
    )
    model = _instantiate(Qwen2_5_VLForConditionalGeneration, config, attn_implementation, seed)
    return model, _qwen_inputs([(2, 4, 4)], seed)


def _qwen3_vl_config(config_cls, **text_extra):
    return config_cls(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=TEMPORAL,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        ),
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=256,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
            **text_extra,
        ),
        **_qwen_ids(),
    )


def build_qwen3_vl(attn_implementation: str = "eager", seed: int = 0):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = _qwen3_vl_config(Qwen3VLConfig)
    model = _instantiate(Qwen3VLForConditionalGeneration, config, attn_implementation, seed)
    return model, _qwen_inputs([(2, 4, 4)], seed, per_frame=True)


def build_qwen3_vl_moe(attn_implementation: str = "eager", seed: int = 0):
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    config = _qwen3_vl_config(
        Qwen3VLMoeConfig,
        moe_intermediate_size=16,
        num_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    model = _instantiate(Qwen3VLMoeForConditionalGeneration, config, attn_implementation, seed)
    return model, _qwen_inputs([(2, 4, 4)], seed, per_frame=True)


# ---------------------------------------------------------------------------------------------- VideoLLaMA3
VL3_PATCH = 4


def _vl3_inputs(grids: list[tuple[int, int, int]], seed: int) -> dict:
    ids = [BOS]
    for t, h, w in grids:
        ids += [*([VIDEO_TOKEN] * (t * h * w // 4))]
    ids += torch.randint(3, 100, (4,), generator=_gen(seed + 7)).tolist()
    pix = torch.cat(
        [_pixels((t * h * w, 3 * VL3_PATCH * VL3_PATCH), seed + i) for i, (t, h, w) in enumerate(grids)]
    )
    inputs = {
        "input_ids": torch.tensor([ids]),
        "pixel_values_videos": pix,
        "video_grid_thw": torch.tensor(grids),
        "video_merge_sizes": torch.tensor([2] * len(grids)),
    }
    return _with_mask(inputs)


def build_video_llama_3(attn_implementation: str = "eager", seed: int = 0):
    from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration

    config = VideoLlama3Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=VL3_PATCH,
        ),
        text_config=dict(model_type="qwen2", **_qwen2_text()),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
    )
    model = _instantiate(VideoLlama3ForConditionalGeneration, config, attn_implementation, seed)
    return model, _vl3_inputs([(2, 4, 4)], seed)


# ---------------------------------------------------------------------------------------------- InternVL
def build_internvl(attn_implementation: str = "eager", seed: int = 0):
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
    )

    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=(32, 32),
        patch_size=(8, 8),
        use_qk_norm=True,
        attention_bias=True,
        use_mean_pooling=False,
        layer_scale_init_value=1.0,  # so the attention output is not damped by 10x in a tiny random model
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=Qwen2Config(**_qwen2_text()),
        image_token_id=IMAGE_TOKEN,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = _instantiate(InternVLForConditionalGeneration, config, attn_implementation, seed)
    frames = (
        2  # InternVL reads a video as its frames, each an image of 4 tokens (4x4 patches, pixel-shuffled)
    )
    inputs = {
        "input_ids": _ids([], frames * 4, IMAGE_TOKEN, seed=seed),
        "pixel_values": _pixels((frames, 3, 32, 32), seed),
    }
    return model, _with_mask(inputs)


# the default family (llava_onevision) has no kit here: dna_vlm.tiny.default builds it, at several sizes
FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llava_onevision", "siglip", build_llava_onevision, True),
        Family("paligemma", "siglip", build_paligemma, False),
        Family("llava_next_video", "clip", build_llava_next_video, True,
               Kit(kits.build_llava_next_video, "<video>\n", "<image>\n", LLAVA_TOKENS)),
        Family("video_llava", "clip", build_video_llava, True,
               Kit(kits.build_video_llava, "<video>\n", "<image>\n", LLAVA_TOKENS)),
        Family("llava", "clip", build_llava, False, Kit(kits.build_llava, "<image>\n", "<image>\n", LLAVA_TOKENS)),
        Family("qwen2_vl", "qwen_vl", build_qwen2_vl, True, Kit(kits.build_qwen2_vl, QWEN_VIDEO, QWEN_IMAGE, QWEN_TOKENS)),
        Family("qwen2_5_vl", "qwen_vl", build_qwen2_5_vl, True,
               Kit(kits.build_qwen2_5_vl, QWEN_VIDEO, QWEN_IMAGE, QWEN_TOKENS)),
        Family("qwen3_vl", "qwen_vl", build_qwen3_vl, True, Kit(kits.build_qwen3_vl, QWEN_VIDEO, QWEN_IMAGE, QWEN_TOKENS)),
        Family("qwen3_vl_moe", "qwen_vl", build_qwen3_vl_moe, True),
        Family("video_llama_3", "videollama3", build_video_llama_3, True,
               Kit(kits.build_video_llama_3, "<|video_pad|>\n", "<|image_pad|>\n", ("<|image_pad|>", "<|video_pad|>"))),
        Family("internvl", "internvl", build_internvl, True,
               Kit(kits.build_internvl, "<video>\n", "<image>\n", ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<image>"),
                INTERNVL_TOKENS)),
    )
}  # fmt: skip


def model_types() -> list[str]:
    return list(FAMILIES)


def build(model_type: str, attn_implementation: str = "eager", seed: int = 0):
    """(model, inputs) for ``model_type``: fp32, eval mode, deterministic in ``seed``."""
    return FAMILIES[model_type].build(attn_implementation, seed)


# ---------------------------------------------------------------------------------------------- packing
PACKED = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "video_llama_3")


def packed_videos(model_type: str, seed: int = 0) -> tuple[dict, dict, dict]:
    """Vision-feature inputs (for :func:`video_features`) of video A alone, video B alone, and A+B packed."""
    grids = [(2, 4, 4), (4, 4, 8)]  # different sizes: t=2 (4 frames) 4x4, t=4 (8 frames) 4x8
    make = _vl3_inputs if model_type == "video_llama_3" else _qwen_inputs
    a, b = make([grids[0]], seed), make([grids[1]], seed + 1)
    ab = make(grids, seed)
    # the packed batch must hold exactly the same pixels as the two singles
    ab["pixel_values_videos"] = torch.cat([a["pixel_values_videos"], b["pixel_values_videos"]])
    return a, b, ab


def video_features(model, inputs: dict) -> torch.Tensor:
    """The projected video features (what the LLM receives) for a packed-family input, concatenated."""
    kw = {"pixel_values_videos": inputs["pixel_values_videos"], "video_grid_thw": inputs["video_grid_thw"]}
    if "video_merge_sizes" in inputs:
        kw["video_merge_sizes"] = inputs["video_merge_sizes"]
    out = model.get_video_features(**kw, return_dict=True)
    feats = out.pooler_output
    return torch.cat(list(feats)) if isinstance(feats, (tuple, list)) else feats
