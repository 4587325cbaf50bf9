"""`dna-vlm attribute`: paired, per-question comparison of two lmms-eval sample logs (baseline vs candidate,
optionally a video-blind run of the same questions), with statistics a reviewer can check.

Input: the JSONL files lmms-eval writes with ``--log_samples`` (``*_samples_<task>.jsonl``, one row per
question: ``doc_id``, ``target``, ``filtered_resps`` and one key per metric). Each row's metric value is either a
number (0/1) or a dict such as the dna-vlm plugin's ``{"id", "category", "density", "correct", "pred",
"answer", "failed", "reason"}``. Rows are matched across files by the question id: the metric dict's ``id``,
else ``doc["id"]`` (older lmms-eval versions keep ``doc``), else ``doc_id``.

Python API: :func:`attribute` (returns the report dict and writes ``report.json``, ``report.md`` and PNG plots
when ``out_dir`` is given), :func:`summary_table`, :func:`load_samples`. Every quantity is defined in
``DEFINITIONS`` below (also appended to this docstring and written into each ``report.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._report_io import json_safe, pyplot, safe_name, save_png

__all__ = ["DEFINITIONS", "AttributionError", "SampleLog", "attribute", "load_samples", "summary_table"]

DEFINITIONS = """\
## Definitions

Notation: the compared set holds n questions (docs) present in every log. For doc i, b_i, c_i, k_i in {0, 1}
say whether the baseline, the candidate and the blind model (same questions, no video) answered it
correctly. Cell names use the order baseline, candidate, blind: "RW" = baseline right, candidate wrong.

- **accuracy** (`baseline_acc`, `candidate_acc`, `blind.acc`): mean of the 0/1 correctness over the n docs.
- **95% CI of an accuracy** (`*_ci95`): the Wilson score interval, p~ = (p + z^2/2n) / (1 + z^2/n),
  half-width = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2), z = 1.959964 (scipy's `binomtest(...).proportion_ci(method="wilson")`).
- **delta**: candidate_acc - baseline_acc = (fixed - broken) / n.
- **flips**: `fixed` = #docs with b=0, c=1 (wrong -> right); `broken` = #(b=1, c=0) (right -> wrong);
  `both_right` = #(b=1, c=1); `both_wrong` = #(b=0, c=0). They sum to n.
- **delta_ci95**: paired bootstrap percentile interval (2.5th, 97.5th percentile of B replicates): each
  replicate resamples the n docs with replacement, keeping each doc's (b_i, c_i) pair together, and recomputes
  delta. Because c_i - b_i takes only the values -1/0/+1, a replicate is drawn exactly as multinomial counts
  of (fixed, broken, unchanged) with probabilities (fixed/n, broken/n, rest/n) -- the same distribution as
  resampling doc indices. numpy Generator seeded from `--seed` and the quantity's name (deterministic).
- **significant**: the delta_ci95 interval excludes 0. With few discordant docs (fixed + broken < 10, e.g.
  small groups) the percentile bootstrap is too narrow (it can collapse to a point): `ci_warning` says so and
  report.md marks the row with a dagger; rely on mcnemar_p there.
- **mcnemar_p**: exact McNemar test: two-sided exact binomial test of `fixed` successes in fixed + broken
  trials with p = 0.5 (`scipy.stats.binomtest(broken, broken + fixed, 0.5)`); 1 when fixed + broken = 0.
  It asks whether the flips are more one-sided than chance; both_right/both_wrong carry no information.
- **by_group[field][value]**: the same statistics restricted to the docs whose `field` (read from the
  metric dict, else from `doc`) equals `value`. `mcnemar_p_holm` is Holm's step-down adjustment of the group
  p-values within one field (use it when scanning many groups).
- **trends[field]** (numeric fields with >= 3 distinct values, e.g. density): `slope` = ordinary least
  squares slope of d_i = c_i - b_i on the field's value x_i over docs (change of delta per unit of x; a
  linear probability model, no logistic link), `slope_ci95` = paired bootstrap over docs (resample docs,
  refit), `p_value` = the OLS t-test of slope = 0 (`scipy.stats.linregress`; approximate for 0/1 data);
  `baseline_slope` / `candidate_slope` are the same fit of b_i and c_i (accuracy per unit of x). A positive
  `slope` means the candidate's gain grows with the field, e.g. with semantic density.
