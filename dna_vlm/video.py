"""Video frames for training and evaluation, decoded with decord (DESIGN.md §4, "How data flows").

``sample_frames(path, num_frames=8, strategy=...)`` returns a :class:`Frames` (uint8 ``(T, H, W, 3)`` frames plus
their timestamps and indices). Strategies:

- ``"uniform"`` (evaluation): ``num_frames`` evenly spaced frames, the centre frame of each of ``num_frames``
  equal segments; deterministic.
- ``"segments"`` (training, TSN-style): one random frame inside each of ``num_frames`` equal segments;
  deterministic under ``seed``.
- ``"fps"``: frames at a target rate ``fps`` (frames per second of video), capped at ``max_frames`` (then
  spread uniformly instead).

Each may be restricted to ``window=(start_s, end_s)``. The index arithmetic lives in small pure functions
(:func:`uniform_indices`, :func:`segment_indices`, :func:`fps_indices`, :func:`window_to_range`) so it can be
tested without videos. :func:`write_video` writes small mp4 files (tests, the synthetic data set).

decord and PyAV are imported lazily: ``pip install "dna-vlm[train]"`` provides decord.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import atomic_path

__all__ = [
    "STRATEGIES",
    "Frames",
    "VideoError",
    "VideoInfo",
    "fps_indices",
    "sample_frames",
    "segment_indices",
    "uniform_indices",
    "video_info",
    "window_to_range",
    "write_video",
]

STRATEGIES = ("uniform", "segments", "fps")
_EPS = 1e-6


class VideoError(ValueError):
    """A video cannot be read or sampled as asked; the message names the file."""


@dataclass
class Frames:
    """Frames sampled from one video."""

    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    timestamps: np.ndarray  # float64 (T,), seconds from the start of the video
    indices: np.ndarray  # int64 (T,), frame indices in the source video
    source_fps: float
    path: str
    num_source_frames: int = 0  # frames in the whole source video

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
            f"(duration {duration:.3f}s, {n_frames} frames at {source_fps:g} fps)"
        )
    lo = math.ceil(start_s * source_fps - _EPS)
    hi = min(n_frames, math.ceil(end_s * source_fps - _EPS))
    if hi <= lo:  # window inside one frame interval: the frame on screen at start_s
        lo = min(math.floor(start_s * source_fps + _EPS), n_frames - 1)
        hi = lo + 1
    return int(lo), int(hi)


# ----------------------------------------------------------------------------------------------------------
# decoding


def _import_decord():
    try:
        import decord
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('dna_vlm.video needs decord to read videos: pip install "dna-vlm[train]"') from e
    return decord


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('writing videos needs PyAV: pip install "dna-vlm[eval]" (or pip install av)') from e
    return av


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


def _check_sampling(path: str, strategy: str, num_frames, fps, max_frames) -> None:
    """Refuse a strategy / count / rate that cannot sample (before opening the file)."""
    if strategy not in STRATEGIES:
        raise VideoError(f"{path}: unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "fps":
        if fps is None or isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise VideoError(f"{path}: strategy 'fps' needs a positive fps=..., got {fps!r}")
        if max_frames is not None and (
            isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1
        ):
            raise VideoError(f"{path}: max_frames must be a positive integer, got {max_frames!r}")
    elif isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise VideoError(f"{path}: num_frames must be a positive integer, got {num_frames!r}")


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
) -> Frames:
    """Decode frames of ``path`` with decord (see the module docstring for the strategies).

    ``num_frames`` is the count for ``"uniform"``/``"segments"``; ``"fps"`` uses ``fps``/``max_frames`` instead.
    ``window=(start_s, end_s)`` restricts sampling to frames whose timestamps lie in it (``end_s`` past the
    end of the video is clipped; a window starting after the end is an error). ``size=(H, W)`` (or one int
    for a square) resizes while decoding. ``seed`` makes ``"segments"`` deterministic. ``num_threads`` is
    decord's decoder threads (0 = automatic). Errors are :class:`VideoError` naming the file.
    """
    path = str(path)
    _check_sampling(path, strategy, num_frames, fps, max_frames)
    hw = _check_size(size, path)
    if window is not None:
        try:
            start_s, end_s = window
        except (TypeError, ValueError):
            raise VideoError(f"{path}: window must be (start_s, end_s), got {window!r}") from None

    vr, n, src_fps = _open(path, hw, num_threads)
    try:
        lo, hi = (0, n) if window is None else window_to_range(n, src_fps, start_s, end_s)
        if strategy == "uniform":
            idx = uniform_indices(n, num_frames, lo, hi)
        elif strategy == "segments":
            idx = segment_indices(n, num_frames, seed, lo, hi)
        else:
            idx = fps_indices(n, src_fps, float(fps), max_frames, lo, hi)
    except (ValueError, TypeError) as e:  # a window past the end, a negative seed ...
        raise VideoError(f"{path}: {e}") from None

    try:
        frames = _get_batch(vr, [int(i) for i in idx])
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise VideoError(f"{path}: failed to decode frames {idx.tolist()[:8]}...: {msg}") from e
    if frames.ndim != 4 or frames.shape[0] != len(idx) or frames.shape[-1] != 3:
        raise VideoError(
            f"{path}: decoder returned frames of shape {frames.shape}, expected ({len(idx)}, H, W, 3)"
        )
    return Frames(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=idx.astype(np.float64) / src_fps,
        indices=idx.astype(np.int64),
        source_fps=src_fps,
        path=path,
        num_source_frames=n,
    )


# ----------------------------------------------------------------------------------------------------------
# writing


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3), even H and W -> planar YUV 4:2:0 (3H/2, W): BT.601 limited range (what FFmpeg
    assumes for untagged video), chroma from 2x2 box averages.

    Done here rather than by FFmpeg's swscale inside PyAV, whose RGB->YUV conversion made re-encoding the same
    frames give slightly different videos now and then; this keeps written videos reproducible.
    """
    f = frame.astype(np.int32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    h, w = r.shape
    # 2x2 sums (x4) of each channel, then the chroma formulas with rounding
    r4, g4, b4 = (c.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) for c in (r, g, b))
    u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128
    v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = np.clip(y, 0, 255)
    out[h : h + h // 4] = np.clip(u, 0, 255).reshape(h // 4, w)
    out[h + h // 4 :] = np.clip(v, 0, 255).reshape(h // 4, w)
    return out


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 8.0,
    codec: str | None = None,
    gop: int | None = None,
    quality: int | None = None,
    preset: str | None = None,
    threads: int | None = None,
) -> Path:
    """Write uint8 RGB frames ``(T, H, W, 3)`` (even H and W) to an mp4 that decord reads; atomic.

    ``frames`` is an array or an iterable of ``(H, W, 3)`` uint8 frames (streamed: long clips need not fit in
    memory). ``codec`` defaults to ``"mpeg4"`` (MPEG-4 Part 2 at a fixed fine quantiser, in every FFmpeg
    build, and reproducible: the same frames give the same file); ``"libx264"`` (H.264, B-frames, like most
    real videos; ``quality`` is its CRF, default 18; ``preset`` its speed preset, default "medium") is what
    the video benchmark uses, but x264 here does not always give identical bytes for identical input.
    ``gop`` is the keyframe interval in frames (encoder default if None). ``threads`` is the encoder's thread
    count (default: 1 for frames up to 320x240, else automatic).
    """
    path = Path(path)
    first, it = _first_frame(path, frames, fps)
    _import_av()  # fail early, with the install hint
    from fractions import Fraction

    if codec is None:
        codec = "mpeg4"
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with atomic_path(path, suffix=".mp4.tmp") as tmp:
            _encode(
                tmp,
                path,
                itertools.chain([first], it),
                first.shape,
                rate,
                codec,
                gop,
                quality,
                preset,
                threads,
            )
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"{path}: failed to write video with codec {codec!r}: {e}") from e
    return path


