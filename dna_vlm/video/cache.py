"""On-disk frame cache: decode a video once, serve its frames to every arm that samples it the same way.

Several arms (stock, softmax+LoRA, DnA+LoRA, blind, controls) evaluated over the same videos would each
decode every video again; with ``FrameCache(DIR)`` the first one decodes and stores, the others read.

- **Key** (:func:`frame_key`): sha256 over the video's identity (:func:`video_identity`: resolved path, size,
  mtime in ns; the inode and ctime are mixed in as well, so a file rewritten in place within the mtime
  clock's granularity, or replaced by a rename, still gets a new key) and the sampling parameters
  (``num_frames``, ``strategy``, ``seek``, ``size`` ...) in a canonical JSON form. A changed video file
  therefore never hits an old entry; a stale entry is simply never read again.
- **Format**: one safetensors file per entry (``DIR/ab/abcdef...safetensors``): uint8 ``frames``
  ``(T, H, W, 3)``, float64 ``timestamps`` and int64 ``indices``; the source fps, frame count, identity and
  sampling params in its string metadata. No pickle anywhere.
- **Concurrency**: entries are written to a temp file in the same folder and renamed over the target
  (:func:`dna_vlm.files.atomic_path`), so readers in other processes see a whole entry or none. Two processes
  missing at once both decode and both write the same content; the last rename wins. An unreadable entry
  (disk full, truncated by a crash of the machine) counts as a miss and is rewritten.
- **Faults**: the cache is an optimisation, never a reason to lose a video. A cache that cannot be written
  (a read-only file system, a full disk, no permission, a file where its folder should be) is said once per
  process -- a warning naming the folder and the OS error -- and from then on frames are decoded directly
  and not stored (:attr:`FrameCache.fault` says why; entries already there are still read).

The cache never evicts; delete ``DIR`` (or old shards) to reclaim space.

:class:`FrameMemory` is the in-process layer in front of it (training): an LRU of decoded frames bounded in
bytes and keyed by what was decoded -- the video's identity, the frame indices and the decode size -- rather
than by the sampling parameters, so a training draw with a new seed that lands on frames already decoded
(every epoch, when a clip has no more frames than the model takes) costs no decoding at all.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CacheStats",
    "FrameCache",
    "FrameMemory",
    "frame_key",
    "sample_key",
    "sample_params",
    "sampling_params",
    "video_identity",
]

# bump when the stored layout or what is sampled changes: old entries are then never read (2: variable-rate
# clips sampled on their own frame times; format-1 entries of such clips hold frames picked at index / fps)
_FORMAT = 2
log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # cache folders whose fault this process has reported


def _full_identity(path: str | os.PathLike) -> tuple:
    """:func:`video_identity` plus device, inode and ctime (what :func:`frame_key` mixes in)."""
    ident = video_identity(path)
    st = os.stat(ident[0])
    return (*ident, int(st.st_dev), int(st.st_ino), int(st.st_ctime_ns))


def video_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """``(resolved path, size in bytes, mtime in ns)`` of a video file; ``FileNotFoundError`` if missing."""
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), int(st.st_size), int(st.st_mtime_ns))


def _canonical(v):
    """JSON-able canonical form of a sampling parameter (tuples -> lists, numpy scalars -> Python)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"frame cache: sampling parameter {v!r} is not a finite number")
        return int(f) if f.is_integer() else f  # 8 and 8.0 sample the same frames
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_canonical(x) for x in v]
    raise TypeError(
        f"frame cache: sampling parameter {v!r} ({type(v).__name__}) cannot be part of a cache key; "
        "pass ints, floats, strings, None or sequences of them (an int seed, not a numpy Generator)"
    )


def sampling_params(**sampling) -> dict:
    """The canonical form of ``sampling`` (sorted keys, JSON values) that :func:`frame_key` hashes."""
    return {k: _canonical(sampling[k]) for k in sorted(sampling)}