- **failed samples**: rows the plugin marked `failed` (missing/corrupt video, with a `reason`). Default
  `--failed exclude`: a doc failed in ANY supplied log (baseline, candidate or blind) is removed from every
  comparison, so all arms are scored on the same docs (`failed.excluded_docs` says how many). With
  `--failed wrong` a failed sample counts as a wrong answer and all docs are kept.

With a blind log (`blind`):

- **video_reliance[m]** for m in baseline, candidate: acc(m) - acc(blind), with the same paired bootstrap CI
  and exact McNemar p (m vs blind). It splits as `video_helps` - `video_hurts` (divided by n), where
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

Z95 = 1.959963984540054
ARMS = ("baseline", "candidate", "blind")
# keys lmms-eval writes in every sample row that are not metrics
_NON_METRIC = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "token_counts",
    "doc_hash",
    "prompt_hash",
    "target_hash",
    "input",
    "input_media",
}
_CORRECT_KEYS = ("correct", "score", "acc", "accuracy")
_RESERVED = {"correct", "score", "acc", "pred", "answer", "failed", "reason", "id"}
MISSING = "(missing)"


class AttributionError(ValueError):
    """A sample log cannot be read or the logs cannot be compared (the message says which file/line)."""


# ----------------------------------------------------------------------------------------------------------
# reading the logs


@dataclass
class Record:
    id: str
    correct: int  # 0/1; 0 when failed
    failed: bool
    reason: str | None
    fields: dict  # scalar fields of the metric dict, then of doc (metric dict wins)
    pred: object = None
    answer: object = None
    source: str = ""


@dataclass
class SampleLog:
    path: Path
    metric: str
    sha256: str
    records: dict[str, Record] = field(default_factory=dict)  # id -> record, in file order

    @property
    def ids(self) -> list[str]:
        return list(self.records)


