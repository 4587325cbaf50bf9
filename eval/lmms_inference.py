"""What the ``dna_vlm`` lmms-eval model does per request, as plain functions: visuals -> frames, lmms-eval
generation kwargs -> ``generate`` kwargs, greedy/sampled answers, and the mean NLL of continuations.

The request bookkeeping (batching, failures, multi-round) is in :mod:`dna_vlm.eval.lmms_plugin`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any

from .records import FAILED_LOGLIKELIHOOD, FAILED_LOSS

__all__ = [
    "VisualFailure",
    "chunks_by_kwargs",
    "continuation_nll",
    "decode_answers",
    "generate_kwargs",
    "load_visual",
]

log = logging.getLogger("dna_vlm.eval.lmms_plugin")


class VisualFailure(Exception):
    """A doc's visual cannot be loaded; the message is the reason logged with the failed sample."""


def load_visual(doc_to_visual, doc, doc_id, max_frames: int, fps: float | None):
    """-> uint8 (T, H, W, 3) frames, or None for a text-only doc. Raises :class:`VisualFailure` with a reason.

    A video path is sampled with :func:`dna_vlm.video.sample_frames` (``fps`` capped by ``max_frames``, else
    ``max_frames`` uniform frames); images become a clip of still frames resized to the first one's size."""
    try:
        visuals = doc_to_visual(doc) if doc_to_visual is not None else None
    except (Exception, SystemExit) as e:  # some lmms-eval tasks sys.exit() on a missing video
        raise VisualFailure(f"doc_to_visual failed: {type(e).__name__}: {e}") from None
    if visuals is None:
        return None
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    visuals = [v for v in visuals if v is not None]
    if not visuals:
        return None
    if isinstance(visuals[0], dict) and "path" in visuals[0]:
        try:
            visuals = [v["path"] for v in visuals]
        except (KeyError, TypeError) as e:
            raise VisualFailure(f"doc_to_visual failed: {type(e).__name__}: {e}") from None
    if isinstance(visuals[0], (str, Path)):
        if len(visuals) > 1:
            log.warning("dna_vlm: doc %s has %d videos; using the first", doc_id, len(visuals))
        return _video_frames(str(visuals[0]), max_frames, fps)
    return _still_frames(visuals, max_frames)


def _video_frames(path: str, max_frames: int, fps: float | None):
    from dna_vlm.video import sample_frames

    try:
        if fps is not None:
            return sample_frames(path, strategy="fps", fps=fps, max_frames=max_frames).frames
        return sample_frames(path, num_frames=max_frames).frames
    except Exception as e:
        raise VisualFailure(f"{type(e).__name__}: {e}") from None


def _still_frames(visuals: list, max_frames: int):
    import numpy as np

    try:
        from PIL import Image

        pil = [v if isinstance(v, Image.Image) else Image.fromarray(np.asarray(v)) for v in visuals]
        pil = [im.convert("RGB") for im in pil][:max_frames]
        size = pil[0].size
        return np.stack([np.asarray(im.resize(size) if im.size != size else im) for im in pil])
    except Exception as e:
        raise VisualFailure(f"cannot use visual of type {type(visuals[0]).__name__}: {e}") from None


def generate_kwargs(gen_kwargs: dict | None, default_max_new_tokens: int) -> tuple[dict, list[str]]:
    """lmms-eval's ``gen_kwargs`` -> (``generate`` kwargs, stop strings). Sampling settings apply only with
    ``do_sample``; greedy otherwise."""
    gk = dict(gen_kwargs or {})
    until = gk.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    out: dict[str, Any] = {"max_new_tokens": int(gk.get("max_new_tokens") or default_max_new_tokens)}
    do_sample = bool(gk.get("do_sample", False))
    temperature = gk.get("temperature")
    if temperature is not None and float(temperature) > 0 and do_sample:
        out["temperature"] = float(temperature)
        if gk.get("top_p") is not None:
            out["top_p"] = float(gk["top_p"])
    out["do_sample"] = do_sample
    if gk.get("num_beams") is not None:
        out["num_beams"] = int(gk["num_beams"])
    return out, [u for u in until if isinstance(u, str) and u]


def chunks_by_kwargs(requests, batch_size: int) -> list[list[int]]:
    """Request indices in contiguous chunks of at most ``batch_size`` with identical generation kwargs."""
    chunks: list[list[int]] = []
    last = None
    for i, req in enumerate(requests):
        key = json.dumps(req.args[1], sort_keys=True, default=str)
        if not chunks or key != last or len(chunks[-1]) >= batch_size:
            chunks.append([])
        chunks[-1].append(i)
        last = key
    return chunks


def decode_answers(tokenizer, input_ids, output_ids, until: list[str]) -> list[str]:
    """The generated text after the prompt, cut at the first stop string, stripped (one per row)."""
    new = output_ids[:, input_ids.shape[1] :]
    res = []
    for t in tokenizer.batch_decode(new, skip_special_tokens=True):
        for u in until:
            if u in t:
                t = t.split(u)[0]
        res.append(t.strip())
    return res


def continuation_nll(model, inputs: dict, labels, eos_ids: set[int]) -> list[tuple[float, bool]]:
    """``(mean NLL, is greedy)`` of each row's labelled continuation, without the end-of-turn token(s) closing
    it; :data:`~dna_vlm.eval.records.FAILED_LOGLIKELIHOOD` for a row with no label or a non-finite NLL.

    ``labels``: (n, L), -100 outside the continuation. Only the logits from the first labelled position on
    are computed when the model takes ``logits_to_keep``."""
    import torch
    import torch.nn.functional as F

    n, L = labels.shape
    mask = labels != -100
    for row in range(n):
        pos = mask[row].nonzero().flatten().tolist()
        while len(pos) > 1 and int(labels[row, pos[-1]]) in eos_ids:
            mask[row, pos.pop()] = False
    first = int(mask.float().argmax(dim=1).min()) if mask.any() else L - 1
    keep = L - max(first - 1, 0)
    kwargs = (
        {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )
    with torch.inference_mode():
        logits = model(**inputs, **kwargs).logits.float()
    lg = logits[:, -keep:][:, :-1]  # (n, keep - 1, V): predictions of positions L-keep+1 .. L-1
    tgt, m = labels[:, L - keep + 1 :], mask[:, L - keep + 1 :]
    out = []
    for row in range(n):
        sel = m[row]
        if not bool(sel.any()):
            out.append(FAILED_LOGLIKELIHOOD)
            continue
        lrow, trow = lg[row][sel], tgt[row][sel]
        nll = F.cross_entropy(lrow, trow, reduction="mean").item()
        greedy = bool((lrow.argmax(-1) == trow).all())
        out.append((float(nll) if math.isfinite(nll) else FAILED_LOSS, greedy))
    return out
