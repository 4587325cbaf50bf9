"""`dna-vlm attribute`: paired, per-question comparison of two lmms-eval sample logs (baseline vs candidate,
optionally a video-blind run of the same questions), with statistics a reviewer can check.

Input: the JSONL files lmms-eval writes with ``--log_samples`` (``<date>_samples_<task>.jsonl``), one or
several per arm (files, globs, folders), read by :mod:`dna_vlm.eval.logs.samples`: one row per question, its
right/wrong read by the task's correctness reader (:mod:`dna_vlm.eval.logs.readers`) or, for the dna_vlm tasks, from
their record dict (:mod:`dna_vlm.eval.logs.records`). Rows pair across arms by (task, doc id) and must be the same
question (:func:`dna_vlm.eval.logs.samples.check_pairing`); every input must be what its flag says, by the
provenance the plugin wrote (:func:`check_roles`), and a ``--probe`` must be of the baseline's questions
(:func:`probe_join`).

Python API: :func:`attribute` (returns the report dict and writes ``report.json``, ``report.md`` and PNG plots
when ``out_dir`` is given), :func:`summary_table`, :func:`load_samples`. The statistics live in
:mod:`dna_vlm.eval.stats`, the rendering in :mod:`dna_vlm.eval.attribute.render`. Every quantity is defined
in ``DEFINITIONS`` below (also appended to this docstring and written into each ``report.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dna_vlm.eval.attribute.encoder_section import EncoderError, add_encoder_args, encoder_section_from_args
from dna_vlm.eval.attribute.render import role_warnings, summary_table, write_report
from dna_vlm.eval.logs.readers import oracle_twin, reader_names
from dna_vlm.eval.logs.records import SampleRecord, provenance_path
from dna_vlm.eval.logs.samples import (
    Arm,
    AttributionError,
    SampleLog,
    check_questions,
    load_arm,
    load_arms,
    load_samples,
    video_evidence,
)
from dna_vlm.eval.probe.run import PROBE_FORMAT
from dna_vlm.eval.stats import VERDICT_RULE, apply_family, compare, ols_trend, trend_verdicts, wilson_ci

from dna_vlm.data.synth import ORACLE_VIDEOS

__all__ = [
    "CONTROL_VIDEO",
    "DEFINITIONS",
    "AttributionError",
    "Role",
    "SampleLog",
    "attribute",
    "check_roles",
    "describe_arm",
    "load_samples",
    "model_identity",
    "probe_join",
    "read_probe",
    "summary_table",
]

DEFINITIONS = """\
## Definitions

Notation: the compared set holds n questions (docs) present in every arm. For doc i, b_i, c_i, k_i in {0, 1}
say whether the baseline, the candidate and the blind model (same questions, no video) answered it
correctly. Cell names use the order baseline, candidate, blind: "RW" = baseline right, candidate wrong.

- **accuracy** (`baseline_acc`, `candidate_acc`, `blind.acc`): mean of the 0/1 correctness over the n docs.
- **95% CI of an accuracy** (`*_ci95`): the Wilson score interval, p~ = (p + z^2/2n) / (1 + z^2/n),
  half-width = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2), z = 1.959964 (scipy's `binomtest(...).proportion_ci(method="wilson")`).
- **delta**: candidate_acc - baseline_acc = (fixed - broken) / n.
- **flips**: `fixed` = #docs with b=0, c=1 (wrong -> right); `broken` = #(b=1, c=0) (right -> wrong);
  `both_right` = #(b=1, c=1); `both_wrong` = #(b=0, c=0). They sum to n.
- **delta_ci95**: the exact 95% CI of delta that inverts the exact McNemar test: with m = fixed + broken
  discordant docs, delta = m/n (2 pi - 1) where pi = P(fixed | discordant), and pi runs over the
  Clopper-Pearson 95% interval of fixed/m (conditional on m; no randomness). It excludes 0 exactly when
  mcnemar_p < 0.05 (tested over every cell up to n = 240). With m = 0 it is the unconditional bound
  |delta| <= the Clopper-Pearson upper bound of 0 discordant in n.
- **mcnemar_p**: exact McNemar test: two-sided exact binomial test of `fixed` successes in fixed + broken
  trials with p = 0.5 (`scipy.stats.binomtest(broken, broken + fixed, 0.5)`); 1 when fixed + broken = 0.
  It asks whether the flips are more one-sided than chance; both_right/both_wrong carry no information.
- **families and the verdict** (`verdict_rule` in report.json): each table of the report is a family of k
  comparisons (`family`, `family_size`): the headline (k = 1), each `--by` field's groups, the video
  reliances (2), each field's per-group reliances, the trends. `p_adjusted` = min(1, k mcnemar_p)
  (Bonferroni); **significant** = p_adjusted < 0.05; `delta_ci` is the exact CI above at level `ci_level` =
  1 - 0.05/k, so it excludes 0 exactly when the row is significant (tables print it). `mde`: for a row that
  is not significant, the minimal detectable effect: the smallest |delta| the exact test at level 0.05/k
  detects with power 0.8 over n docs discordant at the observed rate (or at rate |delta| when larger).
  `ci_warning` (a dagger in report.md) flags rows with fewer than 10 discordant docs ("no discordant
  questions" with none): the comparison rests on a handful of questions.
- **by_group[field][value]**: the same statistics restricted to the docs whose `field` (read from the
  metric dict, else from `doc`) equals `value`; the field's groups are one family.
- **trends[field]** (numeric fields with >= 3 distinct values, e.g. density): `slope` = ordinary least
  squares slope of d_i = c_i - b_i on the field's value x_i over docs (change of delta per unit of x; a
  linear probability model, no logistic link); `slope_ci` = percentile bootstrap CI (resample docs, refit;
  one draw per field) at level 1 - 0.05/k over the k trended fields, `significant` = it excludes 0;
  `ols_p_value` = the OLS t-test of slope = 0 (`scipy.stats.linregress`; approximate for 0/1 data, shown for
  reference, not the verdict); `baseline_slope` / `candidate_slope` are the same fit of b_i and c_i
  (accuracy per unit of x). A positive `slope` means the candidate's gain grows with the field.
- **pooling and pairing**: an arm is one sample log or several (e.g. the 20 MVBench subtasks); docs pair by
  (task, doc id), the task read from lmms-eval's file name `<date>_samples_<task>.jsonl` (a video-free twin
  such as `videomme_no_visual` or `*_blind` pairs with its video task; with one log per arm, docs pair by id
  alone). Every statistic above is over the pooled docs (micro average: each question counts once, so a
  task's weight is its number of questions); `--by task` gives the per-task rows. Per-question correctness
  comes from the task's reader in `dna_vlm.eval.logs.readers.READERS` (it reproduces the stock task's rule).
  Checks (errors): every arm holds the same (task, doc id)s; paired docs are the same question by their
  content (`pairing`): whatever both logs carry of the prompt text, the logged `doc` fields (file locations
  by base name), the gold `target` / `answer` (between logs of one task or its twins) and the reader's
  question fields (category, density, clip name) must agree, and a pair counts as verified
  (`questions_checked`) when the prompt, the doc or a distinguishing `doc_hash` agrees; `evidence` counts the
  pairs per kind that agreed; `questions_unverified` counts pairs with nothing of that to compare. A
  `doc_hash` shared by several docs of a log is no evidence and is dropped (`doc_hash_ignored`: lmms-eval
  0.7.3 writes sha256(null) on every row). No file is given to two arms; a `--blind` log was answered
  without the video (`blind_verified`: from a `*_no_visual`/`*_blind` task, the records' `blind: true`, the
  plugin's provenance `controls.video`, else the records' `blind: false`; null/false = could not be told).
