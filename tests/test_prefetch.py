"""dna_vlm.video.prefetch: order, per-item errors, bounded look-ahead, early close, the wait meter (no timing)."""

import threading

import pytest

from dna_vlm.video.prefetch import Prefetched, WaitMeter, prefetch_iter, prefetch_map


def _square(x):
    if x == 3:
        raise ValueError("bad item 3")
    return x * x


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("workers", [1, 2])
def test_order_values_and_errors(depth, workers):
    got = list(prefetch_map(_square, range(6), depth=depth, workers=workers))
    assert [g.item for g in got] == list(range(6))
    assert [g.value for g in got] == [0, 1, 4, None, 16, 25]
    assert isinstance(got[3].error, ValueError) and all(g.error is None for i, g in enumerate(got) if i != 3)
    with pytest.raises(ValueError, match="bad item 3"):
        got[3].get()
    assert got[2].get() == 4


def test_look_ahead_is_bounded():
    started = []
    release = threading.Event()

    def work(x):
        started.append(x)
        release.wait(5)
        return x

    it = prefetch_map(work, range(100), depth=3, workers=2)
    first = threading.Thread(target=lambda: next(it))
    first.start()
    first.join(0.3)  # the consumer waits for item 0; at most depth + 1 calls may have been submitted
    assert len(started) <= 4
    release.set()
    first.join(5)
    rest = [p.value for p in it]
    assert rest == list(range(1, 100)) and sorted(started) == list(range(100))


def test_early_close_stops_the_threads():
    calls = []
    it = prefetch_map(lambda x: calls.append(x) or x, range(10_000), depth=2)
    assert next(it).value == 0
    it.close()
    n = len(calls)
    assert n <= 4
    assert not [t for t in threading.enumerate() if t.name.startswith("dna-vlm-prefetch")]


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch_map(_square, [1], depth=-1))
    with pytest.raises(ValueError, match="workers"):
        list(prefetch_map(_square, [1], workers=0))


def test_prefetch_iter_passes_items_and_raises_in_place():
    assert list(prefetch_iter(iter(range(7)), depth=2)) == list(range(7))
    assert list(prefetch_iter([], depth=2)) == []

    def gen():
        yield 1
        yield 2
        raise RuntimeError("loader broke")

    it = prefetch_iter(gen(), depth=3)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(RuntimeError, match="loader broke"):
        next(it)


def test_wait_meter_counts_the_waits():
    m = WaitMeter()
    assert m.wait_share == 0.0
    assert list(m.wrap(range(3))) == [0, 1, 2]
    assert 0.0 <= m.waited <= m.total and 0.0 <= m.wait_share <= 1.0 and m.count == 3
    assert 0.0 <= m.first_wait <= m.waited and 0.0 <= m.steady_wait_share <= 1.0
    assert Prefetched(1, 2).get() == 2
