"""A doc's visual for the ``dna_vlm`` lmms-eval model: what the task's ``doc_to_visual`` returns -> frames.

- :func:`resolve_visual` calls ``doc_to_visual`` and classifies the answer: nothing (text-only), a video
  file (a path, or lmms-eval's ``{"path": ...}``), or a list of images (``longvideobench_val_i``: PIL
  images, sampled evenly down to ``max_frames`` by :func:`even_indices`, never cut to the first ones).
- :func:`check_video` opens a video's container (the pre-flight of ``bad_video=fail``).
- :class:`FrameLoader` decodes frames. Frames belong to their video, never to a doc's position: the
  in-memory cache (and the on-disk :class:`dna_vlm.video.cache.FrameCache` with ``frame_cache=DIR``) is keyed
  by :func:`dna_vlm.video.cache.frame_key` -- the video's resolved path, size and mtime plus the sampling
  parameters -- so two tasks whose doc ids collide never share frames. A frame cache that cannot be written
  (read-only, full) never fails a doc: it warns once and is bypassed (:attr:`FrameLoader.cache_fault`).
- :func:`strip_image_placeholders`: a task that feeds images writes its own ``<image>`` placeholders into
  the text; the model gets the images as one video (its own placeholder, added by
  :func:`dna_vlm.data.prompting.build_inputs`), so the task's are removed and every frame is seen once.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_PLACEHOLDERS",
    "FrameLoader",
    "Visual",
    "VisualFailure",
    "check_video",
    "even_indices",
    "resolve_visual",
    "strip_image_placeholders",
]

log = logging.getLogger("dna_vlm.eval.lmms.plugin")

#: image placeholders lmms-eval tasks write into their prompts
IMAGE_PLACEHOLDERS = ("<image>",)


class VisualFailure(Exception):
    """A doc's visual cannot be loaded; the message is the reason logged with the failed sample."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.path = path


@dataclass
class Visual:
    """What a doc shows: ``kind`` is ``"none"`` (text-only), ``"video"`` (``path``) or ``"images"``."""

    kind: str
    path: str | None = None
    images: list | None = None


def resolve_visual(doc_to_visual, doc, doc_id=None) -> Visual:
    """Call the task's ``doc_to_visual`` and classify its answer. Raises :class:`VisualFailure`."""
    try:
        visuals = doc_to_visual(doc) if doc_to_visual is not None else None
    except (Exception, SystemExit) as e:  # some lmms-eval tasks sys.exit() on a missing video
        raise VisualFailure(f"doc_to_visual failed: {type(e).__name__}: {e}") from None
    if visuals is None:
        return Visual("none")
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    visuals = [v for v in visuals if v is not None]
    if not visuals:
        return Visual("none")
    if isinstance(visuals[0], dict) and "path" in visuals[0]:
        try:
            visuals = [v["path"] for v in visuals]
        except (KeyError, TypeError) as e:
            raise VisualFailure(f"doc_to_visual failed: {type(e).__name__}: {e}") from None
    if isinstance(visuals[0], (str, Path)):
        if len(visuals) > 1:
            log.warning("dna_vlm: doc %s has %d videos; using the first", doc_id, len(visuals))
        return Visual("video", path=str(visuals[0]))
    return Visual("images", images=list(visuals))


def check_video(path: str) -> None:
    """Open ``path``'s container and read its frame count and rate; raises :class:`VisualFailure`."""
    from dna_vlm.video.decode import video_info

    if not Path(path).is_file():
        raise VisualFailure(f"video file not found: {path}", path)
    try:
        info = video_info(path)
    except Exception as e:
        raise VisualFailure(f"{type(e).__name__}: {e}", path) from None
    if info.num_frames < 1:
        raise VisualFailure(f"{path}: the container holds no frames", path)


