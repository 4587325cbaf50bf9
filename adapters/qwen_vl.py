"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL towers: fused ``qkv``, 2-D rotary, ``cu_seqlens`` packing.

Qwen2.5-VL's window-attention layers receive the window ``cu_seqlens`` from the tower itself, so the same
layer body covers full and windowed layers."""

from dna_vlm.adapters.base import Adapter
from dna_vlm.adapters.common import PackedRotaryLayer
from torch import nn

from dna_vlm.attention import split_fused_qv


class QwenVisionLayer(PackedRotaryLayer):
    positive_modules = ("qkv", "proj")

    def positive_qv(self) -> tuple[nn.Linear, nn.Linear]:
        return split_fused_qv(self.qkv)

    def qkv_packed(self, x):
        return self.qkv(x).chunk(3, dim=-1)

    def output(self, o):
        return self.proj(o)


class QwenVLAdapter(Adapter):
    name = "qwen_vl"
    attention_classes = (
        "VisionAttention", "Qwen2_5_VLVisionAttention", "Qwen3VLVisionAttention", "Qwen3VLMoeVisionAttention",
    )  # fmt: skip
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
    tower_paths = ("model.visual", "visual")
    projector_paths = ("model.visual.merger", "visual.merger")
    layer_cls = QwenVisionLayer

    @classmethod
    def attention_modules(cls, tower):
        # "VisionAttention" is a generic name: only accept it from a Qwen modeling file.
        return [(n, m) for n, m in super().attention_modules(tower) if "qwen" in type(m).__module__]
