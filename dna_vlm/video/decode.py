"""Video frames for training and evaluation, decoded with decord (DESIGN.md §4, "How data flows").

``sample_frames(path, num_frames=8, strategy=...)`` returns a :class:`Frames` (uint8 ``(T, H, W, 3)`` frames plus
their timestamps and indices). Strategies:

- ``"uniform"`` (evaluation): ``num_frames`` evenly spaced frames, the centre frame of each of ``num_frames``
  equal segments; deterministic.
- ``"segments"`` (training, TSN-style): one random frame inside each of ``num_frames`` equal segments;
  deterministic under ``seed``.
- ``"fps"``: frames at a target rate ``fps`` (frames per second of video), capped at ``max_frames`` (then
  spread uniformly instead).

Each may be restricted to ``window=(start_s, end_s)``.

Times are the container's own: a variable-frame-rate clip (a phone or screen recording, a slideshow, frames
dropped) is sampled on its per-frame timestamps (decord's index of the packets' presentation times), not on
``index / average fps``. ``"uniform"`` then takes the frame on screen at the centre of each equal *time*
segment, ``"segments"`` a random frame starting inside each, ``"fps"`` the frames on screen every ``1 / fps``
seconds (each once); ``timestamps`` are the frames' true times. A clip whose frames all start within a
quarter of a frame interval of ``index / fps`` is constant-rate and keeps the index arithmetic below exactly
(``Frames.constant_rate``); :func:`video_times` gives a clip's times.

Seeking (``seek=``): ``"exact"`` (default) decodes the very frames asked for, which means decoding from the
keyframe before each one up to it; ``"keyframe"`` moves each sample to the nearest keyframe and decodes only
keyframes, one packet each (:mod:`dna_vlm.video.keyframes`), 5-8x faster on a 60 s 720p clip with a keyframe every
2 s (``dna-vlm bench --video``). Use it for long videos sampled uniformly, where half a keyframe interval
(typically 1-2 s) does not change what a frame shows; keep ``"exact"`` for fine temporal questions (order of
quick events, counting, action boundaries), short clips, or when keyframes are sparse (the samples then
collapse onto few keyframes; ``Frames.timestamps`` vs ``requested_timestamps`` show by how much).

More frames asked than the range holds (``short=``): ``"error"`` (default, a :class:`VideoError` naming the
file and both counts), ``"repeat"`` (repeat frames to fill, logged) or ``"fewer"`` (each frame once). The index arithmetic lives in small pure functions
(:func:`uniform_indices`, :func:`segment_indices`, :func:`fps_indices`, :func:`window_to_range`) so it can be
tested without videos. :func:`dna_vlm.video.write.write_video` writes small mp4 files (tests, the synthetic data set).

decord and PyAV are imported lazily: ``pip install "dna-vlm[train]"`` provides decord.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dna_vlm.errors import VideoError

__all__ = [
    "SEEKS",
    "SHORT_POLICIES",
    "STRATEGIES",
    "Frames",
    "VideoError",
    "VideoInfo",
    "fps_indices",
    "plan_indices",
    "sample_frames",
    "segment_indices",
    "snap_to_keyframes",
    "uniform_indices",
    "vfr_fps_indices",
    "vfr_segment_indices",
    "vfr_uniform_indices",
    "vfr_window_to_range",
    "video_info",
    "video_times",
    "window_to_range",
]

STRATEGIES = ("uniform", "segments", "fps")
SEEKS = ("exact", "keyframe")
SHORT_POLICIES = ("error", "repeat", "fewer")
_EPS = 1e-6
_EPS_S = 1e-3  # seconds: decord's frame times are float32 (a few 1e-4 s apart from the truth at an hour)
_CFR_TOL = 0.25  # frame intervals: every frame within this of index / fps -> a constant-rate clip
log = logging.getLogger(__name__)


@dataclass
class Frames:
    """Frames sampled from one video."""

    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    timestamps: np.ndarray  # float64 (T,), seconds from the start of the video
    indices: np.ndarray  # int64 (T,), frame indices in the source video
    source_fps: float
    path: str
    num_source_frames: int = 0  # frames in the whole source video
    # float64 (T,): the times the strategy asked for; differs from ``timestamps`` when seek="keyframe"
    requested_timestamps: np.ndarray | None = None
    constant_rate: bool = True  # False: sampled on the container's per-frame times (variable frame rate)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Duration of the source video in seconds."""
        return self.num_source_frames / self.source_fps if self.source_fps > 0 else 0.0


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


