"""SigLIP / SigLIP2-style towers (``SiglipAttention``): LLaVA-OneVision and other SigLIP-based VLMs."""

from dna_vlm.adapters.base import Adapter
from dna_vlm.adapters.common import SeparateQKVLayer


class SiglipLayer(SeparateQKVLayer):
    pass


class SiglipAdapter(Adapter):
    name = "siglip"
    attention_classes = ("SiglipAttention", "Siglip2Attention")
    model_types = ("llava_onevision", "siglip", "siglip_vision_model", "paligemma")
    tower_paths = ("model.vision_tower", "vision_tower", "model.vision_model", "vision_model")
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    layer_cls = SiglipLayer
