"""Bounded prefetch: compute the next few items in background threads while the consumer (the model) works.

``prefetch_map(fn, items, depth=N)`` yields ``Prefetched(item, value, error)`` in the order of ``items``,
with at most ``depth`` calls of ``fn`` running or finished ahead of the consumer (memory stays bounded: at
most ``depth`` decoded videos wait). ``depth=0`` runs ``fn`` inline (no threads) and yields the same.
An exception of ``fn`` is returned as ``error`` for its item (never raised inside the iterator), so a
consumer applies its own bad-video policy item by item and later items are not lost.

Threads suffice for video decoding: decord and PyAV decode in C without holding the GIL, so a decode
overlaps the model's forward (also C, GIL released in torch ops). ``WaitMeter`` measures how long the
consumer waits for items (the benchmark's "share of wall time the model waits").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["Prefetched", "WaitMeter", "prefetch_iter", "prefetch_map"]


@dataclass
class Prefetched:
    """One result of :func:`prefetch_map`: ``value`` is ``fn(item)``, or None when ``fn`` raised ``error``."""

    item: Any
    value: Any = None
    error: BaseException | None = None

    def get(self):
        """``value``, or raise ``error``."""
        if self.error is not None:
            raise self.error
        return self.value


def _call(fn, item) -> Prefetched:
    try:
        return Prefetched(item, fn(item))
    except Exception as e:  # returned, not raised: the consumer decides per item
        return Prefetched(item, error=e)


def _check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"prefetch depth must be an integer >= 0 (0: no prefetch), got {depth!r}")
    return depth


def prefetch_map(
    fn: Callable[[Any], Any], items: Iterable, depth: int = 2, workers: int = 1
) -> Iterator[Prefetched]:
    """``Prefetched(item, fn(item) or error)`` for each item, in order, ``depth`` items computed ahead.

    ``workers`` threads share the work (1 keeps decode order sequential, the kindest to the page cache).
    Closing the iterator early (``break``, garbage collection) cancels what has not started and waits for
    the calls already running, so no thread outlives the loop by more than one call.
    """
    depth = _check_depth(depth)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"prefetch workers must be a positive integer, got {workers!r}")
    if depth == 0:
        for item in items:
            yield _call(fn, item)
        return
    pool = ThreadPoolExecutor(max_workers=min(workers, depth), thread_name_prefix="dna-vlm-prefetch")
    pending: deque[Future] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(_call, fn, item))
            if len(pending) > depth:  # depth ahead of the one the consumer gets now
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def prefetch_iter(iterable: Iterable, depth: int = 2) -> Iterator:
    """The items of ``iterable`` (e.g. a data loader), pulled ``depth`` ahead by one background thread.

    Exceptions of the underlying iterator are re-raised in order, when the consumer reaches them.
    """
    it = iter(iterable)
    sentinel = object()

    def pull(_):
        return next(it, sentinel)

    for got in prefetch_map(pull, _forever(), depth=depth, workers=1):
        value = got.get()  # raises the iterator's own exception at its place
        if value is sentinel:
            return
        yield value


def _forever() -> Iterator[None]:
    while True:
        yield None


class WaitMeter:
    """Wall time a consumer spends waiting for items vs in total: ``for x in meter.wrap(it): work(x)``."""

    def __init__(self):
        self.waited = 0.0
        self.first_wait = 0.0  # the wait for the first item (no prefetch can hide it)
        self.count = 0
        self.started: float | None = None
        self.ended: float | None = None

    def wrap(self, iterable: Iterable) -> Iterator:
        it = iter(iterable)
        self.started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                break
            finally:
                dt = time.perf_counter() - t0
                self.waited += dt
                self.first_wait = dt if self.count == 0 else self.first_wait
                self.ended = time.perf_counter()
            self.count += 1
            yield item
        self.ended = time.perf_counter()

    @property
    def total(self) -> float:
        return 0.0 if self.started is None else (self.ended or time.perf_counter()) - self.started

    @property
    def wait_share(self) -> float:
        """Waiting / total wall time (0 when nothing ran)."""
        return self.waited / self.total if self.total > 0 else 0.0

    @property
    def steady_wait_share(self) -> float:
        """Like :attr:`wait_share` without the first item's wait (the pipeline filling up)."""
        rest = self.total - self.first_wait
        return (self.waited - self.first_wait) / rest if rest > 0 else 0.0