# ----------------------------------------------------------------------------------------------------------
# pure index arithmetic


def _check_range(n_frames: int, lo: int, hi: int | None) -> tuple[int, int]:
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    hi = n_frames if hi is None else hi
    if not (0 <= lo < hi <= n_frames):
        raise ValueError(f"need 0 <= lo < hi <= n_frames, got lo={lo}, hi={hi}, n_frames={n_frames}")
    return int(lo), int(hi)


def _check_num(num: int, name: str = "num") -> int:
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"{name} must be a positive integer, got {num!r}")
    return int(num)


def uniform_indices(n_frames: int, num: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """The centre frame of each of ``num`` equal segments of ``[lo, hi)`` (default the whole video).

    Always returns ``num`` indices, sorted (non-decreasing); when the range has fewer than ``num`` frames some
    frames repeat, so a model always sees the same number of frames.
    """
    lo, hi = _check_range(n_frames, lo, hi)
    num = _check_num(num)
    span = hi - lo
    idx = lo + np.floor((np.arange(num) + 0.5) * span / num).astype(np.int64)
    return np.clip(idx, lo, hi - 1)


def segment_indices(
    n_frames: int,
    num: int,
    rng: np.random.Generator | int | None = None,
    lo: int = 0,
    hi: int | None = None,
) -> np.ndarray:
    """One random frame inside each of ``num`` equal segments of ``[lo, hi)`` (training-time sampling).

    ``rng`` is a numpy Generator or a seed (None: fresh entropy). Segments shorter than one frame (range
    shorter than ``num``) fall back to their uniform centre, so the result is sorted and has ``num`` entries.
    """
    lo, hi = _check_range(n_frames, lo, hi)
    num = _check_num(num)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    span = hi - lo
    starts = np.floor(np.arange(num) * span / num).astype(np.int64)
    ends = np.floor((np.arange(num) + 1) * span / num).astype(np.int64)
    lengths = ends - starts
    draws = rng.integers(0, np.maximum(lengths, 1))
    centres = np.floor((np.arange(num) + 0.5) * span / num).astype(np.int64)
    idx = np.where(lengths > 0, starts + draws, centres)
    return np.clip(lo + idx, lo, hi - 1).astype(np.int64)


def fps_indices(
    n_frames: int,
    source_fps: float,
    target_fps: float,
    max_frames: int | None = None,
    lo: int = 0,
    hi: int | None = None,
) -> np.ndarray:
    """Frames of ``[lo, hi)`` at ``target_fps`` (at most the source rate), starting at ``lo``.

    If that gives more than ``max_frames`` frames, ``max_frames`` uniformly spread frames are returned
    instead. Indices are strictly increasing; at least one frame is returned.
    """
    lo, hi = _check_range(n_frames, lo, hi)
    if not (source_fps > 0 and math.isfinite(source_fps)):
        raise ValueError(f"source_fps must be positive, got {source_fps!r}")
    if not (target_fps > 0 and math.isfinite(target_fps)):
        raise ValueError(f"target fps must be positive, got {target_fps!r}")
    if max_frames is not None:
        max_frames = _check_num(max_frames, "max_frames")
    step = max(source_fps / target_fps, 1.0)  # source frames per sampled frame
    span = hi - lo
    count = max(1, math.ceil(span / step - _EPS))
    if max_frames is not None and count > max_frames:
        return uniform_indices(n_frames, max_frames, lo, hi)
    idx = lo + np.floor(np.arange(count) * step + _EPS).astype(np.int64)
    return np.clip(idx, lo, hi - 1)


def window_to_range(n_frames: int, source_fps: float, start_s: float, end_s: float | None) -> tuple[int, int]:
    """The frame range ``[lo, hi)`` whose timestamps (``index / fps``) lie in ``[start_s, end_s)``.

    ``end_s`` beyond the end of the video (or None) is clipped to the video's end. Raises ``ValueError`` for a
    window that is empty, negative, or starts at/after the end of the video (the message gives the duration).
    A window shorter than one frame yields the frame showing at ``start_s``.
    """
    if n_frames < 1:
        raise ValueError("the video has no frames")
    if not (source_fps > 0 and math.isfinite(source_fps)):
        raise ValueError(f"source_fps must be positive, got {source_fps!r}")
    duration = n_frames / source_fps
    end_s = _check_window(start_s, end_s, duration, f"{n_frames} frames at {source_fps:g} fps")
    lo = math.ceil(start_s * source_fps - _EPS)
    hi = min(n_frames, math.ceil(end_s * source_fps - _EPS))
    if hi <= lo:  # window inside one frame interval: the frame on screen at start_s
        lo = min(math.floor(start_s * source_fps + _EPS), n_frames - 1)
        hi = lo + 1
    return int(lo), int(hi)


def _check_window(start_s, end_s, duration: float, about: str) -> float:
    """The window's end (None: ``duration``) after checking the window; ``about`` describes the video."""
    if end_s is None:
        end_s = duration
    for name, v in (("start", start_s), ("end", end_s)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.floating, np.integer))
            or not math.isfinite(v)
        ):
            raise ValueError(f"window {name} must be a finite number of seconds, got {v!r}")
    if start_s < 0:
        raise ValueError(f"window start {start_s}s is negative")
    if end_s <= start_s:
        raise ValueError(f"window end {end_s}s must be after its start {start_s}s")
    if start_s >= duration:
        raise ValueError(
            f"window ({start_s}s, {end_s}s) starts at or after the end of the video "
            f"(duration {duration:.3f}s, {about})"
        )
    return end_s


