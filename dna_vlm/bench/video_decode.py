"""Video decoding benchmark: decord frame sampling vs PyAV decode-then-pick.

``dna-vlm bench --video`` (wired by the CLI) or ``python -m dna_vlm.bench.video_decode``. A 1280x720, 30 fps,
60 s clip with a moving pattern (x264, B-frames, a keyframe every 3 s, like ordinary videos) is generated once
and cached in the temp dir. For each frame count it then times, interleaved over repetitions (medians):

- **decord**: ``dna_vlm.video.decode.sample_frames(path, N, "uniform")`` - open, seek to the N wanted frames, decode
  only the GOPs they need, RGB.
- **PyAV**: open with ``av``, decode every frame sequentially up to the last wanted one, keep the wanted ones
  as RGB - the way lmms-eval 0.7.3's default video loader (``record_video_length_stream``) works.

and prints sampled frames per second of wall time for both, and the ratio decord / PyAV.

Then (``speed=True``, the default) the tables of :mod:`dna_vlm.bench.video_wait` on a 60 s 720p clip with a
keyframe every 2 s and camera-like grain: exact vs keyframe seeking, decoder-side vs PIL resizing, cold vs
cached frames, and the share of wall time a model waits for frames with and without prefetch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dna_vlm.video.decode import sample_frames, uniform_indices, video_info
from dna_vlm.video.write import write_video

__all__ = [
    "add_video_bench_args",
    "format_speed_tables",
    "main_video_bench",
    "make_bench_clip",
    "run_speed_bench",
    "run_video_bench",
]


def make_bench_clip(
    seconds: float = 60.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    gop_seconds: float = 3.0,
    cache_dir: str | Path | None = None,
    verbose: bool = False,
    grain: float = 0.0,
) -> Path:
    """The benchmark clip (generated once, cached by its parameters in ``cache_dir`` or the temp dir).

    ``grain`` is the standard deviation of fresh per-frame noise (2x2 pixel grains, like a camera sensor's):
    0 gives a static texture that only moves, so predicted frames cost almost nothing to decode (about 1%
    of a keyframe's bytes); ``grain=4`` gives predicted frames about 20% of a keyframe's size, typical of
    camera footage at CRF 23.
    """
    cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "dna-vlm-video-bench"
    n = max(1, round(seconds * fps))
    gop = max(1, round(gop_seconds * fps))
    tag = f"_grain{grain:g}" if grain else ""
    path = cache / f"clip_{width}x{height}_{fps}fps_{n}f_gop{gop}{tag}.mp4"
    if path.is_file():
        return path
    if verbose:
        print(
            f"video-bench: encoding a {seconds:g}s {width}x{height} {fps} fps clip to {path} ...", flush=True
        )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [xx * 255 // width, yy * 255 // height, ((xx // 40 + yy // 40) % 2) * 160 + 40], axis=-1
    ).astype(np.int16)
    base = np.clip(base + rng.integers(-12, 13, size=base.shape), 0, 255).astype(np.uint8)
    box_h, box_w = height // 4, width // 6

    noise = np.random.default_rng(1)

    def frames():
        for t in range(n):
            f = np.roll(base, 6 * t, axis=1)
            if grain:
                g = noise.normal(0.0, grain, size=(height // 2, width // 2, 1)).repeat(2, 0).repeat(2, 1)
                f = np.clip(f + g, 0, 255).astype(np.uint8)
            x = (20 + 7 * t) % max(1, width - box_w)
            y = height // 3 + int(height / 6 * np.sin(t / 15))
            f[y : y + box_h, x : x + box_w] = (255, (3 * t) % 256, 0)
            yield f

    t0 = time.perf_counter()
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    write_video(path, frames(), fps=fps, codec=codec, gop=gop, quality=23, preset="veryfast")
    if verbose:
        print(f"video-bench: encoded in {time.perf_counter() - t0:.1f}s", flush=True)
    return path


def pyav_decode_then_pick(path: str | Path, indices: np.ndarray) -> np.ndarray:
    """lmms-eval's PyAV loader: decode sequentially, keep frames whose index is wanted, stop after the last."""
    import av

    wanted = set(int(i) for i in indices)
    last = int(max(indices))
    kept = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i > last:
                break
            if i in wanted:
                kept.append(frame)
    return np.stack([f.to_ndarray(format="rgb24") for f in kept])


def run_video_bench(
    frame_counts=(8, 16, 32),
    repeats: int = 5,
    seconds: float = 60.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    threads: int = 0,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
    quick: bool = False,
    speed: bool = False,
) -> list[dict]:
    """Time decord vs PyAV per frame count; returns one dict per count (and prints a table if verbose).

    ``quick=True`` is a smoke test: a 4 s 320x240 clip, 8 and 16 frames, 2 repeats (overrides those args).
    ``speed=True`` appends the rows of :func:`run_speed_bench` (each with a ``"table"`` key).
    """
    if quick:
        frame_counts, repeats, seconds, width, height = (8, 16), 2, 4.0, 320, 240
    rows = _decord_vs_pyav(frame_counts, repeats, seconds, width, height, fps, threads, cache_dir, verbose)
    if speed:
        rows += run_speed_bench(frame_counts, repeats, seconds, width, height, fps, threads, cache_dir,
                                verbose, quick)  # fmt: skip
    return rows


def _decord_vs_pyav(frame_counts, repeats, seconds, width, height, fps, threads, cache_dir, verbose):
    path = make_bench_clip(seconds, width, height, fps, cache_dir=cache_dir, verbose=verbose)
    info = video_info(path)
    # warm up both (imports, page cache)
    sample_frames(path, 2, num_threads=threads)
    pyav_decode_then_pick(path, np.array([0, 1]))
    times, same = _time_interleaved(path, info.num_frames, frame_counts, repeats, threads)
    rows = []
    for n in frame_counts:
        d = statistics.median(times[("decord", n)])
        p = statistics.median(times[("pyav", n)])
        rows.append(
            {
                "table": "decord_vs_pyav",
                "frames": n,
                "decord_s": d,
                "pyav_s": p,
                "decord_fps": n / d,
                "pyav_fps": n / p,
                "speedup": p / d,
                "identical": same[n],
            }
        )
    if verbose:
        print(
            f"\nvideo: {info.width}x{info.height}, {info.fps:g} fps, {info.num_frames} frames "
            f"({info.duration:.1f}s), uniform sampling, {repeats} interleaved repeats, medians; "
            f"decord num_threads={threads or 'auto'}"
        )
        print(format_table(rows))
        if not all(r["identical"] for r in rows):
            print("warning: decord and PyAV returned different pixels for some frame counts")
    return rows


def _time_interleaved(path, num_frames: int, frame_counts, repeats: int, threads: int):
    """({(reader, n): [seconds per repeat]}, {n: decord's frames == PyAV's}) for each frame count n."""
    times: dict[tuple[str, int], list[float]] = {}
    same: dict[int, bool] = {}  # decord's frames == PyAV's frames (both decode with FFmpeg)
    for _ in range(repeats):
        for n in frame_counts:  # interleaved: slow drifts of a shared machine hit both alike
            idx = uniform_indices(num_frames, n)
            t0 = time.perf_counter()
            got = sample_frames(path, n, "uniform", num_threads=threads)
            times.setdefault(("decord", n), []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = pyav_decode_then_pick(path, idx)
            times.setdefault(("pyav", n), []).append(time.perf_counter() - t0)
            if got.frames.shape[0] != n or ref.shape[0] != len(set(idx.tolist())):
                raise RuntimeError(f"video-bench: wrong frame counts {got.frames.shape} / {ref.shape}")
            uniq = np.unique(idx, return_index=True)[1]
            same[n] = bool(np.array_equal(got.frames[uniq], ref))
    return times, same


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'frames':>6} | {'decord s':>9} | {'PyAV s':>9} | {'decord frames/s':>15} | "
        f"{'PyAV frames/s':>13} | {'decord/PyAV':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['frames']:>6} | {r['decord_s']:>9.3f} | {r['pyav_s']:>9.3f} | {r['decord_fps']:>15.1f} | "
            f"{r['pyav_fps']:>13.1f} | {r['speedup']:>10.2f}x"
        )
    return "\n".join(lines)


def run_speed_bench(
    frame_counts=(8, 16, 32),
    repeats: int = 5,
    seconds: float = 60.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    threads: int = 0,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
    quick: bool = False,
    gop_seconds: float = 2.0,
    grain: float = 4.0,
    size: tuple[int, int] = (384, 384),
    prefetch_videos: int = 8,
) -> list[dict]:
    """Issue 14's rows (seek, resize, cache, prefetch) on a clip with a keyframe every ``gop_seconds``."""
    from dna_vlm.bench import video_wait as vs

    if quick:
        frame_counts, repeats, seconds, width, height, prefetch_videos = (8,), 1, 4.0, 320, 240, 3
        size = (64, 64)
    path = make_bench_clip(seconds, width, height, fps, gop_seconds, cache_dir, verbose, grain=grain)
    n = frame_counts[0]
    steps = [
        ("seek", lambda: vs.bench_seek(path, frame_counts, repeats, threads)),
        ("resize", lambda: vs.bench_resize(path, frame_counts, repeats, size, "keyframe", threads)),
        ("cache", lambda: vs.bench_cache(path, frame_counts, repeats, "exact", threads)),
        ("prefetch", lambda: vs.bench_prefetch(path, n, "keyframe", prefetch_videos, 1.5, repeats)),
        ("loader", lambda: vs.bench_train_loader(path, n, "keyframe", prefetch_videos, 1.5, repeats)),
    ]
    rows: list[dict] = []
    for name, run in steps:
        if verbose:
            print(f"video-bench: {name} ...", flush=True)
        rows += run()
    if verbose:
        info = video_info(path)
        print(
            f"\nclip: {info.width}x{info.height}, {info.fps:g} fps, {info.duration:.0f}s, keyframe every "
            f"{gop_seconds:g}s, grain {grain:g}; {repeats} interleaved repeats, medians"
        )
        print(format_speed_tables(rows))
    return rows


def format_speed_tables(rows: list[dict]) -> str:
    """The seek / resize / cache / prefetch rows as four text tables (each row starts with its table)."""
    out = []
    seek = [r for r in rows if r.get("table") == "seek"]
    if seek:
        out.append(
            "seek   | frames | exact fr/s | keyframe fr/s | keyframe/exact | keys | mean err s | max err s"
        )
        out += [
            f"seek   | {r['frames']:>6} | {r['exact_fps']:>10.1f} | {r['keyframe_fps']:>13.1f} | "
            f"{r['speedup']:>13.2f}x | {r['distinct_keyframes']:>4} | {r['mean_error_s']:>10.3f} | "
            f"{r['max_error_s']:>9.3f}"
            for r in seek
        ]
    resize = [r for r in rows if r.get("table") == "resize"]
    if resize:
        out.append("\nresize | frames | seek | size | decoder-side s | full + PIL s | speed-up | mean |diff|")
        out += [
            f"resize | {r['frames']:>6} | {r['seek']} | {r['size'][0]}x{r['size'][1]} | {r['decoder_s']:>14.3f} | "
            f"{r['full_plus_pil_s']:>12.3f} | {r['speedup']:>7.2f}x | {r['mean_abs_pixel_diff']:.2f}"
            for r in resize
        ]
    cache = [r for r in rows if r.get("table") == "cache"]
    if cache:
        out.append(
            "\ncache  | frames | seek | cold (decode+write) s | cached (read) s | cached/cold | identical"
        )
        out += [
            f"cache  | {r['frames']:>6} | {r['seek']} | {r['cold_s']:>21.3f} | {r['warm_s']:>15.4f} | "
            f"{100 * r['warm_share']:>10.2f}% | {r['identical']}"
            for r in cache
        ]
    pre = [r for r in rows if r.get("table") == "prefetch"]
    if pre:
        out.append(
            "\nprefetch | step | items | load s | step s | wait share off / on | steady wait off / on | "
            "wall off / on s"
        )
        out += [
            f"prefetch | {r['step']} | {r['videos']} | {r['decode_s']:.3f} | {r['step_s']:.3f} | "
            f"{100 * r['wait_share_off']:.1f}% / {100 * r['wait_share_on']:.1f}% | "
            f"{100 * r['steady_wait_share_off']:.1f}% / {100 * r['steady_wait_share_on']:.1f}% | "
            f"{r['wall_off_s']:.2f} / {r['wall_on_s']:.2f}"
            for r in pre
        ]
    return "\n".join(out)


def add_video_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the video benchmark's options (all prefixed ``--video-``, plus ``--quick``) to ``parser``.

    ``--quick`` is only added if the parser has none yet (a host ``bench`` command may own it; its value is
    read as ``args.quick`` either way).
    """
    g = parser.add_argument_group("video benchmark (decord vs PyAV)")
    g.add_argument(
        "--video-frames",
        type=int,
        nargs="+",
        default=[8, 16, 32],
        help="frame counts to sample (default 8 16 32)",
    )
    g.add_argument("--video-repeats", type=int, default=5, help="interleaved repetitions (default 5)")
    g.add_argument("--video-seconds", type=float, default=60.0, help="clip length in seconds (default 60)")
    g.add_argument("--video-threads", type=int, default=0, help="decord decoder threads (0 = auto)")
    g.add_argument(
        "--video-no-speed",
        action="store_true",
        help="only decord vs PyAV (skip the seek / resize / cache / prefetch tables)",
    )
    g.add_argument(
        "--video-cache-dir", default=None, help="where the generated clip is cached (default: temp dir)"
    )
    if "--quick" not in parser._option_string_actions:
        g.add_argument(
            "--quick", action="store_true", help="smoke test: a 4 s 320x240 clip, 8 and 16 frames, 2 repeats"
        )
    return parser


def main_video_bench(args: argparse.Namespace) -> int:
    kw = dict(
        frame_counts=tuple(args.video_frames),
        repeats=args.video_repeats,
        seconds=args.video_seconds,
        threads=args.video_threads,
        cache_dir=args.video_cache_dir,
    )
    if any(n < 1 for n in kw["frame_counts"]) or kw["repeats"] < 1 or kw["seconds"] <= 0:
        print("video-bench: frame counts and --repeats must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    rows = run_video_bench(
        **kw, quick=bool(getattr(args, "quick", False)), speed=not getattr(args, "video_no_speed", False)
    )
    if getattr(args, "json", None):
        from dna_vlm.bench.timing import machine
        from dna_vlm.files import atomic_write_json

        atomic_write_json(args.json, {"machine": machine(), "rows": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dna_vlm.bench.video_decode", description=__doc__.splitlines()[0]
    )
    add_video_bench_args(parser)
    return main_video_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
