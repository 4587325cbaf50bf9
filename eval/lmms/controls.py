"""Input controls of the ``dna_vlm`` lmms-eval model (``model_args``), for any task.

- ``video=full|none|shuffled|single``: ``none`` is the blind twin (the same prompt builder,
  :func:`dna_vlm.data.prompting.build_inputs`, without a video: no task YAML needed); ``shuffled`` feeds the same
  frames in a seeded random order (temporal reliance); ``single`` repeats the middle frame (multi-frame
  reliance). :func:`apply_video_control`.
- ``encoder_noise=SIGMA``: Gaussian noise added to the visual tokens the LLM receives (the projector's
  output; for Qwen-VL families the merger's), at ``SIGMA`` times their RMS. :class:`ProjectorNoise`.
- ``control_seed=N`` (default 0): with the doc's visual it seeds both (:func:`visual_seed`), so the
  same video gets the same shuffle / noise in every task and at every batch size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BAD_VIDEO",
    "VIDEO_MODES",
    "Controls",
    "ProjectorNoise",
    "apply_video_control",
    "visual_seed",
]

VIDEO_MODES = ("full", "none", "shuffled", "single")
BAD_VIDEO = ("fail", "skip")


@dataclass(frozen=True)
class Controls:
    """The input controls of a run (recorded in its provenance)."""

    video: str = "full"
    encoder_noise: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, video, encoder_noise, seed) -> Controls:
        mode = str(video or "full").strip().lower()
        if mode not in VIDEO_MODES:
            raise ValueError(
                f"dna_vlm: model_args video must be one of {'|'.join(VIDEO_MODES)}, got {video!r}"
            )
        try:
            sigma = float(encoder_noise or 0.0)
        except (TypeError, ValueError):
            raise ValueError(
                f"dna_vlm: model_args encoder_noise must be a number >= 0, got {encoder_noise!r}"
            ) from None
        if not sigma >= 0 or not np.isfinite(sigma):
            raise ValueError(
                f"dna_vlm: model_args encoder_noise must be a finite number >= 0, got {encoder_noise!r}"
            )
        try:
            seed_val = int(seed or 0)
        except (TypeError, ValueError):
            raise ValueError(f"dna_vlm: model_args control_seed must be an integer, got {seed!r}") from None
        if mode == "none" and sigma > 0:
            raise ValueError("dna_vlm: model_args encoder_noise needs a video; drop it or video=none")
        return cls(video=mode, encoder_noise=sigma, seed=seed_val)

    def as_dict(self) -> dict:
        return {"video": self.video, "encoder_noise": self.encoder_noise, "control_seed": self.seed}


def visual_seed(frames: np.ndarray, seed: int) -> int:
    """A 63-bit seed from the frames' bytes and ``seed``: a property of the visual, not of its position."""
    h = hashlib.sha256(f"{seed}:{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def apply_video_control(frames: np.ndarray | None, mode: str, seed: int) -> np.ndarray | None:
    """(T, H, W, 3) frames as the control ``mode`` shows them (None: text-only).

    ``shuffled``: a seeded permutation, never the identity when T > 1; ``single``: frame ``T // 2`` repeated T
    times."""
    if frames is None or mode == "full":
        return frames
    if mode == "none":
        return None
    t = frames.shape[0]
    if mode == "single":
        return np.repeat(frames[t // 2 : t // 2 + 1], t, axis=0)
    if mode == "shuffled":
        order = np.random.default_rng(visual_seed(frames, seed)).permutation(t)
        if t > 1 and np.array_equal(order, np.arange(t)):
            order = np.roll(order, 1)
        return frames[order]
    raise ValueError(f"unknown video control {mode!r}; expected one of {VIDEO_MODES}")


class ProjectorNoise:
    """A forward hook on the projector that adds ``sigma`` x RMS Gaussian noise to its output.

    Before each forward pass the caller names the batch's videos (:meth:`set_batch`): one seed per video;
    the output's first dim is split evenly among them and each part gets noise drawn from its own seed
    (copies of one video -- the options of a question -- get the same noise). ``sigma == 0`` installs no
    hook at all, so the model is bit-identical to the uncontrolled one."""

    def __init__(self, model, sigma: float) -> None:
        from dna_vlm.runs.loading import find_projector

        self.sigma = float(sigma)
        self.seeds: list[int] = []
        self.handle = None
        self.name = None
        if self.sigma > 0:
            found = find_projector(model)
            if found is None:
                raise ValueError(
                    "dna_vlm: model_args encoder_noise needs the model's projector, which dna_vlm.runs.loading."
                    "find_projector did not find for this model; drop encoder_noise"
                )
            self.name, module = found
            self.handle = module.register_forward_hook(self._hook)

    def set_batch(self, seeds: list[int]) -> None:
        self.seeds = list(seeds)

    def _hook(self, _module, _inputs, output):
        import torch

        if not self.seeds:
            return output
        is_tuple = isinstance(output, tuple)
        x = output[0] if is_tuple else output
        parts = len(self.seeds) if x.shape[0] % len(self.seeds) == 0 else 1
        chunks = []
        for seed, part in zip(self.seeds[:parts], x.chunk(parts, dim=0), strict=True):
            gen = torch.Generator().manual_seed(seed)
            noise = torch.randn(part.shape, generator=gen, dtype=torch.float32)
            rms = part.float().pow(2).mean().sqrt()
            chunks.append((part.float() + self.sigma * rms * noise.to(part.device)).to(part.dtype))
        y = torch.cat(chunks, dim=0)
        return (y, *output[1:]) if is_tuple else y

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