# ----------------------------------------------------------------------------------------------------------
# the same on a variable-frame-rate clip's own times: ``times`` is float64 (n + 1,), seconds from the first
# frame, strictly increasing; frame i is on screen over [times[i], times[i + 1]) (times[n]: the clip's end)


def _check_times(times) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 2 or not np.isfinite(t).all() or not (np.diff(t) > 0).all():
        raise ValueError(f"times must be n + 1 >= 2 finite, strictly increasing seconds, got {times!r}")
    return t


def _on_screen(times: np.ndarray, t, lo: int, hi: int) -> np.ndarray:
    """int64: the frame on screen at each time ``t`` (seconds), clipped to ``[lo, hi)``."""
    idx = np.searchsorted(times[:-1], np.asarray(t, dtype=np.float64) + _EPS_S, side="right") - 1
    return np.clip(idx, lo, hi - 1).astype(np.int64)


def vfr_window_to_range(times, start_s: float, end_s: float | None) -> tuple[int, int]:
    """:func:`window_to_range` on the clip's own ``times``: the frames starting in ``[start_s, end_s)``, or
    the frame on screen at ``start_s`` when none does. Same errors."""
    times = _check_times(times)
    n = times.size - 1
    end_s = _check_window(start_s, end_s, float(times[-1]), f"{n} frames at a variable rate")
    lo = int(np.searchsorted(times[:-1], start_s - _EPS_S, side="left"))
    hi = int(np.searchsorted(times[:-1], end_s - _EPS_S, side="left"))
    if hi <= lo:  # no frame starts inside the window: the one on screen at its start
        lo = int(_on_screen(times, start_s, 0, n))
        hi = lo + 1
    return lo, hi


