"""dna_vlm.video.cache: identity and keys, hits and misses, changed files, concurrent writers, no pickle."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dna_vlm.video.cache import (
    FrameCache,
    FrameMemory,
    frame_key,
    sample_key,
    sample_params,
    sampling_params,
    video_identity,
)
from dna_vlm.video.decode import sample_frames
from dna_vlm.video.write import write_video

FPS = 8
LEVEL = 6


def _frames(n=16, h=32, w=48, offset=0):
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = (LEVEL * (i + offset)) % 250
    return out


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, _frames(), fps=FPS)
    return path


def test_video_identity(clip, tmp_path):
    ident = video_identity(clip)
    assert ident == (str(clip.resolve()), clip.stat().st_size, clip.stat().st_mtime_ns)
    # spelled differently, same file: same identity
    rel = os.path.relpath(clip, Path.cwd())
    assert video_identity(rel) == ident
    assert video_identity(tmp_path / "." / "clip.mp4") == ident
    with pytest.raises(FileNotFoundError):
        video_identity(tmp_path / "missing.mp4")


def test_frame_key_depends_on_every_param_not_on_order(clip):
    k = frame_key(clip, num_frames=8, strategy="uniform", seek="exact", size=None)
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == frame_key(clip, size=None, seek="exact", strategy="uniform", num_frames=8)
    assert k == frame_key(clip, num_frames=np.int64(8), strategy="uniform", seek="exact", size=None)
    others = {
        frame_key(clip, num_frames=16, strategy="uniform", seek="exact", size=None),
        frame_key(clip, num_frames=8, strategy="segments", seek="exact", size=None),
        frame_key(clip, num_frames=8, strategy="uniform", seek="keyframe", size=None),
        frame_key(clip, num_frames=8, strategy="uniform", seek="exact", size=(16, 16)),
        frame_key(clip, num_frames=8, strategy="uniform", seek="exact"),
    }
    assert k not in others and len(others) == 5
    assert frame_key(clip, size=(16, 24)) == frame_key(clip, size=[16, 24])
    with pytest.raises(TypeError, match="Generator"):
        frame_key(clip, seed=np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        frame_key(clip, fps=float("nan"))
    assert sampling_params(b=1, a=(2, 3)) == {"a": [2, 3], "b": 1}
    full = sample_params(num_frames=8, num_threads=2)
    assert full["strategy"] == "uniform" and full["seek"] == "exact" and "num_threads" not in full
    assert sample_key(clip, num_frames=8) == sample_key(clip, num_frames=8, strategy="uniform", size=None)
    with pytest.raises(TypeError):
        sample_params(frames=8)


def test_key_changes_when_the_file_changes(clip):
    k = frame_key(clip, num_frames=4)
    write_video(clip, _frames(offset=10), fps=FPS)  # same path, new content
    k2 = frame_key(clip, num_frames=4)
    assert k2 != k
    # changed in place (same inode, same size) and the old mtime restored: the ctime still moves the key
    time.sleep(0.05)  # let the file clock tick (ctime granularity) between the two writes
    st = clip.stat()
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(clip, "r+b") as f:
        f.write(data)
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video_identity(clip)[1:] == (st.st_size, st.st_mtime_ns)
    assert frame_key(clip, num_frames=4) != k2


def test_cache_hit_returns_identical_frames(clip, tmp_path):
    cache = FrameCache(tmp_path / "fc")
    a = cache.sample(clip, num_frames=5, strategy="uniform")
    b = cache.sample(clip, num_frames=5, strategy="uniform")
    assert cache.stats.misses == 1 and cache.stats.hits == 1 and cache.stats.writes == 1
    ref = sample_frames(clip, 5)
    for got in (a, b):
        assert np.array_equal(got.frames, ref.frames) and got.frames.dtype == np.uint8
        assert np.array_equal(got.indices, ref.indices) and np.allclose(got.timestamps, ref.timestamps)
        assert got.source_fps == ref.source_fps and got.num_source_frames == ref.num_source_frames
    # another process reading the same dir sees the entry (a new FrameCache object: nothing in memory)
    other = FrameCache(tmp_path / "fc")
    other.sample(clip, num_frames=5, strategy="uniform")
    other.sample(str(clip), num_frames=5, seek="exact", num_threads=1)  # defaults spelled out: same entry
    assert other.stats.hits == 2 and other.stats.misses == 0
    other.sample(clip, num_frames=5, seek="keyframe")
    assert other.stats.misses == 1
    # entries are safetensors (no pickle): readable with numpy only
    entries = sorted((tmp_path / "fc").rglob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    assert len(entries) == 2
    from safetensors.numpy import load_file

    assert load_file(str(entries[0]))["frames"].shape == ref.frames.shape
    assert not list((tmp_path / "fc").rglob("*.tmp"))


def _same(a, b):
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.indices, b.indices)
    assert np.allclose(a.timestamps, b.timestamps) and a.num_source_frames == b.num_source_frames


def test_frame_memory_serves_repeated_indices_whatever_the_seed(tmp_path):
    """A clip no longer than num_frames: every segments draw picks every frame, so each new seed is a hit;
    a longer clip: a new seed is a hit exactly when it lands on frames decoded before."""
    short = tmp_path / "short.mp4"
    write_video(short, _frames(n=6), fps=FPS)
    mem = FrameMemory(max_mb=16)
    for seed in range(5):
        _same(mem.sample(short, num_frames=6, strategy="segments", seed=seed), sample_frames(short, 6))
    assert (mem.stats.misses, mem.stats.hits) == (1, 4)
    long = tmp_path / "long.mp4"
    write_video(long, _frames(n=40), fps=FPS)
    seen, hits = set(), 0
    for seed in range(12):
        ref = sample_frames(long, 4, strategy="segments", seed=seed)
        hits += tuple(ref.indices) in seen
        seen.add(tuple(ref.indices))
        _same(mem.sample(long, num_frames=4, strategy="segments", seed=seed), ref)
    assert mem.stats.hits == 4 + hits and mem.stats.misses == 1 + 12 - hits
    # uniform sampling and another decode size are other entries
    _same(mem.sample(long, num_frames=4), sample_frames(long, 4))
    _same(mem.sample(long, num_frames=4, size=16), sample_frames(long, 4, size=16))


def test_frame_memory_copies_evicts_and_sees_changed_files(clip, tmp_path):
    mem = FrameMemory(max_mb=16)
    a = mem.sample(clip, num_frames=4)
    a.frames[:] = 0  # the caller owns what it got: the memory's copy is untouched
    b = mem.sample(clip, num_frames=4)
    assert mem.stats.hits == 1 and b.frames.flags.writeable
    _same(b, sample_frames(clip, 4))
    write_video(clip, _frames(offset=20), fps=FPS)  # same path, new pixels: never the old entry
    _same(mem.sample(clip, num_frames=4), sample_frames(clip, 4))
    assert mem.stats.hits == 1
    # bounded: room for one 4-frame entry (4*32*48*3 bytes) only; 0 MiB keeps nothing
    one = 4 * 32 * 48 * 3 / 2**20
    small = FrameMemory(max_mb=one * 1.5)
    for n in (4, 5, 4):
        small.sample(clip, num_frames=n)
    assert small.stats.hits == 0 and small.bytes <= one * 1.5 * 2**20
    off = FrameMemory(max_mb=0)
    off.sample(clip, num_frames=4), off.sample(clip, num_frames=4)
    assert off.stats.hits == 0 and off.bytes == 0
    # keyframe seeking needs the keyframe list: always decoded (through the disk cache when given)
    disk = FrameMemory(max_mb=16, disk=FrameCache(tmp_path / "fc"))
    disk.sample(clip, num_frames=4, seek="keyframe"), disk.sample(clip, num_frames=4, seek="keyframe")
    assert disk.stats.hits == 0 and disk.disk.stats.hits == 1
    with pytest.raises(ValueError, match="max_mb"):
        FrameMemory(max_mb=-1)


def test_changed_video_is_never_served_from_the_cache(clip, tmp_path):
    cache = FrameCache(tmp_path / "fc")
    old = cache.sample(clip, num_frames=4)
    write_video(clip, _frames(offset=20), fps=FPS)  # rewrite: same path, new pixels
    new = cache.sample(clip, num_frames=4)
    assert cache.stats.misses == 2 and cache.stats.hits == 0
    assert np.array_equal(new.frames, sample_frames(clip, 4).frames)
    assert not np.array_equal(new.frames, old.frames)


def test_corrupt_entry_is_a_miss_and_is_rewritten(clip, tmp_path):
    cache = FrameCache(tmp_path / "fc")
    ref = cache.sample(clip, num_frames=3)
    (entry,) = (tmp_path / "fc").rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:50])  # truncated
    again = cache.sample(clip, num_frames=3)
    assert cache.stats.unreadable == 1 and cache.stats.misses == 2
    assert np.array_equal(again.frames, ref.frames)
    assert FrameCache(tmp_path / "fc").get(sample_key(clip, num_frames=3)) is not None


def test_cache_root_that_is_a_file_is_bypassed(clip, tmp_path, caplog):
    """A cache "folder" that is a file stores nothing and says so; frames still come (issue 25, item 7)."""
    f = tmp_path / "file"
    f.write_text("x")
    with caplog.at_level("WARNING", logger="dna_vlm.video.cache"):
        cache = FrameCache(f)
        got = cache.sample(clip, num_frames=3)
    assert cache.fault is not None and "not a directory" in cache.fault
    assert f"frame cache {f} cannot be written" in caplog.text
    assert np.array_equal(got.frames, sample_frames(clip, 3).frames) and f.read_text() == "x"


_WORKER = """
import sys
import time
from dna_vlm.video.cache import FrameCache
c = FrameCache(sys.argv[1])
for _ in range(3):
    f = c.sample(sys.argv[2], num_frames=6)
    assert f.frames.shape[0] == 6, f.frames.shape
