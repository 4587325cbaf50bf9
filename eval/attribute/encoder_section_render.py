"""Markdown and the plots of the Encoder section (computed by :mod:`dna_vlm.eval.attribute.encoder_section`):
the noise curve and the carry-through calibration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from dna_vlm.eval.report_files import pyplot, save_png

__all__ = ["encoder_markdown", "encoder_paragraph", "plot_calibration", "plot_noise_curve"]

_PARTS = {
    "distractor_effect": "distractor effect (net): acc(QA, oracle input) - acc(QA, test input)",
    "readout_gap": "readout gap (net): acc(probe) - acc(QA), same input",
    "not_linearly_readable": "not linearly readable after pooling: 1 - acc(probe)",
    "error_left_on_oracle": "error left on the oracle input: 1 - acc(QA, oracle input)",
}


def _ordered_parts(dec: dict) -> list[tuple[str, dict]]:
    """The decomposition's terms in :data:`_PARTS` order (a section read back from a stage file has its keys
    sorted: a resumed run must print the same report as a fresh one)."""
    rank = {k: i for i, k in enumerate(_PARTS)}
    return sorted(dec["parts"].items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _spct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _ci(ci, signed: bool = False) -> str:
    if not ci:
        return "[-]"
    f = _spct if signed else _pct
    return f"[{f(ci[0])}, {f(ci[1])}]"


def _ratio(ct: dict | None) -> str:
    if not ct:
        return "-"
    if not ct["defined"]:
        return "undefined"
    ci = ct["ci"]
    return f"{ct['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _mde(g: dict) -> str:
    m = g.get("mde")
    return "mde: none (too few questions)" if m is None else f"mde ±{100 * m:.1f}"


def _gain_text(g: dict | None) -> str:
    """A paired gain as printed everywhere: delta, its CI at the family's level, p (adjusted when the family
    has several rows), the verdict mark, the few-discordant flag and the mde of a null effect."""
    if not g:
        return "-"
    p = f"p={g['mcnemar_p']:.2g}" + (f", Bonferroni p={g['p_adjusted']:.2g}" if g["family_size"] > 1 else "")
    flag = " †" if g.get("ci_warning") else ""
    tail = " *" if g["significant"] else f" ({_mde(g)})"
    return f"{_spct(g['delta'])} {_ci(g['delta_ci'], True)}, {p}{tail}{flag}"


def _level(g: dict) -> str:
    return f"{100 * g['ci_level']:.4g}%"


def encoder_paragraph(section: dict) -> str:
    """One paragraph with the answer: encoder gain, QA gain, carry-through and the decomposition of the
    baseline's error rate into net terms - each with its CI, verdict and (when null) its mde."""
    o = section["overall"]
    qa, enc, ct = o["qa_gain"], o.get("encoder_gain"), o.get("carry_through")
    parts = [f"QA gain (DnA - softmax) {_gain_text(qa)} ({qa['fixed']} fixed / {qa['broken']} broken)"]
    if enc:
        parts.insert(0, f"Encoder gain (probe accuracy, DnA - softmax) {_gain_text(enc)}")
        parts.append(
            f"carry-through {_ratio(ct)}"
            if ct and ct["defined"]
            else "carry-through undefined (the encoder gain is not significant: there is no encoder gain to carry)"
        )
    dec = o.get("decomposition") or {}
    if dec:
        terms = []
        for k, p in _ordered_parts(dec):
            name = _PARTS.get(k, k).split(":")[0]
            terms.append(
                f"{name} {_gain_text(p)}" if "delta" in p else f"{name} {_pct(p['rate'])}% {_ci(p['ci95'])}"
            )
        parts.append(f"the baseline's error rate {_pct(dec['error_rate'])}% = " + " + ".join(terms))
    cal = section.get("calibration")
    if cal:
        parts.append(cal["sentence"].rstrip("."))
    return (
        "; ".join(parts)
        + f" (n = {section['n']} questions; * = significant by the verdict rule; CIs exact unless said)."
    )


def _decomp_rows(dec: dict) -> list[str]:
    lines = [
        f"**Decomposition of the baseline's error rate** ({_pct(dec['error_rate'])}% of {dec['n']} questions; "
        f"net terms on the {dec['input']}, summing to it: {_pct(dec['sum_check'])}%)", "",
        "| term (what it measures) | value, points [CI], p | assumption |", "|---|---:|---|",
    ]  # fmt: skip
    why = {
        "distractor_effect": "the oracle input differs only by the distractors",
        "readout_gap": "two read-outs with different chance levels; not located in the LLM",
        "not_linearly_readable": "upper bound: a non-linear, per-token read-out may do better",
        "error_left_on_oracle": "",
    }
    for k, p in _ordered_parts(dec):
        val = _gain_text(p) if "delta" in p else f"{_pct(p['rate'])} {_ci(p['ci95'])} (Wilson)"
        lines.append(f"| {_PARTS.get(k, k)} | {val} | {why.get(k, '')} |")
    return [*lines, ""]


