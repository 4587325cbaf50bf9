"""Is the demo an instrument that can see what it measures? The acceptance checks of the embedded default,
each computed from the sample logs (nothing assumed), each with the number, its CI and its target:

- ``sensitivity``: the control arm's QA accuracy under a planted degradation (the demo's:
  ``encoder_scramble=p``, :mod:`dna_vlm.eval.degrade`) falls monotonically over the strengths, and the
  strongest costs >= 15 points with a CI that excludes 0: QA depends on the encoder, shown, not assumed.
- ``headroom``: the oracle input (the test questions without distractors) gains the control arm >= 10
  points (CI excluding 0); accuracy falls with the distractor density (the OLS slope of per-question
  correctness on density, bootstrap CI below 0); every category is answered above chance (Wilson CI above
  1 / number of options), so each input control tests what it names.
- ``power``: the minimal detectable effects (power 0.8, alpha 0.05, exact McNemar at the observed
  discordance: :func:`dna_vlm.eval.stats.mde_paired`) of the QA gain (<= 3 points) and the encoder gain
  (<= 4 points).
- ``calibration``: every planted encoder change gives an encoder gain whose CI excludes 0 and a
  carry-through with a CI (read from the Encoder section).

Paired deltas use :func:`dna_vlm.eval.stats.compare` (exact CI, McNemar; one rule for every verdict).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import numpy as np
from dna_vlm.eval.logs.samples import load_samples
from dna_vlm.eval.stats import compare, mde_paired, ols_trend, trend_verdicts, wilson_ci

__all__ = ["TARGETS", "instrument_checks"]

#: the acceptance targets (fractions of questions)
TARGETS = {
    "sensitivity_drop": 0.15,
    "oracle_gain": 0.10,
    "qa_mde": 0.03,
    "encoder_mde": 0.04,
}


def _correct(path: str) -> dict[str, tuple[int, dict]]:
    return {r.id: (int(r.correct), r.fields) for r in load_samples(path).records.values()}


def _paired(base: dict, other: dict) -> tuple[np.ndarray, np.ndarray]:
    ids = sorted(set(base) & set(other))
    return np.array([base[i][0] for i in ids]), np.array([other[i][0] for i in ids])


def sensitivity(control: str, degraded: dict[float, str], degradation: str = "encoder_scramble") -> dict:
    """QA accuracy of the control arm against the strength p of the planted ``degradation`` (p = 0: its own
    run), each strength paired with p = 0 (exact CI, McNemar; the strengths are one family)."""
    base = _correct(control)
    rows = [{"strength": 0.0, "acc": float(np.mean([v[0] for v in base.values()])), "n": len(base)}]
    for p in sorted(degraded):
        b, c = _paired(base, _correct(degraded[p]))
        res = compare(b, c, family="sensitivity", family_size=len(degraded))
        rows.append({"strength": p, "acc": res["candidate_acc"], "n": res["n"], "vs_0": res})
    for r in rows:
        k = round(r["acc"] * r["n"])
        r["ci95"] = wilson_ci(k, r["n"])
    accs = [r["acc"] for r in rows]
    strongest = rows[-1]["vs_0"] if len(rows) > 1 else None
    monotone = all(b <= a for a, b in pairwise(accs))
    drop_ok = bool(
        strongest is not None
        and -strongest["delta"] >= TARGETS["sensitivity_drop"]
        and strongest["delta_ci95"][1] < 0
    )
    return {"degradation": degradation, "curve": rows, "monotone": monotone,
            "strongest_delta": None if strongest is None else strongest["delta"],
            "strongest_delta_ci95": None if strongest is None else strongest["delta_ci95"],
            "ok": bool(monotone and drop_ok and len(degraded) >= 3)}  # fmt: skip


def headroom(control: str, oracle: str, chance: dict[str, float], n_boot: int, seed: int) -> dict:
    """Oracle gain of the control arm, its accuracy by density (with the OLS trend) and by category."""
    base, orc = _correct(control), _correct(oracle)
    b, c = _paired(base, orc)
    gain = compare(b, c)
    ok_gain = gain["delta"] >= TARGETS["oracle_gain"] and gain["delta_ci95"][0] > 0
    dens = np.array([float(f.get("density")) for _, f in base.values()])
    corr = np.array([k for k, _ in base.values()])
    trend = ols_trend(dens, np.zeros_like(corr), corr, n_boot, seed, "instrument:density")
    trends = {"density": trend}
    trend_verdicts(trends, family="instrument")
    trend.pop("_reps", None)
    by_density = _groups(base, "density")
    by_cat = _groups(base, "category")
    for cat, g in by_cat.items():
        g["chance"] = chance.get(cat)
        g["above_chance"] = g["chance"] is not None and g["ci95"][0] > g["chance"]
    return {"oracle_gain": gain, "oracle_ok": bool(ok_gain), "by_density": by_density,
            "density_trend": trend, "density_ok": bool(trend.get("slope_ci") and trend["slope_ci"][1] < 0),
            "by_category": by_cat, "categories_ok": all(g["above_chance"] for g in by_cat.values())}  # fmt: skip


def _groups(recs: dict, field: str) -> dict:
    groups: dict = defaultdict(list)
    for k, f in recs.values():
        groups[str(f.get(field))].append(k)
    out = {}
    for v in sorted(groups, key=lambda s: (len(s), s)):
        ks = groups[v]
        out[v] = {"n": len(ks), "acc": sum(ks) / len(ks), "ci95": wilson_ci(sum(ks), len(ks))}
    return out


def power(section: dict) -> dict:
    """The MDEs of the QA gain and the encoder gain (from the Encoder section's comparisons)."""
    o = section["overall"]
    qa_mde, enc_mde = (_mde(o.get(k)) for k in ("qa_gain", "encoder_gain"))
    return {"qa_gain_mde": qa_mde, "encoder_gain_mde": enc_mde,
            "qa_ok": qa_mde is not None and qa_mde <= TARGETS["qa_mde"],
            "encoder_ok": enc_mde is not None and enc_mde <= TARGETS["encoder_mde"]}  # fmt: skip


def calibration_check(cal: dict | None) -> dict:
    """Every planted change's encoder gain significant (by the verdict rule) with a carry-through CI, and at
    least two sizes of the same sign."""
    if not cal or not cal.get("points"):
        return {"ok": False, "why": "no planted changes"}
    pts = cal["points"]
    signif = {k: bool(p["encoder_gain"]["significant"]) for k, p in pts.items()}
    has_ci = {k: p["carry_through"]["ci"] is not None for k, p in pts.items()}
    neg = sum(1 for p in pts.values() if p["encoder_gain"]["significant"] and p["encoder_gain"]["delta"] < 0)
    pos = sum(1 for p in pts.values() if p["encoder_gain"]["significant"] and p["encoder_gain"]["delta"] > 0)
    ok = all(signif.values()) and all(has_ci.values()) and max(neg, pos) >= 2
    return {"ok": bool(ok), "encoder_gain_significant": signif, "carry_through_ci": has_ci,
            "sizes_negative": neg, "sizes_positive": pos, "slope": cal.get("slope"),
            "slope_ci": cal.get("slope_ci")}  # fmt: skip


def _mde(res: dict | None) -> float | None:
    """The MDE at alpha 0.05 of a paired comparison, at its observed discordance (also when significant)."""
    if not res:
        return None
    return mde_paired(res["n"], res["fixed"] + res["broken"])


def instrument_checks(
    control: str, oracle: str, degraded: dict[float, str], section: dict, chance: dict[str, float],
    calibration: dict | None, n_boot: int = 2000, seed: int = 0, degradation: str = "encoder_scramble",
) -> dict:  # fmt: skip
    """Every check with its numbers and an ``ok`` flag; ``all_ok`` is their conjunction. ``degraded``: the
    control arm's runs under the planted ``degradation`` at each strength."""
    checks = {
        "sensitivity": sensitivity(control, degraded, degradation),
        "headroom": headroom(control, oracle, chance, n_boot, seed),
        "power": power(section),
    }
    checks["calibration"] = calibration_check(calibration)
    cal_ok = checks["calibration"]["ok"]
    flags = [
        checks["sensitivity"]["ok"], checks["headroom"]["oracle_ok"], checks["headroom"]["density_ok"],
        checks["headroom"]["categories_ok"], checks["power"]["qa_ok"], checks["power"]["encoder_ok"], cal_ok,
    ]  # fmt: skip
    checks["all_ok"] = all(flags)
    checks["targets"] = dict(TARGETS)
    return checks
