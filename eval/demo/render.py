"""The demo's report text: report.md and the terminal summary (``dna-vlm demo``'s rendering)."""

from __future__ import annotations

import json
from pathlib import Path

from dna_vlm.eval.attribute.encoder_section import encoder_markdown
from dna_vlm.eval.attribute.encoder_section_render import encoder_paragraph
from dna_vlm.eval.demo.encoder_stages import md_probe
from dna_vlm.eval.demo.stages import Stages


def _num(x, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def verdict(effects: dict) -> str:
    """One clause per seed, by the one verdict rule of :data:`dna_vlm.eval.stats.VERDICT_RULE` (exact McNemar,
    the exact CI that inverts it: the word, the JSON flag and the CI cannot disagree); a null effect prints its
    minimal detectable effect (power 0.8)."""
    parts = []
    for s, e in effects.items():
        lo, hi = e["delta_ci95"]
        if e.get("significant"):
            side = "distinguishable from zero"
        else:
            mde = e.get("mde")
            side = "not distinguishable from zero" + (
                f"; the smallest effect this test detects with power 0.8 is ±{100 * mde:.1f} points"
                if mde
                else ""
            )
        parts.append(
            f"seed {s}: DnA - softmax = {100 * e['delta']:+.1f} points, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}], "
            f"McNemar p = {e['mcnemar_p']:.3g} ({side})"
        )
    return "; ".join(parts)


def _flags(c: dict) -> dict[str, bool]:
    hd = c["headroom"]
    return {"sensitivity": c["sensitivity"]["ok"], "oracle headroom": hd["oracle_ok"], "density trend": hd["density_ok"],
            "categories above chance": hd["categories_ok"], "QA-gain MDE": c["power"]["qa_ok"],
            "encoder-gain MDE": c["power"]["encoder_ok"], "calibration": c["calibration"]["ok"]}  # fmt: skip


def md_instrument(inst: dict) -> list[str]:
    """The acceptance checks of the instrument (:mod:`dna_vlm.eval.demo.instrument`), one table per seed."""
    lines = ["## Is this an instrument? (acceptance checks, each recomputable from the sample logs)", ""]
    for s, c in inst.items():
        sen, hd, pw, cal = c["sensitivity"], c["headroom"], c["power"], c["calibration"]
        curve = ", ".join(f"p={r['strength']:g}: {_pct(r['acc'])}%" for r in sen["curve"])
        g = hd["oracle_gain"]
        tr = hd["density_trend"]
        cats = ", ".join(
            f"{k} {_pct(v['acc'])}% [{_pct(v['ci95'][0])}, {_pct(v['ci95'][1])}] (chance {_pct(v['chance'])})"
            for k, v in hd["by_category"].items()
        )

        def ok(x):
            return "yes" if x else "**no**"

        ci = sen["strongest_delta_ci95"] or [float("nan")] * 2
        lines += [
            f"Seed {s} (control arm):", "",
            "| check | measured | target | met |", "|---|---|---|---|",
            f"| sensitivity ({sen['degradation']}) | {curve}; strongest {100 * (sen['strongest_delta'] or 0):+.1f} "
            f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] | monotone, strongest <= -15 points, CI excludes 0 | {ok(sen['ok'])} |",
            f"| oracle headroom | {100 * g['delta']:+.1f} [{100 * g['delta_ci95'][0]:+.1f}, {100 * g['delta_ci95'][1]:+.1f}] "
            f"| >= +10 points, CI excludes 0 | {ok(hd['oracle_ok'])} |",
            f"| accuracy vs density | slope {100 * tr['slope']:+.2f} points per distractor, CI "
            f"{_ci_pts(tr.get('slope_ci'))} | slope CI below 0 | {ok(hd['density_ok'])} |",
            f"| categories above chance | {cats} | every Wilson CI above chance | {ok(hd['categories_ok'])} |",
            f"| QA-gain MDE | {_pct(pw['qa_gain_mde'])} points | <= 3 points | {ok(pw['qa_ok'])} |",
            f"| encoder-gain MDE | {_pct(pw['encoder_gain_mde'])} points | <= 4 points | {ok(pw['encoder_ok'])} |",
            f"| calibration | planted changes significant: {cal.get('encoder_gain_significant')}; slope "
            f"{_num(cal.get('slope'), '.2f')} CI {_num_ci(cal.get('slope_ci'))} | every planted change significant, "
            f"carry-through CI, >= 2 sizes | {ok(cal['ok'])} |",
            "", f"All checks met: {ok(c['all_ok'])}.", "",
        ]  # fmt: skip
    return lines


