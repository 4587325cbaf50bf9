"""Vision-tower families DnA can be patched into. Adding a family = one file + one line here + one test."""

from .base import Adapter, DnALayer
from .clip import ClipAdapter
from .internvl import InternVLAdapter
from .qwen_vl import QwenVLAdapter
from .siglip import SiglipAdapter
from .videollama3 import VideoLlama3Adapter

# The registry: patch() asks each adapter, in order, for a tower holding its attention classes.
ADAPTERS: tuple[type[Adapter], ...] = (
    SiglipAdapter,
    ClipAdapter,
    QwenVLAdapter,
    VideoLlama3Adapter,
    InternVLAdapter,
)

__all__ = ["ADAPTERS", "Adapter", "DnALayer"]