def _first_frame(path: Path, frames, fps) -> tuple[np.ndarray, Iterator]:
    """Validate what write_video was given; returns (the first frame, an iterator over the rest)."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise VideoError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if frames.shape[0] < 1:
            raise VideoError(f"{path}: cannot write a video with zero frames")
    if not (isinstance(fps, (int, float)) and fps > 0 and math.isfinite(fps)):
        raise VideoError(f"{path}: fps must be positive, got {fps!r}")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise VideoError(f"{path}: cannot write a video with zero frames")
    first = np.asarray(first)
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[-1] != 3:
        raise VideoError(f"{path}: each frame must be uint8 (H, W, 3), got {first.dtype} {first.shape}")
    h, w, _ = first.shape
    if h % 2 or w % 2 or h < 2 or w < 2:
        raise VideoError(f"{path}: frame height and width must be even (yuv420p), got {h}x{w}")
    return first, it


def _encode(tmp: Path, path: Path, frames, shape, rate, codec, gop, quality, preset, threads) -> None:
    """Encode ``frames`` (each uint8 ``shape``) into the mp4 at ``tmp`` (write_video's worker)."""
    av = _import_av()
    h, w, _ = shape
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if threads is None:
            threads = 1 if h * w <= 320 * 240 else 0
        stream.codec_context.thread_count = int(threads)
        opts = {}
        if codec == "libx264":
            opts = {"crf": str(18 if quality is None else quality), "preset": preset or "medium"}
            if gop is not None:
                opts["x264-params"] = f"keyint={gop}:min-keyint={max(1, min(gop, 25))}:scenecut=0"
        elif codec == "mpeg4":
            stream.codec_context.qscale = True  # fixed quantiser (the finest), not a bit-rate target
        if gop is not None:
            stream.codec_context.gop_size = int(gop)
        stream.options = opts
        for n, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.shape != tuple(shape) or frame.dtype != np.uint8:
                raise VideoError(
                    f"{path}: frame {n} is {frame.dtype} {frame.shape}, expected uint8 {tuple(shape)}"
                )
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            vf.pts, vf.time_base = n, 1 / rate  # explicit timestamps: frame n at n / fps
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