print(int(f.frames.sum()))
"""


def test_several_processes_share_one_cache(clip, tmp_path):
    root = tmp_path / "fc"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root), str(clip)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and int(outs[0]) == int(sample_frames(clip, 6).frames.sum())
    assert len(list(root.rglob("*.safetensors"))) == 1 and not list(root.rglob("*.tmp"))


@pytest.mark.slow
def test_training_with_frame_cache_and_prefetch_matches_plain_run(tmp_path):
    """--frame-cache + --prefetch change nothing but speed: same losses as a plain run; the second run with
    the same seed reads every video from the cache; --seek keyframe trains too."""
    import json

    from train_helpers import make_dataset, tiny_model

    from dna_vlm.train import TrainConfig, train

    model, data = str(tiny_model(tmp_path)), str(make_dataset(tmp_path, n=4))
    base = dict(model=model, data=data, num_frames=4, batch_size=2, max_steps=3, lr=3e-3, progress=False)

    def losses(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [m["loss"] for m in rows if "loss" in m]

    plain = losses(train(TrainConfig(output=str(tmp_path / "plain"), frame_memory_mb=0, **base)))
    cache = tmp_path / "frames"
    first = losses(train(TrainConfig(output=str(tmp_path / "a"), frame_cache=str(cache), prefetch=2, **base)))
    n_entries = len(list(cache.rglob("*.safetensors")))
    assert n_entries == 6  # 3 steps x 2 rows: one entry per (video, epoch seed)
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}
    second = losses(
        train(TrainConfig(output=str(tmp_path / "b"), frame_cache=str(cache), prefetch=1, **base))
    )
    assert plain == first == second
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")} == mtimes  # all hits, no rewrite
    kf = losses(train(TrainConfig(output=str(tmp_path / "kf"), seek="keyframe", **base)))
    assert len(kf) == 3


def test_frame_memory_missing_video_is_the_decoders_error(tmp_path):
    from dna_vlm.video.decode import VideoError

    with pytest.raises(VideoError, match="video file not found"):
        FrameMemory(max_mb=16).sample(tmp_path / "gone.mp4", num_frames=4)