def frame_key(path: str | os.PathLike, **sampling) -> str:
    """sha256 hex of the video's identity and the sampling parameters (keyword arguments, any order).

    ``frame_key(p, num_frames=8, strategy="uniform", seek="exact", size=None)`` -- every parameter that
    changes which pixels come back must be passed (two calls differing in one parameter get different
    keys). Raises ``FileNotFoundError`` for a missing file and ``TypeError`` for an unhashable parameter.
    """
    ident = _full_identity(path)
    payload = {
        "format": _FORMAT,
        "video": list(ident[:3]),
        "inode": list(ident[3:]),
        "sampling": sampling_params(**sampling),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass
class CacheStats:
    """Counts of one :class:`FrameCache` object (this process only)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    unreadable: int = 0  # entries that failed to load (treated as misses and rewritten)
    write_errors: int = 0  # stores skipped because the cache cannot be written (see FrameCache.fault)


class FrameCache:
    """Content-addressed store of sampled frames under ``root`` (see the module docstring).

    ``cache.sample(path, **sampling)`` returns :class:`dna_vlm.video.decode.Frames`, decoding with
    :func:`dna_vlm.video.decode.sample_frames` only on a miss. ``get``/``put`` are the lower-level pair.
    ``fault`` is None while the cache works, else why it stores nothing (the module docstring's "Faults").
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.stats = CacheStats()
        self.fault: str | None = None
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(self.root))
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._bypass(e)

    def _bypass(self, e: BaseException) -> None:
        """Stop storing (reads go on: entries already there are still right); warn once per process."""
        self.fault = f"{type(e).__name__}: {e}"
        if str(self.root) not in _WARNED:
            _WARNED.add(str(self.root))
            log.warning(
                "frame cache %s cannot be written (%s): frames are decoded directly and not stored for the "
                "rest of this process; no video is skipped for it. Free space or fix the folder (or its "
                "permissions), or give the frame cache another folder",
                self.root,
                self.fault,
            )

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str):
        """The :class:`~dna_vlm.video.decode.Frames` stored under ``key``, or None (missing or unreadable)."""
        p = self.entry_path(key)
        try:
            return _load_entry(p) if p.is_file() else None
        except Exception:  # truncated/corrupt/unreadable entry: a miss; the caller's put() replaces it
            self.stats.unreadable += 1
            return None

    def put(self, key: str, frames, sampling: dict | None = None) -> Path | None:
        """Store ``frames`` (a :class:`~dna_vlm.video.decode.Frames`) under ``key`` atomically; returns the
        file, or None when the cache cannot be written (:attr:`fault`; said once, later puts skip)."""
        from safetensors import SafetensorError
        from safetensors.numpy import save_file

        from dna_vlm.files import atomic_path

        if self.fault is not None:
            self.stats.write_errors += 1
            return None
        meta = {
            "format": str(_FORMAT),
            "path": str(frames.path),
            "source_fps": repr(float(frames.source_fps)),
            "num_source_frames": str(int(frames.num_source_frames)),
            "sampling": json.dumps(sampling or {}, sort_keys=True),
            "constant_rate": "1" if frames.constant_rate else "0",
        }
        arrays = {
            "frames": np.ascontiguousarray(frames.frames, dtype=np.uint8),
            "timestamps": np.ascontiguousarray(frames.timestamps, dtype=np.float64),
            "indices": np.ascontiguousarray(frames.indices, dtype=np.int64),
            "requested_timestamps": np.ascontiguousarray(
                frames.timestamps if frames.requested_timestamps is None else frames.requested_timestamps,
                dtype=np.float64,
            ),
        }
        p = self.entry_path(key)
        try:
            with atomic_path(p, suffix=".safetensors.tmp") as tmp:
                save_file(arrays, str(tmp), metadata=meta)
        except (OSError, SafetensorError) as e:  # SafetensorError: an I/O error met by the Rust writer
            self.stats.write_errors += 1
            self._bypass(e)
            return None
        self.stats.writes += 1
        return p

    def get_or_decode(self, path: str | os.PathLike, decode: Callable[[], object], **sampling):
        """Frames of ``path`` sampled with ``sampling``: from the cache, else ``decode()`` then stored."""
        try:
            key = frame_key(path, **sampling)
        except OSError:  # the video itself is missing or unreadable: the decoder's error names it
            return decode()
        hit = self.get(key)
        if hit is not None:
            self.stats.hits += 1
            hit.path = str(path)  # as the caller spelled it (the entry may come from another spelling)
            return hit
        self.stats.misses += 1
        frames = decode()
        self.put(key, frames, sampling_params(**sampling))
        return frames

    def sample(self, path: str | os.PathLike, **sampling):
        """``dna_vlm.video.decode.sample_frames(path, **sampling)`` through the cache (key: :func:`sample_key`).

        ``seed`` must be an int (or None) when given: a numpy Generator's draws cannot be keyed.
        """
        from dna_vlm.video.decode import sample_frames

        return self.get_or_decode(path, lambda: sample_frames(path, **sampling), **sample_params(**sampling))


def sample_params(**sampling) -> dict:
    """``sampling`` (keywords of :func:`dna_vlm.video.decode.sample_frames`) with its defaults filled in, minus
    ``num_threads`` (it does not change the pixels): ``sample(p, num_frames=8)`` and
    ``sample(p, num_frames=8, strategy="uniform")`` then share one entry. ``TypeError`` for an unknown name.
    """
    from dna_vlm.video.decode import sample_frames

    bound = inspect.signature(sample_frames).bind("-", **sampling)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("path", "num_threads")}


def sample_key(path: str | os.PathLike, **sampling) -> str:
    """The key :meth:`FrameCache.sample` stores ``sample_frames(path, **sampling)`` under."""
    return frame_key(path, **sample_params(**sampling))


