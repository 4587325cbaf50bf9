"""``report.md``, the terminal summary and the PNG plots of ``dna-vlm attribute`` (report dict -> files).

Reads only the report dict built by :func:`dna_vlm.eval.attribute.compare.attribute` (its ``definitions`` text is
appended to every ``report.md``), so a saved ``report.json`` can be rendered again.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from dna_vlm.eval.attribute.encoder_section_render import encoder_markdown
from dna_vlm.eval.report_files import json_safe, pyplot, safe_name, save_png

from dna_vlm.files import atomic_write_bytes, atomic_write_json

__all__ = ["delta_cell", "mde_text", "render_markdown", "role_warnings", "summary_table", "write_report"]


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.json``, ``report.md`` and (``plots``) PNGs into ``out_dir`` atomically; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = _plots(report, out) if plots else []
    report["plots"] = [p.name for p in pngs]
    atomic_write_json(out / "report.json", json_safe(report))
    atomic_write_bytes(out / "report.md", render_markdown(report).encode())
    return out


# ----------------------------------------------------------------------------------------------------------
# text


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return "n/a" if not ci or ci[0] is None or not math.isfinite(ci[0]) else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _spct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}"


def _sci(ci) -> str:
    return "n/a" if not ci else f"[{_spct(ci[0])}, {_spct(ci[1])}]"


def _p(p) -> str:
    return "n/a" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def summary_table(report: dict) -> str:
    """A short fixed-width table for terminals (accuracies in %, delta in points)."""
    rows = [("", "n", "baseline", "candidate", "delta [CI]", "McNemar p", "fixed/broken")]

    def row(name, s):
        return (
            name,
            str(s["n"]),
            _pct(s["baseline_acc"]),
            _pct(s["candidate_acc"]),
            f"{_spct(s['delta'])} {_sci(s['delta_ci'])}{' *' if s['significant'] else ''}",
            _p(s["mcnemar_p"]),
            f"{s['fixed']}/{s['broken']}",
        )

    rows.append(row("all", report))
    for fld, groups in report.get("by_group", {}).items():
        for v, s in groups.items():
            rows.append(row(f"{fld}={v}", s))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        "CIs: exact, 95% for 'all', 1 - 0.05/k within a --by field of k groups; * = significant "
        "(Bonferroni McNemar p < 0.05)"
    )
    if "blind" in report:
        bl = report["blind"]
        rel = bl["video_reliance"]
        lines.append(
            f"blind {_pct(bl['acc'])}%  video reliance: baseline {_spct(rel['baseline']['delta'])} "
            f"{_sci(rel['baseline']['delta_ci'])}, candidate {_spct(rel['candidate']['delta'])} "
            f"{_sci(rel['candidate']['delta_ci'])} points"
        )
    tasks = [t for t in report.get("tasks", []) if t]
    if len(tasks) > 1:
        lines.append(f"pooled over {len(tasks)} tasks ({', '.join(tasks[:5])}{' ...' if len(tasks) > 5 else ''}); "
                     "--by task for per-task rows")  # fmt: skip
    f = report.get("failed", {})
    if f.get("excluded_docs"):
        lines.append(
            f"{f['excluded_docs']} docs excluded: failed in at least one log (--failed {f['policy']})"
        )
    return "\n".join(lines)


def _cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def mde_text(r: dict) -> str:
    """The minimal detectable effect of a comparison's row, in points, for the text beside a null effect."""
    m = r.get("mde")
    if m is None:
        return "mde: none (too few questions to detect any effect)"
    return f"mde ±{100 * m:.1f}"


def delta_cell(r: dict) -> str:
    """A comparison's delta with its CI at the family's level, the verdict mark (``*``), the few-discordant
    flag (``†``) and, for a null effect, its minimal detectable effect."""
    out = f"{_spct(r['delta'])} {_sci(r.get('delta_ci'))}{' *' if r['significant'] else ''}"
    out += " †" if r.get("ci_warning") else ""
    return out + ("" if r["significant"] else f" ({mde_text(r)})")


def _level(r: dict) -> str:
    return f"{100 * r['ci_level']:.4g}%"


