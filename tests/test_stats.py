"""eval/stats.py: the exact CI agrees with the exact test in every cell, families, and the minimal detectable
effect checked against a simulation of the paired design and against a brute-force enumeration."""

import math
from itertools import product

import numpy as np
import pytest
from dna_vlm.eval.stats import (
    ALPHA,
    apply_family,
    bootstrap_ci,
    clopper_pearson,
    compare,
    family_alpha,
    mcnemar_exact,
    mde_paired,
    paired_exact_ci,
)
from scipy.stats import binomtest, norm


def _cells(n):
    """Every (fixed, broken) cell with fixed + broken <= n, as two arrays."""
    f, b = np.array([(f, m - f) for m in range(n + 1) for f in range(m + 1)]).T
    return f, b


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 12])
def test_exact_ci_excludes_zero_iff_the_adjusted_test_rejects_in_every_cell(k):
    """For all (fixed, broken) with up to 240 discordant docs of n = 240: Bonferroni p < 0.05 exactly when
    the printed CI at 1 - 0.05/k excludes 0 (the CI inverts the test: no cell where they disagree)."""
    f, b = _cells(240)
    p = mcnemar_exact(f, b)
    ci = paired_exact_ci(f, b, 240, family_alpha(k))
    significant = np.minimum(1.0, k * p) < ALPHA
    excludes = (ci[0] > 0) | (ci[1] < 0)
    bad = np.flatnonzero(significant != excludes)
    assert bad.size == 0, [(int(f[i]), int(b[i]), float(p[i]), ci[:, i].tolist()) for i in bad[:5]]
    assert significant.any() and (~significant).any()
    assert np.all((ci[0] <= (f - b) / 240 + 1e-12) & ((f - b) / 240 <= ci[1] + 1e-12))  # holds the estimate


def test_mcnemar_and_clopper_pearson_match_scipy():
    for f, b in [(0, 4), (4, 0), (12, 4), (3, 9), (50, 30), (7, 7), (1, 0), (0, 17), (120, 100)]:
        assert mcnemar_exact(f, b) == pytest.approx(binomtest(b, f + b, 0.5).pvalue, rel=1e-12)
        ci = binomtest(f, f + b).proportion_ci(0.95, method="exact")
        assert clopper_pearson(f, f + b) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert mcnemar_exact(0, 0) == 1.0
    # the cells: 0 fixed / 4 broken and 4 / 0 (p = 0.125) are not significant, and their CI says so
    for f, b in [(0, 4), (4, 0), (12, 4)]:
        lo, hi = paired_exact_ci(f, b, 240)
        assert lo < 0 < hi


def test_compare_and_families_print_one_verdict():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, 240)
    c = b.copy()
    c[:14] = 1 - c[:14]
    rows = {str(i): compare(b, np.where(np.arange(240) < 20 + 5 * i, 1, c)) for i in range(4)}
    apply_family(rows, "t")
    for r in rows.values():
        assert r["family_size"] == 4 and r["p_adjusted"] == pytest.approx(min(1.0, 4 * r["mcnemar_p"]))
        assert r["significant"] == (r["delta_ci"][0] > 0 or r["delta_ci"][1] < 0) == (r["p_adjusted"] < 0.05)
        assert (r["mde"] is None) == r["significant"]
    none = compare(b, b)
    assert "no discordant questions" in none["ci_warning"] and none["delta_ci"][0] < 0 < none["delta_ci"][1]
    assert none["mde"] == pytest.approx(mde_paired(240, 0))


def _simulated_power(n, discordant, delta, alpha, sims, seed):
    """Rejection rate of scipy's exact binomial test over ``sims`` simulated paired data sets: each doc is
    fixed / broken / concordant with probabilities (psi + delta)/2, (psi - delta)/2, 1 - psi, where psi =
    max(discordant/n, delta) (the design mde_paired assumes)."""
    psi = max(discordant / n, delta)
    counts = np.random.default_rng(seed).multinomial(
        n, [(psi + delta) / 2, (psi - delta) / 2, 1 - psi], size=sims
    )
    pvals = [binomtest(int(bk), int(fk + bk), 0.5).pvalue if fk + bk else 1.0 for fk, bk, _ in counts]
    return float(np.mean(np.array(pvals) < alpha))


@pytest.mark.parametrize("n,discordant,alpha", [(240, 20, 0.05), (240, 0, 0.05), (300, 60, 0.05 / 3)])
def test_mde_has_power_080_in_a_simulation_of_the_paired_design(n, discordant, alpha):
    """2000 simulated experiments at the returned effect: McNemar's exact test (scipy) rejects ~80% of the
    time (within 0.05; the simulation's own standard error is ~0.009)."""
    mde = mde_paired(n, discordant, alpha)
    assert 0 < mde < 1
    assert _simulated_power(n, discordant, mde, alpha, 2000, 1) == pytest.approx(0.8, abs=0.05)
    # and half the effect is clearly underpowered
    assert _simulated_power(n, discordant, mde / 2, alpha, 500, 2) < 0.6


def test_mde_against_brute_force_enumeration_and_the_normal_approximation():
    """n = 12: the power of the returned effect by enumerating every (fixed, broken, concordant) outcome
    with its multinomial probability and scipy's binomtest; n = 2000: Connor's (1987) normal-approximation
    sample size formula for McNemar's test gives about the same effect."""
    n, disc = 12, 6
    mde = mde_paired(n, disc)
    psi = max(disc / n, mde)
    pf, pb = (psi + mde) / 2, (psi - mde) / 2
    power = 0.0
    for f, b in product(range(n + 1), repeat=2):
        if f + b > n:
            continue
        prob = math.factorial(n) / (math.factorial(f) * math.factorial(b) * math.factorial(n - f - b))
        prob *= pf**f * pb**b * (1 - psi) ** (n - f - b)
        if f + b and binomtest(b, f + b, 0.5).pvalue < 0.05:
            power += prob
    assert power == pytest.approx(0.8, abs=1e-6)
    # Connor: n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2 -> solve for d at n = 2000, psi = 0.2
    n, psi = 2000, 0.2
    za, zb = norm.ppf(0.975), norm.ppf(0.8)
    d = 0.05
    for _ in range(100):
        d = (za * math.sqrt(psi) + zb * math.sqrt(psi - d * d)) / math.sqrt(n)
    assert mde_paired(n, int(psi * n)) == pytest.approx(d, rel=0.03)
    assert mde_paired(5, 0) is None  # 5 docs: not even 5 of 5 fixed reaches p < 0.05


def test_bootstrap_ci_levels():
    reps = np.random.default_rng(0).normal(size=20000)
    assert bootstrap_ci(reps) == pytest.approx([-1.96, 1.96], abs=0.05)
    assert bootstrap_ci(reps, 0.01) == pytest.approx([-2.576, 2.576], abs=0.08)
    assert bootstrap_ci(np.array([np.nan])) is None