def vfr_uniform_indices(times, num: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """:func:`uniform_indices` in time: the frame on screen at the centre of each of ``num`` equal time
    segments of frames ``[lo, hi)`` (a frame shown for long may be taken more than once, as a constant-rate
    copy of the clip would show it)."""
    times = _check_times(times)
    lo, hi = _check_range(times.size - 1, lo, hi)
    num = _check_num(num)
    t0, t1 = times[lo], times[hi]
    return _on_screen(times, t0 + (np.arange(num) + 0.5) * (t1 - t0) / num, lo, hi)


def vfr_segment_indices(
    times, num: int, rng: np.random.Generator | int | None = None, lo: int = 0, hi: int | None = None
) -> np.ndarray:
    """:func:`segment_indices` in time: a random frame starting inside each of ``num`` equal time segments
    of frames ``[lo, hi)``; a segment where no frame starts takes the frame on screen at its centre."""
    times = _check_times(times)
    lo, hi = _check_range(times.size - 1, lo, hi)
    num = _check_num(num)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    t0, t1 = times[lo], times[hi]
    edges = t0 + np.arange(num + 1) * (t1 - t0) / num
    first = np.clip(np.searchsorted(times[:-1], edges - _EPS_S, side="left"), lo, hi)  # (num + 1,)
    lengths = first[1:] - first[:-1]  # frames starting in each segment
    draws = rng.integers(0, np.maximum(lengths, 1))
    centres = _on_screen(times, (edges[:-1] + edges[1:]) / 2, lo, hi)
    return np.where(lengths > 0, first[:-1] + draws, centres).astype(np.int64)


def vfr_fps_indices(
    times, target_fps: float, max_frames: int | None = None, lo: int = 0, hi: int | None = None
) -> np.ndarray:
    """:func:`fps_indices` in time: the frames on screen every ``1 / target_fps`` seconds from the start of
    frame ``lo``, each once (so at most the clip's own rate), strictly increasing; more than ``max_frames``
    of them -> :func:`vfr_uniform_indices` with ``max_frames``."""
    times = _check_times(times)
    lo, hi = _check_range(times.size - 1, lo, hi)
    if not (target_fps > 0 and math.isfinite(target_fps)):
        raise ValueError(f"target fps must be positive, got {target_fps!r}")
    if max_frames is not None:
        max_frames = _check_num(max_frames, "max_frames")
    t0, t1 = times[lo], times[hi]
    count = max(1, math.ceil((t1 - t0) * target_fps - _EPS))
    idx = np.unique(_on_screen(times, t0 + np.arange(count) / target_fps, lo, hi))
    if max_frames is not None and idx.size > max_frames:
        return vfr_uniform_indices(times, max_frames, lo, hi)
    return idx


def snap_to_keyframes(
    indices: np.ndarray, keys: Sequence[int], lo: int = 0, hi: int | None = None, times=None
) -> np.ndarray:
    """Each index -> the nearest keyframe index inside ``[lo, hi)`` (a tie goes to the earlier keyframe).

    ``keys`` are the video's keyframe indices (any order); nearest in frames, or in seconds when the clip's
    ``times`` are given (variable frame rate). Returns ``indices`` unchanged when no keyframe lies inside
    the range (the caller then decodes exactly). Order and length are kept, so several requests may land on
    one keyframe when keyframes are sparser than the samples.
    """
    idx = np.asarray(indices, dtype=np.int64)
    k = np.unique(np.asarray(keys, dtype=np.int64))
    k = k[(k >= lo) & (k < (np.iinfo(np.int64).max if hi is None else hi))]
    if k.size == 0 or idx.size == 0:
        return idx.copy()
    pos = np.clip(np.searchsorted(k, idx), 1, max(1, k.size - 1))
    before, after = k[pos - 1], k[np.minimum(pos, k.size - 1)]
    at = (lambda i: i) if times is None else (lambda i: np.asarray(times, dtype=np.float64)[i])
    nearer_after = np.abs(at(after) - at(idx)) < np.abs(at(idx) - at(before))
    return np.where(nearer_after, after, before).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# decoding


def _import_decord():
    try:
        import decord
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            'dna_vlm.video.decode needs decord to read videos: pip install "dna-vlm[train]"'
        ) from e
    return decord


def _check_size(size, path) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
        ok = all(not isinstance(s, bool) and float(s) == int(s) for s in size) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise VideoError(f"{path}: size must be (height, width) positive integers, got {size!r}")
    return h, w


def _open(path: str, size: tuple[int, int] | None = None, num_threads: int = 0):
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{path}: video file not found")
    if not p.is_file():
        raise VideoError(f"{path}: not a file")
    if p.stat().st_size == 0:
        raise VideoError(f"{path}: video file is empty (0 bytes)")
    decord = _import_decord()
    kwargs = {"num_threads": num_threads}
    if size is not None:
        kwargs["height"], kwargs["width"] = size
    try:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0), **kwargs)
    except Exception as e:  # decord raises RuntimeError / DECORDError with C++ log text
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if "video stream" in msg:
            raise VideoError(f"{path}: contains no video stream (zero video frames)") from e
        raise VideoError(f"{path}: cannot decode video (corrupt or unsupported file): {msg}") from e
    n = len(vr)
    if n < 1:
        raise VideoError(f"{path}: video has zero frames")
    fps = float(vr.get_avg_fps())
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoError(f"{path}: video reports an invalid frame rate ({fps!r})")
    return vr, n, fps


