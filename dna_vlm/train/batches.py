"""Training data: micro-batch number -> this process's rows, frames and processor batch.

Data order is a function of (seed, epoch) only and frames of (seed, epoch, row), so micro-batch g is the
same in an uninterrupted run and in a resumed one; the loader just walks g over a range. Unreadable videos
are returned with the batch (``"bad"``), never raised, so the trainer applies the user's policy. A frame
cache that cannot be written is no bad video: it warns once and is bypassed (:mod:`dna_vlm.video.cache`),
and its fault comes with the next batch (``"cache_faults"``) so the run can record it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from dna_vlm.train.config import TrainConfig
from dna_vlm.train.errors import TrainError

__all__ = ["MicroBatches", "load_examples", "make_loader", "mix_seed"]


def mix_seed(*xs: int) -> int:
    """A 32-bit seed mixing the integers ``xs`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(x) for x in xs]).generate_state(1)[0])


def load_examples(cfg: TrainConfig) -> tuple[list, list]:
    """(training rows, evaluation rows) in ``cfg.data_format`` (videos under ``cfg.video_root``); malformed
    rows fail here with file:line, before OUT is touched and before any model loads."""
    from dna_vlm.data.formats import read_dataset

    def read(path: str) -> list:
        return read_dataset(path, cfg.data_format, cfg.video_root)

    examples = read(cfg.data)
    if not examples:
        raise TrainError(f"{cfg.data}: the dataset is empty")
    return examples, (read(cfg.eval_data) if cfg.eval_data else [])


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch number g -> ``{"g", "batch", "bad", "rows", "cache_faults"}`` for process ``rank`` of
    ``world``.

    ``batch`` is the processor's batch (None when a video failed under ``bad_video="fail"``), ``bad`` the
    unreadable videos met ([{id, video, source, error}]), ``rows`` the dataset rows used, ``cache_faults``
    why the on-disk frame cache stores nothing (["DIR: error"], once per process; [] otherwise).
    """

    def __init__(self, examples, processor, cfg: TrainConfig, rank: int, world: int, strategy="segments"):
        self.examples, self.processor, self.cfg = examples, processor, cfg
        self.rank, self.world, self.strategy = rank, world, strategy
        self.n = len(examples)
        self.global_bs = cfg.batch_size * world
        self.per_epoch = max(1, math.ceil(self.n / self.global_bs))
        self._perm: dict[int, np.ndarray] = {}
        self._cache = None  # FrameMemory (over an optional FrameCache), made on first use
        self._fault_told = False  # the frame cache's fault went out with a batch
        self._check_text()

    def _check_text(self) -> None:
        """Refuse text holding the model's own video / image token (it would be taken for a second video and
        fail in the processor mid-run); the row is named. Runs once the processor is known."""
        from dna_vlm.data.prompting import example_turns, model_placeholders

        marks = model_placeholders(self.processor)
        for ex in self.examples if marks else ():
            for turn in example_turns(ex):
                hit = next((m for m in marks if m in turn.text), None)
                if hit is not None:
                    raise TrainError(
                        f"{ex.source}: a {turn.role} turn holds {hit!r}, this model's video / image placeholder "
                        "token: remove it from the text (the video is put in by the chat template)"
                    )

    def __len__(self) -> int:  # unbounded in principle; the sampler decides
        return 1 << 62

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng(mix_seed(self.cfg.seed, epoch)).permutation(self.n)}
        return self._perm[epoch]

    def rows(self, g: int) -> tuple[int, list[int]]:
        """(epoch, this process's row indices) of micro-batch g."""
        epoch, pos = divmod(g, self.per_epoch)
        perm = self.perm(epoch)
        start = pos * self.global_bs + self.rank * self.cfg.batch_size
        return epoch, [int(perm[(start + i) % self.n]) for i in range(self.cfg.batch_size)]

    def _frames(self, idx: int, epoch: int):
        """Frames of row ``idx`` in ``epoch``, through the in-process :class:`~dna_vlm.video.cache.FrameMemory`
        (``--frame-memory-mb``) and the on-disk frame cache (``--frame-cache``)."""
        from dna_vlm.video.decode import sample_frames

        ex = self.examples[idx]
        seed = mix_seed(self.cfg.seed, epoch, idx) if self.strategy == "segments" else None
        kw = dict(num_frames=self.cfg.num_frames, strategy=self.strategy, seed=seed, seek=self.cfg.seek)
        if self.cfg.frame_cache is None and not self.cfg.frame_memory_mb:
            return sample_frames(ex.video, **kw)
        if self._cache is None:  # made here, not in __init__: loader worker processes each open their own
            from dna_vlm.video.cache import FrameCache, FrameMemory

            disk = FrameCache(self.cfg.frame_cache) if self.cfg.frame_cache is not None else None
            self._cache = FrameMemory(self.cfg.frame_memory_mb, disk=disk)
        return self._cache.sample(ex.video, **kw)

    def __getitem__(self, g: int) -> dict:
        from dna_vlm.video.decode import VideoError

        epoch, rows = self.rows(g)
        good, bad = [], []
        tries = list(rows)
        extra = 0
        while tries:
            idx = tries.pop(0)
            try:
                good.append((idx, self._frames(idx, epoch)))
            except (VideoError, OSError) as e:
                ex = self.examples[idx]
                bad.append({"id": ex.id, "video": ex.video, "source": ex.source, "error": str(e)})
                if self.cfg.bad_video == "fail":
                    return {"g": g, "batch": None, "bad": bad, "rows": rows, "cache_faults": self._faults()}
            if not tries and not good and extra < self.n:  # every row bad: draw the next ones in order
                _, nxt = self.rows(g + 1 + extra // self.cfg.batch_size)
                tries.append(nxt[extra % self.cfg.batch_size])
                extra += 1
        if not good:
            raise TrainError(
                f"no readable video in {self.cfg.data}: every row failed to decode ({bad[:2]} ...)"
            )
        rows = [i for i, _ in good]
        return {"g": g, "batch": self._batch(good), "bad": bad, "rows": rows, "cache_faults": self._faults()}

    def _faults(self) -> list[str]:
        """The on-disk frame cache's fault the first time this process meets it, else []."""
        disk = getattr(self._cache, "disk", None)
        if disk is None or disk.fault is None or self._fault_told:
            return []
        self._fault_told = True
        return [f"{disk.root}: {disk.fault}"]

    def _batch(self, good):
        """Every assistant turn of the rows labelled (a single question: its answer)."""
        from dna_vlm.data.prompting import build_chat_inputs, example_turns

        convos = [example_turns(self.examples[i]) for i, _ in good]
        return build_chat_inputs(self.processor, [f for _, f in good], convos)


def _identity(x):
    return x


class _Range(torch.utils.data.Sampler):
    """Micro-batch numbers start .. stop - 1, in order."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def make_loader(ds: MicroBatches, start: int, stop: int, num_workers: int) -> Iterable[dict]:
    """Micro-batches ``start .. stop - 1`` of ``ds``, decoded by ``num_workers`` processes (0: this one).

    With ``--prefetch N`` (``ds.cfg.prefetch``) the loader is pulled N micro-batches ahead by a background
    thread, so decoding the next batch overlaps this one's forward and backward (worker processes already
    overlap; the thread then only hides their hand-over).
    """
    loader = torch.utils.data.DataLoader(
        ds,
        sampler=_Range(start, stop),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        persistent_workers=False,
    )
    depth = getattr(ds.cfg, "prefetch", 0) or 0
    if depth <= 0:
        return loader
    from dna_vlm.video.prefetch import prefetch_iter

    return prefetch_iter(loader, depth=depth)
