"""The statistics of dna-vlm's reports, in one place (attribute, probe, demo).

Paired 0/1 correctness of two models on the same docs: Wilson intervals, the exact McNemar test
(``scipy.stats.binomtest``), the exact CI of the accuracy delta that inverts that same test
(:func:`paired_exact_ci`), the minimal detectable effect of the paired design (:func:`mde_paired`),
Bonferroni families (:func:`apply_family`), the whole paired comparison (:func:`compare`), a percentile
bootstrap for what has no exact test (:func:`bootstrap_ci`) and an OLS trend of the per-doc delta over a
numeric field. :data:`VERDICT_RULE` is the one rule every verdict of a report follows. Every random quantity
draws from its own stream (:func:`quantity_rng`) once, and that one draw is what every place prints.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ALPHA",
    "MIN_DISCORDANT",
    "VERDICT_RULE",
    "Z95",
    "apply_family",
    "bonferroni",
    "bootstrap_ci",
    "ci_warning",
    "clopper_pearson",
    "compare",
    "excludes_zero",
    "family_alpha",
    "mcnemar_exact",
    "mde_paired",
    "ols_trend",
    "paired_exact_ci",
    "quantity_rng",
    "trend_verdicts",
    "wilson_ci",
]

Z95 = 1.959963984540054
#: the significance level of every verdict (before the family's Bonferroni split)
ALPHA = 0.05
#: below this many discordant docs a comparison rests on a handful of questions: flagged in every table
MIN_DISCORDANT = 10
MDE_POWER = 0.8

VERDICT_RULE = (
    "One rule for every verdict: a paired 0/1 comparison is significant when its exact two-sided McNemar p "
    "(binomial test of the discordant questions at 1/2), Bonferroni-adjusted over the k comparisons of its "
    "table (its family: p_adjusted = min(1, k p)), is below 0.05. Its printed CI is the exact CI that inverts "
    "the same test at level 1 - 0.05/k (delta = m/n (2 pi - 1), pi in the Clopper-Pearson interval of "
    "fixed/m, m = fixed + broken discordant questions; conditional on m), so the CI excludes 0 exactly when "
    "the row is significant. A quantity with no exact test (a ratio, a slope) is significant when its "
    "percentile bootstrap CI at the same level excludes 0, and a ratio is defined only when its denominator "
    "is significant by this rule. Every effect that is not significant prints its minimal detectable effect "
    "(mde: the |delta| the exact test detects with power 0.8 at the row's level, given n and the observed "
    "discordance)."
)


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


def mcnemar_exact(fixed, broken):
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs at p = 0.5 (1 when none).

    2 P(X <= min(fixed, broken)), X ~ Bin(fixed + broken, 1/2), capped at 1: ``scipy.stats.binomtest``'s
    two-sided p at 1/2 (tested), without building a test object; arrays give an array (one p per cell)."""
    from scipy.stats import binom

    f, b = np.asarray(fixed), np.asarray(broken)
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(f, b), f + b, 0.5))
    return float(p) if p.ndim == 0 else p


def clopper_pearson(k, m, alpha: float = ALPHA):
    """Exact (Clopper-Pearson) 1 - alpha interval ``(lo, hi)`` of a binomial proportion, k successes in
    m > 0 trials (scalars, or arrays giving arrays)."""
    from scipy.stats import beta

    k, m = np.asarray(k, dtype=float), np.asarray(m, dtype=float)
    with np.errstate(invalid="ignore"):
        lo = np.where(k == 0, 0.0, beta.ppf(alpha / 2, np.maximum(k, 1), m - k + 1))
        hi = np.where(k == m, 1.0, beta.ppf(1 - alpha / 2, k + 1, np.maximum(m - k, 1)))
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)


def paired_exact_ci(fixed, broken, n: int, alpha: float = ALPHA):
    """1 - alpha CI ``[lo, hi]`` of delta = (fixed - broken) / n that inverts the exact McNemar test
    (arrays of fixed / broken give a ``(2, cells)`` array).

    Conditional on the m = fixed + broken discordant docs, delta = m/n (2 pi - 1) with pi = P(fixed |
    discordant); the Clopper-Pearson interval of pi excludes 1/2 exactly when the two-sided binomial test
    rejects at alpha (tested over every cell up to n = 240), so this CI excludes 0 exactly then. With no
    discordant doc (nothing to condition on) it is the unconditional bound |delta| <= P(discordant) <= the
    Clopper-Pearson upper bound of 0 discordant in n."""
    if n == 0:
        return [math.nan, math.nan]
    f, b = np.asarray(fixed), np.asarray(broken)
    m = f + b
    lo, hi = clopper_pearson(f, np.maximum(m, 1), alpha)
    u = 1.0 - (alpha / 2) ** (1.0 / n)
    lo_d = np.where(m == 0, -u, m / n * (2 * np.asarray(lo) - 1))
    hi_d = np.where(m == 0, u, m / n * (2 * np.asarray(hi) - 1))
    return [float(lo_d), float(hi_d)] if f.ndim == 0 else np.stack([lo_d, hi_d])


