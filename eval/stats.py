"""The statistics of dna-vlm's reports, in one place (attribute, demo).

Paired 0/1 correctness of two models on the same docs: Wilson intervals, the exact McNemar test
(``scipy.stats.binomtest``), a paired bootstrap CI of the accuracy delta, Holm's adjustment, the whole
paired comparison (:func:`compare`) and an OLS trend of the per-doc delta over a numeric field
(``scipy.stats.linregress`` + a bootstrap CI). Every random quantity draws from its own stream
(:func:`quantity_rng`), so adding a group or an arm never changes another quantity's CI.
``dna_vlm.eval.attribute.compare.DEFINITIONS`` defines each number in words.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "MIN_DISCORDANT",
    "Z95",
    "ci_warning",
    "compare",
    "excludes_zero",
    "holm",
    "mcnemar_exact",
    "ols_trend",
    "paired_bootstrap_ci",
    "quantity_rng",
    "wilson_ci",
]

Z95 = 1.959963984540054
#: below this many discordant docs the percentile bootstrap CI is too narrow to trust
MIN_DISCORDANT = 10


def wilson_ci(k: int, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval for k successes in n trials ([nan, nan] when n = 0).

    The formula, not ``binomtest(k, n).proportion_ci(method="wilson")``: the same numbers (tested) without
    building a test object per interval."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    den = 1 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, center - half), min(1.0, center + half)]


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs at p = 0.5 (1 when none)."""
    if fixed + broken == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(broken, fixed + broken, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def quantity_rng(seed: int, name: str) -> np.random.Generator:
    """One independent stream per named quantity, so adding groups or arms never changes another CI."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


def paired_bootstrap_ci(
    x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, name: str
) -> list[float] | None:
    """95% percentile CI of mean(y) - mean(x) for paired 0/1 arrays, resampling docs with replacement.

    y_i - x_i takes only the values -1/0/+1, so a replicate is drawn exactly as multinomial counts of
    (up, down, unchanged): the distribution of resampling doc indices, at a fraction of the cost.
    None when ``n_boot`` is 0 or there are no docs."""
    n = len(x)
    if n_boot <= 0 or n == 0:
        return None
    up = int(np.sum((y == 1) & (x == 0)))
    down = int(np.sum((y == 0) & (x == 1)))
    counts = quantity_rng(seed, name).multinomial(n, [up / n, down / n, (n - up - down) / n], size=n_boot)
    deltas = (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return [float(lo), float(hi)]


def excludes_zero(ci: list[float] | None) -> bool:
    """Whether a CI lies wholly on one side of 0 (False when there is none)."""
    return bool(ci is not None and (ci[0] > 0 or ci[1] < 0))


def ci_warning(discordant: int) -> str | None:
    """The caution attached to a bootstrap CI built on fewer than :data:`MIN_DISCORDANT` discordant docs."""
    if discordant >= MIN_DISCORDANT:
        return None
    return (
        f"only {discordant} discordant docs (< {MIN_DISCORDANT}): the bootstrap CI is unreliable here, "
        "use mcnemar_p"
    )


def compare(b: np.ndarray, c: np.ndarray, n_boot: int, seed: int, name: str) -> dict:
    """Paired comparison of baseline ``b`` and candidate ``c`` (0/1 per doc, same docs in the same order):
    accuracies with Wilson CIs, the delta with its bootstrap CI (stream ``name``), McNemar p and flips."""
    n = len(b)
    kb, kc = int(b.sum()), int(c.sum())
    fixed = int(np.sum((b == 0) & (c == 1)))
    broken = int(np.sum((b == 1) & (c == 0)))
    ci = paired_bootstrap_ci(b, c, n_boot, seed, name)
    return {
        "n": n,
        "baseline_correct": kb,
        "candidate_correct": kc,
        "baseline_acc": kb / n if n else math.nan,
        "candidate_acc": kc / n if n else math.nan,
        "baseline_ci95": wilson_ci(kb, n),
        "candidate_ci95": wilson_ci(kc, n),
        "delta": (kc - kb) / n if n else math.nan,
        "delta_ci95": ci,
        "significant": excludes_zero(ci),
        "ci_warning": ci_warning(fixed + broken),
        "mcnemar_p": mcnemar_exact(fixed, broken),
        "fixed": fixed,
        "broken": broken,
        "both_right": int(np.sum((b == 1) & (c == 1))),
        "both_wrong": int(np.sum((b == 0) & (c == 0))),
    }


def _slope(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """OLS slope of yy on xx along the last axis (one slope per row for 2-D inputs)."""
    xm = xx - xx.mean(axis=-1, keepdims=True)
    var = (xm * xm).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xm * (yy - yy.mean(axis=-1, keepdims=True))).sum(axis=-1) / var


def _bootstrap_slope_ci(x: np.ndarray, d: np.ndarray, n_boot: int, seed: int, name: str) -> list[float]:
    """95% percentile CI of the slope, resampling docs; chunks keep the index matrix under ~2M entries."""
    rng, n, reps = quantity_rng(seed, name), len(x), []
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        reps.append(_slope(x[idx], d[idx]))
        done += m
    lo, hi = np.nanpercentile(np.concatenate(reps), [2.5, 97.5])
    return [float(lo), float(hi)]


def ols_trend(x: np.ndarray, b: np.ndarray, c: np.ndarray, n_boot: int, seed: int, name: str) -> dict:
    """Linear trend of the per-doc delta d = c - b over a numeric field ``x`` (a linear probability model):
    slope with a bootstrap CI over docs (stream ``name``), the OLS t-test p-value, and each arm's slope."""
    from scipy.stats import linregress

    d = (c - b).astype(float)
    x = x.astype(float)
    fit = linregress(x, d) if np.ptp(d) > 0 else None
    ci = _bootstrap_slope_ci(x, d, n_boot, seed, name) if n_boot > 0 else None
    return {
        "n": len(x),
        "buckets": len(np.unique(x)),
        "slope": float(_slope(x, d)),
        "slope_ci95": ci,
        "p_value": float(fit.pvalue) if fit is not None else 1.0,
        "significant": excludes_zero(ci),
        "baseline_slope": float(_slope(x, b.astype(float))),
        "candidate_slope": float(_slope(x, c.astype(float))),
        "method": "OLS of (candidate - baseline) per-doc correctness on the field's value; bootstrap CI over docs",
    }