def _verdict(r: dict) -> str:
    warn = f" Caution: {r['ci_warning']}." if r.get("ci_warning") else ""
    if r["significant"]:
        way = "higher" if r["delta"] > 0 else "lower"
        return (
            f"The candidate is {way} by {abs(100 * r['delta']):.1f} points: exact McNemar p = {_p(r['mcnemar_p'])} "
            f"< 0.05, and the exact {_level(r)} CI {_sci(r['delta_ci'])} excludes 0.{warn}"
        )
    m = r.get("mde")
    mde = (f"the smallest effect this comparison detects with power 0.8 (n = {r['n']}, {r['fixed'] + r['broken']} "
           f"discordant) is ±{100 * m:.1f} points" if m is not None else "too few questions to detect any effect")  # fmt: skip
    return (
        f"No difference distinguishable from zero: delta {_spct(r['delta'])} points, exact {_level(r)} CI "
        f"{_sci(r['delta_ci'])} includes 0 (McNemar p = {_p(r['mcnemar_p'])}); {mde}.{warn}"
    )


def _stats_table(groups: dict, label: str) -> list[str]:
    first = next(iter(groups.values()))
    out = [
        f"| {label} | n | baseline % [95% CI] | candidate % [95% CI] | delta pts [{_level(first)} CI] | McNemar p | Bonferroni p (k={first['family_size']}) | fixed | broken | both right | both wrong |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, s in groups.items():
        out.append(
            f"| {v} | {s['n']} | {_pct(s['baseline_acc'])} {_ci(s['baseline_ci95'])} | "
            f"{_pct(s['candidate_acc'])} {_ci(s['candidate_ci95'])} | {delta_cell(s)} | {_p(s['mcnemar_p'])} | "
            f"{_p(s['p_adjusted'])} | {s['fixed']} | {s['broken']} | {s['both_right']} | {s['both_wrong']} |"
        )
    return out


def _blind_md(bl: dict) -> list[str]:
    rel, ov, dec = bl["video_reliance"], bl["blind_overlap"], bl["decomposition"]
    out = [
        f"Blind accuracy (no video): **{_pct(bl['acc'])}%** {_ci(bl['ci95'])}.",
        "",
        f"| model | video reliance pts [{_level(rel['baseline'])} CI; family of 2] | McNemar p | video helps | video hurts | correct answers the blind model also gets |",
        "|---|---|---:|---:|---:|---|",
    ]
    for arm in ("baseline", "candidate"):
        r, o = rel[arm], ov[arm]
        out.append(
            f"| {arm} | {delta_cell(r)} | {_p(r['mcnemar_p'])} | {r['video_helps']} | "
            f"{r['video_hurts']} | {_pct(o['fraction'])}% {_ci(o['ci95'])} ({o['blind_also_right']}/{o['model_right']}) |"
        )
    sb, sc = dec["baseline_errors_share"], dec["candidate_errors_share"]
    out += [
        "",
        "Error decomposition (counts of docs; shares of that model's errors):",
        "",
        "| part | definition | docs | share of baseline errors | share of candidate errors |",
        "|---|---|---:|---:|---:|",
        f"| encoder-attributable, fixed | baseline wrong, candidate right | {dec['encoder_fixed']} | {_pct(sb['encoder_fixed'])}% | |",
        f"| introduced by the change | baseline right, candidate wrong | {dec['encoder_broken']} | | {_pct(sc['encoder_broken'])}% |",
        f"| shared (LLM- or data-bound) | baseline, candidate and blind all wrong | {dec['shared_errors']} | {_pct(sb['shared_errors'])}% | {_pct(sc['shared_errors'])}% |",
        f"| video hurts both | both video models wrong, blind right | {dec['video_hurts_both']} | {_pct(sb['video_hurts_both'])}% | {_pct(sc['video_hurts_both'])}% |",
        f"| total errors | | | {dec['baseline_errors']} | {dec['candidate_errors']} |",
        "",
        f"Docs the blind model answers right but a video model gets wrong: baseline {dec['video_hurts_baseline']}, "
        f"candidate {dec['video_hurts_candidate']}.",
        "",
        "Cells (baseline, candidate, blind; R = right, W = wrong): "
        + ", ".join(f"{k} {v}" for k, v in bl["cells"].items()),
    ]
    return out


def render_markdown(report: dict) -> str:
    """``report.md``: inputs, headline, failed samples, blind analysis, per-group sections, plots, definitions."""
    r = report
    L = ["# dna-vlm attribution report", ""]
    L += _inputs_md(r)
    L += _headline_md(r)
    if r.get("encoder"):
        L += encoder_markdown(r["encoder"])
    L += _failed_md(r["failed"])
    if "blind" in r:
        L += ["## How much each model uses the video", "", *_blind_md(r["blind"]), ""]
    for fld, groups in r.get("by_group", {}).items():
        L += _group_md(fld, groups, r.get("trends", {}).get(fld))
        if "blind" in r:
            L += _group_blind_md(fld, groups)
    if r.get("plots"):
        L += ["## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]] + [""]
    L += [r["definitions"]]
    return "\n".join(L)


def _inputs_md(r: dict) -> list[str]:
    """The table of input logs (arm, task, path, hash prefix, rows, metric/reader), the pairing checks, the
    role checks and what each arm was, so a reader can check what was compared."""
    L = ["| arm | task | path | sha256 | rows | metric (reader) |", "|---|---|---|---|---:|---|"]
    for arm, inp in r["inputs"].items():
        for log in inp.get("logs") or [{**inp, "task": "", "metric": r["metric"][arm], "reader": ""}]:
            by = log.get("reader_by")
            reader = f" ({log['reader']}, by {by})" if by and by != log.get("reader") else ""
            reader = reader or (f" ({log['reader']})" if log.get("reader") else "")
            L.append(
                f"| {arm} | {_cell(log['task'] or '-')} | `{log['path']}` | `{log['sha256'][:16]}...` | "
                f"{log['rows']} | {_cell(log['metric'])}{reader} |"
            )
    L += _pairing_md(r.get("pairing")) + _roles_md(r.get("roles")) + _probe_join_md(r.get("probe_join"))
    return L + _arms_md(r.get("arms"))


def _pairing_md(p: dict | None) -> list[str]:
    if not p:
        return []
    blind = {True: "yes", False: "could not be told (no provenance or blind field)", None: "no blind arm"}
    evidence = ", ".join(f"{k} {n}" for k, n in (p.get("evidence") or {}).items()) or "none"
    ignored = p.get("doc_hash_ignored")
    hashes = (
        f" lmms-eval's doc_hash was ignored on {ignored} rows (one value on several docs: lmms-eval 0.7.3 "
        "hashes null for every doc)."
        if ignored
        else ""
    )
    return [
        "",
        f"Pairing checks: docs paired by (task, doc id); {p['questions_checked']} pairs verified to be the same "
        f"question by their content (pairs agreeing on: {evidence}), {p['questions_unverified']} not verifiable "
        f"(the logs carry no prompt, doc or distinguishing doc_hash).{hashes} "
        f"Blind arm answered without video: {blind[p['blind_verified']]}.",
    ]


def _roles_md(roles: dict | None) -> list[str]:
    """Each input's role as checked against its run's provenance."""
    if not roles:
        return []
    L = ["", "| input | role checked against the provenance |", "|---|---|"]
    for flag, res in roles.items():
        verdict = "yes" if res["verified"] else "**unverified**: " + "; ".join(res["unverified"])
        L.append(f"| {_cell(flag)} | {_cell(verdict)} |")
    return L


def _probe_join_md(j: dict | None) -> list[str]:
    if not j:
        return []
    if j["verified"]:
        how = f"{j['checked']} test rows checked ({', '.join(j['by'])})"
        return ["", f"Probe join: the probe's test rows are the baseline's questions: {how}. {j['note']}."]
    return ["", f"Probe join: **unverified**, nothing to compare the probe's test rows with ({j['note']})."]


def role_warnings(report: dict) -> list[str]:
    """One line per input whose role or join could not be checked (the report says the same)."""
    out = [f"{flag}: role unverified: {'; '.join(r['unverified'])}" for flag, r in (report.get("roles") or {}).items()
           if not r["verified"]]  # fmt: skip
    j = report.get("probe_join")
    if j and not j["verified"]:
        out.append(f"--probe: whether its test rows are the baseline's questions is unverified ({j['note']})")
    unverified = (report.get("pairing") or {}).get("questions_unverified")
    if unverified:
        out.append(
            f"{unverified} paired docs could not be verified to be the same question (no prompt or doc logged)"
        )
    return out


def _arms_md(arms: dict | None) -> list[str]:
    """One line per arm and run: DnA or stock, base model, run dir + weights digest, controls."""
    if not arms:
        return []
    L = [
        "",
        "| arm | model | base model | run dir | weights sha256 | controls | frames |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, d in arms.items():
        for run in d["runs"]:
            w = run.get("weights_sha256")
            L.append(
                f"| {arm} | {run['model']} ({run['patched_modules']} modules) | {_cell(run['base_model'])} | "
                f"{_cell(run['run_dir'] or '-')} | {f'`{w[:16]}...`' if w else '-'} | {_cell(run['controls'])} | "
                f"{_cell(run['frame_sampling'])} |"
            )
        if d["without_provenance"]:
            L.append(
                f"| {arm} | unknown: no dna_vlm provenance beside {len(d['without_provenance'])} log(s) | | | | | |"
            )
    return L


def _headline_md(r: dict) -> list[str]:
    """Accuracies with CIs, the delta with its CI and McNemar p, the verdict and the flip counts."""
    L = [
        "",
        "## Headline",
        "",
        f"Compared on **n = {r['n']}** questions (of {r['n_total']})"
        + (
            f", pooled over {len(r['tasks'])} tasks: {', '.join(r['tasks'])}."
            if len(r.get("tasks", [])) > 1
            else "."
        ),
        "",
        "| | accuracy % | 95% Wilson CI |",
        "|---|---:|---|",
        f"| baseline | {_pct(r['baseline_acc'])} | {_ci(r['baseline_ci95'])} |",
        f"| candidate | {_pct(r['candidate_acc'])} | {_ci(r['candidate_ci95'])} |",
    ]
    if "blind" in r:
        L.append(f"| blind (no video) | {_pct(r['blind']['acc'])} | {_ci(r['blind']['ci95'])} |")
    L += [
        "",
        f"**delta (candidate - baseline): {_spct(r['delta'])} points**, exact {_level(r)} CI "
        f"{_sci(r['delta_ci'])} (it inverts the McNemar test); exact McNemar p = {_p(r['mcnemar_p'])}.",
        "",
        _verdict(r),
        "",
        f"Verdict rule: {r.get('verdict_rule', '')}",
        "",
        f"Flips: fixed (wrong -> right) {r['fixed']}, broken (right -> wrong) {r['broken']}, both right "
        f"{r['both_right']}, both wrong {r['both_wrong']}.",
        "",
    ]
    return L


def _failed_md(f: dict) -> list[str]:
    """The failed-samples section: counts, the policy applied, and up to 50 (log, doc id, reason) rows."""
    L = ["## Failed samples", ""]
    if not any(f["counts"].values()):
        return [*L, "None.", ""]
    how = (
        f"{f['excluded_docs']} docs were failed in at least one log and are excluded from every comparison "
        "above (--failed exclude)."
        if f["policy"] == "exclude"
        else "Failed samples are counted as wrong answers (--failed wrong); no doc is excluded."
    )
    L += [
        "Counts: " + ", ".join(f"{arm} {n}" for arm, n in f["counts"].items()) + ". " + how,
        "",
        "| log | task | doc id | reason |",
        "|---|---|---|---|",
    ]
    shown = 0
    for arm in f["counts"]:
        for item in f.get(arm, []):
            if shown < 50:  # the full list is in report.json; keep the markdown readable
                L.append(
                    f"| {arm} | {_cell(item.get('task', '-'))} | {_cell(item['id'])} | {_cell(item['reason'] or '')} |"
                )
            shown += 1
    if shown > 50:
        L.append(f"| ... | | {shown - 50} more in report.json | |")
    L.append("")
    return L


def _group_md(fld: str, groups: dict, t: dict | None) -> list[str]:
    """One ``## By <field>`` section: the group table, its legend, and the trend sentence if any."""
    L = [
        f"## By {fld}",
        "",
        *_stats_table(groups, fld),
        "",
        f"This table is one family of k = {len(groups)} comparisons: `*` = significant (Bonferroni p < 0.05; "
        "the exact CI at the table's level then excludes 0); `†` = fewer than 10 discordant docs (the row rests "
        "on a handful of questions); a row that is not significant shows its minimal detectable effect (mde, "
        "points, power 0.8).",
        "",
    ]
    if t:
        ci = t.get("slope_ci")
        L += [
            f"Trend over {fld} ({t['buckets']} values): delta changes by {_spct(t['slope'])} points per unit "
            f"of {fld}, bootstrap {_level(t)} CI {_sci(ci)} (the trends of the {t['family_size']} field(s) are "
            f"one family; OLS p = {_p(t['ols_p_value'])}, for reference) "
            f"({'significant: the CI excludes 0' if t['significant'] else 'no detectable trend: the CI includes 0' if ci else 'no bootstrap CI (--bootstrap 0)'}). "
            f"Accuracy slopes: baseline {_spct(t['baseline_slope'])}, candidate {_spct(t['candidate_slope'])} "
            "points per unit.",
            "",
        ]
    return L


def _group_blind_md(fld: str, groups: dict) -> list[str]:
    """Per-group blind accuracy, video reliance and error decomposition (only with a blind log)."""
    L = [
        f"| {fld} | blind % | reliance baseline pts | reliance candidate pts | encoder fixed | introduced | shared errors | video hurts both |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for v, s in groups.items():
        bl = s["blind"]
        rel, dec = bl["video_reliance"], bl["decomposition"]
        L.append(
            f"| {v} | {_pct(bl['acc'])} | {delta_cell(rel['baseline'])} | "
            f"{delta_cell(rel['candidate'])} | {dec['encoder_fixed']} | "
            f"{dec['encoder_broken']} | {dec['shared_errors']} | {dec['video_hurts_both']} |"
        )
    k = next(iter(groups.values()))["blind"]["video_reliance"]["baseline"]["family_size"]
    L += ["", f"The reliances of this table are one family of k = {k} (CIs at 1 - 0.05/k).", ""]
    return L


# ----------------------------------------------------------------------------------------------------------
# plots


def _err(acc, ci):
    if not ci or ci[0] is None or not math.isfinite(ci[0]):
        return [[0], [0]]
    return [[max(0.0, acc - ci[0])], [max(0.0, ci[1] - acc)]]


_COLORS = {"baseline": "#7f7f7f", "candidate": "#1f77b4", "blind": "#d62728"}


def _plots(r: dict, out: Path) -> list[Path]:
    """Write accuracy.png, flips.png and one by_<field>.png per ``--by`` field into ``out``; returns the paths."""
    plt = pyplot()
    paths = [_plot_accuracy(plt, r, out), _plot_flips(plt, r, out)]
    for fld, groups in r.get("by_group", {}).items():
        paths.append(_plot_group(plt, r, fld, groups, out))
    return paths


def _plot_accuracy(plt, r: dict, out: Path) -> Path:
    """Bars of each model's accuracy with its Wilson CI; the title carries the delta and its CI."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    arms = [
        ("baseline", r["baseline_acc"], r["baseline_ci95"]),
        ("candidate", r["candidate_acc"], r["candidate_ci95"]),
    ]
    if "blind" in r:
        arms.append(("blind", r["blind"]["acc"], r["blind"]["ci95"]))
    for i, (name, acc, ci) in enumerate(arms):
        ax.bar(i, 100 * acc, color=_COLORS[name], yerr=100 * np.array(_err(acc, ci)), capsize=5)
    ax.set_xticks(range(len(arms)), [a[0] for a in arms])
    ax.set_ylabel("accuracy % (95% Wilson CI)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"delta {_spct(r['delta'])} pts, exact 95% CI {_sci(r['delta_ci95'])}, n={r['n']}", fontsize=9
    )
    path = save_png(fig, out / "accuracy.png", dpi=110)
    plt.close(fig)
    return path


def _plot_flips(plt, r: dict, out: Path) -> Path:
    """One stacked bar of the docs: flips, or the error decomposition when there is a blind log."""
    fig, ax = plt.subplots(figsize=(6.5, 2.2 if "blind" not in r else 2.8))
    if "blind" in r:
        d = r["blind"]["decomposition"]
        parts = [
            ("both right", r["both_right"], "#2ca02c"),
            ("fixed (encoder)", d["encoder_fixed"], "#1f77b4"),
            ("broken (encoder)", d["encoder_broken"], "#ff7f0e"),
            ("video hurts both", d["video_hurts_both"], "#9467bd"),
            ("shared errors", d["shared_errors"], "#7f7f7f"),
        ]
    else:
        parts = [
            ("both right", r["both_right"], "#2ca02c"),
            ("fixed", r["fixed"], "#1f77b4"),
            ("broken", r["broken"], "#ff7f0e"),
            ("both wrong", r["both_wrong"], "#7f7f7f"),
        ]
    left = 0
    for name, cnt, col in parts:
        ax.barh(0, cnt, left=left, color=col, label=f"{name} ({cnt})")
        left += cnt
    ax.set_yticks([])
    ax.set_xlabel("docs")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"McNemar p = {_p(r['mcnemar_p'])}", fontsize=9)
    path = save_png(fig, out / "flips.png", dpi=110)
    plt.close(fig)
    return path


def _plot_group(plt, r: dict, fld: str, groups: dict, out: Path) -> Path:
    """Per-value accuracies (top) and delta with its CI (bottom) for one ``--by`` field."""
    keys = list(groups)
    xs = np.arange(len(keys))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(4.5, 0.7 * len(keys) + 2), 5.5), sharex=True)
    for off, arm in ((-0.15, "baseline"), (0.15, "candidate")):
        acc = [groups[k][f"{arm}_acc"] for k in keys]
        err = np.hstack([_err(groups[k][f"{arm}_acc"], groups[k][f"{arm}_ci95"]) for k in keys])
        a1.errorbar(
            xs + off, 100 * np.array(acc), yerr=100 * err, fmt="o", color=_COLORS[arm], label=arm, capsize=3
        )
    if "blind" in r:
        acc = [groups[k]["blind"]["acc"] for k in keys]
        err = np.hstack([_err(groups[k]["blind"]["acc"], groups[k]["blind"]["ci95"]) for k in keys])
        a1.errorbar(
            xs, 100 * np.array(acc), yerr=100 * err, fmt="s", color=_COLORS["blind"], label="blind", capsize=3
        )
    a1.set_ylabel("accuracy %")
    a1.set_ylim(-5, 112)
    a1.legend(fontsize=8)
    dl = np.array([groups[k]["delta"] for k in keys])
    derr = _delta_err(dl, [groups[k]["delta_ci"] for k in keys])
    a2.errorbar(xs, 100 * dl, yerr=derr, fmt="o", color=_COLORS["candidate"], capsize=3)
    a2.axhline(0, color="k", lw=0.8)
    a2.set_ylabel(f"delta pts ({_level(groups[keys[0]])} CI)")
    a2.set_xticks(xs, keys, rotation=30 if max(len(k) for k in keys) > 6 else 0)
    a2.set_xlabel(fld)
    t = r.get("trends", {}).get(fld)
    title = f"by {fld}" + (f": trend {_spct(t['slope'])} pts/unit {_sci(t.get('slope_ci'))}" if t else "")
    a1.set_title(title, fontsize=9)
    path = save_png(fig, out / f"by_{safe_name(fld, 'field')}.png", dpi=110)
    plt.close(fig)
    return path


def _delta_err(dl: np.ndarray, cis: list) -> np.ndarray | None:
    """Asymmetric error bars (in points) from each group's delta CI; None when a CI is missing (--bootstrap 0)."""
    if not all(cis):
        return None
    derr = np.array(
        [
            [d - ci[0] for d, ci in zip(dl, cis, strict=True)],
            [ci[1] - d for d, ci in zip(dl, cis, strict=True)],
        ]
    )
    return 100 * np.clip(derr, 0, None)
