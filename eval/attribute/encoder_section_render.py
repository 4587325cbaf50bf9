"""Markdown and the noise-curve plot of the Encoder section (computed by :mod:`dna_vlm.eval.attribute.encoder_section`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from dna_vlm.eval.report_files import pyplot, save_png

__all__ = ["encoder_markdown", "encoder_paragraph", "plot_noise_curve"]

_PARTS = {
    "fixed_by_oracle": "fixed by the oracle input (distractors)",
    "encoder_has_it_llm_does_not": "encoder has it, LLM does not use it",
    "encoder_cannot_resolve": "encoder cannot resolve it (probe wrong on oracle input)",
    "not_fixed_by_oracle": "not fixed by the oracle input",
    "probe_right": "probe right (encoder has it)",
    "probe_wrong": "probe wrong",
}


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
    ci = ct["ci95"]
    return f"{ct['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _gain_text(g: dict | None) -> str:
    if not g:
        return "-"
    return f"{_spct(g['delta'])} {_ci(g['delta_ci95'], True)}, p={g['mcnemar_p']:.2g}"


def encoder_paragraph(section: dict) -> str:
    """One paragraph with the answer: encoder gain, QA gain, carry-through, the encoder's share of the
    baseline's errors - each with its 95% CI - in words a reader can act on."""
    o = section["overall"]
    qa, enc, ct = o["qa_gain"], o.get("encoder_gain"), o.get("carry_through")
    parts = [f"QA gain (DnA - softmax) {_spct(qa['delta'])} points {_ci(qa['delta_ci95'], True)}"]
    if qa.get("mcnemar_p") is not None:  # with few discordant questions the bootstrap CI is too narrow
        parts[0] += f" (McNemar p = {qa['mcnemar_p']:.2g}, {qa['fixed']} fixed / {qa['broken']} broken)"
    if enc:
        parts.insert(0, f"Encoder gain (probe accuracy, DnA - softmax) {_spct(enc['delta'])} points "
                     f"{_ci(enc['delta_ci95'], True)} (McNemar p = {enc['mcnemar_p']:.2g})")  # fmt: skip
        parts.append(
            f"carry-through {_ratio(ct)}"
            if ct and ct["defined"]
            else "carry-through undefined (the encoder gain's CI contains 0: there is no encoder gain to carry)"
        )
    dec = o.get("decomposition") or {}
    if "encoder_share" in dec:
        es = dec["encoder_share"]
        parts.append(
            f"the encoder's share of the baseline's {dec['n_errors']} errors {_pct(es['share'])}% "
            f"{_ci(es['share_ci95'])} (fixed by the oracle input {_pct(dec['parts']['fixed_by_oracle']['share'])}%, "
            f"encoder cannot resolve {_pct(dec['parts']['encoder_cannot_resolve']['share'])}%; the LLM does not "
            f"use what the encoder has in {_pct(dec['parts']['encoder_has_it_llm_does_not']['share'])}%)"
        )
    if "oracle" in o:
        h = o["oracle"]["headroom"]
        parts.append(f"oracle headroom {_spct(h['delta'])} points {_ci(h['delta_ci95'], True)}")
    return "; ".join(parts) + f" (n = {section['n']} questions, 95% CIs)."


def _decomp_rows(dec: dict) -> list[str]:
    lines = ["| part of the baseline's errors | count | share % | 95% CI |", "|---|---:|---:|---:|"]
    for k in sorted(dec["parts"], key=lambda k: list(_PARTS).index(k) if k in _PARTS else len(_PARTS)):
        p = dec["parts"][k]
        lines.append(f"| {_PARTS.get(k, k)} | {p['count']} | {_pct(p['share'])} | {_ci(p['share_ci95'])} |")
    if "encoder_share" in dec:
        es = dec["encoder_share"]
        lines.append(
            f"| **encoder's share** (all but the LLM's part) | {es['count']} | {_pct(es['share'])} | {_ci(es['share_ci95'])} |"
        )
    return [*lines, f"| all errors | {dec['n_errors']} | 100.0 | |", ""]


