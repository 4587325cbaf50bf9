"""The adapter interface: what one vision-tower family must say for DnA to be patched into it.

An adapter knows three things about its family:

1. how to find the tower (``tower_paths``) and the projector (``projector_paths``) in a full model;
2. which attention classes it replaces (``attention_classes``) and how to read their q/k/v weights
   (``DnALayer.positive_qv``, splitting fused ``qkv`` when needed);
3. how to run DnA inside the tower's own forward contract (``DnALayer.forward``: same arguments, same
   return type, the tower's rotary / norms / packing applied to both queries).

``DnALayer`` replaces one attention module. It *adopts* the original's submodules (``q_proj`` ... are the
same objects), so the pretrained weights are not copied, PEFT target names stay valid, and
:func:`dna_vlm.unpatch` can put the original module back untouched.

The fair control arm (``patch(model, attention="softmax")``) installs the same layer with the negative branch
off (``self.neg is None``): the same projections, rotary, packing and the same SDPA call as DnA's positive
branch (:func:`softmax_attention`), so at init the two arms are bit-identical and every difference a
comparison reports comes from DnA, not from a different attention implementation. One exception: a low-rank
branch on CPU without gradients runs the score-reuse kernel (``NegativeBranch.scores_applicable``), whose P+ V+
is a plain softmax, equal to SDPA's to float rounding (~1e-7); ``DNA_VLM_ATTENTION_IMPL=fused`` keeps SDPA.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dna_vlm.attention import NegativeBranch
from dna_vlm.kernel import current_impl, dna_attention, dna_attention_reference, dna_attention_varlen
from dna_vlm.options import DnAOptions

__all__ = ["Adapter", "DnALayer", "kernel_mask", "softmax_attention", "softmax_attention_varlen"]


def softmax_attention(q, k, v, attn_mask=None, dropout_p: float = 0.0, scale=None) -> torch.Tensor:
    """The positive branch of :func:`dna_vlm.dna_attention` alone: (B, H, Nq, d) -> (B, H, Nq, dv).

    Bit-identical to DnA's positive branch by construction: the fused path makes the very SDPA call
    ``dna_attention_fused`` makes for P+ V+ (same arguments, same default scale); under ``use_impl("reference")``
    it runs the reference kernel with V- = 0, lambda = 0 (exactly P+ V+)."""
    if current_impl() == "reference":
        zero = torch.zeros(q.shape[1], device=q.device, dtype=q.dtype)
        return dna_attention_reference(q, q, k, v, torch.zeros_like(v), zero, attn_mask, dropout_p, scale)
    s = q.shape[-1] ** -0.5 if scale is None else scale
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=s)


def softmax_attention_varlen(q, k, v, cu_seqlens, dropout_p: float = 0.0, scale=None) -> torch.Tensor:
    """:func:`softmax_attention` over packed (1, H, N, d) sequences, per ``cu_seqlens`` segment, split exactly
    as :func:`dna_vlm.dna_attention_varlen` splits them."""
    cu = torch.as_tensor(cu_seqlens).long().cpu()
    lengths = (cu[1:] - cu[:-1]).tolist()
    if int(cu[-1]) != q.shape[2] or int(cu[0]) != 0 or min(lengths, default=0) < 0:
        raise ValueError(f"cu_seqlens {cu.tolist()} do not split a packed sequence of N={q.shape[2]} tokens")
    parts = [torch.split(t, lengths, dim=2) for t in (q, k, v)]
    outs = [softmax_attention(*p, dropout_p=dropout_p, scale=scale) for p in zip(*parts, strict=True)]
    return torch.cat(outs, dim=2)


class DnALayer(nn.Module):
    """Base of every family's DnA replacement for one attention module.

    Subclasses implement :meth:`positive_qv` and ``forward`` (with the original's signature). They get
    ``self.neg`` (the :class:`NegativeBranch`; None in the softmax control arm) and :meth:`attend` (the kernel,
    packed or masked), whose one kernel call, :meth:`run_kernel`, is where observers (``dna-vlm inspect``)
    hook in. Subclasses call ``self.negative(x, q, v)`` for (q_neg, v_neg): None, None in the control arm.
    """

    #: names of the original's child modules holding positive-branch weights (for save_dna's change check)
    positive_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, original: nn.Module, opts: DnAOptions, layer_index: int):
        super().__init__()
        _require_float(original)
        _require_bidirectional(original)
        self._adopt(original)
        self.layer_index = layer_index
        self.opts = opts
        self.neg: NegativeBranch | None = None
        if opts.attention == "dna":
            q, v = self.positive_qv()
            self.neg = NegativeBranch(q.in_features, self.num_heads, opts, bias=q.bias is not None)
            self.neg.to(device=q.weight.device, dtype=q.weight.dtype)
            self.neg.init_from(q, v)

    def negative(self, x, q_pos, v_pos):
        """(q_neg, v_neg) of the negative branch in q_pos / v_pos's layout; (None, None) in the control arm."""
        return (None, None) if self.neg is None else self.neg(x, q_pos, v_pos)

    @property
    def observed(self) -> bool:
        """Whether an observer wraps this layer's kernel call (``capture_attention`` sets ``run_kernel`` on the
        instance): fast paths that bypass :meth:`run_kernel` must not run then."""
        return "run_kernel" in vars(self)

    def _adopt(self, original: nn.Module) -> None:
        """Take over the original's children, direct tensors and plain attributes (the same objects)."""
        for name, child in original.named_children():
            self.add_module(name, child)
        for name, param in original._parameters.items():
            if param is not None:
                self.register_parameter(name, param)
        for name, buf in original._buffers.items():
            if buf is not None:
                self.register_buffer(name, buf, persistent=name not in original._non_persistent_buffers_set)
        for name, value in vars(original).items():  # num_heads, head_dim, scale, config ...
            # not `forward`: accelerate's hooks (device_map / offload) set it on the instance, and copying it
            # would run the ORIGINAL attention inside the DnA layer
            if not name.startswith("_") and name not in ("training", "forward"):
                setattr(self, name, value)
        self.train(original.training)
        object.__setattr__(self, "_dna_original", original)  # hidden: not a submodule, not in state_dict

    @property
    def original(self) -> nn.Module:
        return self._dna_original

    def positive_qv(self) -> tuple[nn.Linear, nn.Linear]:
        """The positive (dim -> dim) query and value maps as Linear modules (views of fused weights are ok)."""
        raise NotImplementedError

    @property
    def hf_module(self):
        """The HF modeling module of the original class (its rotary helpers live there)."""
        return sys.modules[type(self.original).__module__]

    def attend(
        self, q, q_neg, k, v, v_neg, attn_mask=None, cu_seqlens=None, dropout_p: float = 0.0, scale=None
    ):
        """(B, H, N, d) tensors -> (B, H, N, d). Packed sequences (B=1) with ``cu_seqlens`` run per segment.

        ``attn_mask`` is what the tower hands its attention (see :func:`kernel_mask`)."""
        dropout_p = dropout_p if self.training else 0.0
        return self.run_kernel(q, q_neg, k, v, v_neg, kernel_mask(attn_mask), cu_seqlens, dropout_p, scale)

    def run_kernel(self, q, q_neg, k, v, v_neg, attn_mask, cu_seqlens, dropout_p: float, scale):
        """The layer's one call into the DnA kernel, with the mask in the kernel's form.

        This is the hook point for observers: ``dna_vlm.eval.inspection.capture.capture_attention`` wraps it on chosen
        layers for the duration of a ``with`` block (the production path has no capture code).
        In the control arm (``self.neg is None``) ``q_neg`` / ``v_neg`` are None and the positive branch runs
        alone (:func:`softmax_attention`).
        """
        if self.neg is None:
            if cu_seqlens is not None:
                return softmax_attention_varlen(q, k, v, cu_seqlens, dropout_p, scale)
            return softmax_attention(q, k, v, attn_mask, dropout_p, scale)
        if cu_seqlens is not None:
            return dna_attention_varlen(
                q, q_neg, k, v, v_neg, self.neg.neg_scale, cu_seqlens, dropout_p, scale
            )
        return dna_attention(q, q_neg, k, v, v_neg, self.neg.neg_scale, attn_mask, dropout_p, scale)

    def extra_repr(self) -> str:
        o = self.opts
        if self.neg is None:
            return f"layer={self.layer_index}, softmax control (same layer and SDPA call as DnA's P+ V+)"
        rank = f", neg_rank={o.neg_rank}" if o.neg_branch == "lowrank" else ""
        return f"layer={self.layer_index}, DnA(neg_branch={o.neg_branch}{rank}, shared_values={o.shared_values}, init={o.init})"


def _require_float(original: nn.Module) -> None:
    for pname, p in original.named_parameters():
        if not p.is_floating_point() or "4bit" in type(p).__name__.lower():
            raise TypeError(
                f"{type(original).__name__}.{pname} is quantized ({type(p).__name__}, {p.dtype}); DnA needs "
                "the vision tower in floating point. Load the model with the vision tower excluded from "
                "quantization (e.g. BitsAndBytesConfig(llm_int8_skip_modules=[<tower>, <projector>]))"
            )


def _require_bidirectional(original: nn.Module) -> None:
    if getattr(original, "is_causal", False) is True:
        raise TypeError(
            f"{type(original).__name__} is causal attention (is_causal=True): only a vision tower's "
            "bidirectional attention may be patched with DnA"
        )


def kernel_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A tower's attention mask in the kernel's form: HF hands towers 4-D masks (bool or additive), which pass
    as they are, or, for flash-attention, a 2-D (B, N) padding mask, which becomes bool (B, 1, 1, N)."""
    if mask is not None and mask.dim() == 2:
        return mask.bool()[:, None, None, :]
    return mask


class Adapter:
    """One vision-tower family. Subclasses set the class attributes and a ``layer_cls``; most need no code."""

    #: family name used in reports, checkpoints and errors
    name: ClassVar[str] = ""
    #: class names of the attention modules this family replaces
    attention_classes: ClassVar[tuple[str, ...]] = ()
    #: HF config.model_type values known to be built on this tower (documentation and supported_model_types)
    model_types: ClassVar[tuple[str, ...]] = ()
    #: dotted attribute paths tried, in order, to find the vision tower in a full model
    tower_paths: ClassVar[tuple[str, ...]] = ()
    #: dotted attribute paths tried, in order, to find the projector in a full model
    projector_paths: ClassVar[tuple[str, ...]] = ()
    #: the DnALayer subclass that replaces each attention module
    layer_cls: ClassVar[type[DnALayer]] = DnALayer

    @classmethod
    def find_towers(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(path, tower) for each vision tower of ``model`` (Video-LLaVA has two); a bare tower is ("", model)."""
        found, seen = [], set()
        for path in cls.tower_paths:
            obj = _getpath(model, path)
            if isinstance(obj, nn.Module) and id(obj) not in seen:
                found.append((path, obj))
                seen.add(id(obj))
        if not found and _is_bare_tower(model):
            found.append(("", model))
        return found

    @classmethod
    def find_projector(cls, model: nn.Module) -> nn.Module | None:
        for path in cls.projector_paths:
            obj = _getpath(model, path)
            if isinstance(obj, nn.Module):
                return obj
        return None

    @classmethod
    def attention_modules(cls, tower: nn.Module) -> list[tuple[str, nn.Module]]:
        """(qualified name inside the tower, module) of each replaceable attention, in layer order."""
        return [(n, m) for n, m in tower.named_modules() if type(m).__name__ in cls.attention_classes]

    @classmethod
    def make_layer(cls, attn: nn.Module, opts: DnAOptions, layer_index: int) -> DnALayer:
        return cls.layer_cls(attn, opts, layer_index)


def _getpath(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_bare_tower(model: nn.Module) -> bool:
    """A vision model passed on its own (e.g. SiglipVisionModel), not a VLM whose tower we failed to find, and
    not a text encoder built on the same attention class (CLIPTextModel is causal: patching its CLIPAttention
    would make it bidirectional). Only vision attention may be patched: an HF model counts as a bare tower
    only when its config is a vision config (``*VisionConfig`` / a ``*vision*`` model_type)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return True
    if any(hasattr(cfg, a) for a in ("text_config", "vision_config")):
        return False
    return "vision" in f"{type(cfg).__name__} {getattr(cfg, 'model_type', '')}".lower()