def _load_entry(p: Path):
    from safetensors import safe_open

    from dna_vlm.video.decode import Frames

    with safe_open(str(p), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != str(_FORMAT):
            raise ValueError(f"{p}: frame cache entry of format {meta.get('format')!r}, expected {_FORMAT}")
        arrays = {k: f.get_tensor(k) for k in ("frames", "timestamps", "indices", "requested_timestamps")}
    fr = arrays["frames"]
    if fr.dtype != np.uint8 or fr.ndim != 4 or fr.shape[-1] != 3 or fr.shape[0] != len(arrays["indices"]):
        raise ValueError(f"{p}: frame cache entry holds frames {fr.dtype} {fr.shape}")
    return Frames(
        frames=fr,
        timestamps=arrays["timestamps"],
        indices=arrays["indices"],
        source_fps=float(meta["source_fps"]),
        path=meta["path"],
        num_source_frames=int(meta["num_source_frames"]),
        requested_timestamps=arrays["requested_timestamps"],
        constant_rate=meta["constant_rate"] == "1",
    )


class FrameMemory:
    """In-process LRU of decoded frames, at most ``max_mb`` MiB, in front of an optional on-disk ``disk``
    :class:`FrameCache` (see the module docstring).

    ``memory.sample(path, **sampling)`` returns what ``sample_frames(path, **sampling)`` returns. The first
    decode of a video records its frame count and rate; later calls plan their indices with
    :func:`dna_vlm.video.decode.plan_indices` (on the clip's own frame times when it is variable-rate) and are
    served from memory when those frames (same identity -- path, size, mtime, inode, ctime --, same indices,
    same decode size) were decoded before. ``seek="keyframe"`` needs the keyframe list and always decodes
    (through ``disk`` when given). Every call returns arrays the caller owns (the memory keeps its own copy).
    Not shared between processes: each loader worker has its own.
    """

    def __init__(self, max_mb: float = 512, disk: FrameCache | None = None):
        from collections import OrderedDict

        if not max_mb >= 0:
            raise ValueError(f"FrameMemory: max_mb must be >= 0, got {max_mb!r}")
        self.max_bytes, self.disk, self.bytes = int(max_mb * 2**20), disk, 0
        self.stats = CacheStats()
        self._lru: OrderedDict = OrderedDict()  # key -> Frames
        # identity -> (frame count, fps, frame times or None for a constant-rate clip)
        self._videos: dict[tuple, tuple[int, float, object]] = {}

    def sample(self, path: str | os.PathLike, **sampling):
        kw = sample_params(**sampling)
        ident = None
        if self.max_bytes and kw["seek"] == "exact":
            try:
                ident = _full_identity(path)
            except OSError:  # missing / unreadable: the decoder below raises its VideoError naming the file
                ident = None
        key = self._key(path, ident, kw) if ident in self._videos else None
        hit = self._lru.get(key) if key is not None else None
        if hit is not None:
            self._lru.move_to_end(key)
            self.stats.hits += 1
            return _view(hit, path)
        self.stats.misses += 1
        frames = (
            self.disk.sample(path, **sampling) if self.disk is not None else _decode_frames(path, sampling)
        )
        if ident is not None and ident not in self._videos:
            self._videos[ident] = _timeline(path, frames)
        if ident is not None:
            self._put((ident, tuple(int(i) for i in frames.indices), _size(kw["size"])), frames)
        return frames

    def _key(self, path, ident: tuple, kw: dict) -> tuple:
        from dna_vlm.video.decode import plan_indices

        n, fps, times = self._videos[ident]
        plan = {k: kw[k] for k in ("num_frames", "strategy", "fps", "max_frames", "window", "seed", "short")}
        idx = plan_indices(path, n, fps, times=times, **plan)
        return (ident, tuple(int(i) for i in idx), _size(kw["size"]))

    def _put(self, key: tuple, frames) -> None:
        nbytes = int(frames.frames.nbytes)
        if nbytes > self.max_bytes or key in self._lru:
            return
        self._lru[key] = _copy(frames)
        self.bytes += nbytes
        self.stats.writes += 1
        while self.bytes > self.max_bytes:
            _, old = self._lru.popitem(last=False)
            self.bytes -= int(old.frames.nbytes)


def _timeline(path, frames) -> tuple[int, float, object]:
    """(frame count, fps, frame times) of the clip ``frames`` came from; the times only for a variable-rate
    clip (one more open of the container, once per clip and process)."""
    from dna_vlm.video.decode import video_times

    times = None if frames.constant_rate else video_times(path)
    return int(frames.num_source_frames), float(frames.source_fps), times


def _size(size) -> tuple | None:
    """The decode size in one spelling: None, or (H, W) for an int or a pair."""
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)


def _decode_frames(path, sampling: dict):
    from dna_vlm.video.decode import sample_frames

    return sample_frames(path, **sampling)


def _view(frames, path):
    """A hit: a copy of the stored frames under the caller's spelling of ``path``."""
    from dataclasses import replace

    return replace(_copy(frames), path=str(path))


def _copy(frames):
    """``frames`` with its own arrays (the caller may write into them; the memory's copy stays intact)."""
    from dataclasses import replace

    rt = frames.requested_timestamps
    return replace(
        frames, frames=frames.frames.copy(), timestamps=frames.timestamps.copy(),
        indices=frames.indices.copy(), requested_timestamps=None if rt is None else rt.copy(),
    )  # fmt: skip
