"""VideoLLaMA3 towers (``VideoLlama3VisionAttention``): separate q/k/v, 2-D rotary, ``cu_seqlens`` packing."""

from dna_vlm.adapters.base import Adapter
from dna_vlm.adapters.common import PackedRotaryLayer


class VideoLlama3Layer(PackedRotaryLayer):
    positive_modules = ("q_proj", "k_proj", "v_proj", "out_proj")

    def positive_qv(self):
        return self.q_proj, self.v_proj

    def qkv_packed(self, x):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def output(self, o):
        return self.out_proj(o)

    def wrap_output(self, out):
        return out, None


class VideoLlama3Adapter(Adapter):
    name = "videollama3"
    attention_classes = ("VideoLlama3VisionAttention",)
    model_types = ("video_llama_3", "video_llama_3_vision")
    tower_paths = ("model.vision_model", "vision_model")
    projector_paths = ("model.projector", "projector")
    layer_cls = VideoLlama3Layer