- **roles**: each input checked against the provenance of its run (`<date>_dna_vlm.json`): `--baseline` and
  `--candidate` are full-video runs without encoder noise, one model per arm; `--control NAME` (none, blind,
  shuffled, single) and `--noise SIGMA` were run with that control / sigma, and they and `--oracle` with the
  baseline's model (same weights digest; for stock models the same base and patch); `--oracle` is on the
  oracle input (an `*_oracle` task or clips under synth-data's oracle folder; the baseline's own clips are
  refused). A contradiction is an error naming the flag, the file and what the provenance says; a check
  that cannot be made (no provenance) is listed under `unverified` and warned about. `probe_join`: the
  probe's test rows against the baseline's questions (its test file: gold answer, question, category,
  density; its `asked` labels: the gold option text in the prompt).
- **arms**: what each arm was, from the dna_vlm plugin's provenance beside the logs (`<date>_dna_vlm.json`):
  base model, run dir and weights digest, DnA or stock, controls, frame sampling.
- **failed samples**: rows the plugin marked `failed` (missing/corrupt video, with a `reason`). Default
  `--failed exclude`: a doc failed in ANY supplied log (baseline, candidate or blind) is removed from every
  comparison, so all arms are scored on the same docs (`failed.excluded_docs` says how many). With
  `--failed wrong` a failed sample counts as a wrong answer and all docs are kept.

With a blind log (`blind`):

- **video_reliance[m]** for m in baseline, candidate: acc(m) - acc(blind), with the same exact CI, McNemar p
  and verdict fields (m vs blind; the two are one family). It splits as `video_helps` - `video_hurts` (divided by n), where
  `video_helps` = #(m right, blind wrong) and `video_hurts` = #(m wrong, blind right).
