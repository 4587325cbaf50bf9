"""dna_vlm.video.decode: index maths (incl. property tests), real decord decoding, clear errors, writing, bench smoke."""

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dna_vlm.video.decode import (
    Frames,
    VideoError,
    fps_indices,
    sample_frames,
    segment_indices,
    snap_to_keyframes,
    uniform_indices,
    video_info,
    window_to_range,
)
from dna_vlm.video.write import write_video

FPS = 8
N = 40  # frames in the test clip: 5 s at 8 fps
LEVEL = 6  # frame i is filled with grey level LEVEL * i, so decoded content reveals its index


def _clip(n=N, h=48, w=64):
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = LEVEL * i
    return frames


def _content_index(frames: np.ndarray) -> np.ndarray:
    return np.rint(frames.reshape(len(frames), -1).mean(axis=1) / LEVEL).astype(int)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    # H.264 with B-frames and a keyframe every 10 frames, like real videos: seeking must still be frame-exact
    write_video(path, _clip(), fps=FPS, codec="libx264", gop=10)
    return str(path)


# ----------------------------------------------------------------------------------- pure index maths


def test_uniform_indices_examples():
    assert uniform_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert uniform_indices(10, 1).tolist() == [5]
    assert uniform_indices(100, 2, lo=50, hi=60).tolist() == [52, 57]
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short video: frames repeat, count kept


def test_segment_indices_deterministic_and_inside_segments():
    a = segment_indices(100, 8, rng=3)
    assert a.tolist() == segment_indices(100, 8, rng=3).tolist()
    assert a.tolist() == segment_indices(100, 8, rng=np.random.default_rng(3)).tolist()
    draws = {tuple(segment_indices(100, 8, rng=s).tolist()) for s in range(20)}
    assert len(draws) > 15
    for k, i in enumerate(a):
        assert 100 * k // 8 <= i < 100 * (k + 1) // 8


def test_fps_indices_examples():
    assert fps_indices(90, 30.0, 1.0).tolist() == [0, 30, 60]
    assert fps_indices(90, 30.0, 1.0, lo=15).tolist() == [15, 45, 75]
    assert fps_indices(10, 10.0, 100.0).tolist() == list(range(10))  # capped at the source rate
    assert fps_indices(300, 30.0, 2.0, max_frames=4).tolist() == uniform_indices(300, 4).tolist()
    assert fps_indices(5, 30.0, 1.0).tolist() == [0]  # shorter than one step: one frame
    assert fps_indices(3000, 29.97, 1.0).tolist()[:3] == [0, 29, 59]


def test_window_to_range():
    assert window_to_range(50, 10.0, 1.0, 2.0) == (10, 20)
    assert window_to_range(50, 10.0, 1.05, 2.0) == (11, 20)
    assert window_to_range(50, 10.0, 3.0, 99.0) == (30, 50)  # end clipped to the video
    assert window_to_range(50, 10.0, 0.0, None) == (0, 50)
    assert window_to_range(50, 10.0, 1.01, 1.02) == (10, 11)  # inside one frame: the frame on screen
    with pytest.raises(ValueError, match=r"duration 5\.000s"):
        window_to_range(50, 10.0, 5.0, 6.0)
    with pytest.raises(ValueError, match="negative"):
        window_to_range(50, 10.0, -1.0, 2.0)
    with pytest.raises(ValueError, match="after its start"):
        window_to_range(50, 10.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="finite"):
        window_to_range(50, 10.0, float("nan"), 2.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: uniform_indices(0, 4),
        lambda: uniform_indices(10, 0),
        lambda: uniform_indices(10, 2, lo=5, hi=5),
        lambda: uniform_indices(10, 2, lo=0, hi=11),
        lambda: segment_indices(10, -1, rng=0),
        lambda: fps_indices(10, 0.0, 1.0),
        lambda: fps_indices(10, 10.0, -1.0),
        lambda: fps_indices(10, 10.0, 1.0, max_frames=0),
    ],
)
def test_index_functions_reject_bad_args(call):
    with pytest.raises(ValueError):
        call()


@st.composite
def ranges(draw):
    n = draw(st.integers(1, 5000))
    lo = draw(st.integers(0, n - 1))
    hi = draw(st.integers(lo + 1, n))
    return n, lo, hi


