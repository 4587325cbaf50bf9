"""Vision-tower families DnA can be patched into. Adding a family = one file + one line here + one test."""

from dna_vlm.adapters.base import Adapter, DnALayer
from dna_vlm.adapters.clip import ClipAdapter
from dna_vlm.adapters.internvl import InternVLAdapter
from dna_vlm.adapters.qwen_vl import QwenVLAdapter
from dna_vlm.adapters.siglip import SiglipAdapter
from dna_vlm.adapters.videollama3 import VideoLlama3Adapter

# The registry: patch() asks each adapter, in order, for a tower holding its attention classes.
ADAPTERS: tuple[type[Adapter], ...] = (
    SiglipAdapter,
    ClipAdapter,
    QwenVLAdapter,
    VideoLlama3Adapter,
    InternVLAdapter,
)

__all__ = ["ADAPTERS", "Adapter", "DnALayer"]
