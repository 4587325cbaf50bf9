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
    """One clause per seed. "Distinguishable from zero" needs both the paired-bootstrap CI to exclude 0 and the
    exact McNemar test to agree (p < 0.05): with few discordant questions the percentile bootstrap is too
    narrow (attribute's ``ci_warning``) and McNemar is the test to trust."""
    parts = []
    for s, e in effects.items():
        lo, hi = e["delta_ci95"]
        ci_out, p = (lo > 0 or hi < 0), e["mcnemar_p"]
        if ci_out and p < 0.05:
            side = "distinguishable from zero"
        elif ci_out:
            flips = e["fixed"] + e["broken"]
            side = (f"not distinguishable from zero: the CI excludes 0 but the exact McNemar test does not "
                    f"confirm it with {flips} discordant questions")  # fmt: skip
        else:
            side = "not distinguishable from zero"
        parts.append(
            f"seed {s}: DnA - softmax = {100 * e['delta']:+.1f} points, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}], "
            f"McNemar p = {p:.3g} ({side})"
        )
    return "; ".join(parts)


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
    lines += ["", "effect (DnA arm - softmax arm): " + report["verdict"], "", stages.table()]
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