def _group_table(field: str, groups: dict) -> list[str]:
    lines = [
        f"**By {field}**", "",
        f"| {field} | n | encoder gain [95% CI], p | QA gain [95% CI], p | carry-through | oracle headroom | encoder's share of errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for v, g in groups.items():
        head = g.get("oracle", {}).get("headroom")
        es = (g.get("decomposition") or {}).get("encoder_share")
        share = f"{_pct(es['share'])} {_ci(es['share_ci95'])}" if es else "-"
        lines.append(
            f"| {v} | {g['n']} | {_gain_text(g.get('encoder_gain'))} | {_gain_text(g['qa_gain'])} | "
            f"{_ratio(g.get('carry_through'))} | {_gain_text(head)} | {share} |"
        )
    return [*lines, ""]


def _controls_table(section: dict) -> list[str]:
    if not section["controls"]:
        return []
    lines = [
        "**Input controls** (baseline model; delta against its full-video run, paired)", "",
        "| input | accuracy % [95% CI] | delta vs full video, points [95% CI] | McNemar p |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    full = section["overall"]["qa_gain"]
    lines.append(f"| full video | {_pct(full['baseline_acc'])} {_ci(full['baseline_ci95'])} | | |")
    for name, g in section["controls"].items():
        lines.append(
            f"| {name} | {_pct(g['candidate_acc'])} {_ci(g['candidate_ci95'])} | "
            f"{_spct(g['delta'])} {_ci(g['delta_ci95'], True)} | {g['mcnemar_p']:.3g} |"
        )
    return [*lines, ""]


def _noise_table(section: dict, rel) -> list[str]:
    curve = section.get("noise_curve") or []
    if not curve:
        return []
    lines = ["**Noise curve** (baseline model, Gaussian noise on the visual tokens)", "",
             "| sigma (x token RMS) | accuracy % [95% CI] | McNemar p vs sigma 0 |", "|---:|---:|---:|"]  # fmt: skip
    for p in curve:
        lines.append(f"| {p['sigma']:g} | {_pct(p['acc'])} {_ci(p['ci95'])} | {p['mcnemar_p_vs_0']:.3g} |")
    png = section.get("noise_curve_png")
    return [*lines, "", *([f"![noise curve]({rel(png)})", ""] if png else [])]


def encoder_markdown(section: dict, rel=None) -> list[str]:
    """The section as markdown lines: the answer paragraph, the overall table, the error decomposition,
    per-group tables, controls, the noise curve and the definitions. ``rel(path) -> str`` makes the plot's
    link relative to the report (default: the path's file name, for a plot next to the report)."""
    rel = rel or (lambda p: Path(p).name)
    o = section["overall"]
    lines = ["## Encoder (how much of the error is the encoder's)", "", encoder_paragraph(section), ""]
    lines += [
        "| quantity | value, points [95% CI] | McNemar p |", "|---|---:|---:|",
        f"| QA gain (DnA - softmax) | {_spct(o['qa_gain']['delta'])} {_ci(o['qa_gain']['delta_ci95'], True)} | {o['qa_gain']['mcnemar_p']:.3g} |",
    ]  # fmt: skip
    if "encoder_gain" in o:
        e = o["encoder_gain"]
        lines.append(
            f"| encoder gain (probe, DnA - softmax; probe acc {_pct(e['baseline_acc'])} -> {_pct(e['candidate_acc'])}) "
            f"| {_spct(e['delta'])} {_ci(e['delta_ci95'], True)} | {e['mcnemar_p']:.3g} |"
        )
        lines.append(f"| carry-through (QA gain / encoder gain) | {_ratio(o['carry_through'])} | |")
    if "oracle" in o:
        h, sc = o["oracle"]["headroom"], o["oracle"]["share_closed"]
        lines.append(
            f"| oracle headroom (oracle - baseline; oracle acc {_pct(h['candidate_acc'])}) | {_spct(h['delta'])} {_ci(h['delta_ci95'], True)} | {h['mcnemar_p']:.3g} |"
        )
        lines.append(f"| share of the headroom DnA closes | {_ratio(sc)} | |")
    lines.append("")
    if o.get("decomposition"):
        lines += ["**Error decomposition of the baseline's errors**", "", *_decomp_rows(o["decomposition"])]
    for field, groups in section["by_group"].items():
        lines += _group_table(field, groups)
    lines += _controls_table(section) + _noise_table(section, rel)
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
