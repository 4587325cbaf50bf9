"""Writing small mp4 files from uint8 RGB frames (tests, the synthetic data set, the video benchmark).

Re-exported by :mod:`dna_vlm.video.decode` (``from dna_vlm.video.write import write_video`` keeps working).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dna_vlm.errors import VideoError
from dna_vlm.files import atomic_path

__all__ = ["rgb_to_yuv420p", "write_video"]


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('writing videos needs PyAV: pip install "dna-vlm[eval]" (or pip install av)') from e
    return av


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
    timestamps: Iterable[float] | None = None,
) -> Path:
    """Write uint8 RGB frames ``(T, H, W, 3)`` (even H and W) to an mp4 that decord reads; atomic.

    ``frames`` is an array or an iterable of ``(H, W, 3)`` uint8 frames (streamed: long clips need not fit in
    memory). ``codec`` defaults to ``"mpeg4"`` (MPEG-4 Part 2 at a fixed fine quantiser, in every FFmpeg
    build, and reproducible: the same frames give the same file); ``"libx264"`` (H.264, B-frames, like most
    real videos; ``quality`` is its CRF, default 18; ``preset`` its speed preset, default "medium") is what
    the video benchmark uses, but x264 here does not always give identical bytes for identical input.
    ``gop`` is the keyframe interval in frames (encoder default if None). ``threads`` is the encoder's thread
    count (default: 1 for frames up to 320x240, else automatic).

    ``timestamps`` (seconds, one per frame, strictly increasing) writes a variable-frame-rate video: frame n
    is shown from ``timestamps[n]``, stored on the ``1 / fps`` grid (a time off the grid is an error, so the
    file holds exactly the times asked for). Default: frame n at ``n / fps``.
    """
    path = Path(path)
    first, it = _first_frame(path, frames, fps)
    ticks = None if timestamps is None else _ticks(path, timestamps, fps)
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
                ticks,
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


def _ticks(path: Path, timestamps: Iterable[float], fps: float) -> list[int]:
    """Presentation times in seconds -> ``1 / fps`` ticks; :class:`VideoError` unless strictly increasing,
    non-negative and on the grid (within 1e-6 s)."""
    times = [float(t) for t in timestamps]
    ticks = [round(t * fps) for t in times]
    for n, (t, k) in enumerate(zip(times, ticks, strict=True)):
        if not (math.isfinite(t) and t >= 0 and abs(k / fps - t) <= 1e-6):
            raise VideoError(
                f"{path}: timestamp {n} ({t!r} s) is not a non-negative multiple of 1/fps = 1/{fps:g}"
            )
        if n and k <= ticks[n - 1]:
            raise VideoError(
                f"{path}: timestamps must increase, got {times[n - 1]!r} then {t!r} s (frame {n})"
            )
    return ticks


def _encode(tmp: Path, path: Path, frames, shape, rate, codec, gop, quality, preset, threads, ticks) -> None:
    """Encode ``frames`` (each uint8 ``shape``) into the mp4 at ``tmp`` (write_video's worker); frame n is
    presented at tick ``ticks[n]`` of ``1 / rate`` (default n)."""
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
        n = -1
        for n, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.shape != tuple(shape) or frame.dtype != np.uint8:
                raise VideoError(
                    f"{path}: frame {n} is {frame.dtype} {frame.shape}, expected uint8 {tuple(shape)}"
                )
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            if ticks is not None and n >= len(ticks):
                raise VideoError(f"{path}: more frames than the {len(ticks)} timestamps given")
            vf.pts = n if ticks is None else ticks[n]  # explicit timestamps: frame n at pts / fps
            vf.time_base = 1 / rate
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if ticks is not None and n + 1 != len(ticks):
        raise VideoError(f"{path}: {n + 1} frames but {len(ticks)} timestamps")
