"""Planted degradations of the encoder's output: the visual tokens the LLM receives (the projector's output).

One home for the plugin's ``encoder_noise`` / ``encoder_mask`` controls (:mod:`dna_vlm.eval.lmms.controls`) and
the probe's degraded features (``dna-vlm probe --mask``), so that QA accuracy and the encoder-level (probe)
accuracy are measured under the same planted change of the same strength.

- ``noise`` (sigma): Gaussian noise of ``sigma`` x the tokens' RMS on every token.
- ``mask`` (p): a seeded ``round(p * n)`` of a video's n tokens set to zero; the rest untouched.

Why the mask is the demo's sensitivity and calibration degradation, not the noise: independent noise on each
token is averaged away by any reader that pools over tokens (the LLM's attention does; the 2026-12 demo
changed 68 of 240 answers at sigma = 2 and its accuracy stayed flat). A masked token's content is gone: no
pooling recovers it, the expected information left is (1 - p), and p = 1 leaves no video at all, so the
strongest setting has a known end point (the blind model).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["degrade_tokens", "token_mask", "visual_seed"]


def visual_seed(frames: np.ndarray, seed: int) -> int:
    """A 63-bit seed from the frames' bytes and ``seed``: a property of the visual, not of its position (the
    plugin and the probe derive the same seed from the same sampled frames)."""
    h = hashlib.sha256(f"{seed}:{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def token_mask(shape: tuple[int, ...], p: float, seed: int) -> np.ndarray:
    """Bool array of ``shape`` (e.g. ``(T, N)`` tokens of one video), True at exactly ``round(p * size)``
    positions drawn without replacement from ``seed``'s stream."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mask fraction must be in [0, 1], got {p!r}")
    size = int(np.prod(shape))
    k = round(p * size)
    out = np.zeros(size, bool)
    out[np.random.default_rng(seed).permutation(size)[:k]] = True
    return out.reshape(shape)


def degrade_tokens(x, seed: int, sigma: float = 0.0, mask: float = 0.0):
    """One video's tokens ``(..., D)`` (torch tensor) with the planted degradation; ``seed`` is the video's.

    The mask is applied first (its positions depend only on ``x.shape[:-1]`` and ``seed``), then the noise
    (``sigma`` x the RMS of the tokens as given, drawn from ``torch.Generator().manual_seed(seed)``)."""
    import torch

    y = x.float()
    if mask > 0:
        keep = torch.from_numpy(~token_mask(tuple(x.shape[:-1]), mask, seed)).to(y.device)
        y = y * keep.unsqueeze(-1).to(y.dtype)
    if sigma > 0:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float32)
        y = y + sigma * x.float().pow(2).mean().sqrt() * noise.to(y.device)
    return y.to(x.dtype)
