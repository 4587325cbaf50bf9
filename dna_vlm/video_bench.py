"""Video decoding benchmark: decord frame sampling vs PyAV decode-then-pick.

``dna-vlm bench --video`` (wired by the CLI) or ``python -m dna_vlm.video_bench``. A 1280x720, 30 fps,
60 s clip with a moving pattern (x264, B-frames, a keyframe every 3 s, like ordinary videos) is generated once
and cached in the temp dir. For each frame count it then times, interleaved over repetitions (medians):

- **decord**: ``dna_vlm.video.sample_frames(path, N, "uniform")`` - open, seek to the N wanted frames, decode
  only the GOPs they need, RGB.
- **PyAV**: open with ``av``, decode every frame sequentially up to the last wanted one, keep the wanted ones
  as RGB - the way lmms-eval 0.7.3's default video loader (``record_video_length_stream``) works.

and prints sampled frames per second of wall time for both, and the ratio decord / PyAV.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .video import sample_frames, uniform_indices, video_info, write_video

__all__ = ["add_video_bench_args", "main_video_bench", "make_bench_clip", "run_video_bench"]


def make_bench_clip(
    seconds: float = 60.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    gop_seconds: float = 3.0,
    cache_dir: str | Path | None = None,
    verbose: bool = False,
) -> Path:
    """The benchmark clip (generated once, cached by its parameters in ``cache_dir`` or the temp dir)."""
    cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "dna-vlm-video-bench"
    n = max(1, round(seconds * fps))
    gop = max(1, round(gop_seconds * fps))
    path = cache / f"clip_{width}x{height}_{fps}fps_{n}f_gop{gop}.mp4"
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

    def frames():
        for t in range(n):
            f = np.roll(base, 6 * t, axis=1)
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
) -> list[dict]:
    """Time decord vs PyAV per frame count; returns one dict per count (and prints a table if verbose).

    ``quick=True`` is a smoke test: a 4 s 320x240 clip, 8 and 16 frames, 2 repeats (overrides those args).
    """
    if quick:
        frame_counts, repeats, seconds, width, height = (8, 16), 2, 4.0, 320, 240
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
    run_video_bench(**kw, quick=bool(getattr(args, "quick", False)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dna_vlm.video_bench", description=__doc__.splitlines()[0]
    )
    add_video_bench_args(parser)
    return main_video_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