def _group_table(field: str, groups: dict) -> list[str]:
    first = next(iter(groups.values()))
    lv = _level(first["qa_gain"])
    lines = [
        f"**By {field}** (each column is one family over the {len(groups)} groups: Bonferroni, CIs at {lv})", "",
        f"| {field} | n | encoder gain [CI], p | QA gain [CI], p | carry-through | oracle headroom [CI], p |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for v, g in groups.items():
        head = g.get("oracle", {}).get("headroom")
        lines.append(
            f"| {v} | {g['n']} | {_gain_text(g.get('encoder_gain'))} | {_gain_text(g['qa_gain'])} | "
            f"{_ratio(g.get('carry_through'))} | {_gain_text(head)} |"
        )
    return [*lines, ""]


def _controls_table(section: dict) -> list[str]:
    if not section["controls"]:
        return []
    first = next(iter(section["controls"].values()))
    lines = [
        f"**Input controls** (baseline model; delta against its full-video run, paired; the {len(section['controls'])} "
        f"controls are one family, CIs at {_level(first)})", "",
        "| input | accuracy % [95% CI] | delta vs full video, points [CI], p |", "|---|---:|---:|",
    ]  # fmt: skip
    full = section["overall"]["qa_gain"]
    lines.append(f"| full video | {_pct(full['baseline_acc'])} {_ci(full['baseline_ci95'])} | |")
    for name, g in section["controls"].items():
        lines.append(f"| {name} | {_pct(g['candidate_acc'])} {_ci(g['candidate_ci95'])} | {_gain_text(g)} |")
    return [*lines, ""]


def _noise_table(section: dict, rel) -> list[str]:
    curve = section.get("noise_curve") or []
    if not curve:
        return []
    lines = ["**Noise curve** (baseline model, Gaussian noise on the visual tokens; the noise levels are one "
             "family)", "", "| sigma (x token RMS) | accuracy % [95% CI] | delta vs sigma 0, points [CI], p |",
             "|---:|---:|---:|"]  # fmt: skip
    for p in curve:
        lines.append(f"| {p['sigma']:g} | {_pct(p['acc'])} {_ci(p['ci95'])} | {_gain_text(p.get('vs_0'))} |")
    png = section.get("noise_curve_png")
    return [*lines, "", *([f"![noise curve]({rel(png)})", ""] if png else [])]


def _calibration_table(section: dict, rel) -> list[str]:
    cal = section.get("calibration")
    if not cal:
        return []
    lines = [
        "**Calibrated carry-through** (planted encoder changes against the baseline; each gain column is one "
        "family over the planted changes)", "",
        "| planted change | encoder gain, points [CI], p | QA gain, points [CI], p | carry-through [CI] |",
        "|---|---:|---:|---:|",
    ]  # fmt: skip
    for lab, p in cal["points"].items():
        lines.append(
            f"| {lab} | {_gain_text(p['encoder_gain'])} | {_gain_text(p['qa_gain'])} | {_ratio(p['carry_through'])} |"
        )
    d, ci = cal["dna"], cal["slope_ci"]
    slope = f"{cal['slope']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    lines += [
        f"| **DnA** (read against the line) | {_spct(d['encoder_gain'])} | observed {_spct(d['qa_gain_observed'])} "
        f"{_ci(d['qa_gain_observed_ci'], True)}; predicted {_spct(d['qa_gain_predicted'])} "
        f"{_ci(d['qa_gain_predicted_ci'], True)} | residual {_spct(d['residual'])} {_ci(d['residual_ci'], True)} |",
        "",
        f"Calibration slope (QA points per encoder point, through the origin, bootstrap 95% CI, one draw over "
        f"docs for every arm): {slope}. {cal['sentence']}",
        "",
    ]
    png = section.get("calibration_png")
    return [*lines, *([f"![calibration]({rel(png)})", ""] if png else [])]