@settings(max_examples=200, deadline=None)
@given(ranges(), st.integers(1, 64))
def test_uniform_properties(r, num):
    n, lo, hi = r
    idx = uniform_indices(n, num, lo, hi)
    assert len(idx) == num and idx.dtype == np.int64
    assert (np.diff(idx) >= 0).all() and idx.min() >= lo and idx.max() < hi
    if hi - lo >= num:  # enough frames: all distinct
        assert len(set(idx.tolist())) == num
    assert idx.tolist() == uniform_indices(n, num, lo, hi).tolist()


@settings(max_examples=200, deadline=None)
@given(ranges(), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_segment_properties(r, num, seed):
    n, lo, hi = r
    idx = segment_indices(n, num, seed, lo, hi)
    assert len(idx) == num
    assert (np.diff(idx) >= 0).all() and idx.min() >= lo and idx.max() < hi
    assert idx.tolist() == segment_indices(n, num, seed, lo, hi).tolist()
    if hi - lo >= num:
        assert len(set(idx.tolist())) == num


@settings(max_examples=200, deadline=None)
@given(
    ranges(),
    st.floats(1.0, 120.0),
    st.floats(0.05, 240.0),
    st.one_of(st.none(), st.integers(1, 64)),
)
def test_fps_properties(r, src, tgt, cap):
    n, lo, hi = r
    idx = fps_indices(n, src, tgt, cap, lo, hi)
    assert len(idx) >= 1 and (cap is None or len(idx) <= cap)
    assert idx.min() >= lo and idx.max() < hi
    assert (np.diff(idx) > 0).all() or (cap is not None and len(idx) == cap)
    # spacing follows the target rate (unless capped)
    if cap is None and len(idx) > 1:
        step = np.diff(idx)
        expected = max(src / tgt, 1.0)
        assert (np.abs(step - expected) <= 1.0 + 1e-9).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.floats(1.0, 60.0), st.floats(0.0, 200.0), st.floats(0.001, 200.0))
def test_window_properties(n, fps, start, length):
    dur = n / fps
    if start >= dur:
        with pytest.raises(ValueError, match="duration"):
            window_to_range(n, fps, start, start + length)
        return
    lo, hi = window_to_range(n, fps, start, start + length)
    assert 0 <= lo < hi <= n
    # every selected frame's timestamp is inside the window (or it is the single frame on screen at start)
    if hi - lo > 1 or lo / fps >= start - 1e-6:
        assert lo / fps >= start - 1e-6 and (hi - 1) / fps < start + length + 1e-6


# ----------------------------------------------------------------------------------- decoding with decord


def test_uniform_decodes_the_right_frames(clip):
    f = sample_frames(clip, 8)
    assert isinstance(f, Frames) and len(f) == 8
    assert f.frames.shape == (8, 48, 64, 3) and f.frames.dtype == np.uint8
    assert f.indices.tolist() == uniform_indices(N, 8).tolist()
    assert _content_index(f.frames).tolist() == f.indices.tolist()  # decord returned those exact frames
    np.testing.assert_allclose(f.timestamps, f.indices / FPS)
    assert f.source_fps == pytest.approx(FPS) and f.num_source_frames == N
    assert f.duration == pytest.approx(N / FPS) and f.path == clip


def test_segments_seeded(clip):
    a = sample_frames(clip, 6, "segments", seed=1)
    b = sample_frames(clip, 6, "segments", seed=1)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.frames, b.frames)
    assert _content_index(a.frames).tolist() == a.indices.tolist()
    others = {tuple(sample_frames(clip, 6, "segments", seed=s).indices.tolist()) for s in range(2, 8)}
    assert len(others | {tuple(a.indices.tolist())}) > 1


def test_fps_strategy(clip):
    f = sample_frames(clip, strategy="fps", fps=2)
    assert f.indices.tolist() == list(range(0, N, 4))
    assert _content_index(f.frames).tolist() == f.indices.tolist()
    capped = sample_frames(clip, strategy="fps", fps=2, max_frames=4)
    assert capped.indices.tolist() == uniform_indices(N, 4).tolist()


@pytest.mark.parametrize("strategy", ["uniform", "segments", "fps"])
def test_window(clip, strategy):
    f = sample_frames(clip, 4, strategy, fps=4.0, window=(1.0, 3.0), seed=0)
    assert f.indices.min() >= 8 and f.indices.max() < 24
    assert (f.timestamps >= 1.0).all() and (f.timestamps < 3.0).all()
    assert _content_index(f.frames).tolist() == f.indices.tolist()