def _unpad(frame: np.ndarray) -> np.ndarray:
    """decord returns (H, W, C') with C' = padded_row_bytes // W when a row of W RGB pixels is padded to an
    aligned length that W divides (e.g. W = 16 or 48): drop the row padding to get (H, W, 3) back."""
    if frame.ndim == 3 and frame.shape[-1] == 3:
        return frame
    h, w = frame.shape[:2]
    return np.ascontiguousarray(frame.reshape(h, -1)[:, : w * 3].reshape(h, w, 3))


def _get_batch(vr, indices: list[int]) -> np.ndarray:
    """``vr.get_batch(indices)`` as (T, H, W, 3) uint8, working around decord 0.6's row-padding bug.

    For some small output widths (16, 48, ...) decord's batch copy fails ("DECORDArrayCopyFromTo: The size
    must exactly match") and single frames come back with 4+ "channels"; then frames are read one by one
    and their row padding removed.
    """
    try:
        frames = vr.get_batch(indices).asnumpy()
        if frames.ndim == 4 and frames.shape[-1] == 3:
            return frames
    except Exception as e:
        if "must exactly match" not in str(e):
            raise
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in indices:
        if i not in cache:
            cache[i] = _unpad(vr[i].asnumpy())
        out.append(cache[i])
    return np.stack(out)


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate and size of a video (decodes one frame to get the size)."""
    path = str(path)
    vr, n, fps = _open(path)
    try:
        h, w = _get_batch(vr, [0]).shape[1:3]
    except Exception as e:
        raise VideoError(f"{path}: cannot decode the first frame: {e}") from e
    return VideoInfo(path=path, num_frames=n, fps=fps, height=int(h), width=int(w))


def _frame_times(vr, n: int, fps: float, path: str) -> np.ndarray | None:
    """The clip's ``times`` (float64 (n + 1,), see :func:`vfr_window_to_range`) from the container's index,
    or None for a constant-rate clip (every frame starts within ``_CFR_TOL`` intervals of ``index / fps``)
    or one whose index holds no usable times (both keep the index arithmetic)."""
    try:
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)  # (n, 2) start, end
    except Exception:  # pragma: no cover - decord builds without frame timestamps
        return None
    if ts.shape != (n, 2) or not np.isfinite(ts).all():
        return None
    starts = ts[:, 0] - ts[0, 0]
    if np.abs(starts - np.arange(n) / fps).max() <= _CFR_TOL / fps:
        return None
    if not (np.diff(starts) > 0).all():
        log.warning("%s: frame times are not increasing; sampling at index / %g fps instead", path, fps)
        return None
    end = ts[-1, 1] - ts[0, 0]
    if not end > starts[-1]:  # no duration for the last packet: as long as the one before
        end = 2 * starts[-1] - starts[-2]
    return np.append(starts, end)


def video_times(path: str | os.PathLike) -> np.ndarray | None:
    """A clip's frame times, float64 (n + 1,) seconds (frame i shows over ``[t[i], t[i + 1])``), or None
    when it is constant-rate (frame i at ``i / fps``); :class:`VideoError` for an unreadable file."""
    vr, n, fps = _open(str(path))
    return _frame_times(vr, n, fps, str(path))


def _window_range(n: int, fps: float, window, times) -> tuple[int, int]:
    if window is None:
        return 0, n
    return window_to_range(n, fps, *window) if times is None else vfr_window_to_range(times, *window)


def _stamps(idx: np.ndarray, fps: float, times) -> np.ndarray:
    """float64 seconds of frames ``idx``: their container times, or ``idx / fps`` for a constant-rate clip."""
    return idx.astype(np.float64) / fps if times is None else times[idx]


def _check_sampling(path: str, strategy: str, num_frames, fps, max_frames, seek: str, short: str) -> None:
    """Refuse a strategy / count / rate / policy that cannot sample (before opening the file)."""
    if strategy not in STRATEGIES:
        raise VideoError(f"{path}: unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
    if seek not in SEEKS:
        raise VideoError(f"{path}: unknown seek mode {seek!r}; expected one of {SEEKS}")
    if short not in SHORT_POLICIES:
        raise VideoError(f"{path}: unknown short-video policy {short!r}; expected one of {SHORT_POLICIES}")
    if strategy == "fps":
        if fps is None or isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise VideoError(f"{path}: strategy 'fps' needs a positive fps=..., got {fps!r}")
        if max_frames is not None and (
            isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1
        ):
            raise VideoError(f"{path}: max_frames must be a positive integer, got {max_frames!r}")
    elif isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise VideoError(f"{path}: num_frames must be a positive integer, got {num_frames!r}")


def _indices(path, n, src_fps, strategy, num_frames, fps, max_frames, window, seed, short, times=None):
    """The frame indices a strategy asks for (before keyframe snapping), with the short-video policy;
    ``times``: a variable-rate clip's frame times (None: constant rate)."""
    try:
        lo, hi = _window_range(n, src_fps, window, times)
        if strategy == "fps" and times is None:
            return fps_indices(n, src_fps, float(fps), max_frames, lo, hi)
        if strategy == "fps":
            return vfr_fps_indices(times, float(fps), max_frames, lo, hi)
        if num_frames > hi - lo:
            where = "the video" if window is None else f"the window {tuple(window)}"
            if short == "error":
                raise VideoError(
                    f"{path}: {where} has {hi - lo} frames, fewer than num_frames={num_frames}; lower the "
                    "frame count (--num-frames / max_frames), or choose short='repeat' (repeat frames to "
                    "fill, logged) or short='fewer' (return each frame once)"
                )
            if short == "fewer":
                return np.arange(lo, hi, dtype=np.int64)
            log.warning("%s: %s has %d frames; repeating them to fill num_frames=%d", path, where, hi - lo,
                        num_frames)  # fmt: skip
        if strategy == "uniform" and times is None:
            return uniform_indices(n, num_frames, lo, hi)
        if strategy == "uniform":
            return vfr_uniform_indices(times, num_frames, lo, hi)
        if times is None:
            return segment_indices(n, num_frames, seed, lo, hi)
        return vfr_segment_indices(times, num_frames, seed, lo, hi)
    except (ValueError, TypeError) as e:  # a window past the end, a negative seed ...
        if isinstance(e, VideoError):
            raise
        raise VideoError(f"{path}: {e}") from None