def _resolve(path: str | Path) -> Path:
    """A file, or a folder holding exactly one ``*samples*.jsonl`` (e.g. lmms-eval's output folder)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.rglob("*samples*.jsonl"))
        if len(found) != 1:
            what = "no *samples*.jsonl file" if not found else f"{len(found)} *samples*.jsonl files"
            names = "".join(f"\n  {f}" for f in found[:10])
            raise AttributionError(f"{p}: is a folder with {what}; pass the sample log file itself{names}")
        return found[0]
    if not p.is_file():
        raise AttributionError(f"{p}: no such sample log (expected lmms-eval's --log_samples JSONL)")
    return p


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _is_record(v) -> bool:
    """A per-sample record dict (the dna-vlm plugin's ``dna_vlm`` metric, or a task's own dict metric)."""
    return isinstance(v, dict) and any(c in v for c in (*_CORRECT_KEYS, "failed"))


def _pick_metric(row: dict, where: str) -> str:
    """Default metric: the only record dict with 'correct' (dna-vlm's ``dna_vlm``), else ``accuracy``, else
    ``acc``, else the only numeric metric (``failed`` counts are never a correctness metric)."""
    metrics = {k: v for k, v in row.items() if k not in _NON_METRIC and k != "failed"}
    records = [k for k, v in metrics.items() if _is_record(v)]
    if len(records) == 1:
        return records[0]
    for name in ("accuracy", "acc"):
        if name in metrics and (isinstance(metrics[name], (int, float)) or _is_record(metrics[name])):
            return name
    numeric = [k for k, v in metrics.items() if isinstance(v, (int, float))]  # bool too
    cands = records or numeric
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise AttributionError(
            f"{where}: no per-sample metric found (keys: {sorted(row)}); is this an lmms-eval --log_samples file?"
        )
    raise AttributionError(f"{where}: several metrics {sorted(cands)}; choose one with --metric")


def _as01(v, where: str, metric: str) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    raise AttributionError(
        f"{where}: metric {metric!r} gives {v!r}; attribute needs per-sample 0/1 correctness "
        "(a number 0/1 or a dict with 'correct')"
    )


def load_samples(path: str | Path, metric: str | None = None) -> SampleLog:
    """Read one lmms-eval sample log. ``metric=None`` picks ``accuracy`` or the only metric present."""
    p = _resolve(path)
    raw = p.read_bytes()
    log = SampleLog(p, metric or "", hashlib.sha256(raw).hexdigest())
    first: dict[str, str] = {}
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AttributionError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise AttributionError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        if not log.metric:
            log.metric = _pick_metric(row, where)
        if log.metric not in row:
            keys = sorted(k for k in row if k not in _NON_METRIC)
            raise AttributionError(f"{where}: no metric {log.metric!r} in this row (its metrics: {keys})")
        rec = _record(row, log.metric, where)
        if rec.id in log.records:
            raise AttributionError(
                f"{where}: duplicate doc id {rec.id!r} (first at line {first[rec.id]}); lmms-eval appends to an "
                "existing samples file when a run is repeated -- use one run's log"
            )
        first[rec.id] = str(lineno)
        log.records[rec.id] = rec
    if not log.records:
        raise AttributionError(f"{p}: no samples (empty file); was lmms-eval run with --log_samples?")
    return log


def _record(row: dict, metric: str, where: str) -> Record:
    v = row[metric]
    doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
    # the record dict: the metric itself, or (for a numeric metric) a sibling record such as dna-vlm's `dna_vlm`
    rec = v if isinstance(v, dict) else None
    if rec is None:
        rec = next((x for k, x in row.items() if k not in _NON_METRIC and _is_record(x)), None)
    fields = {k: x for k, x in doc.items() if _scalar(x)}
    failed, reason, pred, answer, vid = bool(row.get("failed", False)), None, None, row.get("target"), None
    if rec is not None:
        fields.update({k: x for k, x in rec.items() if _scalar(x) and k not in _RESERVED})
        failed = failed or bool(rec.get("failed", False))
        reason = rec.get("reason")
        pred, answer, vid = rec.get("pred"), rec.get("answer", answer), rec.get("id")
    if isinstance(v, dict):
        key = next((k for k in _CORRECT_KEYS if k in v), None)
        if key is None and not failed:
            raise AttributionError(f"{where}: metric {metric!r} has no 'correct' field (keys: {sorted(v)})")
        correct = 0 if failed else _as01(v[key], where, metric)
    else:
        correct = _as01(v, where, metric)
        if failed:
            correct = 0
    if vid is None:
        vid = doc.get("id")
    if vid is None:
        vid = row.get("doc_id")
    if vid is None:
        raise AttributionError(f"{where}: no doc id (no metric 'id', doc['id'] or doc_id)")
    if pred is None:
        pred = row.get("filtered_resps")
    return Record(
        str(vid), correct, failed, None if reason is None else str(reason), fields, pred, answer, where
    )


def _check_same_ids(ref: SampleLog, other: SampleLog, ref_name: str, other_name: str) -> None:
    a, b = set(ref.records), set(other.records)
    if a == b:
        return
    only_a, only_b = sorted(a - b), sorted(b - a)

    def few(ids):
        return ", ".join(repr(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")

    raise AttributionError(
        f"the {ref_name} and {other_name} logs hold different questions: {len(only_a)} doc ids only in "
        f"{ref.path} ({ref_name}){': ' + few(only_a) if only_a else ''}; {len(only_b)} only in {other.path} "
        f"({other_name}){': ' + few(only_b) if only_b else ''}. Compare logs of the same task, split and --limit."
    )


# ----------------------------------------------------------------------------------------------------------
# statistics


def wilson_ci(k: int, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval for k successes in n trials ([nan, nan] when n = 0)."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    den = 1 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, center - half), min(1.0, center + half)]


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs at p = 0.5."""
    if fixed + broken == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(broken, fixed + broken, 0.5).pvalue)