- **blind_overlap[m]**: #(m right and blind right) / #(m right): the fraction of m's correct answers that
  need no video (Wilson CI over m's correct docs). High overlap = accuracy that says little about the encoder.
- **cells**: the eight counts #(b, c, k), keyed "RRR" ... "WWW" (baseline, candidate, blind).
- **error decomposition** (`decomposition`), a partition of each model's errors:
  - `encoder_fixed` = #WR* (baseline wrong, candidate right): errors the encoder change fixes
    (encoder-attributable); `encoder_broken` = #RW* (baseline right, candidate wrong): errors it introduces.
    Their difference is n * delta; single flips can be noise, the net and its CI/p-value are the evidence.
  - `shared_errors` = #WWW: every variant wrong (baseline, candidate and blind): LLM- or data-bound errors
    that no encoder variant here fixes.
  - `video_hurts_both` = #WWR: both video models wrong although the blind model is right: the video
    misleads both (or the blind model guessed right).
  - baseline errors = encoder_fixed + shared_errors + video_hurts_both; candidate errors = encoder_broken +
    shared_errors + video_hurts_both; the `*_share` fields are these parts divided by that model's errors.
  - `video_hurts_baseline` = #W*R and `video_hurts_candidate` = #*WR: docs the blind model gets right but that
    video model gets wrong (overlaps the parts above; equals video_reliance's `video_hurts`).
"""

if __doc__ is not None:
    __doc__ += "\n" + DEFINITIONS

MISSING = "(missing)"


# ----------------------------------------------------------------------------------------------------------
# the blind analysis


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _blind_stats(b, c, k, family: str = "video reliance") -> dict:
    """Blind accuracy, each video model's reliance on / overlap with the blind model, and the error split.
    The two reliances are one family (``family``) until :func:`_field_stats` pools a field's groups."""
    n = len(b)
    kk = int(k.sum())
    out: dict = {"n": n, "correct": kk, "acc": kk / n if n else math.nan, "ci95": wilson_ci(kk, n)}
    out["video_reliance"], out["blind_overlap"] = {}, {}
    for arm, m in (("baseline", b), ("candidate", c)):
        out["video_reliance"][arm] = _video_reliance(m, k)
        out["blind_overlap"][arm] = _blind_overlap(m, k)
    apply_family(out["video_reliance"], family)
    out["cells"] = _cells(b, c, k)
    out["decomposition"] = _decomposition(out["cells"], n - int(b.sum()), n - int(c.sum()))
    return out


def _video_reliance(m, k) -> dict:
    """acc(m) - acc(blind) as a paired comparison of model ``m`` against the blind model ``k``."""
    r = compare(k, m)
    keep = ("n", "delta", "delta_ci95", "mcnemar_p", "ci_warning", "fixed", "broken")
    return {**{x: r[x] for x in keep}, "video_helps": r["fixed"], "video_hurts": r["broken"]}


def _blind_overlap(m, k) -> dict:
    """The fraction of ``m``'s correct answers that the blind model also gets (they need no video)."""
    right = int(m.sum())
    both = int(np.sum((m == 1) & (k == 1)))
    return {
        "fraction": _ratio(both, right),
        "ci95": wilson_ci(both, right) if right else None,
        "blind_also_right": both,
        "model_right": right,
    }


def _cells(b, c, k) -> dict[str, int]:
    """The eight counts #(b, c, k), keyed "RRR" ... "WWW" in (baseline, candidate, blind) order."""
    cells = {}
    for bb in (1, 0):
        for cc in (1, 0):
            for kv in (1, 0):
                key = "".join("R" if x else "W" for x in (bb, cc, kv))
                cells[key] = int(np.sum((b == bb) & (c == cc) & (k == kv)))
    return cells


def _decomposition(cells: dict[str, int], err_b: int, err_c: int) -> dict:
    """Partition each video model's errors into encoder-attributable, shared and video-hurts parts."""
    fixed, broken = cells["WRR"] + cells["WRW"], cells["RWR"] + cells["RWW"]
    shared, hurts_both = cells["WWW"], cells["WWR"]
    return {
        "baseline_errors": err_b,
        "candidate_errors": err_c,
        "encoder_fixed": fixed,
        "encoder_fixed_blind_right": cells["WRR"],
        "encoder_broken": broken,
        "encoder_broken_blind_right": cells["RWR"],
        "shared_errors": shared,
        "video_hurts_both": hurts_both,
        "video_hurts_baseline": cells["WWR"] + cells["WRR"],
        "video_hurts_candidate": cells["WWR"] + cells["RWR"],
        "baseline_errors_share": {
            "encoder_fixed": _ratio(fixed, err_b),
            "shared_errors": _ratio(shared, err_b),
            "video_hurts_both": _ratio(hurts_both, err_b),
        },
        "candidate_errors_share": {
            "encoder_broken": _ratio(broken, err_c),
            "shared_errors": _ratio(shared, err_c),
            "video_hurts_both": _ratio(hurts_both, err_c),
        },
    }


# ----------------------------------------------------------------------------------------------------------
# the report


def attribute(
    baseline,
    candidate,
    blind=None,
    by: Sequence[str] | str = (),
    out_dir: str | Path | None = None,
    metric: str | None = None,
    failed: str = "exclude",
    bootstrap: int = 10_000,
    seed: int = 0,
    plots: bool = True,
    reader: str | None = None,
    encoder: dict | None = None,
) -> dict:
    """Compare two arms question by question; see ``DEFINITIONS`` for every reported quantity.

    Args:
        baseline, candidate: each one lmms-eval ``--log_samples`` JSONL, or several (a list of files, globs or
            folders: every ``*samples*.jsonl`` under them), e.g. the 20 MVBench subtask logs. Docs pair by
            (task, doc id); the task comes from lmms-eval's file name ``<date>_samples_<task>.jsonl``.
        blind: optional log(s) of the same questions answered without the video.
        by: fields to break the comparison down by (e.g. ``("task", "category")`` or ``"task,density"``).
        out_dir: where to write ``report.json``, ``report.md`` and the PNG plots (nothing written if None).
        metric: force the generic reader on this per-sample metric key (default: the reader identified from
            the log, :func:`dna_vlm.eval.logs.readers.identify_reader`, else the only record dict with
            ``correct`` -- the dna-vlm tasks' ``dna_vlm`` -- else ``accuracy``, else ``acc``, else the only
            numeric metric). reader: force a reader by name (:func:`dna_vlm.eval.logs.readers.reader_names`).
        failed: ``"exclude"`` (drop docs failed in any log) or ``"wrong"`` (failed = wrong answer).
        bootstrap: bootstrap replicates of the quantities with no exact test (trend slopes; the Encoder
            section's ratios and calibration; 0: none of those CIs); seed: their seed. Deltas get exact CIs.
        encoder: the Encoder section's inputs to check before it runs (``{"oracle": logs, "controls": {name:
            logs}, "noise": {sigma: logs}, "probe": probe.json}``, each optional): every log's role against
            its provenance and its questions against the baseline's, the probe's test rows against the
            baseline's questions (``roles`` and ``probe_join`` in the report).

    Returns the report dict (also ``report.json``); its keys are the contract of ``report.json`` and other
    sections may be added beside them. Raises :class:`AttributionError` for unreadable or mismatched logs and
    for an input whose provenance contradicts its role.
    """
    if failed not in ("exclude", "wrong"):
        raise AttributionError(f"failed={failed!r}: use 'exclude' or 'wrong'")
    if isinstance(by, str):
        by = [f.strip() for f in by.split(",") if f.strip()]
    arms, pairing = load_arms({"baseline": baseline, "candidate": candidate, "blind": blind}, metric, reader)
    roles = check_roles(arms, pairing, encoder or {}, metric, reader)
    all_keys = arms["baseline"].keys
    failures = {name: [(k, r) for k, r in arm.records.items() if r.failed] for name, arm in arms.items()}
    keys = _compared_keys(all_keys, failures, failed)
    arrays = {
        name: np.array([arm.records[k].correct for k in keys], dtype=np.int8) for name, arm in arms.items()
    }
    b, c, k = arrays["baseline"], arrays["candidate"], arrays.get("blind")

    report: dict = {"format": "dna-vlm-attribution/2"}
    report.update(compare(b, c, family="headline"))
    report.update(_provenance(arms, failures, failed, len(all_keys) - len(keys), bootstrap, seed))
    report["pairing"] = pairing
    report["roles"] = roles
    if (encoder or {}).get("probe") is not None:
        report["probe_join"] = probe_join(read_probe(encoder["probe"]), encoder["probe"], arms["baseline"])
    report["arms"] = {name: describe_arm(arm) for name, arm in arms.items()}
    if k is not None:
        report["blind"] = _blind_stats(b, c, k)
    report.update(_by_fields(list(dict.fromkeys(by)), arms, keys, (b, c, k), bootstrap, seed))
    report["verdict_rule"] = VERDICT_RULE
    report["definitions"] = DEFINITIONS

    if out_dir is not None:
        write_report(report, out_dir, plots=plots)
    return report


def _by_fields(
    by: list[str], arms: dict[str, Arm], keys: list, arrays: tuple, n_boot: int, seed: int
) -> dict:
    """``by_group``, ``group_order`` and ``trends`` for the ``--by`` fields (``arrays``: b, c, k or None)."""
    out: dict = {"by_group": {}, "group_order": {}, "trends": {}}
    for fld in by:
        vals = [_group_value(arms, key, fld) for key in keys]
        _require_field(fld, vals, arms)
        groups, trend = _field_stats(fld, vals, *arrays, n_boot, seed)
        out["by_group"][fld] = groups
        out["group_order"][fld] = list(groups)  # report.json sorts keys; this keeps the natural order
        if trend is not None:
            out["trends"][fld] = trend
    trend_verdicts(out["trends"])  # the trends of all fields are one family
    return out


def _log_input(log) -> dict:
    return {
        "path": str(log.path), "task": log.task, "sha256": log.sha256, "rows": len(log.records),
        "metric": log.metric, "reader": log.reader, "reader_by": log.reader_by,
    }  # fmt: skip


def _arm_inputs(arm: Arm) -> dict:
    """An arm's inputs: ``path``/``sha256`` of its one log (a digest over all logs when pooled), total rows,
    and one entry per log."""
    logs = [_log_input(log) for log in arm.logs]
    one = len(logs) == 1
    digest = logs[0]["sha256"] if one else hashlib.sha256("".join(sorted(x["sha256"] for x in logs)).encode())
    return {
        "path": logs[0]["path"] if one else None,
        "sha256": digest if one else digest.hexdigest(),
        "rows": len(arm.records),
        "logs": logs,
    }


def _failed_item(key: tuple, rec: SampleRecord) -> dict:
    item = {"id": rec.id, "reason": rec.reason}
    return {"task": key[0], **item} if key[0] else item


def _provenance(arms: dict, failures: dict, failed: str, excluded: int, bootstrap: int, seed: int) -> dict:
    """What was compared and how: inputs with hashes, metrics, bootstrap settings, failed samples."""
    metric = {}
    for name, arm in arms.items():
        per_task = {log.task: log.metric for log in arm.logs}
        metric[name] = next(iter(per_task.values())) if len(set(per_task.values())) == 1 else per_task
    return {
        "n_total": len(arms["baseline"].records),
        "tasks": sorted({key[0] for key in arms["baseline"].records}),
        "metric": metric,
        "bootstrap": bootstrap,
        "seed": seed,
        "inputs": {name: _arm_inputs(arm) for name, arm in arms.items()},
        "failed": {
            "policy": failed,
            "excluded_docs": excluded,
            "counts": {name: len(v) for name, v in failures.items()},
            **{name: [_failed_item(key, r) for key, r in v] for name, v in failures.items()},
        },
    }


def describe_arm(arm: Arm) -> dict:
    """What an arm was, from the dna_vlm plugin's provenance of each log (base model, run dir + weights
    digest, DnA or stock, controls, frame sampling); identical descriptions are listed once."""
    described, unknown = [], []
    for log in arm.logs:
        if log.provenance is None:
            unknown.append(str(log.path))
            continue
        d = _describe(log.provenance)
        if d not in described:
            described.append(d)
    return {"runs": described, "without_provenance": unknown}


def _describe(prov: dict) -> dict:
    base = prov.get("base_model") or {}
    weights = prov.get("weights") or {}
    table = prov.get("patch_table") or []
    return {
        "model": "DnA"
        if table and prov.get("attention") != "softmax"
        else "stock"
        if not table
        else "patched",
        "attention": prov.get("attention"),
        "base_model": base.get("pretrained") or base.get("name_or_path"),
        "base_config_sha256": base.get("config_sha256"),
        "run_dir": prov.get("run_dir") or prov.get("dna_dir"),
        "weights_sha256": weights.get("sha256"),
        "patched_modules": len(table),
        "dna_options": prov.get("dna_options"),
        "controls": prov.get("controls"),
        "frame_sampling": prov.get("frame_sampling"),
        "bad_video": prov.get("bad_video"),
        "dna_vlm_version": prov.get("dna_vlm_version"),
    }


def _compared_keys(all_keys: list, failures: dict[str, list], failed: str) -> list:
    """The docs every arm is scored on: under ``exclude``, a doc failed in any log is dropped from all."""
    bad = {key for recs in failures.values() for key, _ in recs}
    keys = [k for k in all_keys if k not in bad] if failed == "exclude" else all_keys
    if not keys:
        raise AttributionError(
            f"all {len(all_keys)} docs failed in at least one log (see the 'reason' fields); nothing to compare. "
            "Fix the videos or use --failed wrong"
        )
    return keys


def _require_field(fld: str, vals: list, arms: dict[str, Arm]) -> None:
    """Fail with the available field names when no compared doc has ``fld``."""
    if all(v is MISSING for v in vals):
        avail = sorted({f for arm in arms.values() for r in arm.records.values() for f in r.fields})
        raise AttributionError(
            f"--by {fld}: no sample has a field {fld!r} (in the metric dict or doc); available: {avail}"
        )


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def _field_stats(fld: str, vals: list, b, c, k, n_boot: int, seed: int) -> tuple[dict, dict | None]:
    """Per-value group statistics for one ``--by`` field (``vals``: its value per compared doc), and the
    trend over it when it is numeric with >= 3 distinct values (else None)."""
    groups: dict = {}
    for v in sorted(set(vals), key=_sort_key):
        # the type check keeps e.g. 1 and True (equal in Python) in separate groups
        mask = np.array([x == v and type(x) is type(v) for x in vals])
        g = compare(b[mask], c[mask])
        g["value"] = v
        if k is not None:
            g["blind"] = _blind_stats(b[mask], c[mask], k[mask])
        groups[str(v)] = g
    apply_family(groups, f"by {fld}")  # each table is a family
    if k is not None:
        apply_family([r for g in groups.values() for r in g["blind"]["video_reliance"].values()],
                     f"video reliance by {fld}")  # fmt: skip
    present = [v for v in vals if v is not MISSING]
    if not (_numeric(present) and len(set(present)) >= 3):
        return groups, None
    mask = np.array([v is not MISSING for v in vals])
    x = np.array(present, dtype=float)
    return groups, ols_trend(x, b[mask], c[mask], n_boot, seed, f"trend/{fld}")


def _group_value(arms: dict[str, Arm], key: tuple, fld: str):
    for arm in arms.values():
        v = arm.records[key].fields.get(fld, MISSING)
        if v is not MISSING and v is not None:
            return v
    return MISSING


# ----------------------------------------------------------------------------------------------------------
# roles: what each input must have been, checked against the provenance the plugin writes beside its logs

#: ``--control`` names -> the ``controls.video`` their run records ("none" / "blind": no video at all)
CONTROL_VIDEO = {"none": "none", "blind": "none", "shuffled": "shuffled", "single": "single"}
#: doc / record fields the oracle input changes on purpose (its clips have no distractors)
_ORACLE_CHANGES = frozenset({"density", "distractors", "source_density"})


@dataclass(frozen=True)
class Role:
    """What an input must have been: ``flag`` names it (``--noise 0.5``); ``video`` / ``noise``: the input
    controls its run records (``video="none"``: any evidence of no video will do); ``baseline_model``: a run
    of the baseline's model (the Encoder section's controls, noise and oracle runs); ``oracle``: a run on
    the oracle input."""

    flag: str
    video: str = "full"
    noise: float = 0.0
    baseline_model: bool = False
    oracle: bool = False


def _encoder_roles(encoder: dict) -> list[tuple[Role, object]]:
    """``(role, its logs)`` for each Encoder-section input; an unknown ``--control`` name is refused."""
    out: list[tuple[Role, object]] = []
    if encoder.get("oracle") is not None:
        out.append((Role("--oracle", baseline_model=True, oracle=True), encoder["oracle"]))
    for name, src in (encoder.get("controls") or {}).items():
        if name not in CONTROL_VIDEO:
            raise AttributionError(
                f"--control {name}={src}: unknown control {name!r}; use one of {', '.join(CONTROL_VIDEO)} "
                "(the plugin's model_args video=none|shuffled|single, or 'blind' for a *_blind task's run)"
            )
        out.append((Role(f"--control {name}", video=CONTROL_VIDEO[name], baseline_model=True), src))
    for sigma, src in (encoder.get("noise") or {}).items():
        out.append((Role(f"--noise {float(sigma):g}", noise=float(sigma), baseline_model=True), src))
    return out


def check_roles(arms: dict[str, Arm], pairing: dict, encoder: dict, metric=None, reader=None) -> dict:
    """Check every input against its role (raise :class:`AttributionError` naming the flag, the file and what
    its provenance says when they disagree); the Encoder-section inputs' questions against the baseline's.
    Returns ``{flag: {"files", "verified", "unverified"}}`` (and ``questions``: :func:`check_questions`'s
    counts for the Encoder-section inputs): ``verified`` is True when every check could be made,
    ``unverified`` says which could not (no provenance, ...)."""
    base = _arm_identity(arms["baseline"], "--baseline")
    out = {}
    for name in ("baseline", "candidate"):
        _arm_identity(arms[name], f"--{name}")
        out[f"--{name}"] = _check_role(Role(f"--{name}"), arms[name], base, arms["baseline"])
    if "blind" in arms:
        why = [] if pairing["blind_verified"] else ["no provenance, no 'blind' field and a video task name"]
        out["--blind"] = {"files": _paths(arms["blind"]), "verified": not why, "unverified": why}
    for role, src in _encoder_roles(encoder):
        arm = load_arm(role.flag.lstrip("-"), src, metric, reader, pair_with=arms["baseline"])
        questions = check_questions(arms["baseline"], arm, _ORACLE_CHANGES if role.oracle else frozenset())
        out[role.flag] = {**_check_role(role, arm, base, arms["baseline"]), "questions": questions}
    return out


def _paths(arm: Arm) -> list[str]:
    return [str(log.path) for log in arm.logs]


def _check_role(role: Role, arm: Arm, base: dict | None, base_arm: Arm) -> dict:
    gaps = []
    for log in arm.logs:
        found = _video_gaps(role, log)
        found += _model_gaps(role, log, base) if role.baseline_model else []
        found += _oracle_gaps(log, base_arm) if role.oracle else []
        gaps += [f"{log.path.name}: {g}" for g in found]
    return {"files": _paths(arm), "verified": not gaps, "unverified": gaps}


def _controls(prov: dict) -> tuple[str, float]:
    c = prov.get("controls") or {}
    return str(c.get("video") or "full"), float(c.get("encoder_noise") or 0.0)


def _video_gaps(role: Role, log: SampleLog) -> list[str]:
    """What cannot be told about the log's input controls; raises when they contradict the role."""
    video, why = video_evidence(log)
    if role.video == "none" or video is False:
        if video is True or (video is False and role.video != "none"):
            need = "a run without the video" if role.video == "none" else f"a run with video={role.video}"
            raise AttributionError(f"{role.flag} {log.path}: {why}; {role.flag} takes {need}{_fix(role)}")
        return [] if video is False else [why]
    if log.provenance is None:
        return ["no dna_vlm provenance beside it: its input controls cannot be told"]
    mode, sigma = _controls(log.provenance)
    if mode != role.video or not math.isclose(sigma, role.noise, rel_tol=1e-9, abs_tol=1e-12):
        raise AttributionError(
            f"{role.flag} {log.path}: its provenance ({provenance_path(log.path).name}) says "
            f"controls.video={mode!r}, encoder_noise={sigma:g}; {role.flag} takes a run with video={role.video!r}, "
            f"encoder_noise={role.noise:g}{_fix(role)}"
        )
    return []


def _fix(role: Role) -> str:
    """How to make the run a role takes."""
    if role.flag in ("--baseline", "--candidate"):
        return " (a control or noise run goes to --control / --noise / --blind)"
    args = {"none": "video=none", "shuffled": "video=shuffled", "single": "video=single"}.get(role.video, "")
    args = f"encoder_noise={role.noise:g}" if role.noise else args
    return f" (the baseline's model_args{' with ' + args if args else ''})"


def model_identity(prov: dict) -> dict:
    """What model a run evaluated, from its provenance: base model, run dir, weights digest, patch."""
    base, weights = prov.get("base_model") or {}, prov.get("weights") or {}
    return {
        "base_model": base.get("pretrained") or base.get("name_or_path"),
        "run_dir": prov.get("run_dir") or prov.get("dna_dir"),
        "weights_sha256": weights.get("sha256"),
        "patched_modules": len(prov.get("patch_table") or []),
        "dna_options": prov.get("dna_options"),
    }


def _same_model(a: dict, b: dict) -> bool:
    """The same weights (a trained run); else the same base model, patched alike (stock or freshly patched)."""
    if a["weights_sha256"] or b["weights_sha256"]:
        return a["weights_sha256"] == b["weights_sha256"]
    return _patched_base(a) == _patched_base(b)


def _patched_base(m: dict) -> tuple:
    """The base model by its folder or hub name (the same base on another machine) and how it was patched."""
    return Path(str(m["base_model"])).name, m["patched_modules"], m["dna_options"]


def _show_model(m: dict) -> str:
    w = m["weights_sha256"]
    run = f"run_dir={m['run_dir']} (weights {w[:12]}...)" if w else "no run dir (stock weights)"
    return f"{run}, base model {m['base_model']}, {m['patched_modules']} patched modules"


def _arm_identity(arm: Arm, flag: str) -> dict | None:
    """The model of an arm's logs (None without provenance); logs of two models in one arm are refused."""
    found: list[tuple[SampleLog, dict]] = []
    for log in arm.logs:
        if log.provenance is None:
            continue
        m = model_identity(log.provenance)
        other = next((lg for lg, x in found if not _same_model(x, m)), None)
        if other is not None:
            raise AttributionError(
                f"{flag} pools logs of two models: {other.path} ({_show_model(model_identity(other.provenance))}) "
                f"and {log.path} ({_show_model(m)}); pass one model's logs per arm"
            )
        found.append((log, m))
    return found[0][1] if found else None


def _model_gaps(role: Role, log: SampleLog, base: dict | None) -> list[str]:
    if log.provenance is None:
        return ["no dna_vlm provenance beside it: its model cannot be told"]
    if base is None:
        return [
            "the baseline's logs have no dna_vlm provenance: whether this is the baseline's model cannot be told"
        ]
    mine = model_identity(log.provenance)
    if not _same_model(mine, base):
        raise AttributionError(
            f"{role.flag} {log.path}: a run of another model than the baseline: its provenance says "
            f"{_show_model(mine)}; the baseline's says {_show_model(base)}. {role.flag} takes a run of the "
            f"baseline's model{_fix(role)}"
        )
    return []


def _oracle_gaps(log: SampleLog, base_arm: Arm) -> list[str]:
    """Evidence that a log is on the oracle input: an oracle twin task, or clips under the synthetic set's
    oracle folder; refused when it holds the baseline's own clips."""
    if oracle_twin(log.task):
        return []
    videos = {i: str(r.fields["video"]) for i, r in log.records.items() if r.fields.get("video")}
    if videos and all(f"{ORACLE_VIDEOS}/" in v.replace("\\", "/") for v in videos.values()):
        return []
    base = {key[1]: r.fields.get("video") for key, r in base_arm.records.items()}
    same = [i for i, v in videos.items() if base.get(i) == v]
    if same and len(same) == len(videos):
        raise AttributionError(
            f"--oracle {log.path}: not a run on the oracle input: its task {log.task!r} is no oracle twin (*_oracle) "
            f"and it holds the baseline's own clips (e.g. {same[0]!r}: {videos[same[0]]}); pass the baseline "
            f"model's log of the oracle task (dna_vlm_synth_oracle on synth-data's test_oracle.jsonl, clips under "
            f"{ORACLE_VIDEOS}/)"
        )
    return [f"its task {log.task!r} is no oracle twin and its clips are not under {ORACLE_VIDEOS}/: whether it is "
            "on the oracle input cannot be told"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# the probe: read probe.json, check that its test rows are the baseline's questions


def read_probe(path) -> dict:
    """A ``dna-vlm probe`` result (``probe.json``), checked to hold what the Encoder section reads; errors name
    the file and what was expected."""
    p = Path(path)
    expected = f"expected the probe.json `dna-vlm probe --out DIR` writes (format {PROBE_FORMAT!r})"
    if not p.is_file():
        raise AttributionError(f"--probe {p}: no such file; {expected}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = (
            f" ({e.msg} at line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        )
        raise AttributionError(
            f"--probe {p}: not valid JSON{where}: a truncated or partly written file? Rerun dna-vlm probe; {expected}"
        ) from None
    problem = _probe_problem(data)
    if problem:
        raise AttributionError(f"--probe {p}: {problem}; {expected}")
    return data


def _probe_problem(data) -> str | None:
    """What makes ``data`` not a probe result (None when it is one)."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    fmt = data.get("format")
    if fmt is not None and fmt != PROBE_FORMAT:
        what = "a dna-vlm attribute report" if str(fmt).startswith("dna-vlm-attribution") else "another file"
        return f"its format is {fmt!r} ({what}), not a probe result"
    arms = data.get("arms")
    if not isinstance(arms, dict) or not arms:
        return "no 'arms' (probe results per arm)"
    for name, arm in arms.items():
        if not isinstance(arm, dict) or not isinstance(arm.get("labels"), dict):
            return f"arm {name!r} has no 'labels'"
        for view, block in {**arm["labels"], "asked": arm.get("asked")}.items():
            if block is not None and not _predictions_ok(block):
                return f"arm {name!r} view {view!r} has no per-row 'predictions' (id, label, correct)"
    return None


def _predictions_ok(block) -> bool:
    preds = block.get("predictions") if isinstance(block, dict) else None
    return isinstance(preds, list) and all(isinstance(x, dict) and {"id", "correct"} <= set(x) for x in preds)


def probe_join(probe: dict, path, base: Arm) -> dict:
    """Whether the probe's test rows are the baseline's QA questions (same id, same question): each id's gold
    answer, question text, category and density against the probe's test file (when it is still there and
    still holds the labels the probe was scored on), and each ``asked`` label against the gold option text
    the QA prompt lists. Raises naming the ids that differ; returns ``{"verified", "checked", "by", "note"}``
    (``verified`` None: nothing could be compared)."""
    qa: dict[str, dict] = {}
    for key, q in base.questions.items():
        qa.setdefault(key[1], q)
    views, template = _probe_views(probe)
    rows, note = _probe_test_rows(probe, Path(path), views, template)
    asked = views.get("asked", {})
    bad, checked, by = [], 0, set()
    for i, q in qa.items():
        diffs = _row_diffs(rows[i], q) if i in rows else None
        label = _label_diff(asked[i], q) if i in asked else None
        by |= {"test file"} if diffs is not None else set()
        by |= {"asked labels"} if label is not None else set()
        checked += diffs is not None or label is not None
        found = (diffs or []) + ([label] if label else [])
        bad += [(i, found)] if found else []
    if bad:
        first = "; ".join(f"{i!r}: {', '.join(d)}" for i, d in bad[:3])
        raise AttributionError(
            f"--probe {path}: its test rows are not the baseline's questions: {len(bad)} of {len(qa)} ids differ "
            f"({first}). Was the probe made on another test set (another synth seed)? Rerun dna-vlm probe with "
            "--test on the data the QA logs were evaluated on"
        )
    return {"verified": True if checked else None, "checked": checked, "by": sorted(by), "note": note}


def _probe_views(probe: dict) -> tuple[dict[str, dict[str, str]], str | None]:
    """``({view: {row id: label}}, asked template)`` of one arm: every arm is scored on the same test rows."""
    arm = next(iter(probe["arms"].values()))
    blocks = {f"label:{k}": v for k, v in arm["labels"].items()}
    if arm.get("asked"):
        blocks["asked"] = arm["asked"]
    views = {v: {str(p["id"]): str(p.get("label")) for p in b["predictions"]} for v, b in blocks.items()}
    template = (arm.get("asked") or {}).get("template") or (probe.get("settings") or {}).get("asked")
    return views, template


def _probe_test_rows(probe: dict, path: Path, views: dict, template: str | None) -> tuple[dict, str]:
    """The probe's test file rows by id, and a note; ({}, why) when it is gone or no longer what was probed."""
    test = (probe.get("settings") or {}).get("test")
    if not test:
        return {}, "probe.json names no test file"
    found = next((c for c in (Path(test), path.parent / test) if c.is_file()), None)
    if found is None:
        return {}, f"its test file {test} is not on this machine"
    try:
        rows = {str(r["id"]): r for r in map(json.loads, found.read_text().splitlines()) if r}
    except (ValueError, TypeError, KeyError):
        return {}, f"its test file {found} is not a dataset JSONL"
    stale = [i for v, labels in views.items() for i, lab in labels.items()
             if i in rows and _row_label(rows[i], v, template) != lab]  # fmt: skip
    if stale:
        return (
            {},
            f"its test file {found} no longer holds the labels it was probed on ({len(stale)} differ): not used",
        )
    return rows, f"checked against its test file {found}"


def _row_label(row: dict, view: str, template: str | None) -> str | None:
    try:
        field = view.removeprefix("label:") if view != "asked" else (template or "").format(**row)
    except (KeyError, IndexError, ValueError):
        return None
    return str(row.get(field))


def _row_diffs(row: dict, q: dict) -> list[str]:
    """How a probe test row differs from a QA question (gold answer, question text, category, density)."""
    diffs = []
    if "answer" in q and row.get("answer") is not None and str(row["answer"]) != q["answer"]:
        diffs.append(f"answer {row['answer']!r} in the probe's test file vs {q['answer']!r} in the QA log")
    if "input" in q and isinstance(row.get("question"), str) and row["question"] not in q["input"]:
        diffs.append(f"question {row['question'][:50]!r} is not in the QA prompt")
    fields = q.get("fields") or {}
    diffs += [f"{k} {row[k]!r} vs {fields[k]!r}" for k in ("category", "density") if k in row and k in fields and row[k] != fields[k]]  # fmt: skip
    return diffs


_OPTION = re.compile(r"^\s*\(?([A-Z])[.)]\s+(.+?)\s*$", re.M)


def _label_diff(label: str, q: dict) -> str | None:
    """'' when the probe's asked label is the gold option the QA prompt lists, a difference when it is another
    option, None when it cannot be compared (no options, no gold, or the label is no option)."""
    options = {m.group(1): m.group(2) for m in _OPTION.finditer(q.get("input") or "")}
    gold = q.get("answer") if q.get("answer") in options else q.get("target")
    if gold not in options or label not in options.values():
        return None
    return (
        ""
        if options[gold] == label
        else f"probe label {label!r} but the QA gold is {gold}. {options[gold]!r}"
    )


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``dna-vlm attribute`` (its one-line help is in :data:`dna_vlm.cli.SUBCOMMANDS`)."""
    p = subparsers.add_parser(
        "attribute",
        description="Compare a baseline and a candidate (and optionally a video-blind) arm of lmms-eval "
        "--log_samples JSONL question by question (several logs per arm are pooled by task and doc id): Wilson CIs, the exact McNemar test and the exact CI of the delta that inverts it (Bonferroni within each table), minimal detectable effects, flips, "
        "per-group breakdowns and an error decomposition. Writes report.json, report.md and PNG plots.",
    )
    logs = "lmms-eval --log_samples JSONL file(s), glob(s) or folder(s) (every *samples*.jsonl under it)"
    p.add_argument("--baseline", required=True, nargs="+", help=f"baseline model's {logs}")
    p.add_argument(
        "--candidate", required=True, nargs="+", help=f"candidate model's {logs} (e.g. the DnA run)"
    )
    p.add_argument("--blind", nargs="+", help="the same questions answered without the video (same forms)")
    p.add_argument(
        "--by",
        default="",
        help="comma-separated fields to break down by, e.g. task,category,density ('task': per lmms-eval task)",
    )
    p.add_argument(
        "--metric",
        default=None,
        help="force this per-sample metric key with the generic reader (default: the reader identified from "
        "the log, see eval/logs/readers.py; else the dna_vlm record, else accuracy, else acc, else the only one)",
    )
    p.add_argument(
        "--reader",
        default=None,
        metavar="NAME",
        help="force a correctness reader, e.g. for a renamed copy of a stock task the logs do not identify "
        f"(default: from the task name, the results JSON's task config or the metric's shape): "
        f"{', '.join(reader_names())}",
    )
    p.add_argument("--failed", choices=("exclude", "wrong"), default="exclude", help="failed samples policy")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=10_000,
        help="bootstrap replicates for slopes and ratios (0: no bootstrap CIs; deltas' CIs are exact)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap resampling behind the CIs (default: 0)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", required=True, help="report folder (report.json, report.md, *.png)")
    add_encoder_args(p)  # the Encoder section: --probe, --oracle, --control, --noise (eval/encoder.py)
    p.set_defaults(func=_main)
    return p


def _encoder_inputs(args) -> dict:
    """The Encoder section's inputs as :func:`attribute` checks them (``NAME=PATH`` / ``SIGMA=PATH`` pairs)."""
    pairs = {}
    for flag in ("control", "noise"):
        pairs[flag] = {}
        for item in getattr(args, flag):
            key, sep, path = item.partition("=")
            if not sep or not key or not path:
                raise AttributionError(
                    f"--{flag} {item!r}: expected {'NAME' if flag == 'control' else 'SIGMA'}=PATH"
                )
            pairs[flag][key] = path
    try:
        noise = {float(k): v for k, v in pairs["noise"].items()}
    except ValueError:
        raise AttributionError(f"--noise: SIGMA must be a number, got {sorted(pairs['noise'])}") from None
    return {"oracle": args.oracle, "controls": pairs["control"], "noise": noise, "probe": args.probe}


def _main(args) -> int:
    by = (
        [f.strip() for f in args.by.split(",") if f.strip()]
        if isinstance(args.by, str)
        else list(args.by or ())
    )
    try:
        report = attribute(
            args.baseline,
            args.candidate,
            blind=args.blind,
            by=by,
            metric=args.metric,
            failed=args.failed,
            bootstrap=args.bootstrap,
            seed=args.seed,
            reader=args.reader,
            encoder=_encoder_inputs(args),
        )
        section = encoder_section_from_args(
            args,
            args.baseline,
            args.candidate,
            by=by,
            n_boot=args.bootstrap,
            seed=args.seed,
            out_dir=args.out,
        )
    except (AttributionError, EncoderError) as e:
        print(f"dna-vlm attribute: error: {e}", file=sys.stderr)
        return 2
    if section is not None:
        report["encoder"] = section
    write_report(report, args.out, plots=not args.no_plots)
    for line in role_warnings(report):
        print(f"dna-vlm attribute: warning: {line}", file=sys.stderr)
    print(summary_table(report))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0
