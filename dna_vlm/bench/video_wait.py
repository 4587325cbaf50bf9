"""Where users wait for frames: the rows ``dna-vlm bench --video`` adds after decord vs PyAV.

On a generated 60 s 1280x720 30 fps H.264 clip with a keyframe every 2 s, each table is one interleaved run
(A, B, A, B, ...; medians), so machine load hits both sides alike:

1. **seek**: ``sample_frames(seek="exact")`` vs ``seek="keyframe"`` (frames/s of each, ratio, the mean and
   max distance between the time asked for and the keyframe's time).
2. **resize**: decode at the model's input size (decord scales while converting) vs full resolution and a
   PIL bicubic resize afterwards.
3. **cache**: a cold :class:`dna_vlm.video.cache.FrameCache` (decode + write) vs a warm one (read): what a
   second arm evaluated over the same videos pays.
4. **prefetch**: a consumer with a fixed-cost model step (``sleep``: an accelerator-bound model; ``cpu``: a
   1-thread torch matmul loop) reading frames with and without :func:`dna_vlm.video.prefetch.prefetch_map`; the
   share of wall time it waits for frames. And the real training loader (``MicroBatches`` with a tiny
   model's processor) with ``--prefetch 0`` vs ``2`` and the same fixed-cost step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dna_vlm.video.cache import FrameCache
from dna_vlm.video.decode import sample_frames
from dna_vlm.video.prefetch import Prefetched, WaitMeter, prefetch_map

__all__ = ["bench_cache", "bench_prefetch", "bench_resize", "bench_seek", "bench_train_loader", "medians"]


def medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn over ``repeats`` round-robin passes (after one warm-up pass)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_seek(path, frame_counts, repeats: int, threads: int = 0) -> list[dict]:
    """exact vs keyframe seeking per frame count: frames/s, speed-up, timestamp error of keyframe mode."""
    return [_seek_row(path, n, repeats, threads) for n in frame_counts]


def _seek_row(path, n: int, repeats: int, threads: int) -> dict:
    fns = {
        s: (lambda s=s: sample_frames(path, n, seek=s, num_threads=threads)) for s in ("exact", "keyframe")
    }
    m = medians(fns, repeats)
    kf = sample_frames(path, n, seek="keyframe", num_threads=threads)
    err = np.abs(kf.timestamps - kf.requested_timestamps)
    return {
        "table": "seek",
        "frames": n,
        "exact_s": m["exact"],
        "keyframe_s": m["keyframe"],
        "exact_fps": n / m["exact"],
        "keyframe_fps": n / m["keyframe"],
        "speedup": m["exact"] / m["keyframe"],
        "distinct_keyframes": len(np.unique(kf.indices)),
        "mean_error_s": float(err.mean()),
        "max_error_s": float(err.max()),
    }


def _pil_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def bench_resize(path, frame_counts, repeats: int, size: tuple[int, int], seek: str, threads: int = 0):
    """Decoder-side scaling to ``size`` vs full-resolution decode + PIL resize, per frame count."""
    return [_resize_row(path, n, repeats, size, seek, threads) for n in frame_counts]


def _resize_row(path, n: int, repeats: int, size, seek: str, threads: int) -> dict:
    fns = {
        "decoder": lambda: sample_frames(path, n, seek=seek, size=size, num_threads=threads).frames,
        "pil": lambda: _pil_resize(sample_frames(path, n, seek=seek, num_threads=threads).frames, size),
    }
    m = medians(fns, repeats)
    a, b = fns["decoder"](), fns["pil"]()
    return {
        "table": "resize",
        "frames": n,
        "seek": seek,
        "size": list(size),
        "decoder_s": m["decoder"],
        "full_plus_pil_s": m["pil"],
        "speedup": m["pil"] / m["decoder"],
        "mean_abs_pixel_diff": float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()),
    }


def bench_cache(path, frame_counts, repeats: int, seek: str, threads: int = 0) -> list[dict]:
    """Cold cache (decode + atomic write) vs warm cache (read) per frame count; a fresh dir per cold run."""
    with tempfile.TemporaryDirectory(prefix="dna-vlm-fc-bench-") as tmp:
        return [_cache_row(path, n, repeats, seek, threads, Path(tmp)) for n in frame_counts]


def _cache_row(path, n: int, repeats: int, seek: str, threads: int, tmp: Path) -> dict:
    runs = iter(range(10**9))
    kw = dict(num_frames=n, seek=seek, num_threads=threads)
    warm = FrameCache(tmp / f"warm{n}")
    warm.sample(path, **kw)
    fns = {
        "cold": lambda: FrameCache(tmp / f"cold{n}_{next(runs)}").sample(path, **kw),
        "warm": lambda: warm.sample(path, **kw),
    }
    m = medians(fns, repeats)
    same = np.array_equal(warm.sample(path, **kw).frames, sample_frames(path, **kw).frames)
    return {
        "table": "cache",
        "frames": n,
        "seek": seek,
        "cold_s": m["cold"],
        "warm_s": m["warm"],
        "warm_share": m["warm"] / m["cold"],
        "identical": bool(same),
        "warm_hits": warm.stats.hits,
    }


def _cpu_step(seconds: float) -> Callable[[], None]:
    """A 1-thread torch matmul loop calibrated to take about ``seconds`` (a CPU-bound model step)."""
    import torch

    a = torch.randn(256, 256)
    # medians() warms up first: the first calls (BLAS start-up) would make the loop look slow
    per = medians({"mm": lambda: [a @ a for _ in range(20)]}, 5)["mm"] / 20
    reps = max(1, round(seconds / per))

    def step():
        for _ in range(reps):
            a @ a

    return step


def _consume(items, step: Callable[[], None]) -> WaitMeter:
    meter = WaitMeter()
    for got in meter.wrap(items):
        if isinstance(got, Prefetched):
            got.get()
        step()
    return meter


def bench_prefetch(path, n: int, seek: str, videos: int, step_factor: float, repeats: int, depth: int = 2):
    """Share of wall time a consumer waits for frames, without and with prefetch, for two kinds of step.

    The step costs ``step_factor`` x the median decode time of one video (``n`` frames, ``seek``), i.e.
    decoding is faster than the model when ``step_factor > 1``.
    """
    import torch

    decode_s = medians({"d": lambda: sample_frames(path, n, seek=seek)}, 3)["d"]
    step_s = step_factor * decode_s
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps = {"sleep": lambda: time.sleep(step_s), "cpu": _cpu_step(step_s)}
        for kind, step in steps.items():
            actual_s = medians({"step": step}, 3)["step"]  # what the row reports
            meters: dict[int, list[WaitMeter]] = {0: [], depth: []}
            for _ in range(repeats):
                for d in (0, depth):
                    items = prefetch_map(lambda _: sample_frames(path, n, seek=seek), range(videos), depth=d)
                    meters[d].append(_consume(items, step))
            rows.append(_prefetch_row(kind, n, seek, videos, decode_s, actual_s, depth, meters))
    finally:
        torch.set_num_threads(threads)
    return rows


def _prefetch_row(kind, n, seek, videos, decode_s, step_s, depth, meters: dict[int, list[WaitMeter]]) -> dict:
    def med(d, attr):
        return statistics.median(getattr(m, attr) for m in meters[d])

    return {
        "table": "prefetch",
        "step": kind,
        "frames": n,
        "seek": seek,
        "videos": videos,
        "decode_s": decode_s,
        "step_s": step_s,
        "depth": depth,
        "wait_share_off": med(0, "wait_share"),
        "wait_share_on": med(depth, "wait_share"),
        "steady_wait_share_off": med(0, "steady_wait_share"),
        "steady_wait_share_on": med(depth, "steady_wait_share"),
        "wall_off_s": med(0, "total"),
        "wall_on_s": med(depth, "total"),
        "ideal_wall_s": decode_s + videos * step_s,  # first decode + every step
    }


def bench_train_loader(path, n: int, seek: str, batches: int, step_factor: float, repeats: int, depth=2):
    """The real training loader (``MicroBatches`` + a tiny model's processor, ``num_workers=0``) feeding a
    fixed-cost step (sleep, ``step_factor`` x one micro-batch's load time), ``--prefetch 0`` vs ``depth``."""
    from transformers import AutoProcessor

    from dna_vlm.data.dataset import load_dataset
    from dna_vlm.tiny.default import build_tiny_model
    from dna_vlm.train.batches import MicroBatches, make_loader
    from dna_vlm.train.config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="dna-vlm-loader-bench-") as tmp:
        model = build_tiny_model(Path(tmp) / "tiny", seed=0)
        data = Path(tmp) / "rows.jsonl"
        row = (
            '{"id": "r%d", "video": "%s", "question": "What moves?", "options": ["a", "b"], "answer": "A"}\n'
        )
        data.write_text("".join(row % (i, Path(path).resolve()) for i in range(batches)))
        processor = AutoProcessor.from_pretrained(model)
        examples = load_dataset(data)

        def loader(d: int):
            cfg = TrainConfig(model=str(model), data=str(data), output=str(Path(tmp) / "out"), num_frames=n,
                              batch_size=1, seek=seek, prefetch=d, progress=False)  # fmt: skip
            return make_loader(MicroBatches(examples, processor, cfg, 0, 1), 0, batches, 0)

        load_s = medians({"l": lambda: next(iter(loader(0)))}, 2)["l"]
        step_s = step_factor * load_s
        meters: dict[int, list[WaitMeter]] = {0: [], depth: []}
        for _ in range(repeats):
            for d in (0, depth):
                meters[d].append(_consume(loader(d), lambda: time.sleep(step_s)))
    row = _prefetch_row("train loader, sleep", n, seek, batches, load_s, step_s, depth, meters)
    return [row | {"table": "prefetch"}]
