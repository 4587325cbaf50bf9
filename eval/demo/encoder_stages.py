"""The demo's encoder-level stages: the probe on the baseline and both arms, the softmax arm's
oracle / control / noise runs (plugin ``model_args``), and the Encoder section with its report parts.

Kept apart from :mod:`dna_vlm.eval.demo.pipeline` (the stage runner and the report) so each reads in one place.
"""

from __future__ import annotations

from pathlib import Path

from dna_vlm.eval.attribute.encoder_section_render import encoder_paragraph
from dna_vlm.eval.degrade import Planted

from dna_vlm.files import atomic_write_json

__all__ = ["ENCODER_RUNS", "PLANTED", "encoder_summary", "md_probe", "run_encoder_section", "run_probe_stage"]


#: the planted degradation ``encoder_scramble=p`` at three strengths (:mod:`dna_vlm.eval.degrade` says why this
#: one): the sensitivity curve and the calibration's planted encoder changes (each measured by QA and the probe)
PLANTED = tuple(Planted("scramble", p) for p in (0.5, 0.75, 1.0))

#: the softmax arm's extra runs for the Encoder section: (name, plugin model_args, lmms-eval task)
ENCODER_RUNS = (
    ("oracle", {}, "dna_vlm_synth_oracle"),
    ("none", {"video": "none"}, "dna_vlm_synth"),
    ("shuffled", {"video": "shuffled"}, "dna_vlm_synth"),
    *((d.name, d.model_args, "dna_vlm_synth") for d in PLANTED),
)


def run_probe_stage(dest: Path, base: str, runs: list[str], data: dict, cfg, planted_arms=()) -> dict:
    """dna-vlm probe on the baseline and every arm: colour, shape and motion of the target, and per question
    the attribute it asks; fitted on the train split, scored on the test and oracle rows. ``planted_arms``
    also get the :data:`PLANTED` variants (arms ``<arm>@scramble<p>``)."""
    from dna_vlm.eval.probe.run import run_probe

    from dna_vlm.data.synth import LABEL_FIELDS

    res = run_probe(
        dest, data["train"], data["test"], list(LABEL_FIELDS.values()), model=base, runs=runs,
        stock_name="baseline", test_oracle=data["test_oracle"], asked="target_{category}",
        num_frames=cfg.num_frames, batch_size=32, planted=PLANTED if planted_arms else (),
        planted_arms=tuple(planted_arms) or None,
    )  # fmt: skip
    asked = {arm: {k: a["asked"][k] for k in ("acc", "acc_ci95", "n_test")} for arm, a in res["arms"].items()}
    for arm, a in res["arms"].items():
        asked[arm]["oracle_acc"] = a["asked"]["oracle"]["acc"]
        asked[arm]["labels"] = {
            f: {k: b[k] for k in ("acc", "acc_ci95", "chance")} for f, b in a["labels"].items()
        }
    return {"path": str(dest / "probe.json"), "asked": asked, "seconds": res["seconds"]}


def run_encoder_section(dest: Path, softmax: dict, dna: dict, ctl: dict, probe: dict, s: int) -> dict:
    """The Encoder section (softmax arm = baseline, DnA arm = candidate), written to ``dest/encoder.json``.

    Planted encoder changes for the calibration: each of :data:`PLANTED` (QA run + probe arm
    ``softmax-s<s>@scramble<p>``) and the oracle input (QA on the oracle questions + the probe on the oracle
    rows, arm ``softmax-s<s>@oracle``): changes of known sign (the scramble replaces evidence with a decoy;
    the oracle removes the distractors) and of several sizes."""
    from dna_vlm.eval.attribute.encoder_section import encoder_section

    arm = f"softmax-s{s}"
    planted = {d.name: (ctl[d.name]["samples"], f"{arm}@{d.name}") for d in PLANTED}
    planted["oracle"] = (ctl["oracle"]["samples"], f"{arm}@oracle")
    section = encoder_section(
        softmax["samples"], dna["samples"], probe=probe["path"], probe_arms=(arm, f"dna-s{s}"),
        oracle=ctl["oracle"]["samples"], controls={k: ctl[k]["samples"] for k in ("none", "shuffled")},
        planted=planted, by=("density", "category"), out_dir=dest,
    )  # fmt: skip
    atomic_write_json(dest / "encoder.json", section)
    return section


def encoder_summary(e: dict) -> dict:
    """report.json's view of one seed's Encoder section (the whole section is in its encoder.json)."""
    o = e["section"]["overall"]
    keys = ("qa_gain", "encoder_gain", "carry_through", "oracle", "decomposition")
    return {
        **{k: o.get(k) for k in keys},
        "controls": e["section"]["controls"], "calibration": e["section"].get("calibration"),
        "probe": e["probe"]["asked"], "probe_json": e["probe"]["path"],
        "paragraph": encoder_paragraph(e["section"]),
    }  # fmt: skip


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def md_probe(probe: dict, rel) -> list[str]:
    """Probe accuracy per model: the asked attribute (test and oracle rows) and each label with its chance."""
    lines = [
        "## Encoder-level accuracy (linear probe on the visual tokens the LLM receives, 95% Wilson CIs)", "",
        "| model | asked attribute % [95% CI] | on oracle input % | colour % | shape % | motion % |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for arm, a in probe["asked"].items():
        labs = [a["labels"].get(f"target_{k}") for k in ("color", "shape", "motion")]
        cells = [f"{_pct(b['acc'])} (chance {_pct(b['chance'])})" if b else "-" for b in labs]
        ci = f"[{_pct(a['acc_ci95'][0])}, {_pct(a['acc_ci95'][1])}]"
        lines.append(f"| {arm} | {_pct(a['acc'])} {ci} | {_pct(a['oracle_acc'])} | {' | '.join(cells)} |")
    return [*lines, "", f"Per-row predictions and paired comparisons: `{rel(probe['path'])}`", ""]
