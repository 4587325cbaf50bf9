"""Variable-frame-rate video (issue 25, item 8): frames are sampled on the container's own per-frame times.

The clip of the issue: 10 frames 1 s apart, then 60 frames at 30 fps (12 s in all), written with explicit
presentation times (``write_video(..., timestamps=...)``). Frame i is filled with grey level ``LEVEL * i``, so
the decoded pixels tell which frame came back, and ``TRUE[i]`` is when it is on screen. Sampling at
``index / average fps`` (5.83 fps here), as before the fix, ``uniform`` reported 0.7-11.1 s for frames shown at
4.0-11.8 s, ``window=(0, 5)`` took frames shown at 3 s and 10.03-10.53 s, ``fps=1`` frames shown at 0, 5, 10.03,
10.23, ... s (10 of its 12 from the last 2 s).
"""

import numpy as np
import pytest

from dna_vlm.video.cache import FrameCache, FrameMemory
from dna_vlm.video.decode import (
    VideoError,
    sample_frames,
    vfr_fps_indices,
    vfr_segment_indices,
    vfr_uniform_indices,
    vfr_window_to_range,
    video_times,
)
from dna_vlm.video.write import write_video

LEVEL = 3
TRUE = np.array([float(i) for i in range(10)] + [10 + k / 30 for k in range(60)])  # start of frame i, s
END = 12.0
TIMES = np.append(TRUE, END)  # the (n + 1,) form the vfr_* functions take


def _content_index(frames: np.ndarray) -> list[int]:
    return np.rint(frames.reshape(len(frames), -1).mean(axis=1) / LEVEL).astype(int).tolist()


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    frames = np.stack([np.full((32, 48, 3), LEVEL * i, np.uint8) for i in range(len(TRUE))])
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    write_video(path, frames, fps=30, timestamps=TRUE, gop=12)
    return str(path)


def _check_true_times(f) -> None:
    """The frames decoded are the ones the indices name, and their reported times are their true times."""
    assert not f.constant_rate
    assert _content_index(f.frames) == f.indices.tolist()
    np.testing.assert_allclose(f.timestamps, TRUE[f.indices], atol=1e-4)


# ----------------------------------------------------------------------------------- pure time arithmetic


def test_vfr_index_functions_on_the_issue_clip():
    """Item 8: window, uniform, segments and fps on the clip's times (no video needed)."""
    assert vfr_window_to_range(TIMES, 0, 5) == (0, 5)  # frames starting at 0, 1, 2, 3, 4 s
    assert vfr_window_to_range(TIMES, 10, 11) == (10, 40)
    assert vfr_window_to_range(TIMES, 4.5, 4.7) == (4, 5)  # no frame starts inside: the one on screen
    assert vfr_window_to_range(TIMES, 11.5, None) == (55, 70)
    with pytest.raises(ValueError, match=r"duration 12\.000s, 70 frames at a variable rate"):
        vfr_window_to_range(TIMES, 12.0, 13.0)
    # uniform in time: the frame on screen at 0.75, 2.25, ..., 11.25 s
    assert vfr_uniform_indices(TIMES, 8).tolist() == [0, 2, 3, 5, 6, 8, 9, 47]
    assert vfr_uniform_indices(TIMES, 4, 0, 5).tolist() == [0, 1, 3, 4]
    # fps: the frame on screen each second, each once; capped -> uniform
    assert vfr_fps_indices(TIMES, 1.0).tolist() == [*range(11), 40]
    assert vfr_fps_indices(TIMES, 1.0, max_frames=4).tolist() == vfr_uniform_indices(TIMES, 4).tolist()
    assert vfr_fps_indices(TIMES, 60.0).tolist() == list(range(70))  # never above the clip's own rate
    # segments: a frame starting inside each 1.5 s segment, or the one on screen at its centre
    edges = np.arange(9) * 1.5
    for seed in range(5):
        idx = vfr_segment_indices(TIMES, 8, seed)
        assert (np.diff(idx) >= 0).all()
        inside = (TRUE[idx] >= edges[:-1] - 1e-9) & (TRUE[idx] < edges[1:])
        on_screen = (TRUE[idx] <= (edges[:-1] + edges[1:]) / 2) & (
            TIMES[idx + 1] > (edges[:-1] + edges[1:]) / 2
        )
        assert (inside | on_screen).all()
    for bad in ([0.0], [0.0, 0.0], [0.0, float("nan")]):
        with pytest.raises(ValueError, match="strictly increasing"):
            vfr_uniform_indices(bad, 2)


# ----------------------------------------------------------------------------------- decoding a real VFR clip


def test_vfr_clip_times_come_from_the_container(vfr):
    """Item 8: the written clip holds the times asked for, and they are read back from its index."""
    times = video_times(vfr)
    assert times is not None and times.shape == (71,)
    np.testing.assert_allclose(times, TIMES, atol=1e-4)


def test_uniform_reports_true_times_and_spreads_in_time(vfr):
    """Item 8: ``uniform`` takes the frames on screen at evenly spaced times and reports when they show."""
    f = sample_frames(vfr, 8)
    _check_true_times(f)
    assert f.indices.tolist() == [0, 2, 3, 5, 6, 8, 9, 47]
    assert f.timestamps.max() < END and (np.diff(f.timestamps) > 0).all()
    np.testing.assert_allclose(f.requested_timestamps, f.timestamps)