def plan_indices(
    path: str | os.PathLike,
    num_source_frames: int,
    source_fps: float,
    num_frames: int = 8,
    strategy: str = "uniform",
    fps: float | None = None,
    max_frames: int | None = None,
    window: Sequence[float] | None = None,
    seed: int | None = None,
    short: str = "error",
    times: np.ndarray | None = None,
) -> np.ndarray:
    """The frame indices :func:`sample_frames` decodes with ``seek="exact"`` for a video of
    ``num_source_frames`` frames at ``source_fps`` (with ``times``, :func:`video_times`, for a variable-rate
    one), without opening it (same checks and errors)."""
    path = str(path)
    _check_sampling(path, strategy, num_frames, fps, max_frames, "exact", short)
    if window is not None:
        window = tuple(window)
    return _indices(
        path, num_source_frames, source_fps, strategy, num_frames, fps, max_frames, window, seed, short, times
    )


def _decode(vr, path: str, idx: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) frames at ``idx``; each distinct frame is decoded once (repeats are copies)."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    try:
        frames = _get_batch(vr, [int(i) for i in uniq])
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise VideoError(f"{path}: failed to decode frames {uniq.tolist()[:8]}...: {msg}") from e
    if frames.ndim != 4 or frames.shape[0] != len(uniq) or frames.shape[-1] != 3:
        raise VideoError(
            f"{path}: decoder returned frames of shape {frames.shape}, expected ({len(uniq)}, H, W, 3)"
        )
    return frames if len(uniq) == len(idx) and (np.diff(idx) > 0).all() else frames[inverse.reshape(-1)]


