"""Capture DnA attention maps while a patched tower runs, without touching its production forward.

:func:`capture_attention` wraps the kernel call of chosen DnA layers (``DnALayer.run_kernel``, the one hook
point) for the duration of a ``with`` block: each call still runs the kernel as usual, and both branches'
probability maps are also computed (materialised, fp32) and handed to a callback. Leaving the block restores
the layers, also on errors.

    with capture_attention(layers) as maps:      # maps: [AttentionMaps, ...] in call order
        model(**inputs)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from dna_vlm.kernel import attention_probs, block_diagonal_mask

__all__ = ["AttentionMaps", "attention_probs", "capture_attention", "is_capturing"]

HOOK = "run_kernel"  # the DnALayer method wrapped while capturing


@dataclass
class AttentionMaps:
    """Both branches' attention probabilities of one kernel call of one DnA layer."""

    position: int  # the layer's position in the sequence given to capture_attention
    layer_index: int  # DnALayer.layer_index (its index among the tower's attention modules)
    p_pos: torch.Tensor  # (B, H, Nq, Nk) fp32 on CPU: softmax(s Q+ K^T + mask)
    p_neg: torch.Tensor  # (B, H, Nq, Nk) fp32 on CPU: softmax(-s Q- K^T + mask)
    cu_seqlens: torch.Tensor | None  # packed towers: segment bounds (no attention across them; p = 0 there)


@contextlib.contextmanager
def capture_attention(
    layers: Sequence, on_maps: Callable[[AttentionMaps], None] | None = None
) -> Iterator[list[AttentionMaps]]:
    """Within the block, every kernel call of ``layers[i]`` (DnA layers) also produces an :class:`AttentionMaps`.

    ``on_maps(maps)`` is called with each one (reduce them there to keep memory flat); without ``on_maps``
    they are collected in the yielded list. Layers already capturing are refused (no nested capture).
    """
    collected: list[AttentionMaps] = []
    sink = on_maps if on_maps is not None else collected.append
    busy = [i for i, layer in enumerate(layers) if is_capturing(layer)]
    if busy:
        raise RuntimeError(f"capture_attention: layers at positions {busy} are already being captured")
    try:
        for pos, layer in enumerate(layers):
            setattr(layer, HOOK, _recording(layer, pos, getattr(layer, HOOK), sink))
        yield collected
    finally:
        for layer in layers:
            vars(layer).pop(HOOK, None)  # back to the class's method


def is_capturing(layer) -> bool:
    """Whether ``layer``'s kernel call is currently wrapped by :func:`capture_attention`."""
    return HOOK in vars(layer)


def _recording(layer, position: int, run_kernel, sink):
    """``run_kernel`` that first hands both branches' probabilities to ``sink``."""

    def wrapped(q, q_neg, k, v, v_neg, attn_mask, cu_seqlens, dropout_p, scale):
        with torch.no_grad():
            mask = attn_mask if cu_seqlens is None else block_diagonal_mask(cu_seqlens, device=q.device)
            p_pos, p_neg = attention_probs(q, q_neg, k, mask, scale)
        sink(AttentionMaps(position, layer.layer_index, p_pos.cpu(), p_neg.cpu(), cu_seqlens))
        return run_kernel(q, q_neg, k, v, v_neg, attn_mask, cu_seqlens, dropout_p, scale)

    return wrapped
