"""Input checks shared by every DnA kernel path (reference, fused, triton): shapes, dtypes, devices, masks."""

from __future__ import annotations

import torch


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _validate(q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask) -> None:
    named = {"q_pos": q_pos, "q_neg": q_neg, "k": k, "v_pos": v_pos, "v_neg": v_neg}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"dna_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"dna_attention: {name} must be 4-D (B, H, N, d), got shape {_shape(t)}")
        if not t.is_floating_point():
            raise TypeError(f"dna_attention: {name} must be floating point, got dtype {t.dtype}")
    if q_neg.shape != q_pos.shape:
        raise ValueError(
            f"dna_attention: q_neg has shape {_shape(q_neg)} but q_pos has shape {_shape(q_pos)}; "
            "both queries must be (B, H, Nq, d)"
        )
    if v_neg.shape != v_pos.shape:
        raise ValueError(
            f"dna_attention: v_neg has shape {_shape(v_neg)} but v_pos has shape {_shape(v_pos)}; "
            "both values must be (B, H, Nk, dv)"
        )
    B, H, _, d = q_pos.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise ValueError(
            f"dna_attention: k has shape {_shape(k)} but q_pos has shape {_shape(q_pos)}; "
            f"k must be (B={B}, H={H}, Nk, d={d})"
        )
    if v_pos.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"dna_attention: v_pos has shape {_shape(v_pos)} but k has shape {_shape(k)}; "
            "values must be (B, H, Nk, dv) with the keys' B, H and Nk"
        )
    for name, t in named.items():
        if t.dtype != q_pos.dtype:
            raise TypeError(
                f"dna_attention: {name} has dtype {t.dtype} but q_pos has {q_pos.dtype}; cast them alike"
            )
        if t.device != q_pos.device:
            raise ValueError(f"dna_attention: {name} is on {t.device} but q_pos is on {q_pos.device}")
    if not isinstance(neg_scale, torch.Tensor) or neg_scale.shape != (H,):
        got = _shape(neg_scale) if isinstance(neg_scale, torch.Tensor) else type(neg_scale).__name__
        raise ValueError(f"dna_attention: neg_scale must be a (H,) = ({H},) tensor, got {got}")
    if neg_scale.device != q_pos.device:
        raise ValueError(f"dna_attention: neg_scale is on {neg_scale.device} but q_pos is on {q_pos.device}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(
                f"dna_attention: attn_mask must be bool or floating point, got dtype {attn_mask.dtype}"
            )
        target = (B, H, q_pos.shape[2], k.shape[2])
        try:
            torch.broadcast_shapes(attn_mask.shape, target)
        except RuntimeError:
            raise ValueError(
                f"dna_attention: attn_mask has shape {_shape(attn_mask)}, not broadcastable to (B, H, Nq, Nk) = {target}"
            ) from None
