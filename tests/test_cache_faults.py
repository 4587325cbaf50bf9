"""A frame cache that cannot be written is bypassed, never a bad video (issue 25, item 7).

Before the fix a cache write error reached the caller: training counted every video whose frames could not
be stored as unreadable ("26 unreadable videos skipped", exit 0, trained on 6 of 32), a full disk killed it
with a raw ``SafetensorError``, and in eval the doc failed and the video was blamed. Now the cache warns
once (naming its folder and the OS error), decodes directly and stores nothing more.

The faults are real, and work as root (where ``chmod`` stops nothing):

- ``blocked``: every shard folder name (``00``..``ff``) is taken by a regular file, so creating the folder
  of any entry fails in the kernel (``FileExistsError``);
- ``parent_is_file``: the cache folder's parent is a regular file (``NotADirectoryError`` on ``mkdir``);
- ``entry_is_dir``: a directory sits where the entry is renamed to (``IsADirectoryError``);
- ``read_only_fs``: a tmpfs mounted read-only (``EROFS``), in a user+mount namespace (``unshare -rm``); skipped
  where namespaces are not allowed;
- ``file_size_limit``: ``RLIMIT_FSIZE`` in a child process, so the kernel refuses the write (``EFBIG``) deep
  in safetensors' Rust writer, which raises ``SafetensorError`` -- what a full disk raises;
- ``full_disk``: the one simulated fault: safetensors' writer is monkeypatched to raise the
  ``SafetensorError`` it raises on ``ENOSPC`` ("No space left on device (os error 28)").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import make_clip, make_dataset, tiny_model

from dna_vlm.video.cache import FrameCache, sample_key
from dna_vlm.video.decode import sample_frames

ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture()
def clip(tmp_path):
    return make_clip(tmp_path / "clip.mp4", "red", n_frames=8)


def _block(root: Path) -> Path:
    """``root`` exists, but no entry can ever be stored in it: every shard name is a regular file."""
    root.mkdir(parents=True)
    for i in range(256):
        (root / f"{i:02x}").write_bytes(b"")
    return root


def _unwritable(kind: str, tmp_path: Path, clip: Path) -> Path:
    if kind == "blocked":
        return _block(tmp_path / "fc")
    if kind == "parent_is_file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "fc"
    entry = FrameCache(tmp_path / "fc").entry_path(sample_key(clip, num_frames=4))
    entry.mkdir(parents=True)  # entry_is_dir
    return tmp_path / "fc"


def _full_disk(monkeypatch) -> None:
    import safetensors.numpy
    from safetensors import SafetensorError

    def save_file(*_a, **_k):
        raise SafetensorError(ENOSPC)

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dna_vlm.video.cache"]


def _no_temps(root: Path) -> bool:
    return not (root.is_dir() and [p for p in root.rglob("*") if p.name.endswith(".tmp")])


# ------------------------------------------------------------------------------------------ the cache alone


@pytest.mark.parametrize("kind", ["blocked", "parent_is_file", "entry_is_dir"])
def test_unwritable_cache_decodes_directly_and_warns_once(kind, clip, tmp_path, caplog):
    """Item 7: each sample gives sample_frames' frames; one warning names the folder and the OS error."""
    root = _unwritable(kind, tmp_path, clip)
    with caplog.at_level(logging.WARNING, logger="dna_vlm.video.cache"):
        cache = FrameCache(root)
        for n in (4, 3, 4):
            got = cache.sample(clip, num_frames=n)
            np.testing.assert_array_equal(got.frames, sample_frames(clip, n).frames)
        FrameCache(root).sample(clip, num_frames=2)  # another cache on that folder: not said again
    (warning,) = _cache_warnings(caplog)
    error = {
        "blocked": "FileExistsError",
        "parent_is_file": "NotADirectoryError",
        "entry_is_dir": "IsADirectory",
    }
    assert f"frame cache {root} cannot be written" in warning and error[kind] in warning
    assert cache.fault is not None and error[kind] in cache.fault
    assert cache.stats.writes == 0 and cache.stats.write_errors == 3 and _no_temps(root)