def test_window_takes_the_frames_inside_it(vfr):
    """Item 8: ``window=(0, 5)`` gives frames shown in 0-5 s (was: 3 s and 10.03-10.53 s); (10, 11) the dense part."""
    f = sample_frames(vfr, 4, window=(0, 5))
    _check_true_times(f)
    assert f.indices.tolist() == [0, 1, 3, 4] and (f.timestamps < 5).all()
    dense = sample_frames(vfr, 6, window=(10, 11))
    _check_true_times(dense)
    assert (dense.timestamps >= 10).all() and (dense.timestamps < 11).all()
    with pytest.raises(
        VideoError, match=r"vfr\.mp4: the window \(0, 5\) has 5 frames, fewer than num_frames=6"
    ):
        sample_frames(vfr, 6, window=(0, 5))
    with pytest.raises(VideoError, match=r"vfr\.mp4: .*duration 12\.000s"):
        sample_frames(vfr, 2, window=(12.5, 14))


def test_fps_takes_one_frame_per_period_of_real_time(vfr):
    """Item 8: ``fps=1`` gives the frames on screen at 0, 1, ..., 11 s (was: 0, 5, 10.03, 10.23, ... s)."""
    f = sample_frames(vfr, strategy="fps", fps=1)
    _check_true_times(f)
    np.testing.assert_allclose(f.timestamps, np.arange(12.0), atol=1e-4)
    capped = sample_frames(vfr, strategy="fps", fps=1, max_frames=4)
    assert capped.indices.tolist() == vfr_uniform_indices(TIMES, 4).tolist()


def test_segments_and_keyframe_seek_report_true_times(vfr):
    """Item 8: training draws and keyframe snapping (nearest keyframe in seconds) use the true times."""
    a, b = sample_frames(vfr, 8, "segments", seed=3), sample_frames(vfr, 8, "segments", seed=3)
    _check_true_times(a)
    assert a.indices.tolist() == b.indices.tolist() == vfr_segment_indices(TIMES, 8, 3).tolist()
    k = sample_frames(vfr, 4, seek="keyframe")  # keyframes every 12 frames: 0, 12 (10.07 s), 24, ...
    _check_true_times(k)
    assert set(k.indices.tolist()) <= set(range(0, 70, 12))
    # asked frames 1 (1 s), 4, 7 (7 s), 25: frame 7 is nearer keyframe 12 in time (3.07 s) than 0 (7 s)
    assert k.indices.tolist() == [0, 0, 12, 24]
    np.testing.assert_allclose(k.requested_timestamps, TRUE[[1, 4, 7, 25]], atol=1e-4)


def test_caches_serve_the_same_vfr_frames(vfr, tmp_path):
    """Item 8: the on-disk cache and the in-memory layer give what sample_frames gives, on the true times."""
    ref = sample_frames(vfr, 8, "segments", seed=1)
    disk = FrameCache(tmp_path / "fc")
    for _ in range(2):
        got = disk.sample(vfr, num_frames=8, strategy="segments", seed=1)
        assert got.indices.tolist() == ref.indices.tolist() and not got.constant_rate
        np.testing.assert_array_equal(got.frames, ref.frames)
        np.testing.assert_allclose(got.timestamps, ref.timestamps)
    assert disk.stats.hits == 1
    memory = FrameMemory(max_mb=16)
    first = memory.sample(vfr, num_frames=8, strategy="segments", seed=1)
    again = memory.sample(vfr, num_frames=8, strategy="segments", seed=1)
    assert memory.stats.hits == 1  # planned on the clip's times, so the draw is found in memory
    for f in (first, again):
        assert f.indices.tolist() == ref.indices.tolist()
        np.testing.assert_array_equal(f.frames, ref.frames)
    other = memory.sample(vfr, num_frames=8, strategy="segments", seed=2)
    assert other.indices.tolist() == sample_frames(vfr, 8, "segments", seed=2).indices.tolist()


# ----------------------------------------------------------------------------------- constant rate unchanged


@pytest.mark.parametrize(("codec", "fps"), [("mpeg4", 8), ("libx264", 30), ("mpeg4", 29.97)])
def test_constant_rate_clips_keep_the_index_arithmetic(tmp_path, codec, fps):
    """Constant-rate clips (B-frames included) are recognised as such: frames and times are index / fps."""
    frames = np.stack([np.full((32, 32, 3), LEVEL * i, np.uint8) for i in range(40)])
    path = tmp_path / "cfr.mp4"
    write_video(path, frames, fps=fps, codec=codec)
    assert video_times(path) is None
    f = sample_frames(path, 8)
    assert f.constant_rate and f.indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    np.testing.assert_allclose(f.timestamps, f.indices / f.source_fps)
    # explicit times on the regular grid write the same constant-rate clip
    timed = tmp_path / "timed.mp4"
    write_video(timed, frames, fps=fps, codec=codec, timestamps=np.arange(40) / fps)
    assert video_times(timed) is None


def test_write_video_timestamps_are_checked(tmp_path):
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(VideoError, match=r"x\.mp4: timestamp 1 \(0\.05 s\) is not a non-negative multiple"):
        write_video(tmp_path / "x.mp4", frames, fps=10, timestamps=[0, 0.05, 0.2])
    with pytest.raises(VideoError, match=r"timestamps must increase, got 0\.2 then 0\.1 s \(frame 2\)"):
        write_video(tmp_path / "x.mp4", frames, fps=10, timestamps=[0, 0.2, 0.1])
    with pytest.raises(VideoError, match="3 frames but 4 timestamps"):
        write_video(tmp_path / "x.mp4", frames, fps=10, timestamps=[0, 0.1, 0.2, 0.3])
    with pytest.raises(VideoError, match="more frames than the 2 timestamps"):
        write_video(tmp_path / "x.mp4", frames, fps=10, timestamps=[0, 0.2])
    assert not list(tmp_path.iterdir())  # nothing half-written
