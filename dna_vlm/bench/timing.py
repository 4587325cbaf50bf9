"""How `dna-vlm bench` measures: interleaved repetitions, the median ratio's CI, page faults, peak memory,
a steady allocator, the machine line. What it measures (shapes, arms, FLOP floors) lives in ``bench``."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

__all__ = [
    "interleaved_medians",
    "interleaved_times",
    "machine",
    "median_ci",
    "peak_memory",
    "steady_allocator",
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


def interleaved_times(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device, faults: dict | None = None
) -> dict[str, list[float]]:
    """Seconds of each fn per repetition (index i = repetition i for every fn). Each repetition runs every fn
    once, round-robin, so drift and load hit all of them alike; the order rotates each repetition, so no fn
    always runs first (after another fn's allocations) or last. ``faults``, when given, receives each fn's
    mean minor page faults per call over the timed repetitions (what :func:`steady_allocator` removes)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    counts = dict.fromkeys(fns, 0)
    keys = list(fns)
    for rep in range(reps):
        for k in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            f0 = _minor_faults()
            times[k].append(_time(fns[k], device))
            counts[k] += _minor_faults() - f0
    if faults is not None:
        faults.update({k: c / max(reps, 1) for k, c in counts.items()})
    return times


def interleaved_medians(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device
) -> dict[str, float]:
    """Median seconds of each fn over :func:`interleaved_times`."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, reps, warmup, device).items()}


def median_ci(values, conf: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi): the sample median and the distribution-free order-statistic CI of the population
    median, [x_(k), x_(n-k+1)] with the largest k whose coverage 1 - 2 P(Bin(n, 1/2) <= k-1) is >= ``conf``.
    Below 6 values no such k exists (the coverage of [min, max] is 1 - 2^(1-n)) and [min, max] is returned."""
    from scipy.stats import binom

    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    alpha = (1 - conf) / 2
    k = int(binom.ppf(alpha, n, 0.5))  # smallest j with P(Bin <= j) >= alpha
    if binom.cdf(k, n, 0.5) <= alpha:
        k += 1
    k = max(k, 1)  # k - 1 = the largest j with P(Bin <= j) <= alpha
    return statistics.median(x), x[k - 1], x[n - k]


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs start/stop lines to fd 2; keep the benchmark table readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(fn: Callable[[], object], device) -> int:
    """Peak bytes allocated while fn runs (CUDA allocator stats, or CPU profiler allocation events)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    acts = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr(), torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        fn()
    # self_cpu_memory_usage: an op's cpu_memory_usage includes its children's (linear -> matmul -> mm would
    # count one output three times); frees are "[memory]" events with negative usage
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


#: glibc mallopt parameters (malloc.h): keep freed memory in the heap instead of unmapping it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_STEADY_BYTES = 1 << 30


def steady_allocator() -> str:
    """Make CPU allocations cost the same in every arm and every repetition; returns what was done.

    glibc serves large blocks (a (B, N, C) activation) with mmap and returns them with munmap, and moves that
    threshold as blocks are freed, so how many page faults a call pays (each zeroes a fresh page) depends on the
    process's allocation history: hundreds to thousands per ViT-B encoder-layer call, differing between arms and
    between runs (``dna-vlm bench --default-malloc`` prints them). Fixed mmap and trim thresholds of 1 GiB keep
    freed blocks in the heap, so after warm-up the arms no longer fault from the allocator. A no-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "allocator: unchanged (no glibc mallopt)"
    ok = mallopt(_M_MMAP_THRESHOLD, _STEADY_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, _STEADY_BYTES) == 1
    if not ok:
        return "allocator: unchanged (mallopt refused)"
    return "allocator: glibc mmap/trim thresholds 1 GiB (freed blocks stay in the heap)"


def machine() -> str:
    """The card, or the CPU model and core count, plus torch and Python versions."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name()
    else:
        dev = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                dev = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        dev = f"{dev} ({os.cpu_count()} cores)"
    return f"{dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"