def test_full_disk_and_corrupt_entry(clip, tmp_path, monkeypatch, caplog):
    """Item 7: a corrupt entry is a miss and is decoded again; a full disk then stores nothing, says so."""
    root = tmp_path / "fc"
    ref = FrameCache(root).sample(clip, num_frames=4)
    (entry,) = root.rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:40])  # truncated
    _full_disk(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="dna_vlm.video.cache"):
        cache = FrameCache(root)
        got = cache.sample(clip, num_frames=4)
    np.testing.assert_array_equal(got.frames, ref.frames)
    assert cache.stats.unreadable == 1 and cache.stats.write_errors == 1
    assert "No space left on device" in cache.fault and len(_cache_warnings(caplog)) == 1
    assert entry.stat().st_size == 40 and _no_temps(root)  # nothing half-written over it


_CHILD = """
import json, logging, resource, signal, sys
from dna_vlm.video.cache import FrameCache
from dna_vlm.video.decode import sample_frames
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
root, clip, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
ref = sample_frames(clip, 4)  # decoders loaded before any limit
if limit:  # the kernel then refuses writes past `limit` bytes (EFBIG) instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
cache = FrameCache(root)
same = [bool((cache.sample(clip, num_frames=4).frames == ref.frames).all()) for _ in range(2)]
print(json.dumps({"same": same, "fault": cache.fault, "writes": cache.stats.writes}))
"""


