"""The training loss: next-token cross-entropy over the answer tokens, with the LM head run only where needed.

A video QA row of the embedded default has ~93 tokens of which ~2 are labelled (the answer and the end of
turn). The model's own loss applies the LM head (hidden -> vocab) and a log-softmax at every position: ~20% of
a training step's FLOPs on the tiny model, spent on positions whose loss is ignored. :func:`lm_loss` asks the
model for logits only at the positions that predict a label (``logits_to_keep``, which every HF generation
model of the supported families takes) and computes the same mean over the labelled tokens as HF's
``ForCausalLMLoss`` (labels shifted by one, ``ignore_index=-100``, mean over the labelled tokens of the batch).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from dna_vlm.data.prompting import IGNORE_INDEX

__all__ = ["lm_loss", "takes_logits_to_keep"]


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model``'s forward (under accelerate's DDP ``.module`` and PEFT's ``get_base_model()``; not
    HF's ``base_model``, which is the headless inner model) names a ``logits_to_keep`` argument."""
    for _ in range(4):
        if isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            break
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def lm_loss(model: nn.Module, batch: dict, trim: bool = True) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens of ``batch`` (``labels`` (B, L), -100 = not scored).

    ``trim``: compute the logits only at the K positions that predict some label in the batch (B, K, V) instead
    of all L; the value equals ``model(**batch).loss`` (tested, with gradients). Falls back to the model's own
    loss when its forward takes no ``logits_to_keep``.
    """
    if not trim or "labels" not in batch:
        return model(**batch).loss
    target = batch["labels"][:, 1:]  # (B, L-1): the token at t+1 is predicted at position t
    keep = (target != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
    if keep.numel() == 0:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1), ignore_index=IGNORE_INDEX
    )