def test_resize_on_decode(clip):
    f = sample_frames(clip, 3, size=(32, 40))
    assert f.frames.shape == (3, 32, 40, 3)
    assert sample_frames(clip, 2, size=16).frames.shape == (2, 16, 16, 3)


def test_video_info(clip):
    info = video_info(clip)
    assert (info.num_frames, info.height, info.width) == (N, 48, 64)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(5.0)


# ----------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    p = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match=r"nope\.mp4: video file not found"):
        sample_frames(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "junk.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"junk\.mp4: cannot decode video"):
        sample_frames(p)


def test_truncated_file(tmp_path, clip):
    p = tmp_path / "trunc.mp4"
    p.write_bytes(Path(clip).read_bytes()[:300])
    with pytest.raises(VideoError, match=r"trunc\.mp4"):
        sample_frames(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty\.mp4: video file is empty"):
        sample_frames(p)


def test_zero_video_frames(tmp_path):
    """An mp4 with no video stream (audio only) has zero video frames."""
    av = pytest.importorskip("av")
    p = tmp_path / "audio.mp4"
    with av.open(str(p), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        for pkt in list(s.encode(fr)) + list(s.encode()):
            c.mux(pkt)
    with pytest.raises(VideoError, match=r"audio\.mp4: contains no video stream \(zero video frames\)"):
        sample_frames(p)


def test_window_outside_video_names_file_and_duration(clip):
    with pytest.raises(VideoError, match=r"clip\.mp4: .*duration 5\.000s"):
        sample_frames(clip, 4, window=(6.0, 8.0))
    with pytest.raises(VideoError, match=r"clip\.mp4: .*after its start"):
        sample_frames(clip, 4, window=(2.0, 1.0))


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"strategy": "random"}, "unknown sampling strategy"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"strategy": "fps"}, "fps=..."),
        ({"strategy": "fps", "fps": -1}, "fps=..."),
        ({"strategy": "fps", "fps": 1, "max_frames": 0}, "max_frames"),
        ({"size": (0, 8)}, "size"),
        ({"size": (8, 8, 8)}, "size"),
        ({"size": "big"}, "size"),
        ({"window": 3.0}, "window"),
        ({"strategy": "segments", "seed": -1}, "negative"),
    ],
)
def test_bad_args(clip, kw, msg):
    with pytest.raises(VideoError, match=msg) as ei:
        sample_frames(clip, **kw)
    assert "clip.mp4" in str(ei.value)


# ----------------------------------------------------------------------------------- writing


def test_write_video_variants(tmp_path):
    frames = _clip(12, 32, 48)
    p = write_video(tmp_path / "gen.mp4", iter(list(frames)), fps=12)  # an iterator of frames
    assert write_video(tmp_path / "again.mp4", frames, fps=12).read_bytes() == p.read_bytes()  # reproducible
    (tmp_path / "again.mp4").unlink()
    assert video_info(p).num_frames == 12 and video_info(p).fps == pytest.approx(12)
    q = write_video(tmp_path / "m4.mp4", frames, fps=29.97, codec="mpeg4")
    f = sample_frames(q, 12)
    assert _content_index(f.frames).tolist() == list(range(12))
    assert f.source_fps == pytest.approx(29.97, abs=0.01)
    assert sorted(os.listdir(tmp_path)) == ["gen.mp4", "m4.mp4"]  # no temp files left
    assert os.stat(p).st_mode & 0o044  # an ordinary readable file, not mkstemp's 0600


@pytest.mark.parametrize(
    "frames, fps, msg",
    [
        (np.zeros((2, 31, 32, 3), np.uint8), 8, "even"),
        (np.zeros((0, 32, 32, 3), np.uint8), 8, "zero frames"),
        (np.zeros((2, 32, 32, 3), np.float32), 8, "uint8"),
        (np.zeros((2, 32, 32), np.uint8), 8, "uint8"),
        (np.zeros((2, 32, 32, 3), np.uint8), 0, "fps"),
        (iter([]), 8, "zero frames"),
        (iter([np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)]), 8, "frame 1"),
    ],
)
def test_write_video_errors(tmp_path, frames, fps, msg):
    with pytest.raises(VideoError, match=msg):
        write_video(tmp_path / "bad.mp4", frames, fps=fps)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------- benchmark smoke


