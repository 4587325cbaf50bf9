"""InternVL towers (``InternVLVisionAttention``): separate q/k/v, optional q/k RMSNorm, ``projection_layer``."""

from dna_vlm.adapters.base import Adapter
from dna_vlm.adapters.common import SeparateQKVLayer


class InternVLLayer(SeparateQKVLayer):
    out_name = "projection_layer"
    positive_modules = ("q_proj", "k_proj", "v_proj", "projection_layer", "q_norm", "k_norm")

    def project(self, x):
        q, q_neg, k, v, v_neg = super().project(x)
        q_neg = None if q_neg is None else self.q_norm(q_neg)  # Q- gets Q+'s norm
        return self.q_norm(q), q_neg, self.k_norm(k), v, v_neg

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        out, _ = super().forward(hidden_states, attention_mask, **kwargs)
        return self.projection_dropout(out), None


class InternVLAdapter(Adapter):
    name = "internvl"
    attention_classes = ("InternVLVisionAttention",)
    model_types = ("internvl", "internvl_vision")
    tower_paths = ("model.vision_tower", "vision_tower")
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    layer_cls = InternVLLayer
