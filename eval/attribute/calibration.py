"""Calibrated carry-through: how many QA points an encoder change carries, measured on planted encoder changes
of known sign and size, and the DnA arm read against that line (the Encoder section's ``calibration``).

Every planted change j has a probe arm (its encoder-level correctness per question) and a QA log, both paired
on the baseline's questions. Its encoder gain e_j and QA gain q_j against the baseline are paired comparisons
(:func:`~dna_vlm.eval.stats.compare`; each column one family over the planted changes). The calibration line
goes through the origin (no encoder change, no QA change): slope = sum(e_j q_j) / sum(e_j^2). One percentile
bootstrap over docs -- every arm resampled with the same doc indices, one stream -- gives the CIs of the
slope, of each planted carry-through q_j / e_j, of DnA's predicted QA gain slope * e_DnA and of its residual
(observed - predicted).
"""

from __future__ import annotations

import numpy as np
from dna_vlm.eval.stats import (
    ALPHA,
    apply_family,
    bootstrap_ci,
    compare,
    excludes_zero,
    family_alpha,
    quantity_rng,
)

__all__ = ["calibrate", "calibration_sentence"]

_KEEP = ("n", "baseline_acc", "candidate_acc", "delta", "delta_ci95", "delta_ci", "ci_level", "mcnemar_p",
         "p_adjusted", "significant", "family", "family_size", "mde", "fixed", "broken", "ci_warning")  # fmt: skip


def _row(r: dict) -> dict:
    return {k: r[k] for k in _KEEP}


def _joint_means(cols: np.ndarray, n_boot: int, seed: int, name: str) -> np.ndarray:
    """``(n_boot, C)`` column means of ``cols`` ``(n, C)`` over bootstrap resamples of its rows (docs): one
    stream, the same doc indices for every column (multinomial doc counts; chunks of <= ~2M counts)."""
    rng, n = quantity_rng(seed, name), len(cols)
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    out, done = [], 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=m)
        out.append(counts @ cols / n)
        done += m
    return np.concatenate(out)


def _slope(e: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Least-squares slope through the origin of q on e along the last axis (NaN when every e is 0)."""
    den = (e * e).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (e * q).sum(axis=-1) / np.where(den > 0, den, 1), np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)


def calibrate(core: dict, planted: dict, n_boot: int, seed: int, name: str = "calibration") -> dict:
    """``core``: 0/1 arrays over the compared docs (``b``, ``c``: baseline / DnA QA; ``pb``, ``pc``: their
    probes); ``planted``: ``{label: (qa 0/1, probe 0/1)}``. Returns ``{"points": {label: {encoder_gain,
    qa_gain, carry_through}}, "slope", "slope_ci", "dna": {...}, "sentence", ...}`` (ENCODER_DEFINITIONS)."""
    b, pb = core["b"], core["pb"]
    labels = list(planted)
    enc = {lab: _row(compare(pb, planted[lab][1])) for lab in labels}
    qa = {lab: _row(compare(b, planted[lab][0])) for lab in labels}
    apply_family(enc, "planted: encoder gain")
    apply_family(qa, "planted: QA gain")
    e = np.array([enc[lab]["delta"] for lab in labels])
    q = np.array([qa[lab]["delta"] for lab in labels])
    e_dna, q_dna = float(core["pc"].mean() - pb.mean()), float(core["c"].mean() - b.mean())
    slope = float(_slope(e, q))
    # per-doc columns: each planted change's (encoder, QA) deltas, then DnA's
    cols = [x.astype(float) for lab in labels for x in (planted[lab][1] - pb, planted[lab][0] - b)]
    cols += [(core["pc"] - pb).astype(float), (core["c"] - b).astype(float)]
    reps = _joint_means(np.stack(cols, axis=1), n_boot, seed, name) if n_boot > 0 else None
    ci = _cis(reps, len(labels)) if reps is not None else {}
    k_alpha = family_alpha(len(labels))
    points = {}
    for j, lab in enumerate(labels):
        defined = enc[lab]["significant"]
        points[lab] = {
            "encoder_gain": enc[lab],
            "qa_gain": qa[lab],
            "carry_through": {
                "ratio": float(q[j] / e[j]) if defined else None,
                "ci": ci.get("carry", {}).get(j) if defined else None,
                "ci_level": 1 - k_alpha,
                "defined": bool(defined),
                "why": None
                if defined
                else "undefined: this planted change's encoder gain is not significant",
            },
        }
    pred = slope * e_dna
    out = {
        "points": points,
        "slope": slope,
        "slope_ci": ci.get("slope"),
        "slope_significant": excludes_zero(ci.get("slope")),
        "ci_level": 1 - ALPHA,
        "dna": {
            "encoder_gain": e_dna,
            "encoder_gain_ci": compare(pb, core["pc"])["delta_ci"],
            "qa_gain_observed": q_dna,
            "qa_gain_observed_ci": _observed_ci(core),
            "qa_gain_predicted": pred,
            "qa_gain_predicted_ci": ci.get("pred"),
            "residual": q_dna - pred,
            "residual_ci": ci.get("resid"),
            "consistent": None if ci.get("resid") is None else not excludes_zero(ci["resid"]),
        },
        "bootstrap": {"replicates": n_boot, "seed": seed, "stream": name},
    }
    out["sentence"] = calibration_sentence(out)
    return out


def _observed_ci(core: dict) -> list[float] | None:
    """DnA's observed QA gain's exact 95% CI (the headline's)."""
    return compare(core["b"], core["c"])["delta_ci"]


def _cis(reps: np.ndarray, k: int) -> dict:
    """Every CI of the calibration from the one draw ``reps`` ``(B, 2k + 2)``."""
    e, q = reps[:, 0 : 2 * k : 2], reps[:, 1 : 2 * k : 2]
    e_d, q_d = reps[:, 2 * k], reps[:, 2 * k + 1]
    s = _slope(e, q)
    return {
        "slope": bootstrap_ci(s),
        "pred": bootstrap_ci(s * e_d),
        "resid": bootstrap_ci(q_d - s * e_d),
        "carry": {j: bootstrap_ci(_ratio(q[:, j], e[:, j]), family_alpha(k)) for j in range(k)},
    }


def calibration_sentence(cal: dict, ref: float = 0.10) -> str:
    """ "An encoder change of x points carries y QA points here", at x = ``ref``, and DnA read against it."""
    s, ci, d = cal["slope"], cal["slope_ci"], cal["dna"]

    def pts(x):
        return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.1f}"

    def rng(c):
        return f" [{pts(c[0])}, {pts(c[1])}]" if c else ""

    if not np.isfinite(s):
        return "No calibration: every planted change has an encoder gain of 0."
    carry = rng([ref * ci[0], ref * ci[1]] if ci else None)
    text = (f"An encoder change of {100 * ref:.0f} points carries {pts(ref * s)}{carry} QA points here "
            f"(slope {s:.2f} through the origin over {len(cal['points'])} planted changes). ")  # fmt: skip
    verdict = ("" if d["consistent"] is None else "consistent with the calibration (the residual's CI includes 0)"
               if d["consistent"] else "not what the calibration predicts (the residual's CI excludes 0)")  # fmt: skip
    return text + (
        f"DnA's encoder gain of {pts(d['encoder_gain'])} points predicts a QA gain of {pts(d['qa_gain_predicted'])}"
        f"{rng(d['qa_gain_predicted_ci'])} points; observed {pts(d['qa_gain_observed'])}"
        f"{rng(d['qa_gain_observed_ci'])}; residual {pts(d['residual'])}{rng(d['residual_ci'])}"
        + (f": {verdict}." if verdict else ".")
    )
