"""Input controls of the ``dna_vlm`` lmms-eval model (``model_args``), for any task.

- ``video=full|none|shuffled|single``: ``none`` is the blind twin (the same prompt builder,
  :func:`dna_vlm.data.prompting.build_inputs`, without a video: no task YAML needed); ``shuffled`` feeds the same
  frames in a seeded random order (temporal reliance); ``single`` repeats the middle frame (multi-frame
  reliance). :func:`apply_video_control`.
- ``encoder_noise=SIGMA``: Gaussian noise added to the visual tokens the LLM receives (the projector's
  output; for Qwen-VL families the merger's), at ``SIGMA`` times their RMS. :class:`ProjectorNoise`.
- ``encoder_mask=P``: a seeded fraction ``P`` of each video's visual tokens set to zero (information removed).
- ``encoder_scramble=P``: a seeded fraction ``P`` of each video's visual tokens moved by one seeded random
  rotation of the token space (a coherent decoy that pooling cannot average away; the demo's sensitivity and
  calibration degradation, :mod:`dna_vlm.eval.degrade` says why). The degradations are
  :func:`dna_vlm.eval.degrade.degrade_tokens`, which ``dna-vlm probe --mask / --scramble`` applies too.
- ``control_seed=N`` (default 0): with the doc's visual it seeds all of them (:func:`visual_seed`), so the
  same video gets the same shuffle / noise / mask in every task and at every batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dna_vlm.eval.degrade import degrade_tokens, visual_seed

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
    encoder_mask: float = 0.0
    encoder_scramble: float = 0.0

    @property
    def degrades(self) -> bool:
        """Whether the encoder's output is degraded (noise, mask or scramble): a per-video seed is needed."""
        return self.encoder_noise > 0 or self.encoder_mask > 0 or self.encoder_scramble > 0

    @classmethod
    def parse(cls, video, encoder_noise, seed, encoder_mask=0.0, encoder_scramble=0.0) -> Controls:
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
        frac = _fraction("encoder_mask", encoder_mask)
        scramble = _fraction("encoder_scramble", encoder_scramble)
        if mode == "none" and (sigma > 0 or frac > 0 or scramble > 0):
            raise ValueError(
                "dna_vlm: model_args encoder_noise / encoder_mask / encoder_scramble need a video; drop them or "
                "video=none"
            )
        return cls(
            video=mode, encoder_noise=sigma, seed=seed_val, encoder_mask=frac, encoder_scramble=scramble
        )

    def as_dict(self) -> dict:
        d = {"video": self.video, "encoder_noise": self.encoder_noise, "control_seed": self.seed}
        if self.encoder_mask:
            d["encoder_mask"] = self.encoder_mask
        if self.encoder_scramble:
            d["encoder_scramble"] = self.encoder_scramble
        return d


def _fraction(name: str, value) -> float:
    try:
        frac = float(value or 0.0)
    except (TypeError, ValueError):
        frac = math.nan
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"dna_vlm: model_args {name} must be a fraction in [0, 1], got {value!r}")
    return frac


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
    """A forward hook on the projector that degrades its output: ``sigma`` x RMS Gaussian noise, a ``mask``
    fraction of tokens zeroed and/or a ``scramble`` fraction rotated (:func:`dna_vlm.eval.degrade.degrade_tokens`).

    Before each forward pass the caller names the batch's videos (:meth:`set_batch`): one seed per video;
    the output's first dim is split evenly among them and each part is degraded from its own seed (copies of
    one video -- the options of a question -- get the same degradation). ``sigma == mask == scramble == 0`` installs
    no hook at all, so the model is bit-identical to the uncontrolled one."""

    def __init__(self, model, sigma: float, mask: float = 0.0, scramble: float = 0.0) -> None:
        from dna_vlm.runs.loading import find_projector

        self.sigma, self.mask, self.scramble = float(sigma), float(mask), float(scramble)
        self.seeds: list[int] = []
        self.handle = None
        self.name = None
        if self.sigma > 0 or self.mask > 0 or self.scramble > 0:
            found = find_projector(model)
            if found is None:
                raise ValueError(
                    "dna_vlm: model_args encoder_noise / encoder_mask / encoder_scramble need the model's projector, which "
                    "dna_vlm.runs.loading.find_projector did not find for this model; drop them"
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
        chunks = [
            degrade_tokens(part, seed, self.sigma, self.mask, self.scramble)
            for seed, part in zip(self.seeds[:parts], x.chunk(parts, dim=0), strict=True)
        ]
        y = torch.cat(chunks, dim=0)
        return (y, *output[1:]) if is_tuple else y

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