def _child(root: Path, clip: Path, limit: int = 0, prefix: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [*prefix, sys.executable, "-c", _CHILD, str(root), str(clip), str(limit)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _check_child(proc: subprocess.CompletedProcess, root: Path, error: str) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] == [True, True] and out["writes"] == 0 and error in out["fault"]
    assert proc.stderr.count(f"frame cache {root} cannot be written") == 1 and error in proc.stderr


def test_file_size_limit_in_the_rust_writer(clip, tmp_path):
    """Item 7: a write the kernel refuses inside safetensors (SafetensorError, as on a full disk)."""
    root = tmp_path / "fc"
    _check_child(_child(root, clip, limit=1024), root, "File too large")
    assert not list(root.rglob("*.safetensors")) and _no_temps(root)


def _read_only_prefix(mount: Path) -> tuple:
    """argv prefix running a command with a read-only tmpfs at ``mount``; skips where that is not allowed."""
    unshare = shutil.which("unshare")
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    prefix = (unshare, "-rm", "sh", "-c", script, str(mount)) if unshare else ()
    mount.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run([*prefix, "sh", "-c", 'touch "$0"/x', str(mount)], capture_output=True, text=True)
    if not prefix or "Read-only file system" not in probe.stderr:
        pytest.skip(f"no read-only mount here (unshare -rm): {probe.stderr.strip()[:200]}")
    return prefix


def test_read_only_file_system(clip, tmp_path):
    """Item 7: a cache folder on a read-only file system (EROFS, a real mount)."""
    root = tmp_path / "ro"
    _check_child(_child(root, clip, prefix=_read_only_prefix(root)), root, "Read-only file system")


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_faults")
    return {"model": str(tiny_model(root)), "data": str(make_dataset(root, n=8))}


def _run(out: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def plain(data, tmp_path_factory):
    """The same training without a frame cache: what every faulty-cache run must reproduce."""
    from dna_vlm.train import TrainConfig, train

    out = tmp_path_factory.mktemp("plain") / "run"
    train(TrainConfig(output=str(out), **data, **_TRAIN))
    return [r["loss"] for r in _run(out)[0]]


_TRAIN = dict(num_frames=4, batch_size=4, max_steps=2, lr=3e-3, progress=False)  # 2 steps = all 8 rows


@pytest.mark.parametrize("kind", ["blocked", "full_disk"])
def test_training_trains_on_every_video(kind, data, plain, tmp_path, monkeypatch, caplog):
    """Item 7: with an unwritable cache every video is trained on (same losses as without a cache, none
    skipped), one warning names the folder, and the fault comes with the batches for the run to record."""
    from dna_vlm.train import TrainConfig, train
    from dna_vlm.train.batches import MicroBatches

    root = _block(tmp_path / "fc") if kind == "blocked" else tmp_path / "fc"
    if kind == "full_disk":
        _full_disk(monkeypatch)
    faults = []
    real = MicroBatches.__getitem__
    monkeypatch.setattr(MicroBatches, "__getitem__", lambda ds, g: _keep(real(ds, g), faults))
    with caplog.at_level(logging.WARNING, logger="dna_vlm.video.cache"):
        out = train(TrainConfig(output=str(tmp_path / "run"), frame_cache=str(root), **data, **_TRAIN))
    steps, summary = _run(out)
    assert [r["loss"] for r in steps] == plain
    assert summary["skipped_videos"] == [] and summary["skip_events"] == 0 and steps[-1]["skipped_total"] == 0
    assert summary["frame_cache_bypassed"] == faults[:1] and faults[0].startswith(f"{root}")  # recorded once
    (warning,) = _cache_warnings(caplog)
    error = "No space left on device" if kind == "full_disk" else "FileExistsError"
    assert f"frame cache {root} cannot be written" in warning and error in warning
    assert len(faults) == 1 and faults[0].startswith(f"{root}: ") and error in faults[0]
    assert not list(root.rglob("*.safetensors"))


def _keep(item: dict, faults: list) -> dict:
    faults.extend(item["cache_faults"])
    return item


@pytest.mark.slow
def test_train_cli_on_a_read_only_cache(data, plain, tmp_path):
    """Item 7, as the issue met it: ``dna-vlm train --frame-cache`` on a read-only file system exits 0
    having trained on every video (it said "N unreadable videos skipped" and trained on the rest)."""
    root = tmp_path / "ro"
    prefix = _read_only_prefix(root)
    out = tmp_path / "run"
    args = ["--model", data["model"], "--data", data["data"], "--output", str(out), "--frame-cache", str(root),
            "--num-frames", "4", "--batch-size", "4", "--max-steps", "2", "--lr", "3e-3", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [*prefix, sys.executable, "-m", "dna_vlm", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(f"frame cache {root} cannot be written") == 1
    assert "Read-only file system" in proc.stderr and "0 unreadable videos skipped" in proc.stderr
    steps, summary = _run(out)
    # the child runs with its own thread count: the same data and steps, equal up to reduction order
    assert summary["skipped_videos"] == [] and [r["loss"] for r in steps] == pytest.approx(plain, rel=1e-5)
    assert (
        len(summary["frame_cache_bypassed"]) == 1
        and "Read-only file system" in summary["frame_cache_bypassed"][0]
    )


# ------------------------------------------------------------------------------------------ evaluation


def test_eval_never_fails_a_doc_for_the_cache(data, tmp_path, caplog):
    """Item 7: the lmms-eval model with ``frame_cache`` on an unwritable folder answers every doc as without
    a cache (``bad_video=fail``: one failed doc would raise), and its provenance records the fault."""
    pytest.importorskip("lmms_eval")
    from dna_vlm.eval.lmms.plugin import DnaVLM
    from lmms_eval.api.instance import Instance

    from dna_vlm.data.prompting import format_question

    videos = [make_clip(tmp_path / f"v{i}.mp4", c, seed=i) for i, c in enumerate(("red", "blue"))]
    docs = [
        {"video": str(v), "question": "What colour is shown?", "options": ["red", "blue"]} for v in videos
    ]
    args = [(format_question(d["question"], d["options"]), c, _visual, i, "t", "test") for i, d in enumerate(docs)
            for c in "AB"]  # fmt: skip
    reqs = [Instance("loglikelihood", a, 0, {"task": "t", "doc_id": a[3], "repeats": 1}) for a in args]

    def model(**kw):
        m = DnaVLM(pretrained=data["model"], max_frames=4, bad_video="fail", **kw)
        m.task_dict = {"t": {"test": docs}}
        return m

    expected = model().loglikelihood(reqs)
    root = _block(tmp_path / "fc")
    with caplog.at_level(logging.WARNING, logger="dna_vlm.video.cache"):
        m = model(frame_cache=str(root))
        assert m.loglikelihood(reqs) == expected
    assert m.provenance["failures"] == []
    (fault,) = m.provenance["frame_cache_faults"]
    assert fault.startswith(f"{root}: FileExistsError") and len(_cache_warnings(caplog)) == 1


def _visual(doc):
    return [doc["video"]]