def even_indices(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices spread evenly over ``range(n)`` (segment centres; all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]


def _still_frames(images: list, max_frames: int) -> np.ndarray:
    """uint8 (T, H, W, 3): ``max_frames`` images sampled evenly, resized to the first one's size."""
    try:
        from PIL import Image

        chosen = [images[i] for i in even_indices(len(images), max_frames)]
        pil = [v if isinstance(v, Image.Image) else Image.fromarray(np.asarray(v)) for v in chosen]
        pil = [im.convert("RGB") for im in pil]
        size = pil[0].size
        return np.stack([np.asarray(im.resize(size) if im.size != size else im) for im in pil])
    except Exception as e:
        raise VisualFailure(f"cannot use visual of type {type(images[0]).__name__}: {e}") from None


def strip_image_placeholders(text: str, processor=None) -> str:
    """``text`` without the task's image placeholders (and the processor's own image token)."""
    tokens = set(IMAGE_PLACEHOLDERS)
    token = getattr(processor, "image_token", None)
    if isinstance(token, str) and token:
        tokens.add(token)
    for t in sorted(tokens, key=len, reverse=True):
        text = text.replace(t, " ")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


class FrameLoader:
    """Frames of a :class:`Visual`: videos through :func:`dna_vlm.video.decode.sample_frames` (``fps`` capped by
    ``max_frames``, else ``max_frames`` uniform frames), cached by video identity + sampling parameters.

    ``capacity``: decoded clips kept in memory (LRU). ``cache_dir``: an on-disk
    :class:`~dna_vlm.video.cache.FrameCache` shared with other runs. ``seek``: passed to ``sample_frames``
    when it takes it (``"exact"`` | ``"keyframe"``). ``prefetch``: after :meth:`start_prefetch`, decode up to
    this many upcoming videos in a background thread (:func:`dna_vlm.video.prefetch.prefetch_map`) while the
    model works; the consumer must ask for them in the order given (the plugin does)."""

    def __init__(
        self,
        max_frames: int,
        fps: float | None,
        seek: str | None = None,
        cache_dir=None,
        capacity: int = 8,
        prefetch: int = 0,
    ):
        self.max_frames, self.fps, self.seek = max_frames, fps, seek
        self.prefetch = prefetch
        self.capacity = max(capacity, prefetch + 2)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ahead = None  # the prefetch iterator
        self._pending: set[str] = set()  # keys the iterator will still yield
        self._errors: dict[str, VisualFailure] = {}
        self.disk = None
        if cache_dir:
            from dna_vlm.video.cache import FrameCache

            self.disk = FrameCache(cache_dir)

    @property
    def cache_fault(self) -> str | None:
        """Why the on-disk frame cache stores nothing (``"DIR: error"``; frames are decoded directly), or None."""
        if self.disk is None or self.disk.fault is None:
            return None
        return f"{self.disk.root}: {self.disk.fault}"

    def sampling(self) -> dict[str, Any]:
        """The ``sample_frames`` keyword arguments (also what the cache key hashes)."""
        if self.fps is not None:
            kw: dict[str, Any] = {"strategy": "fps", "fps": self.fps, "max_frames": self.max_frames}
        else:
            # a clip with fewer frames than max_frames repeats frames (logged), as lmms-eval's own loaders do,
            # instead of failing the doc
            kw = {"strategy": "uniform", "num_frames": self.max_frames, "short": "repeat"}
        if self.seek is not None:
            kw["seek"] = self.seek
        return kw

    def key(self, path: str) -> str:
        """The cache key of ``path`` sampled this way; raises :class:`VisualFailure` for a missing file."""
        from dna_vlm.video.cache import frame_key

        try:
            return frame_key(path, **self.sampling())
        except OSError as e:
            raise VisualFailure(f"video file not found: {path} ({e.strerror or e})", path) from None

    def frames(self, visual: Visual) -> np.ndarray | None:
        """uint8 (T, H, W, 3) frames, None for a text-only doc; raises :class:`VisualFailure`."""
        if visual.kind == "none":
            return None
        if visual.kind == "images":
            return _still_frames(visual.images or [], self.max_frames)
        key = self.key(visual.path)
        hit = self._memory.get(key)
        if hit is None and key in self._pending:
            hit = self._pull(key)
        if hit is None:
            hit = self._decode(visual.path)
            self._keep(key, hit)
        self._memory.move_to_end(key)
        return hit

    def _keep(self, key: str, frames: np.ndarray) -> None:
        self._memory[key] = frames
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)

    # ------------------------------------------------------------------------------------ prefetch

    def start_prefetch(self, paths: list[str]) -> None:
        """Decode ``paths`` (in the order they will be asked for) ``prefetch`` ahead, in the background."""
        from dna_vlm.video.prefetch import prefetch_map

        self.stop_prefetch()
        if self.prefetch <= 0:
            return
        items: list[tuple[str, str]] = []
        for path in paths:
            try:
                key = self.key(path)
            except VisualFailure:
                continue
            if key not in self._pending and key not in self._memory:
                self._pending.add(key)
                items.append((key, path))
        self._ahead = prefetch_map(lambda kp: self._decode(kp[1]), items, depth=self.prefetch)

    def _pull(self, key: str) -> np.ndarray | None:
        """Take prefetched clips until ``key``'s (kept in memory; a failure is raised for its own key)."""
        while self._ahead is not None and key in self._pending:
            got = next(self._ahead, None)
            if got is None:
                self.stop_prefetch()
                break
            k = got.item[0]
            self._pending.discard(k)
            if got.error is not None:
                err = got.error
                self._errors[k] = (
                    err if isinstance(err, VisualFailure) else VisualFailure(str(err), got.item[1])
                )
            else:
                self._keep(k, got.value)
        if key in self._errors:
            raise self._errors.pop(key)
        return self._memory.get(key)

    def stop_prefetch(self) -> None:
        """Cancel what has not started (the running decode finishes)."""
        if self._ahead is not None:
            self._ahead.close()
        self._ahead = None
        self._pending.clear()
        self._errors.clear()

    def _decode(self, path: str) -> np.ndarray:
        from dna_vlm.video.decode import sample_frames

        kw = self.sampling()
        if "seek" in kw and "seek" not in inspect.signature(sample_frames).parameters:
            kw.pop("seek")
        try:
            if self.disk is not None:
                return self.disk.sample(path, **kw).frames
            return sample_frames(path, **kw).frames
        except Exception as e:
            raise VisualFailure(f"{type(e).__name__}: {e}", path) from None
