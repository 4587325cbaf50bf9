"""dna-vlm: Denoising Attention (DnA) for the vision towers of Hugging Face video LLMs."""

from dna_vlm.attention import DnAAttention, NegativeBranch, SoftmaxAttention
from dna_vlm.checkpoint import load_dna, save_dna
from dna_vlm.errors import (
    AlreadyPatchedError,
    CheckpointMismatchError,
    NotPatchedError,
    UnsupportedModelError,
)
from dna_vlm.kernel import block_diagonal_mask, dna_attention, dna_attention_varlen, use_impl
from dna_vlm.options import DnAOptions
from dna_vlm.patching import (
    PatchReport,
    dna_layers,
    dna_parameters,
    is_patched,
    mark_dna_trainable,
    patch,
    supported_model_types,
    unpatch,
)
from dna_vlm.runs.export import export_run, register_auto_classes
from dna_vlm.runs.loading import load_model
from dna_vlm.version import __version__

__all__ = [
    "AlreadyPatchedError",
    "CheckpointMismatchError",
    "DnAAttention",
    "DnAOptions",
    "NegativeBranch",
    "NotPatchedError",
    "PatchReport",
    "SoftmaxAttention",
    "UnsupportedModelError",
    "__version__",
    "block_diagonal_mask",
    "dna_attention",
    "dna_attention_varlen",
    "dna_layers",
    "dna_parameters",
    "export_run",
    "is_patched",
    "load_dna",
    "load_model",
    "mark_dna_trainable",
    "patch",
    "register_auto_classes",
    "save_dna",
    "supported_model_types",
    "unpatch",
    "use_impl",
]