def _critical(ms: np.ndarray, alpha: float) -> np.ndarray:
    """Per number of discordant docs m: the largest count c with 2 P(X <= c) < alpha, X ~ Bin(m, 1/2), i.e.
    the exact test rejects when min(fixed, broken) <= c (-1: it cannot reject)."""
    from scipy.stats import binom

    c = binom.ppf(alpha / 2, ms, 0.5) - 1  # ppf: the smallest c with P(X <= c) >= alpha / 2
    c = np.where(binom.cdf(c + 1, ms, 0.5) < alpha / 2, c + 1, c)  # guard ppf's rounding both ways
    c = np.where((c >= 0) & (binom.cdf(c, ms, 0.5) >= alpha / 2), c - 1, c)
    return c.astype(int)


@functools.lru_cache(maxsize=64)
def _critical_upto(n: int, alpha: float) -> np.ndarray:
    """:func:`_critical` for m = 0..n (cached: every bisection step of :func:`mde_paired` reuses it)."""
    return _critical(np.arange(n + 1), alpha)


def _paired_power(n: int, psi: float, delta: float, alpha: float) -> float:
    """Power of the exact two-sided McNemar test at level alpha over n docs, each discordant with
    probability psi and fixed (rather than broken) given discordant with probability (1 + delta/psi) / 2."""
    from scipy.stats import binom

    if psi <= 0:
        return 0.0
    # the numbers of discordant docs with any weight (outside: < 1e-12 of the probability in all)
    lo, hi = (int(x) for x in binom.ppf([1e-13, 1 - 1e-13], n, psi))
    ms = np.arange(max(0, lo - 1), min(n, hi + 1) + 1)
    c = _critical_upto(n, alpha)[ms]
    q = min(1.0, max(0.0, (1 + delta / psi) / 2))
    reject = binom.cdf(c, ms, q) + binom.cdf(c, ms, 1 - q)  # few fixed, or few broken (disjoint: c < m/2)
    return float(np.sum(binom.pmf(ms, n, psi) * reject))


def mde_paired(n: int, discordant: int, alpha: float = ALPHA, power: float = MDE_POWER) -> float | None:
    """Minimal detectable effect of the paired design: the smallest |delta| (accuracy difference, a fraction)
    that the exact two-sided McNemar test at level ``alpha`` detects with probability ``power`` over ``n``
    docs, when docs are discordant at the observed rate ``discordant / n`` -- or at rate delta when that is
    larger (|delta| can never exceed the discordance). None when not even delta = 1 (every doc fixed) is
    detectable (n < 6 at alpha = 0.05). Power is computed exactly (binomial sums over the number of
    discordant docs), so :func:`mcnemar_exact` simulated at the returned effect rejects with ~``power``."""
    if n <= 0:
        return None
    rate = discordant / n

    def pw(d: float) -> float:
        return _paired_power(n, max(rate, d), d, alpha)

    if pw(1.0) < power:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(40):  # power rises with delta: bisect to ~1e-12
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pw(mid) >= power else (mid, hi)
    return hi


def bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values min(1, k p) over a family of k (same order as given)."""
    k = len(pvalues)
    return [min(1.0, k * p) for p in pvalues]


def family_alpha(k: int) -> float:
    """The per-comparison level of a family of ``k`` comparisons (Bonferroni)."""
    return ALPHA / max(1, k)


def ci_warning(discordant: int) -> str | None:
    """The flag of a comparison that rests on fewer than :data:`MIN_DISCORDANT` discordant docs."""
    if discordant == 0:
        return "no discordant questions: both arms agree on every one; see mde for what could be seen"
    if discordant >= MIN_DISCORDANT:
        return None
    return (
        f"only {discordant} discordant questions (< {MIN_DISCORDANT}): the comparison rests on them; the exact "
        "CI is conditional on them and wide, see mde"
    )


def _verdict(fixed: int, broken: int, n: int, p: float, family: str, k: int) -> dict:
    """The verdict fields of one paired comparison in a family of ``k`` (see :data:`VERDICT_RULE`)."""
    a = family_alpha(k)
    p_adj = min(1.0, k * p)
    sig = p_adj < ALPHA
    return {
        "family": family,
        "family_size": k,
        "p_adjusted": p_adj,
        "ci_level": 1 - a,
        "delta_ci": paired_exact_ci(fixed, broken, n, a) if n else None,
        "significant": bool(sig),
        "mde": None if sig else mde_paired(n, fixed + broken, a),
    }


def apply_family(rows: Sequence[dict] | dict, family: str) -> None:
    """Make ``rows`` (comparisons from :func:`compare`, or a dict of them) one family: each gets its
    Bonferroni ``p_adjusted``, ``significant``, ``delta_ci`` at level 1 - 0.05/k and ``mde`` at 0.05/k."""
    rows = list(rows.values()) if isinstance(rows, dict) else list(rows)
    for r in rows:
        r.update(_verdict(r["fixed"], r["broken"], r["n"], r["mcnemar_p"], family, len(rows)))


def excludes_zero(ci: list[float] | None) -> bool:
    """Whether a CI lies wholly on one side of 0 (False when there is none)."""
    return bool(ci is not None and (ci[0] > 0 or ci[1] < 0))


def compare(b: np.ndarray, c: np.ndarray, family: str = "single", family_size: int = 1) -> dict:
    """Paired comparison of baseline ``b`` and candidate ``c`` (0/1 per doc, same docs in the same order):
    accuracies with Wilson CIs, flips, the delta with its exact 95% CI (``delta_ci95``) and McNemar p, and
    the verdict fields of :data:`VERDICT_RULE` for a family of ``family_size`` (:func:`apply_family` resets
    them once a table's rows are known)."""
    n = len(b)
    kb, kc = int(b.sum()), int(c.sum())
    fixed = int(np.sum((b == 0) & (c == 1)))
    broken = int(np.sum((b == 1) & (c == 0)))
    p = mcnemar_exact(fixed, broken)
    return {
        "n": n,
        "baseline_correct": kb,
        "candidate_correct": kc,
        "baseline_acc": kb / n if n else math.nan,
        "candidate_acc": kc / n if n else math.nan,
        "baseline_ci95": wilson_ci(kb, n),
        "candidate_ci95": wilson_ci(kc, n),
        "delta": (kc - kb) / n if n else math.nan,
        "delta_ci95": paired_exact_ci(fixed, broken, n) if n else None,
        "ci_warning": ci_warning(fixed + broken),
        "mcnemar_p": p,
        **_verdict(fixed, broken, n, p, family, family_size),
        "fixed": fixed,
        "broken": broken,
        "both_right": int(np.sum((b == 1) & (c == 1))),
        "both_wrong": int(np.sum((b == 0) & (c == 0))),
    }


def quantity_rng(seed: int, name: str) -> np.random.Generator:
    """One independent stream per named quantity, so adding groups or arms never changes another CI."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


def bootstrap_ci(reps: np.ndarray, alpha: float = ALPHA) -> list[float] | None:
    """Percentile 1 - alpha interval of bootstrap replicates (NaN replicates dropped; None if none left)."""
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return None
    lo, hi = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def _slope(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """OLS slope of yy on xx along the last axis (one slope per row for 2-D inputs)."""
    xm = xx - xx.mean(axis=-1, keepdims=True)
    var = (xm * xm).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xm * (yy - yy.mean(axis=-1, keepdims=True))).sum(axis=-1) / var


def _bootstrap_slopes(x: np.ndarray, d: np.ndarray, n_boot: int, seed: int, name: str) -> np.ndarray:
    """Bootstrap replicates of the slope, resampling docs; chunks keep the index matrix under ~2M entries."""
    rng, n, reps = quantity_rng(seed, name), len(x), []
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        reps.append(_slope(x[idx], d[idx]))
        done += m
    return np.concatenate(reps)


def ols_trend(x: np.ndarray, b: np.ndarray, c: np.ndarray, n_boot: int, seed: int, name: str) -> dict:
    """Linear trend of the per-doc delta d = c - b over a numeric field ``x`` (a linear probability model):
    slope with its bootstrap replicates over docs (stream ``name``, drawn once: ``slope_reps`` is not in the
    JSON; :func:`trend_verdicts` sets the CI at the family's level), the OLS t-test p-value (approximate for
    0/1 data, informative only), and each arm's slope."""
    from scipy.stats import linregress

    d = (c - b).astype(float)
    x = x.astype(float)
    fit = linregress(x, d) if np.ptp(d) > 0 else None
    return {
        "n": len(x),
        "buckets": len(np.unique(x)),
        "slope": float(_slope(x, d)),
        "ols_p_value": float(fit.pvalue) if fit is not None else 1.0,
        "baseline_slope": float(_slope(x, b.astype(float))),
        "candidate_slope": float(_slope(x, c.astype(float))),
        "_reps": _bootstrap_slopes(x, d, n_boot, seed, name) if n_boot > 0 else None,
        "method": "OLS of (candidate - baseline) per-doc correctness on the field's value; bootstrap CI over docs",
    }


def trend_verdicts(trends: dict, family: str = "trends") -> None:
    """Make the trends one family: ``slope_ci`` = percentile CI of each one's replicates at 1 - 0.05/k,
    ``significant`` = it excludes 0 (no replicates: no CI, not significant)."""
    k = len(trends)
    for t in trends.values():
        reps = t.pop("_reps", None)
        ci = bootstrap_ci(reps, family_alpha(k)) if reps is not None else None
        t.update(family=family, family_size=k, ci_level=1 - family_alpha(k), slope_ci=ci,
                 significant=excludes_zero(ci))  # fmt: skip