def _ci_pts(ci) -> str:
    return "-" if not ci else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _num_ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def summary_text(report: dict, stages: Stages) -> str:
    acc = report["accuracy"]
    lines = [
        "dna-vlm demo — test accuracy (lmms-eval, dna_vlm_synth)",
        f"{'model':<22} {'acc %':>7} {'95% CI':>16} {'n':>5}",
    ]
    for name, a in acc.items():
        lines.append(
            f"{name:<22} {_pct(a['acc']):>7} {'[' + _pct(a['ci95'][0]) + ', ' + _pct(a['ci95'][1]) + ']':>16} {a['n']:>5}"
        )
    lines += ["", "effect (DnA arm - softmax arm): " + report["verdict"]]
    for s, c in (report.get("instrument") or {}).items():
        failed = [k for k, v in _flags(c).items() if not v]
        lines.append(
            f"instrument checks (seed {s}): " + ("all met" if not failed else "NOT met: " + ", ".join(failed))
        )
    lines += ["", stages.table()]
    lines.append(f"wall time {report['wall_time_s']:.0f} s on {report['machine']}")
    return "\n".join(lines)


def markdown_report(report: dict, out: Path, reports, inspect, stages: Stages, encoder=None) -> str:
    def rel(p) -> str:
        return str(Path(p).resolve().relative_to(out))

    st = report["settings"]
    opening = []
    for s, e in (encoder or {}).items():
        opening += [f"**The answer (seed {s}, softmax arm = baseline, DnA arm = candidate):** "
                    + encoder_paragraph(e["section"]), ""]  # fmt: skip
    lines = [
        "# dna-vlm demo report", "", *opening,
        f"Machine: {report['machine']}. Stage times total {sum(report['stage_seconds'].values()):.0f} s "
        f"(this invocation's wall time {report['wall_time_s']:.0f} s; resumed stages keep their first run's "
        "time). Settings: "
        f"`{json.dumps(st['cfg'])}` (size `{st['size']}`, device `{st['device']}`).", "",
        *_md_accuracy(report["accuracy"]),
        "## Effect of DnA (DnA + LoRA arm minus softmax + LoRA arm, paired on the same test docs)", "",
        report["verdict"], "",
    ]  # fmt: skip
    for s, e in report["effect_dna_minus_softmax"].items():
        lines += _md_effect(s, e, rel)
    for s, e in (encoder or {}).items():
        lines += [f"# Encoder-level measurements, seed {s}", "", *md_probe(e["probe"], rel)]
        lines += encoder_markdown(e["section"], rel)[4:]  # its heading and paragraph are the opening above
    if report.get("instrument"):
        lines += md_instrument(report["instrument"])
    lines += _md_inspect(report["inspect"], report["neg_branch"], inspect["dir"], rel)
    lines += ["", "## How the budget was chosen", "", report["budget"], ""]
    lines += ["## Stage times", "", "```", stages.table(), "```", ""]
    return "\n".join(lines)


def _md_accuracy(acc: dict) -> list[str]:
    lines = [
        "## Test accuracy (lmms-eval `dna_vlm_synth`, 95% Wilson intervals)", "",
        "| model | accuracy % | 95% CI | n | failed |", "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, a in acc.items():
        ci = f"[{_pct(a['ci95'][0])}, {_pct(a['ci95'][1])}]"
        lines.append(f"| {name} | {_pct(a['acc'])} | {ci} | {a['n']} | {a['failed']} |")
    return [*lines, ""]


def _md_effect(s, e: dict, rel) -> list[str]:
    lines = [
        f"### seed {s}: by density (number of distractors)", "",
        "| density | n | softmax % | DnA % | delta (points) [95% CI] | McNemar p |", "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for v, g in e["by_density"].items():
        lo, hi = g["delta_ci95"]
        delta = f"{100 * g['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        lines.append(
            f"| {v} | {g['n']} | {_pct(g['baseline_acc'])} | {_pct(g['candidate_acc'])} | {delta} | {g['mcnemar_p']:.3g} |"
        )
    d = e["report_dir"]
    lines += [
        "",
        f"Full attribution (flip table, blind decomposition, per-category): [{rel(d)}/report.md]({rel(d)}/report.md)",
        "",
    ]
    lines += [f"![{png.stem}]({rel(png)})" for png in sorted(Path(d).glob("*.png"))]
    return [*lines, ""]


def _md_inspect(s: dict, nb: dict, inspect_dir: str, rel) -> list[str]:
    text = (
        f"The negative branch moved off its zero start: mean ||W_v-|| / ||W_v+|| = {_num(nb['v_neg_rel_norm'], '.3f')}, "
        f"mean |lambda| = {_num(nb['lambda_mean_abs'], '.3f')} (started at 0 and 0.5). "
        f"Mean principal angle between the V+ and V- subspaces: {_num(s.get('mean_angle_deg'))} deg "
        f"(random subspaces of the same rank: {_num(s.get('random_mean_angle_deg'))} deg). "
        f"Mean attention entropy: P+ {_num(s.get('mean_entropy_positive'), '.2f')}, "
        f"P- {_num(s.get('mean_entropy_negative'), '.2f')} nats. "
        f"Details: [{rel(inspect_dir)}/inspect.md]({rel(inspect_dir)}/inspect.md)"
    )
    pngs = [f"![{png.stem}]({rel(png)})" for png in sorted(Path(inspect_dir).glob("*.png"))[:4]]
    return ["## DnA diagnostics (inspect, DnA arm)", "", text, "", *pngs]