def _rng(seed: int, name: str) -> np.random.Generator:
    """One independent stream per quantity, so adding groups or arms never changes another CI."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


def paired_bootstrap_ci(
    x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, name: str
) -> list[float] | None:
    """95% percentile CI of mean(y) - mean(x) for paired 0/1 arrays, resampling docs with replacement."""
    n = len(x)
    if n_boot <= 0 or n == 0:
        return None
    up = int(np.sum((y == 1) & (x == 0)))
    down = int(np.sum((y == 0) & (x == 1)))
    counts = _rng(seed, name).multinomial(n, [up / n, down / n, (n - up - down) / n], size=n_boot)
    deltas = (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return [float(lo), float(hi)]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _compare(b: np.ndarray, c: np.ndarray, n_boot: int, seed: int, name: str) -> dict:
    n = len(b)
    kb, kc = int(b.sum()), int(c.sum())
    fixed = int(np.sum((b == 0) & (c == 1)))
    broken = int(np.sum((b == 1) & (c == 0)))
    ci = paired_bootstrap_ci(b, c, n_boot, seed, name)
    return {
        "n": n,
        "baseline_correct": kb,
        "candidate_correct": kc,
        "baseline_acc": kb / n if n else math.nan,
        "candidate_acc": kc / n if n else math.nan,
        "baseline_ci95": wilson_ci(kb, n),
        "candidate_ci95": wilson_ci(kc, n),
        "delta": (kc - kb) / n if n else math.nan,
        "delta_ci95": ci,
        "significant": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)),
        "ci_warning": _ci_warning(fixed + broken),
        "mcnemar_p": mcnemar_exact(fixed, broken),
        "fixed": fixed,
        "broken": broken,
        "both_right": int(np.sum((b == 1) & (c == 1))),
        "both_wrong": int(np.sum((b == 0) & (c == 0))),
    }


MIN_DISCORDANT = 10


def _ci_warning(discordant: int) -> str | None:
    if discordant >= MIN_DISCORDANT:
        return None
    return (
        f"only {discordant} discordant docs (< {MIN_DISCORDANT}): the bootstrap CI is unreliable here, "
        "use mcnemar_p"
    )


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _blind_stats(b, c, k, n_boot: int, seed: int, name: str) -> dict:
    """Blind accuracy, each video model's reliance on / overlap with the blind model, and the error split."""
    n = len(b)
    kk = int(k.sum())
    out: dict = {"n": n, "correct": kk, "acc": kk / n if n else math.nan, "ci95": wilson_ci(kk, n)}
    out["video_reliance"], out["blind_overlap"] = {}, {}
    for arm, m in (("baseline", b), ("candidate", c)):
        out["video_reliance"][arm] = _video_reliance(m, k, n_boot, seed, f"{name}/reliance/{arm}")
        out["blind_overlap"][arm] = _blind_overlap(m, k)
    out["cells"] = _cells(b, c, k)
    out["decomposition"] = _decomposition(out["cells"], n - int(b.sum()), n - int(c.sum()))
    return out


def _video_reliance(m, k, n_boot: int, seed: int, name: str) -> dict:
    """acc(m) - acc(blind) as a paired comparison of model ``m`` against the blind model ``k``."""
    n = len(m)
    helps = int(np.sum((m == 1) & (k == 0)))
    hurts = int(np.sum((m == 0) & (k == 1)))
    ci = paired_bootstrap_ci(k, m, n_boot, seed, name)
    return {
        "delta": (helps - hurts) / n if n else math.nan,
        "delta_ci95": ci,
        "significant": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)),
        "mcnemar_p": mcnemar_exact(helps, hurts),
        "video_helps": helps,
        "video_hurts": hurts,
    }


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


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _trend(x: np.ndarray, b: np.ndarray, c: np.ndarray, n_boot: int, seed: int, name: str) -> dict:
    from scipy.stats import linregress

    d = (c - b).astype(float)
    x = x.astype(float)

    def slope(xx, yy):
        xm = xx - xx.mean(axis=-1, keepdims=True)
        var = (xm * xm).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (xm * (yy - yy.mean(axis=-1, keepdims=True))).sum(axis=-1) / var

    fit = linregress(x, d) if np.ptp(d) > 0 else None
    ci = None
    if n_boot > 0:
        rng, n, reps = _rng(seed, name), len(x), []
        chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
        done = 0
        while done < n_boot:
            m = min(chunk, n_boot - done)
            idx = rng.integers(0, n, size=(m, n))
            reps.append(slope(x[idx], d[idx]))
            done += m
        reps = np.concatenate(reps)
        lo, hi = np.nanpercentile(reps, [2.5, 97.5])
        ci = [float(lo), float(hi)]
    return {
        "n": len(x),
        "buckets": len(np.unique(x)),
        "slope": float(slope(x, d)),
        "slope_ci95": ci,
        "p_value": float(fit.pvalue) if fit is not None else 1.0,
        "significant": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)),
        "baseline_slope": float(slope(x, b.astype(float))),
        "candidate_slope": float(slope(x, c.astype(float))),
        "method": "OLS of (candidate - baseline) per-doc correctness on the field's value; bootstrap CI over docs",
    }


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


