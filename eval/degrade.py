"""Planted degradations of the encoder's output: the visual tokens the LLM receives (the projector's output).

One home for the plugin's ``encoder_noise`` / ``encoder_mask`` controls (:mod:`dna_vlm.eval.lmms.controls`) and
the probe's degraded features (``dna-vlm probe --mask``), so that QA accuracy and the encoder-level (probe)
accuracy are measured under the same planted change of the same strength.

- ``noise`` (sigma): Gaussian noise of ``sigma`` x the tokens' RMS on every token.
- ``mask`` (p): a seeded ``round(p * n)`` of a video's n tokens set to zero; the rest untouched.
- ``scramble`` (p): a seeded ``round(p * n)`` of a video's n tokens replaced by their image under one seeded
  random rotation of the token space (one rotation per video); the rest untouched.

Why the scramble is the demo's sensitivity and calibration degradation, and neither the noise nor the mask:
both leave the surviving evidence intact and add nothing that competes with it. Independent noise on each token
is averaged away by any reader that pools over tokens (the LLM's attention does; the 2026-12 demo changed 68 of
240 answers at sigma = 2 and its accuracy stayed flat), and a video's attributes are spread over many tokens, so
zeroing 75% of them left the demo's accuracy flat too (49.4% -> 49.3 / 49.7 / 49.0% at p = 0.25 / 0.5 / 0.75):
the 25% left still show the colour. A scrambled token keeps its norm (normalisation layers cannot tell it from a
real one) but points elsewhere, and all scrambled tokens of a video are moved by the *same* rotation, so their
wrong content adds up under pooling instead of averaging out: a reader that pools sees a mixture in which the
video's evidence has weight (1 - p) against a coherent decoy of weight p. p = 1 keeps no direction of the
original, so the strongest setting has a known end point (chance). Its limit: a random rotation moves a token
off the manifold of real tokens, and a reader trained long enough learns to discount such tokens, so on a
well-trained model only the strongest settings bite (docs/measurements/instrument-diagnosis-2026-12-05); an
on-manifold decoy (another video's tokens) would need a donor video the projector hook does not have.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["PLANTED_KINDS", "Planted", "degrade_tokens", "random_rotation", "token_mask", "visual_seed"]

#: the planted degradations a probe arm / lmms-eval run can carry (each a fraction of the tokens)
PLANTED_KINDS = ("mask", "scramble")


@dataclass(frozen=True)
class Planted:
    """One planted degradation of the encoder's output, a fraction ``p`` of each video's tokens: the plugin's
    ``encoder_<kind>=p`` and the probe's arm ``<arm>@<kind><p>`` (:attr:`name`) are the same change."""

    kind: str
    p: float

    def __post_init__(self) -> None:
        if self.kind not in PLANTED_KINDS:
            raise ValueError(f"planted degradation {self.kind!r}: choose one of {PLANTED_KINDS}")
        if not 0.0 < float(self.p) <= 1.0:
            raise ValueError(f"planted {self.kind}: the fraction must be in (0, 1], got {self.p!r}")

    @property
    def name(self) -> str:
        """``scramble0.5``: the derived probe arm's suffix and the demo's run name."""
        return f"{self.kind}{self.p:g}"

    @property
    def model_arg(self) -> str:
        """The ``dna_vlm`` lmms-eval model_arg that plants this kind: ``encoder_scramble``."""
        return f"encoder_{self.kind}"

    @property
    def model_args(self) -> dict:
        """The ``dna_vlm`` lmms-eval model_args of the same change."""
        return {self.model_arg: float(self.p)}

    @classmethod
    def parse(cls, text: str) -> Planted:
        """``scramble0.5`` / ``scramble=0.5`` -> ``Planted("scramble", 0.5)``."""
        m = re.fullmatch(r"([a-z]+)=?((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", str(text).strip())
        if m is None:
            raise ValueError(
                f"planted degradation {text!r}: expected KIND P, e.g. scramble0.5 ({PLANTED_KINDS})"
            )
        return cls(m.group(1), float(m.group(2)))

    def apply(self, tokens, seed: int):
        """One video's tokens ``(..., D)`` (torch tensor) with this change (:func:`degrade_tokens`)."""
        return degrade_tokens(tokens, seed, **{self.kind: float(self.p)})


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


@functools.lru_cache(maxsize=16)
def random_rotation(dim: int, seed: int):
    """A ``(dim, dim)`` float32 orthogonal matrix drawn from ``seed`` (Haar: QR of a Gaussian, signs fixed).
    Cached (read-only: callers never modify it): one video's scrambles at several strengths share it, and a QR
    per call was most of the probe's planted-arm time."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def degrade_tokens(x, seed: int, sigma: float = 0.0, mask: float = 0.0, scramble: float = 0.0):
    """One video's tokens ``(..., D)`` (torch tensor) with the planted degradation; ``seed`` is the video's.

    The scramble is applied first (positions from ``seed + 1``'s stream, the rotation from ``seed + 2``), then
    the mask (positions from ``seed``'s stream, depending only on ``x.shape[:-1]``), then the noise (``sigma``
    x the RMS of the tokens as given, drawn from ``torch.Generator().manual_seed(seed)``)."""
    import torch

    y = x.float()
    if scramble > 0:
        where = torch.from_numpy(token_mask(tuple(x.shape[:-1]), scramble, seed + 1)).to(y.device)
        rot = random_rotation(x.shape[-1], seed + 2).to(y.device)
        y = torch.where(where.unsqueeze(-1), y @ rot.T, y)
    if mask > 0:
        keep = torch.from_numpy(~token_mask(tuple(x.shape[:-1]), mask, seed)).to(y.device)
        y = y * keep.unsqueeze(-1).to(y.dtype)
    if sigma > 0:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float32)
        y = y + sigma * x.float().pow(2).mean().sqrt() * noise.to(y.device)
    return y.to(x.dtype)
