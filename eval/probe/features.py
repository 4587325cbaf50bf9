"""Frozen encoder features for ``dna-vlm probe``: the visual tokens the LLM receives, pooled per video.

The tokens are the projector's output (vision tower -> projector), captured by a forward hook on the
projector that :func:`dna_vlm.runs.loading.find_projector` finds for every supported family; the hook stops the
forward pass there, so the language model never runs. (LLaVA-OneVision then applies a parameter-free 2x2
bilinear pooling before the LLM; a mean over tokens is the same up to border weights.) Frames are sampled as
evaluation samples them (:func:`dna_vlm.video.decode.sample_frames`, ``num_frames`` uniform frames, like the
``dna_vlm`` lmms-eval plugin) and turned into model inputs by :func:`dna_vlm.runs.loading.build_inputs`, the
processor path training and evaluation use. Each video is decoded once for all models of a call.

Pooling (``(T, N, D)`` tokens of one video: T frames, N tokens per frame, D the LLM's width):

- ``mean``: the mean token, ``(D,)``;
- ``mean+diff``: the mean token and the temporal difference - the least-squares slope of the per-frame mean
  token over the frame index (a weighted average of consecutive-frame differences), ``(2 D,)`` - so motion,
  which a mean over time erases, is linearly readable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from dna_vlm.eval.degrade import Planted, visual_seed

__all__ = ["POOLINGS", "FeatureError", "extract_features", "pool_tokens"]

POOLINGS = ("mean", "mean+diff")
#: the text the model gets with each video; the projector output does not depend on it
_PROMPT = "Describe the video."


class FeatureError(RuntimeError):
    """Features cannot be extracted from a model (the message names the model and what was found)."""


class _Stop(Exception):
    """Raised by the projector hook: the tokens are captured, the rest of the forward pass is not needed."""


def pool_tokens(tokens: np.ndarray, pooling: str) -> np.ndarray:
    """``(B, T, N, D)`` visual tokens -> ``(B, D)`` (``mean``) or ``(B, 2 D)`` (``mean+diff``) features."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: choose one of {POOLINGS}")
    per_frame = tokens.mean(axis=2)  # (B, T, D)
    mean = per_frame.mean(axis=1)
    if pooling == "mean":
        return mean
    t = np.arange(per_frame.shape[1], dtype=np.float64)
    t -= t.mean()
    den = float((t * t).sum()) or 1.0  # one frame: no motion, slope 0
    slope = np.einsum("t,btd->bd", t, per_frame) / den
    return np.concatenate([mean, slope], axis=1)


def _processor_key(processor) -> str:
    """Equal for processors that turn a video into the same inputs (the arms of one base model)."""
    try:
        tok = getattr(processor, "tokenizer", None)
        vocab = f"{getattr(tok, 'name_or_path', '')}:{len(tok) if tok is not None else 0}"
        return type(processor).__name__ + vocab + processor.to_json_string()
    except Exception:  # a processor without a JSON form: never shared
        return f"id:{id(processor)}"


def _tokens(model, batch: dict, n_videos: int, n_frames: int, name: str) -> np.ndarray:
    """``(B, T, N, D)`` projector output for a model batch of B videos (no LLM forward)."""
    import torch

    from dna_vlm.data.prompting import batch_to_device
    from dna_vlm.runs.loading import find_projector

    found = find_projector(model)
    if found is None:
        raise FeatureError(f"probe: model {name!r} has no projector the dna_vlm adapters can find")
    captured: list = []

    def hook(_mod, _inp, out):
        captured.append(out[0] if isinstance(out, (tuple, list)) else out)
        raise _Stop

    dev = next(p.device for p in model.parameters())
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    batch = batch_to_device(batch, dev, dtype)
    handle = found[1].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(**batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise FeatureError(f"probe: model {name!r}: the projector {found[0]} did not run on a video batch")
    return _as_btnd(captured[0].float().cpu().numpy(), n_videos, n_frames, name)


def _as_btnd(out: np.ndarray, b: int, t: int, name: str) -> np.ndarray:
    """The projector output as ``(B, T', N, D)``: ``(B*T, N, D)`` (per-frame tokens, LLaVA-style) or a flat
    ``(B*K, D)`` token list (Qwen-style), split evenly into videos and, where it divides, into T frames."""
    if out.ndim == 3 and out.shape[0] % b == 0:
        return out.reshape(b, out.shape[0] // b, out.shape[1], out.shape[2])
    if out.ndim == 2 and out.shape[0] % b == 0:
        k = out.shape[0] // b
        frames = t if k % t == 0 else 1
        return out.reshape(b, frames, k // frames, out.shape[1])
    raise FeatureError(
        f"probe: model {name!r}: projector output of shape {tuple(out.shape)} cannot be split into {b} videos "
        f"of {t} frames; expected (B*T, N, D) or (B*K, D)"
    )


def extract_features(
    models: Mapping[str, tuple],
    videos: Sequence[str],
    num_frames: int,
    pooling: str,
    batch_size: int = 16,
    desc: str = "features",
    planted: Sequence[Planted] = (),
    planted_arms: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """``{name: (len(videos), F) float32}`` for every ``(model, processor)`` in ``models``.

    Videos are decoded once per batch and fed to every model (and turned into model inputs once per
    distinct processor: the arms of one base model share it); ``batch_size`` videos per forward. Each
    ``planted`` degradation d (:class:`~dna_vlm.eval.degrade.Planted`) adds ``{f"{name}@{d.name}": ...}``: the
    same tokens with the plugin's ``encoder_<kind>=p`` degradation (seeded per video by
    :func:`~dna_vlm.eval.degrade.visual_seed` of its sampled frames, as the plugin seeds it) before pooling, for
    the models named in ``planted_arms`` (default: every model)."""
    from tqdm import tqdm

    from dna_vlm.runs.loading import build_inputs
    from dna_vlm.video.decode import sample_frames

    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: choose one of {POOLINGS}")
    degraded = list(models) if planted_arms is None else [n for n in models if n in set(planted_arms)]
    names = [*models, *(f"{n}@{d.name}" for n in degraded for d in planted)]
    feats: dict[str, list[np.ndarray]] = {name: [] for name in names}
    keys = {name: _processor_key(proc) for name, (_m, proc) in models.items()}
    for start in tqdm(range(0, len(videos), batch_size), desc=f"probe {desc}", unit="batch"):
        paths = videos[start : start + batch_size]
        frames = [sample_frames(p, num_frames=num_frames).frames for p in paths]
        seeds = [visual_seed(f, 0) for f in frames] if planted else []
        batches: dict[str, dict] = {}
        for name, (model, processor) in models.items():
            key = keys[name]
            if key not in batches:
                batches[key] = build_inputs(processor, frames, [_PROMPT] * len(frames))
            tokens = _tokens(model, batches[key], len(frames), frames[0].shape[0], name)
            feats[name].append(pool_tokens(tokens, pooling))
            for d in planted if name in degraded else ():
                hit = np.stack([_degraded(t, seed, d) for t, seed in zip(tokens, seeds, strict=True)])
                feats[f"{name}@{d.name}"].append(pool_tokens(hit, pooling))
    return {
        name: (np.concatenate(f).astype(np.float32) if f else np.zeros((0, 0), np.float32))
        for name, f in feats.items()
    }


def _degraded(tokens: np.ndarray, seed: int, planted: Planted) -> np.ndarray:
    """One video's ``(T, N, D)`` tokens with the planted degradation, as the plugin's hook applies it."""
    import torch

    return planted.apply(torch.from_numpy(np.ascontiguousarray(tokens)), seed).numpy()