def test_video_bench_quick(tmp_path, capsys):
    from dna_vlm.bench.video_decode import add_video_bench_args, main_video_bench

    parser = add_video_bench_args(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--video-cache-dir", str(tmp_path)])
    assert main_video_bench(args) == 0
    out = capsys.readouterr().out
    assert "decord/PyAV" in out and "320x240" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("8 |", "16 |"))]) == 2
    # a host parser that already owns --quick keeps it
    host = argparse.ArgumentParser()
    host.add_argument("--quick", action="store_true")
    add_video_bench_args(host)
    assert host.parse_args(["--quick"]).quick is True


@pytest.mark.parametrize("width, size", [(48, None), (64, (32, 48)), (64, (16, 16)), (64, (32, 40))])
def test_decord_row_padding_widths(tmp_path, width, size):
    """decord 0.6 mis-copies frames whose RGB rows get padded (widths 16, 48, ...): worked around."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    frames = np.repeat(np.repeat(rng.integers(0, 256, (6, 4, width // 8, 3), dtype=np.uint8), 8, 1), 8, 2)
    p = write_video(tmp_path / f"w{width}.mp4", frames, fps=8)
    f = sample_frames(p, 3, size=size)
    h, w = size or (32, width)
    assert f.frames.shape == (3, h, w, 3)
    if size is None:  # compare with PyAV's decode of the same frames
        with av.open(str(p)) as c:
            ref = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])
        np.testing.assert_array_equal(f.frames, ref[f.indices])
    else:  # a resized decode still looks like the clip (block colours survive resizing)
        assert abs(float(f.frames.mean()) - float(frames[f.indices].mean())) < 8


def test_run_video_bench_api(tmp_path):
    from dna_vlm.bench.video_decode import format_table, run_video_bench

    rows = run_video_bench(quick=True, cache_dir=tmp_path, verbose=False)
    assert [r["frames"] for r in rows] == [8, 16]
    for r in rows:
        assert r["decord_fps"] > 0 and r["pyav_fps"] > 0
        assert r["speedup"] == pytest.approx(r["pyav_s"] / r["decord_s"])
        assert r["identical"]  # decord picked exactly the frames PyAV decoded
    assert "decord/PyAV" in format_table(rows)
    assert len(list(tmp_path.glob("*.mp4"))) == 1  # the clip is cached and reused


# ----------------------------------------------------------------------------------- keyframe seeking


def test_snap_to_keyframes():
    keys = [0, 10, 20, 30]
    assert snap_to_keyframes(np.array([5, 15, 26, 39]), keys).tolist() == [0, 10, 30, 30]  # tie -> earlier
    assert snap_to_keyframes(np.array([3, 4]), keys, lo=8, hi=40).tolist() == [10, 10]  # stay in the range
    assert snap_to_keyframes(np.array([12, 14]), keys, lo=11, hi=19).tolist() == [12, 14]  # none inside
    assert snap_to_keyframes(np.array([7]), [10]).tolist() == [10]
    assert snap_to_keyframes(np.array([], np.int64), keys).tolist() == []


@given(
    st.lists(st.integers(0, 500), min_size=1, max_size=20),
    st.lists(st.integers(0, 500), min_size=1, max_size=20),
)
@settings(max_examples=100, deadline=None)
def test_snap_properties(idx, keys):
    got = snap_to_keyframes(np.array(idx), keys)
    k = np.array(sorted(set(keys)))
    assert len(got) == len(idx) and set(got.tolist()) <= set(keys)
    for i, g in zip(idx, got, strict=True):  # nearest: no keyframe is strictly closer
        assert abs(g - i) == np.abs(k - i).min()


def test_keyframe_seek_decodes_keyframes_and_reports_times(clip):
    # the clip has a keyframe every 10 frames (x264, keyint=10, no scene cuts)
    f = sample_frames(clip, 4, seek="keyframe")
    assert f.indices.tolist() == [0, 10, 20, 30]  # asked 5, 15, 25, 35: ties go to the earlier keyframe
    assert _content_index(f.frames).tolist() == f.indices.tolist()  # those exact frames were decoded
    np.testing.assert_allclose(f.timestamps, f.indices / FPS)
    np.testing.assert_allclose(f.requested_timestamps, np.array([5, 15, 25, 35]) / FPS)
    exact = sample_frames(clip, 4)
    np.testing.assert_allclose(exact.requested_timestamps, exact.timestamps)
    # more samples than keyframes: neighbours share a keyframe, the count is kept
    many = sample_frames(clip, 8, seek="keyframe")
    assert len(many) == 8 and set(many.indices.tolist()) <= {0, 10, 20, 30}
    assert _content_index(many.frames).tolist() == many.indices.tolist()
    # a window keeps its keyframes inside it; a window without keyframes is decoded exactly
    w = sample_frames(clip, 2, seek="keyframe", window=(1.0, 4.0))
    assert w.indices.tolist() == [10, 30] and (w.timestamps >= 1.0).all()  # asked 14, 26 in [8, 32)
    no_key = sample_frames(clip, 2, seek="keyframe", window=(1.5, 2.4))  # frames [12, 20): no keyframe
    assert no_key.indices.tolist() == uniform_indices(N, 2, 12, 20).tolist() == [14, 18]
    seg = sample_frames(clip, 4, "segments", seed=0, seek="keyframe")
    assert set(seg.indices.tolist()) <= {0, 10, 20, 30}


# ----------------------------------------------------------------------------------- short videos


def test_more_frames_than_the_video_has(clip, tmp_path):
    with pytest.raises(VideoError, match=r"has 40 frames, fewer than num_frames=10000.*short='repeat'"):
        sample_frames(clip, 10000)
    with pytest.raises(VideoError, match=r"window \(1.0, 2.0\) has 8 frames, fewer than num_frames=9"):
        sample_frames(clip, 9, "segments", window=(1.0, 2.0), seed=0)
    fewer = sample_frames(clip, 100, short="fewer")
    assert fewer.indices.tolist() == list(range(N))
    assert _content_index(fewer.frames).tolist() == list(range(N))
    with pytest.raises(VideoError, match="short-video policy"):
        sample_frames(clip, 4, short="pad")
    with pytest.raises(VideoError, match="seek mode"):
        sample_frames(clip, 4, seek="fast")


def test_one_frame_video_is_not_silently_repeated(tmp_path, caplog):
    one = tmp_path / "one.mp4"
    write_video(one, _clip(1), fps=FPS)
    with pytest.raises(VideoError, match=r"one.mp4: the video has 1 frames, fewer than num_frames=8"):
        sample_frames(one, 8)
    assert len(sample_frames(one, 8, short="fewer")) == 1
    with caplog.at_level("WARNING", logger="dna_vlm.video.decode"):
        rep = sample_frames(one, 8, short="repeat")
    assert len(rep) == 8 and rep.indices.tolist() == [0] * 8
    assert "repeating them to fill num_frames=8" in caplog.text
    assert len(sample_frames(one, 1)) == 1


def test_keyframe_fast_path_equals_decord(clip, monkeypatch):
    """The one-packet PyAV path (dna_vlm.video.keyframes) gives decord's pixels; without it decord serves."""
    import decord

    import dna_vlm.video.keyframes as kf

    calls = []
    real = kf.decode_keyframes
    monkeypatch.setattr(kf, "decode_keyframes", lambda *a, **k: calls.append(k) or real(*a, **k))
    fast = sample_frames(clip, 4, seek="keyframe")
    assert calls  # the fast path ran
    ref = decord.VideoReader(clip).get_batch(fast.indices.tolist()).asnumpy()
    np.testing.assert_array_equal(fast.frames, ref)
    monkeypatch.setattr(kf, "decode_keyframes", lambda *a, **k: None)  # e.g. PyAV missing
    slow = sample_frames(clip, 4, seek="keyframe")
    np.testing.assert_array_equal(slow.frames, fast.frames)
    assert slow.indices.tolist() == fast.indices.tolist()
    assert sample_frames(clip, 4, seek="keyframe", size=(24, 32)).frames.shape == (4, 24, 32, 3)
    monkeypatch.undo()
    threaded = sample_frames(clip, 4, seek="keyframe", num_threads=3)  # keyframes shared by 3 threads
    np.testing.assert_array_equal(threaded.frames, fast.frames)
