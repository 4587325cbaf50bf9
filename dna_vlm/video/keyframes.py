"""Decode keyframes only, one packet each: the fast path of ``sample_frames(seek="keyframe")``.

decord's batch reader, asked for keyframe indices, still pays ~3x a keyframe's decode per sample (it
seeks, then runs its threaded decoder until a frame comes out). Here PyAV seeks to each keyframe's
timestamp, demuxes that one packet, decodes it alone and flushes the decoder: a keyframe is an intra frame,
so nothing before it is needed. Measured in ``dna-vlm bench --video`` (the seek table); the pixels equal
decord's for the same frame (a test checks it).

Returns None (the caller then decodes with decord) when PyAV is missing or the container does not land on
the expected keyframe (a demuxer whose seek is not exact, odd timestamps), so results never depend on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["decode_keyframes"]


def decode_keyframes(
    path: str, timestamps: np.ndarray, size: tuple[int, int] | None = None, workers: int = 0
) -> np.ndarray | None:
    """uint8 (T, H, W, 3) RGB keyframes starting at ``timestamps`` (seconds, distinct, from decord's index),
    scaled to ``size=(H, W)`` by swscale when given; None if this fast path cannot serve the request.

    ``workers`` > 1 threads each open the file and decode an interleaved share of the keyframes (PyAV decodes
    without the GIL); 0 or 1 decodes in this thread (on a loaded 2-core machine two threads measured ~15%
    slower than one, so more is opt-in: ``sample_frames(..., num_threads=N)``).
    """
    try:
        import av  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    ts = [float(t) for t in timestamps]
    n = max(1, min(len(ts), workers or 1))
    shares = [ts[i::n] for i in range(n)]
    try:
        if n == 1:
            parts = [_decode_share(path, shares[0], size)]
        else:
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="dna-vlm-keyframes") as pool:
                parts = list(pool.map(lambda share: _decode_share(path, share, size), shares))
    except Exception:  # any demux/decode surprise: let decord do it
        return None
    if any(f is None for part in parts for f in part):
        return None
    out = [None] * len(ts)
    for i, part in enumerate(parts):
        out[i::n] = part
    return np.stack(out)


def _decode_share(path: str, timestamps: list[float], size) -> list:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # one packet per decode: frame threads would only add latency
        return [_one(container, stream, t, size) for t in timestamps]


def _one(container, stream, t: float, size):
    """The keyframe at time ``t`` (seconds) or None when the packet found is not that keyframe."""
    tb = float(stream.time_base)
    start = stream.start_time or 0
    target = start + round(t / tb)
    container.seek(target, stream=stream, backward=True, any_frame=False)
    packet = next((p for p in container.demux(stream) if p.size), None)
    half_frame = 0.5 / float(stream.average_rate or 30) / tb
    if (
        packet is None
        or not packet.is_keyframe
        or packet.pts is None
        or abs(packet.pts - target) > half_frame
    ):
        return None
    cc = stream.codec_context
    frames = list(cc.decode(packet)) + list(cc.decode(None))
    cc.flush_buffers()
    if not frames:
        return None
    f = frames[0]
    if size is not None:
        f = f.reformat(width=size[1], height=size[0])
    return f.to_ndarray(format="rgb24")
