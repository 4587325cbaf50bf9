"""CLIP towers (``CLIPAttention``): LLaVA, LLaVA-NeXT-Video, Video-LLaVA (whose image and video towers are
both patched). CLIP text encoders use the same class: only modules inside a vision tower are replaced."""

from dna_vlm.adapters.base import Adapter
from dna_vlm.adapters.common import SeparateQKVLayer


class ClipLayer(SeparateQKVLayer):
    pass


class ClipAdapter(Adapter):
    name = "clip"
    attention_classes = ("CLIPAttention",)
    model_types = ("llava", "llava_next", "llava_next_video", "video_llava", "clip", "clip_vision_model")
    tower_paths = (
        "model.video_tower", "model.image_tower", "video_tower", "image_tower",
        "model.vision_tower", "vision_tower", "vision_model",
    )  # fmt: skip
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    layer_cls = ClipLayer
