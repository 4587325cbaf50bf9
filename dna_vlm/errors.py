"""Errors users see by name."""

from __future__ import annotations


class UnsupportedModelError(ValueError):
    """The model's vision tower uses an attention class no adapter knows."""

    def __init__(self, model_type: str | None, attention_class: str | None, supported: dict[str, list[str]]):
        self.model_type, self.attention_class, self.supported = model_type, attention_class, supported
        lines = [f"  {family}: {', '.join(classes)}" for family, classes in supported.items()]
        found = attention_class or "no attention module found in a vision tower"
        super().__init__(
            f"dna-vlm cannot patch model_type={model_type!r}: its vision attention is {found}.\n"
            "Supported vision-attention classes (family: classes):\n" + "\n".join(lines) + "\n"
            "To add this tower: one file in the project's adapters/ folder (installed as dna_vlm.adapters), "
            "one line in the ADAPTERS table of adapters/__init__.py and one tiny-config entry in "
            "dna_vlm/tiny/families.py (README.md, 'Supported models'); or open an issue."
        )


class AlreadyPatchedError(ValueError):
    """patch() was called on a model that already has DnA layers."""


class NotPatchedError(ValueError):
    """An operation that needs a DnA-patched model got a plain one."""


class CheckpointMismatchError(ValueError):
    """A save_dna checkpoint does not fit the model it is loaded into."""


class VideoError(ValueError):
    """A video cannot be read or sampled as asked; the message names the file."""