def encoder_markdown(section: dict, rel=None) -> list[str]:
    """The section as markdown lines: the answer paragraph, the overall table, the error decomposition,
    per-group tables, controls, the noise curve, the calibration and the definitions. ``rel(path) -> str``
    makes a plot's link relative to the report (default: the path's file name, for a plot next to it)."""
    rel = rel or (lambda p: Path(p).name)
    o = section["overall"]
    lines = ["## Encoder (is the change at the encoder, and does it reach the answers?)", "",
             encoder_paragraph(section), ""]  # fmt: skip
    lines += [
        "| quantity | value, points [CI], p |", "|---|---:|",
        f"| QA gain (DnA - softmax) | {_gain_text(o['qa_gain'])} |",
    ]  # fmt: skip
    if "encoder_gain" in o:
        e = o["encoder_gain"]
        lines.append(
            f"| encoder gain (probe, DnA - softmax; probe acc {_pct(e['baseline_acc'])} -> {_pct(e['candidate_acc'])}) "
            f"| {_gain_text(e)} |"
        )
        lines.append(f"| carry-through (QA gain / encoder gain) | {_ratio(o['carry_through'])} |")
    if "oracle" in o:
        h, sc = o["oracle"]["headroom"], o["oracle"]["share_closed"]
        lines.append(
            f"| oracle headroom (oracle - baseline; oracle acc {_pct(h['candidate_acc'])}) | {_gain_text(h)} |"
        )
        lines.append(f"| share of the headroom DnA closes | {_ratio(sc)} |")
    lines += ["", "`*` = significant by the verdict rule; `†` = fewer than 10 discordant questions; a null "
              "effect shows its minimal detectable effect (mde, points, power 0.8).", ""]  # fmt: skip
    if o.get("decomposition"):
        lines += _decomp_rows(o["decomposition"])
    for field, groups in section["by_group"].items():
        lines += _group_table(field, groups)
    lines += _controls_table(section) + _noise_table(section, rel) + _calibration_table(section, rel)
    if section.get("verdict_rule"):
        lines += [f"Verdict rule: {section['verdict_rule']}", ""]
    lines += ["**Definitions**", "", "```", section["definitions"].rstrip(), "```", ""]
    return lines


def plot_noise_curve(curve: list[dict], out_dir: Path) -> Path:
    """``out_dir/encoder_noise_curve.png``: QA accuracy against sigma with Wilson 95% error bars."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    s = np.array([p["sigma"] for p in curve])
    acc = np.array([p["acc"] for p in curve])
    lo = np.array([p["ci95"][0] for p in curve])
    hi = np.array([p["ci95"][1] for p in curve])
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.errorbar(s, 100 * acc, yerr=100 * np.stack([acc - lo, hi - acc]), marker="o", capsize=4)
    ax.set_xlabel("encoder noise sigma (x RMS of the visual tokens)")
    ax.set_ylabel("QA accuracy % (95% Wilson CI)")
    ax.set_ylim(0, 100)
    ax.set_title("QA accuracy vs encoder feature quality", fontsize=9)
    path = save_png(fig, out_dir / "encoder_noise_curve.png", dpi=110)
    plt.close(fig)
    return path


def _bars(v: float, ci) -> list[list[float]]:
    """Asymmetric error bar lengths (points) of value ``v`` with CI ``ci`` ([[0], [0]] without a CI)."""
    if not ci:
        return [[0.0], [0.0]]
    return [[100 * max(0.0, v - ci[0])], [100 * max(0.0, ci[1] - v)]]


def plot_calibration(cal: dict, out_dir: Path) -> Path:
    """``out_dir/encoder_calibration.png``: planted points (encoder gain x, QA gain y, both CIs as error
    bars), the line through the origin with its band, and the DnA point highlighted."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [0.0]
    for lab, p in cal["points"].items():
        e, q = p["encoder_gain"], p["qa_gain"]
        ax.errorbar(100 * e["delta"], 100 * q["delta"], xerr=_bars(e["delta"], e["delta_ci"]),
                    yerr=_bars(q["delta"], q["delta_ci"]), fmt="o", color="#1f77b4", capsize=3)  # fmt: skip
        ax.annotate(
            lab, (100 * e["delta"], 100 * q["delta"]), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
        xs.append(e["delta"])
    d = cal["dna"]
    xs.append(d["encoder_gain"])
    grid = np.linspace(min(xs) - 0.02, max(xs) + 0.02, 50)
    if np.isfinite(cal["slope"]):
        ax.plot(100 * grid, 100 * cal["slope"] * grid, color="k", lw=1, label=f"slope {cal['slope']:.2f}")
        if cal["slope_ci"]:
            lo, hi = cal["slope_ci"]
            ax.fill_between(100 * grid, 100 * np.minimum(lo * grid, hi * grid), 100 * np.maximum(lo * grid, hi * grid),
                            color="k", alpha=0.12, label="95% band (slope CI)")  # fmt: skip
    ax.errorbar(100 * d["encoder_gain"], 100 * d["qa_gain_observed"],
                xerr=_bars(d["encoder_gain"], d["encoder_gain_ci"]),
                yerr=_bars(d["qa_gain_observed"], d["qa_gain_observed_ci"]), fmt="*", ms=12, color="#d62728",
                capsize=3, label="DnA (observed)")  # fmt: skip
    ax.plot([0], [0], "s", color="gray", ms=5, label="origin")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel("encoder gain (probe accuracy, points)")
    ax.set_ylabel("QA gain (points)")
    ax.set_title("Calibrated carry-through (planted encoder changes)", fontsize=9)
    ax.legend(fontsize=7)
    path = save_png(fig, out_dir / "encoder_calibration.png", dpi=110)
    plt.close(fig)
    return path