# ----------------------------------------------------------------------------------------------------------
# the report


def attribute(
    baseline: str | Path,
    candidate: str | Path,
    blind: str | Path | None = None,
    by: Sequence[str] | str = (),
    out_dir: str | Path | None = None,
    metric: str | None = None,
    failed: str = "exclude",
    bootstrap: int = 10_000,
    seed: int = 0,
    plots: bool = True,
) -> dict:
    """Compare two sample logs question by question; see ``DEFINITIONS`` for every reported quantity.

    Args:
        baseline, candidate: lmms-eval ``--log_samples`` JSONL files (or folders holding exactly one).
        blind: optional log of the same questions answered without the video.
        by: fields to break the comparison down by (e.g. ``("category", "density")`` or ``"category,density"``).
        out_dir: where to write ``report.json``, ``report.md`` and the PNG plots (nothing written if None).
        metric: the per-sample metric key. Default: the only record dict with ``correct`` (the dna-vlm tasks'
            ``dna_vlm``), else ``accuracy``, else ``acc``, else the only numeric metric. A numeric metric still
            takes ids, groups and failures from a record dict in the same row.
        failed: ``"exclude"`` (drop docs failed in any log) or ``"wrong"`` (failed = wrong answer).
        bootstrap: number of paired bootstrap replicates (0 disables the CIs); seed: their seed.

    Returns the report dict (also ``report.json``). Raises :class:`AttributionError` for unreadable or
    mismatched logs.
    """
    if failed not in ("exclude", "wrong"):
        raise AttributionError(f"failed={failed!r}: use 'exclude' or 'wrong'")
    if isinstance(by, str):
        by = [f.strip() for f in by.split(",") if f.strip()]
    by = list(dict.fromkeys(by))
    logs = _load_logs(baseline, candidate, blind, metric)
    all_ids = logs["baseline"].ids
    failures = {arm: [r for r in log.records.values() if r.failed] for arm, log in logs.items()}
    ids = _compared_ids(all_ids, failures, failed)
    arrays = {
        arm: np.array([log.records[i].correct for i in ids], dtype=np.int8) for arm, log in logs.items()
    }
    b, c, k = arrays["baseline"], arrays["candidate"], arrays.get("blind")

    report: dict = {"format": "dna-vlm-attribution/1"}
    report.update(_compare(b, c, bootstrap, seed, "all"))
    report.update(_provenance(logs, failures, failed, len(all_ids) - len(ids), bootstrap, seed))
    if k is not None:
        report["blind"] = _blind_stats(b, c, k, bootstrap, seed, "all")

    report["by_group"], report["group_order"], report["trends"] = {}, {}, {}
    for fld in by:
        vals = [_group_value(logs, i, fld) for i in ids]
        _require_field(fld, vals, logs)
        groups, trend = _field_stats(fld, vals, b, c, k, bootstrap, seed)
        report["by_group"][fld] = groups
        report["group_order"][fld] = list(groups)  # report.json sorts keys; this keeps the natural order
        if trend is not None:
            report["trends"][fld] = trend
    report["definitions"] = DEFINITIONS

    if out_dir is not None:
        write_report(report, out_dir, plots=plots)
    return report


def _provenance(logs: dict, failures: dict, failed: str, excluded: int, bootstrap: int, seed: int) -> dict:
    """What was compared and how: inputs with hashes, metrics, bootstrap settings, failed samples."""
    return {
        "n_total": len(logs["baseline"].records),
        "metric": {arm: log.metric for arm, log in logs.items()},
        "bootstrap": bootstrap,
        "seed": seed,
        "inputs": {
            arm: {"path": str(log.path), "sha256": log.sha256, "rows": len(log.records)}
            for arm, log in logs.items()
        },
        "failed": {
            "policy": failed,
            "excluded_docs": excluded,
            "counts": {arm: len(v) for arm, v in failures.items()},
            **{arm: [{"id": r.id, "reason": r.reason} for r in v] for arm, v in failures.items()},
        },
    }


