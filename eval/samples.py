"""Reading lmms-eval sample logs (``--log_samples`` JSONL) into :class:`~dna_vlm.eval.records.SampleRecord`\\ s.

One row per question: ``doc_id``, ``target``, ``filtered_resps`` and one key per metric. A row's metric value
is a number (0/1) or a record dict such as the dna_vlm tasks' ``dna_vlm`` metric (format and failure encoding:
:mod:`dna_vlm.eval.records`). Rows are identified by the question id: the record's ``id``, else ``doc["id"]``
(older lmms-eval versions keep ``doc``), else ``doc_id``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .records import CORRECT_KEYS, OUTCOME_KEYS, SampleRecord, logged_failure

__all__ = ["AttributionError", "SampleLog", "check_same_ids", "load_samples"]

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


class AttributionError(ValueError):
    """A sample log cannot be read or the logs cannot be compared (the message says which file/line)."""


@dataclass
class SampleLog:
    path: Path
    metric: str
    sha256: str
    records: dict[str, SampleRecord] = field(default_factory=dict)  # id -> record, in file order

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
    """A per-sample record dict (the dna_vlm tasks' ``dna_vlm`` metric, or a task's own dict metric)."""
    return isinstance(v, dict) and any(c in v for c in (*CORRECT_KEYS, "failed"))


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


def _rows(p: Path, raw: bytes):
    """``(where, row)`` per non-empty line; a line that is not a JSON object raises naming ``file:line``."""
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
        yield lineno, where, row


def load_samples(path: str | Path, metric: str | None = None) -> SampleLog:
    """Read one lmms-eval sample log. ``metric=None`` picks ``accuracy`` or the only metric present."""
    p = _resolve(path)
    raw = p.read_bytes()
    log = SampleLog(p, metric or "", hashlib.sha256(raw).hexdigest())
    first: dict[str, int] = {}
    for lineno, where, row in _rows(p, raw):
        if not log.metric:
            log.metric = _pick_metric(row, where)
        if log.metric not in row:
            keys = sorted(k for k in row if k not in _NON_METRIC)
            raise AttributionError(f"{where}: no metric {log.metric!r} in this row (its metrics: {keys})")
        rec = _read_record(row, log.metric, where)
        if rec.id in log.records:
            raise AttributionError(
                f"{where}: duplicate doc id {rec.id!r} (first at line {first[rec.id]}); lmms-eval appends to an "
                "existing samples file when a run is repeated -- use one run's log"
            )
        first[rec.id] = lineno
        log.records[rec.id] = rec
    if not log.records:
        raise AttributionError(f"{p}: no samples (empty file); was lmms-eval run with --log_samples?")
    return log


def _correct(v, failed: bool, where: str, metric: str) -> bool:
    """The 0/1 correctness of a metric value (a number or a record dict); a failed sample is never right."""
    if isinstance(v, dict):
        key = next((k for k in CORRECT_KEYS if k in v), None)
        if key is None and not failed:
            raise AttributionError(f"{where}: metric {metric!r} has no 'correct' field (keys: {sorted(v)})")
        return False if failed else bool(_as01(v[key], where, metric))
    correct = bool(_as01(v, where, metric))
    return False if failed else correct


def _read_record(row: dict, metric: str, where: str) -> SampleRecord:
    v = row[metric]
    doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
    # the record dict: the metric itself, or (for a numeric metric) a sibling record such as dna-vlm's `dna_vlm`
    rec = v if isinstance(v, dict) else None
    if rec is None:
        rec = next((x for k, x in row.items() if k not in _NON_METRIC and _is_record(x)), None)
    fields = {k: x for k, x in doc.items() if _scalar(x)}
    failed, reason = logged_failure(row, rec)
    pred, answer, vid = None, row.get("target"), None
    if rec is not None:
        fields.update({k: x for k, x in rec.items() if _scalar(x) and k not in OUTCOME_KEYS})
        pred, answer, vid = rec.get("pred"), rec.get("answer", answer), rec.get("id")
    correct = _correct(v, failed, where, metric)
    vid = next((i for i in (vid, doc.get("id"), row.get("doc_id")) if i is not None), None)
    if vid is None:
        raise AttributionError(f"{where}: no doc id (no metric 'id', doc['id'] or doc_id)")
    if pred is None:
        pred = row.get("filtered_resps")
    return SampleRecord(
        id=str(vid), answer=answer, pred=pred, correct=correct, failed=failed, reason=reason, fields=fields,
        source=where,
    )  # fmt: skip


def check_same_ids(ref: SampleLog, other: SampleLog, ref_name: str, other_name: str) -> None:
    """Raise naming both files and a few ids when two logs do not hold the same questions."""
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