def sample_frames(
    path: str | os.PathLike,
    num_frames: int = 8,
    strategy: str = "uniform",
    fps: float | None = None,
    max_frames: int | None = None,
    window: Sequence[float] | None = None,
    size: Sequence[int] | int | None = None,
    seed: int | np.random.Generator | None = None,
    num_threads: int = 0,
    seek: str = "exact",
    short: str = "error",
) -> Frames:
    """Decode frames of ``path`` with decord (see the module docstring for the strategies).

    ``num_frames`` is the count for ``"uniform"``/``"segments"``; ``"fps"`` uses ``fps``/``max_frames`` instead.
    ``window=(start_s, end_s)`` restricts sampling to frames whose timestamps lie in it (``end_s`` past the
    end of the video is clipped; a window starting after the end is an error). ``size=(H, W)`` (or one int
    for a square) resizes while decoding. ``seed`` makes ``"segments"`` deterministic. ``num_threads`` is
    decord's decoder threads (0 = automatic).

    ``seek="keyframe"`` moves each requested frame to the nearest keyframe inside the range, so only
    keyframes are decoded (no decoding from a keyframe up to the wanted frame); ``timestamps`` are then the
    keyframes' times and ``requested_timestamps`` the times asked for. Several samples may share a keyframe
    when keyframes are sparser than the samples. A range without a keyframe is decoded exactly.

    ``short`` is the policy when ``num_frames`` exceeds the frames in the range (uniform/segments):
    ``"error"`` (default) raises, ``"repeat"`` repeats frames to fill ``num_frames`` (with a logged warning),
    ``"fewer"`` returns each frame of the range once. Errors are :class:`VideoError` naming the file.
    """
    path = str(path)
    _check_sampling(path, strategy, num_frames, fps, max_frames, seek, short)
    hw = _check_size(size, path)
    if window is not None:
        try:
            start_s, end_s = window
        except (TypeError, ValueError):
            raise VideoError(f"{path}: window must be (start_s, end_s), got {window!r}") from None
        window = (start_s, end_s)

    vr, n, src_fps = _open(path, hw, num_threads)
    times = _frame_times(vr, n, src_fps, path)
    asked = _indices(path, n, src_fps, strategy, num_frames, fps, max_frames, window, seed, short, times)
    idx, frames = asked, None
    if seek == "keyframe":
        lo, hi = _window_range(n, src_fps, window, times)
        keys = _key_indices(vr)
        idx = snap_to_keyframes(asked, keys, lo, hi, times)
        frames = _decode_keyframes(vr, path, idx, keys, hw, num_threads)
    if frames is None:
        frames = _decode(vr, path, idx)
    return Frames(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=_stamps(idx, src_fps, times),
        indices=idx.astype(np.int64),
        source_fps=src_fps,
        path=path,
        num_source_frames=n,
        requested_timestamps=_stamps(asked, src_fps, times),
        constant_rate=times is None,
    )


def _decode_keyframes(vr, path: str, idx, keys, hw, num_threads: int = 0) -> np.ndarray | None:
    """Frames at ``idx`` when all are keyframes, through :func:`dna_vlm.video.keyframes.decode_keyframes` (one
    packet per keyframe); None when that path does not apply (the caller decodes with decord)."""
    from dna_vlm.video.keyframes import decode_keyframes

    uniq, inverse = np.unique(idx, return_inverse=True)
    if not np.isin(uniq, keys).all():
        return None
    try:
        starts = np.asarray(vr.get_frame_timestamp([int(i) for i in uniq]), dtype=np.float64)[:, 0]
    except Exception:  # pragma: no cover - decord without frame timestamps
        return None
    frames = decode_keyframes(path, starts, hw, workers=num_threads)
    if frames is None or frames.shape[0] != len(uniq):
        return None
    return frames[inverse.reshape(-1)]


def _key_indices(vr) -> np.ndarray:
    """The keyframe indices decord found in the container's index (empty if it cannot tell)."""
    try:
        return np.asarray(vr.get_key_indices(), dtype=np.int64)
    except Exception:  # pragma: no cover - decord builds without the index: decode exactly
        return np.zeros(0, np.int64)