def _load_logs(baseline, candidate, blind, metric: str | None) -> dict[str, SampleLog]:
    """Read every supplied log (keyed by arm) and check they hold the same questions."""
    logs = {"baseline": load_samples(baseline, metric), "candidate": load_samples(candidate, metric)}
    if blind is not None:
        logs["blind"] = load_samples(blind, metric)
    for arm in list(logs)[1:]:
        _check_same_ids(logs["baseline"], logs[arm], "baseline", arm)
    if logs["baseline"].path.resolve() == logs["candidate"].path.resolve():
        print("dna-vlm attribute: warning: baseline and candidate are the same file", file=sys.stderr)
    return logs


def _compared_ids(all_ids: list[str], failures: dict[str, list[Record]], failed: str) -> list[str]:
    """The doc ids every arm is scored on: under ``exclude``, a doc failed in any log is dropped from all."""
    bad = {r.id for recs in failures.values() for r in recs}
    ids = [i for i in all_ids if i not in bad] if failed == "exclude" else all_ids
    if not ids:
        raise AttributionError(
            f"all {len(all_ids)} docs failed in at least one log (see the 'reason' fields); nothing to compare. "
            "Fix the videos or use --failed wrong"
        )
    return ids


def _require_field(fld: str, vals: list, logs: dict[str, SampleLog]) -> None:
    """Fail with the available field names when no compared doc has ``fld``."""
    if all(v is MISSING for v in vals):
        avail = sorted({f for log in logs.values() for r in log.records.values() for f in r.fields})
        raise AttributionError(
            f"--by {fld}: no sample has a field {fld!r} (in the metric dict or doc); available: {avail}"
        )


def _field_stats(fld: str, vals: list, b, c, k, n_boot: int, seed: int) -> tuple[dict, dict | None]:
    """Per-value group statistics for one ``--by`` field (``vals``: its value per compared doc), and the
    trend over it when it is numeric with >= 3 distinct values (else None)."""
    groups: dict = {}
    for v in sorted(set(vals), key=_sort_key):
        # the type check keeps e.g. 1 and True (equal in Python) in separate groups
        mask = np.array([x == v and type(x) is type(v) for x in vals])
        g = _compare(b[mask], c[mask], n_boot, seed, f"{fld}={v}")
        g["value"] = v
        if k is not None:
            g["blind"] = _blind_stats(b[mask], c[mask], k[mask], n_boot, seed, f"{fld}={v}")
        groups[str(v)] = g
    for g, p in zip(groups.values(), holm([g["mcnemar_p"] for g in groups.values()]), strict=True):
        g["mcnemar_p_holm"] = p
    present = [v for v in vals if v is not MISSING]
    if not (_numeric(present) and len(set(present)) >= 3):
        return groups, None
    mask = np.array([v is not MISSING for v in vals])
    x = np.array(present, dtype=float)
    return groups, _trend(x, b[mask], c[mask], n_boot, seed, f"trend/{fld}")


def _group_value(logs: dict[str, SampleLog], doc_id: str, fld: str):
    for log in logs.values():
        v = log.records[doc_id].fields.get(fld, MISSING)
        if v is not MISSING and v is not None:
            return v
    return MISSING


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.json``, ``report.md`` and (``plots``) PNGs into ``out_dir`` atomically; returns out_dir."""
    from dna_vlm._io import atomic_write_bytes, atomic_write_json

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
    rows = [("", "n", "baseline", "candidate", "delta [95% CI]", "McNemar p", "fixed/broken")]

    def row(name, s):
        return (
            name,
            str(s["n"]),
            _pct(s["baseline_acc"]),
            _pct(s["candidate_acc"]),
            f"{_spct(s['delta'])} {_sci(s['delta_ci95'])}",
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
    if "blind" in report:
        bl = report["blind"]
        rel = bl["video_reliance"]
        lines.append(
            f"blind {_pct(bl['acc'])}%  video reliance: baseline {_spct(rel['baseline']['delta'])} "
            f"{_sci(rel['baseline']['delta_ci95'])}, candidate {_spct(rel['candidate']['delta'])} "
            f"{_sci(rel['candidate']['delta_ci95'])} points"
        )
    f = report.get("failed", {})
    if f.get("excluded_docs"):
        lines.append(
            f"{f['excluded_docs']} docs excluded: failed in at least one log (--failed {f['policy']})"
        )
    return "\n".join(lines)


def _cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _verdict(r: dict) -> str:
    if r["delta_ci95"] is None:
        return "No bootstrap CI was computed (--bootstrap 0)."
    warn = f" Caution: {r['ci_warning']}." if r.get("ci_warning") else ""
    if r["significant"]:
        way = "higher" if r["delta"] > 0 else "lower"
        disagree = (
            " The exact McNemar test does not confirm it at the 5% level." if r["mcnemar_p"] >= 0.05 else ""
        )
        return (
            f"The candidate is {way} by {abs(100 * r['delta']):.1f} points; the 95% CI "
            f"{_sci(r['delta_ci95'])} excludes 0 (McNemar p = {_p(r['mcnemar_p'])}).{disagree}{warn}"
        )
    return (
        f"No detectable difference: delta {_spct(r['delta'])} points, 95% CI {_sci(r['delta_ci95'])} includes 0 "
        f"(McNemar p = {_p(r['mcnemar_p'])}). With n = {r['n']} the CI half-width is about "
        f"{50 * (r['delta_ci95'][1] - r['delta_ci95'][0]):.1f} points: smaller effects cannot be resolved.{warn}"
    )


def _stats_table(groups: dict, label: str) -> list[str]:
    out = [
        f"| {label} | n | baseline % [95% CI] | candidate % [95% CI] | delta pts [95% CI] | McNemar p | Holm p | fixed | broken | both right | both wrong |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, s in groups.items():
        out.append(
            f"| {v} | {s['n']} | {_pct(s['baseline_acc'])} {_ci(s['baseline_ci95'])} | "
            f"{_pct(s['candidate_acc'])} {_ci(s['candidate_ci95'])} | {_spct(s['delta'])} {_sci(s['delta_ci95'])}"
            f"{' *' if s['significant'] else ''}{' †' if s.get('ci_warning') else ''} | {_p(s['mcnemar_p'])} | {_p(s.get('mcnemar_p_holm'))} | "
            f"{s['fixed']} | {s['broken']} | {s['both_right']} | {s['both_wrong']} |"
        )
    return out


def _blind_md(bl: dict) -> list[str]:
    rel, ov, dec = bl["video_reliance"], bl["blind_overlap"], bl["decomposition"]
    out = [
        f"Blind accuracy (no video): **{_pct(bl['acc'])}%** {_ci(bl['ci95'])}.",
        "",
        "| model | video reliance pts [95% CI] | McNemar p | video helps | video hurts | correct answers the blind model also gets |",
        "|---|---|---:|---:|---:|---|",
    ]
    for arm in ("baseline", "candidate"):
        r, o = rel[arm], ov[arm]
        out.append(
            f"| {arm} | {_spct(r['delta'])} {_sci(r['delta_ci95'])} | {_p(r['mcnemar_p'])} | {r['video_helps']} | "
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
    L += _failed_md(r["failed"])
    if "blind" in r:
        L += ["## How much each model uses the video", "", *_blind_md(r["blind"]), ""]
    for fld, groups in r.get("by_group", {}).items():
        L += _group_md(fld, groups, r.get("trends", {}).get(fld))
        if "blind" in r:
            L += _group_blind_md(fld, groups)
    if r.get("plots"):
        L += ["## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]] + [""]
    L += [DEFINITIONS]
    return "\n".join(L)


def _inputs_md(r: dict) -> list[str]:
    """The table of input logs (path, hash prefix, rows, metric), so a reader can check what was compared."""
    L = ["| log | path | sha256 | rows | metric |", "|---|---|---|---:|---|"]
    for arm, inp in r["inputs"].items():
        L.append(
            f"| {arm} | `{inp['path']}` | `{inp['sha256'][:16]}...` | {inp['rows']} | {r['metric'][arm]} |"
        )
    return L


def _headline_md(r: dict) -> list[str]:
    """Accuracies with CIs, the delta with its CI and McNemar p, the verdict and the flip counts."""
    L = [
        "",
        "## Headline",
        "",
        f"Compared on **n = {r['n']}** questions (of {r['n_total']}).",
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
        f"**delta (candidate - baseline): {_spct(r['delta'])} points**, paired bootstrap 95% CI "
        f"{_sci(r['delta_ci95'])} ({r['bootstrap']} replicates, seed {r['seed']}); exact McNemar p = "
        f"{_p(r['mcnemar_p'])}.",
        "",
        _verdict(r),
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
        "| log | doc id | reason |",
        "|---|---|---|",
    ]
    shown = 0
    for arm in f["counts"]:
        for item in f.get(arm, []):
            if shown < 50:  # the full list is in report.json; keep the markdown readable
                L.append(f"| {arm} | {_cell(item['id'])} | {_cell(item['reason'] or '')} |")
            shown += 1
    if shown > 50:
        L.append(f"| ... | {shown - 50} more in report.json | |")
    L.append("")
    return L


def _group_md(fld: str, groups: dict, t: dict | None) -> list[str]:
    """One ``## By <field>`` section: the group table, its legend, and the trend sentence if any."""
    L = [
        f"## By {fld}",
        "",
        *_stats_table(groups, fld),
        "",
        "`*` = the delta CI excludes 0; `†` = fewer than 10 discordant docs: the bootstrap CI is unreliable, "
        "trust the McNemar p-value.",
        "",
    ]
    if t:
        L += [
            f"Trend over {fld} ({t['buckets']} values): delta changes by {_spct(t['slope'])} points per unit "
            f"of {fld}, 95% CI {_sci(t['slope_ci95'])}, OLS p = {_p(t['p_value'])} "
            f"({'CI excludes 0' if t['significant'] else 'CI includes 0: no detectable trend'}). "
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
            f"| {v} | {_pct(bl['acc'])} | {_spct(rel['baseline']['delta'])} {_sci(rel['baseline']['delta_ci95'])} | "
            f"{_spct(rel['candidate']['delta'])} {_sci(rel['candidate']['delta_ci95'])} | {dec['encoder_fixed']} | "
            f"{dec['encoder_broken']} | {dec['shared_errors']} | {dec['video_hurts_both']} |"
        )
    L.append("")
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
    ax.set_title(f"delta {_spct(r['delta'])} pts {_sci(r['delta_ci95'])}, n={r['n']}", fontsize=9)
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
    derr = _delta_err(dl, [groups[k]["delta_ci95"] for k in keys])
    a2.errorbar(xs, 100 * dl, yerr=derr, fmt="o", color=_COLORS["candidate"], capsize=3)
    a2.axhline(0, color="k", lw=0.8)
    a2.set_ylabel("delta pts (95% CI)")
    a2.set_xticks(xs, keys, rotation=30 if max(len(k) for k in keys) > 6 else 0)
    a2.set_xlabel(fld)
    t = r.get("trends", {}).get(fld)
    title = f"by {fld}" + (f": trend {_spct(t['slope'])} pts/unit {_sci(t['slope_ci95'])}" if t else "")
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


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "attribute",
        help="paired comparison of two lmms-eval sample logs (accuracy CIs, McNemar, flips, groups, blind)",
        description="Compare a baseline and a candidate (and optionally a video-blind) lmms-eval --log_samples "
        "JSONL question by question: Wilson CIs, paired bootstrap CI of the delta, exact McNemar test, flips, "
        "per-group breakdowns and an error decomposition. Writes report.json, report.md and PNG plots.",
    )
    p.add_argument("--baseline", required=True, help="baseline model's samples JSONL (or a folder with one)")
    p.add_argument("--candidate", required=True, help="candidate model's samples JSONL (e.g. the DnA run)")
    p.add_argument("--blind", help="samples JSONL of the same questions answered without the video")
    p.add_argument("--by", default="", help="comma-separated fields to break down by, e.g. category,density")
    p.add_argument(
        "--metric",
        default=None,
        help="per-sample metric key (default: the dna_vlm record, else accuracy, else acc, else the only one)",
    )
    p.add_argument("--failed", choices=("exclude", "wrong"), default="exclude", help="failed samples policy")
    p.add_argument("--bootstrap", type=int, default=10_000, help="paired bootstrap replicates (0: no CIs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", required=True, help="report folder (report.json, report.md, *.png)")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    try:
        report = attribute(
            args.baseline,
            args.candidate,
            blind=args.blind,
            by=args.by,
            out_dir=args.out,
            metric=args.metric,
            failed=args.failed,
            bootstrap=args.bootstrap,
            seed=args.seed,
            plots=not args.no_plots,
        )
    except AttributionError as e:
        print(f"dna-vlm attribute: error: {e}", file=sys.stderr)
        return 2
    print(summary_table(report))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0
