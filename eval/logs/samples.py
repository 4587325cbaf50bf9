"""Reading lmms-eval sample logs (``--log_samples`` JSONL) into :class:`~dna_vlm.eval.logs.records.SampleRecord`\\ s.

One row per question: ``doc_id``, ``doc``, ``doc_hash``, ``target``, ``resps`` / ``filtered_resps``, ``input``
(the prompt) and one key per metric. The correctness reader is identified from what the log carries
(:func:`dna_vlm.eval.logs.readers.identify_reader`: the task in lmms-eval's file name
``<date>_samples_<task>.jsonl``, the task config in the results JSON beside it, the metric's shape) or forced
(``reader``); a log no stock reader fits (the project's ``dna_vlm_*`` tasks) goes through the generic reader:
a 0/1 metric, or a record dict with ``correct`` such as the ``dna_vlm`` metric (format:
:mod:`dna_vlm.eval.logs.records`). Whether a sample failed is read from the row alone
(:func:`dna_vlm.eval.logs.records.row_failure`), for any task and output type.

Rows are identified by the question id: the record's ``id``, else ``doc["id"]``, else ``doc_id`` (generic
reader); lmms-eval's ``doc_id`` (table readers). Each row also keeps its question identity
(:func:`question_of`: what the row says about the question, never about the answer given).
:func:`load_arms` pools several logs per arm (files, globs, folders) by (task, doc id) and
:func:`check_pairing` checks that the arms hold the same questions (by content: :func:`compare_questions`)
and that a blind arm saw no video.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dna_vlm.eval.logs.readers import (
    GENERIC,
    ReadError,
    Reading,
    TaskReader,
    identify_reader,
    pairing_task,
    reader_named,
    reader_names,
    refused_metric,
    video_free,
)
from dna_vlm.eval.logs.records import (
    CORRECT_KEYS,
    OUTCOME_KEYS,
    RECORD_METRIC,
    SampleRecord,
    provenance_path,
    read_provenance,
    row_failure,
)

__all__ = [
    "NULL_DOC_HASH",
    "Arm",
    "AttributionError",
    "SampleLog",
    "check_pairing",
    "check_questions",
    "compare_questions",
    "expand_sources",
    "load_arm",
    "load_arms",
    "load_samples",
    "question_of",
    "task_of",
    "video_evidence",
]

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
_TASK_IN_NAME = re.compile(r"_samples_(?P<task>.+)\.jsonl$")
#: doc keys whose values are file locations: compared by base name (the same question on another machine)
_PATH_KEY = re.compile(r"video|path|file|image|audio", re.I)
#: the ``doc_hash`` lmms-eval 0.7.3 writes on every row of every task: sha256 of ``null`` (the request's doc
#: is not attached when the row is logged); it says nothing about the question
NULL_DOC_HASH = hashlib.sha256(b"null").hexdigest()
#: fields of the plugin's record (:data:`~dna_vlm.eval.logs.records.RECORD_METRIC`) that describe the question
_RECORD_QUESTION_FIELDS = ("category", "density", "video")


class AttributionError(ValueError):
    """A sample log cannot be read or the logs cannot be compared (the message says which file/line)."""


@dataclass
class SampleLog:
    """One sample log. ``task``: from the file name ("" when it does not follow lmms-eval's naming);
    ``reader``: the :data:`~dna_vlm.eval.logs.readers.READERS` pattern used, or "generic"; ``reader_by``: how
    it was identified (task name, results config, metric shape, --reader, --metric, generic); ``questions``:
    id -> question identity (:func:`question_of`); ``provenance``: what the arm was (the dna_vlm plugin's
    record); ``doc_hash_ignored``: rows whose ``doc_hash`` was dropped as degenerate (the same value on
    several docs, or lmms-eval 0.7.3's hash of ``null``)."""

    path: Path
    metric: str
    sha256: str
    task: str = ""
    reader: str = GENERIC
    reader_by: str = GENERIC
    records: dict[str, SampleRecord] = field(default_factory=dict)  # id -> record, in file order
    questions: dict[str, Any] = field(default_factory=dict)
    provenance: dict | None = None
    doc_hash_ignored: int = 0

    @property
    def ids(self) -> list[str]:
        return list(self.records)


def task_of(path: str | os.PathLike) -> str:
    """The task of an lmms-eval sample log from its name (``<date>_samples_<task>.jsonl``), else ""."""
    m = _TASK_IN_NAME.search(Path(path).name)
    return m.group("task") if m else ""


def question_of(row: dict, answer: Any = None, fields: dict | None = None) -> dict[str, Any]:
    """What a row says about its question, each part when logged: ``doc`` (its fields; file locations
    reduced to their base name, so the same data on another machine still matches; lmms-eval 0.7.3 drops
    ``doc`` when it writes the log), ``doc_hash`` (lmms-eval's hash of the doc; see :data:`NULL_DOC_HASH`),
    ``input`` (the prompt text: the question and its options as asked), ``target`` (lmms-eval's gold),
    ``answer`` (the gold as the reader saw it) and ``fields`` (the reader's fields about the question, e.g.
    category, density, video). Never the model's answer."""
    out: dict[str, Any] = {}
    doc = row.get("doc")
    if isinstance(doc, dict) and doc:
        out["doc"] = {k: _basename(k, v) for k, v in doc.items()}
    if row.get("doc_hash"):
        out["doc_hash"] = str(row["doc_hash"])
    if isinstance(row.get("input"), str):
        out["input"] = row["input"]
    if row.get("target") is not None:
        out["target"] = str(row["target"])
    if answer is not None:
        out["answer"] = str(answer)
    if fields:
        out["fields"] = {k: _basename(k, v) for k, v in fields.items()}
    return out


def _basename(key: str, v: Any) -> Any:
    if isinstance(v, str) and _PATH_KEY.search(key) and ("/" in v or "\\" in v):
        return os.path.basename(v.replace("\\", "/"))
    return v


def _resolve(path: str | Path) -> Path:
    """A file, or a folder holding exactly one ``*samples*.jsonl`` (e.g. lmms-eval's output folder)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.rglob("*samples*.jsonl"))
        if len(found) != 1:
            what = "no *samples*.jsonl file" if not found else f"{len(found)} *samples*.jsonl files"
            names = "".join(f"\n  {f}" for f in found[:10])
            raise AttributionError(
                f"{p}: is a folder with {what}; pass the sample log file itself (attribute pools several)"
                f"{names}"
            )
        return found[0]
    if not p.is_file():
        raise AttributionError(f"{p}: no such sample log (expected lmms-eval's --log_samples JSONL)")
    return p


def _rows(p: Path, raw: bytes):
    """``(lineno, where, row)`` per non-empty line; a line that is not a JSON object raises naming ``file:line``."""
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


def load_samples(
    path: str | Path, metric: str | None = None, task: str | None = None, reader: str | None = None
) -> SampleLog:
    """Read one lmms-eval sample log. ``task`` (default: from the file name) and what the log carries identify
    the reader (:func:`~dna_vlm.eval.logs.readers.identify_reader`); ``reader`` forces one by name
    (``generic`` included); ``metric`` forces the generic reader on that metric (default generic metric: the
    record dict, else ``accuracy``, else ``acc``, else the only metric)."""
    p = _resolve(path)
    raw = p.read_bytes()
    task = task_of(p) if task is None else task
    rows = list(_rows(p, raw))
    if not rows:
        raise AttributionError(f"{p}: no samples (empty file); was lmms-eval run with --log_samples?")
    chosen, how = _choose_reader(p, task, rows[0][2], metric, reader)
    try:
        provenance = read_provenance(p)
    except ValueError as e:
        raise AttributionError(str(e)) from None
    log = SampleLog(p, chosen.metric if chosen else (metric or ""), hashlib.sha256(raw).hexdigest(), task)
    log.reader, log.reader_by, log.provenance = (chosen.pattern if chosen else GENERIC), how, provenance
    first: dict[str, int] = {}
    for lineno, where, row in rows:
        rec, question = _read_row(log, chosen, row, where)
        if rec.id in log.records:
            raise AttributionError(
                f"{where}: duplicate doc id {rec.id!r} (first at line {first[rec.id]}); one log holds each doc "
                "once: lmms-eval appends to an existing samples file when a run is repeated into the same "
                "output folder -- use one run's log (several tasks' logs are pooled by passing them all)"
            )
        first[rec.id] = lineno
        log.records[rec.id] = rec
        log.questions[rec.id] = question
    log.doc_hash_ignored = _drop_degenerate_hashes(log.questions)
    return log


def _choose_reader(
    p: Path, task: str, row: dict, metric: str | None, forced: str | None
) -> tuple[TaskReader | None, str]:
    """The reader of a log (None: generic) and how it was chosen; a refused task raises its reason."""
    if forced and metric and forced != GENERIC:
        raise AttributionError(
            f"--reader {forced} and --metric {metric}: choose one (--metric reads that key with the generic reader)"
        )
    try:
        if forced:
            chosen, how = reader_named(forced), "--reader"
        elif metric:
            chosen, how = None, "--metric"
        else:
            chosen, how = identify_reader(task, row, _config_functions(p, task))
    except ReadError as e:
        raise AttributionError(f"{p}: {e}") from None
    if chosen is not None and chosen.read is None:
        raise AttributionError(f"{p}: {chosen.refuse(task or chosen.name)}")
    return chosen, how


_FUNCTION = re.compile(r"<function ([A-Za-z_][A-Za-z0-9_]*) at ")


def _config_functions(p: Path, task: str) -> list[str]:
    """The function names in the task's config that lmms-eval writes into the results JSON beside the log
    (``configs.<task>``: ``process_results``, ``metric_list[].aggregation``, ``doc_to_*``); [] without one."""
    prov = provenance_path(p)
    results = prov.with_name(prov.name.replace("_dna_vlm.json", "_results.json"))
    try:
        configs = json.loads(results.read_text()).get("configs") or {}
    except (OSError, ValueError, AttributeError):
        return []
    if not task and len(configs) == 1:  # a renamed log of a one-task run
        task = next(iter(configs))
    config = configs.get(task)
    return _FUNCTION.findall(json.dumps(config)) if isinstance(config, dict) else []


def _drop_degenerate_hashes(questions: dict[str, dict]) -> int:
    """Drop every ``doc_hash`` that cannot tell docs apart (lmms-eval 0.7.3's :data:`NULL_DOC_HASH`, or one
    value on several doc ids of the log); returns how many rows lost theirs."""
    counts = Counter(q["doc_hash"] for q in questions.values() if "doc_hash" in q)
    bad = {h for h, n in counts.items() if n > 1 or h == NULL_DOC_HASH}
    for q in questions.values():
        if q.get("doc_hash") in bad:
            del q["doc_hash"]
    return sum(counts[h] for h in bad)


def _read_row(
    log: SampleLog, reader: TaskReader | None, row: dict, where: str
) -> tuple[SampleRecord, dict[str, Any]]:
    """A row's record and its question identity (:func:`question_of`)."""
    if reader is None and not log.metric:
        log.metric = _pick_metric(row, where)
    if log.metric not in row:
        keys = sorted(k for k in row if k not in _NON_METRIC)
        hint = f" (its reader {log.reader!r} was chosen by {log.reader_by})" if reader else ""
        raise AttributionError(f"{where}: no metric {log.metric!r} in this row (its metrics: {keys}){hint}")
    if reader is None:
        refusal = refused_metric(log.metric)
        if refusal is not None:
            raise AttributionError(f"{where}: {refusal}")
        rec = _read_record(row, log.metric, where)
        record = row.get(RECORD_METRIC)
        fields = (
            {k: record[k] for k in _RECORD_QUESTION_FIELDS if k in record} if isinstance(record, dict) else {}
        )
        return rec, question_of(row, rec.answer, fields)
    try:
        reading = reader.read(row[log.metric], row)
    except ReadError as e:
        raise AttributionError(f"{where}: task {log.task!r}: {e}") from None
    return _from_reading(reading, row, where), question_of(row, reading.answer, reading.fields)


def _from_reading(r: Reading, row: dict, where: str) -> SampleRecord:
    """A table reader's reading as a record: id = lmms-eval's ``doc_id``; a failed sample is never right."""
    if row.get("doc_id") is None:
        raise AttributionError(f"{where}: no doc_id (is this an lmms-eval --log_samples file?)")
    doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
    fields = {k: x for k, x in doc.items() if _scalar(x)}
    fields.update(r.fields)
    failed, reason = row_failure(row)
    return SampleRecord(
        id=str(row["doc_id"]), answer=r.answer, pred=r.pred, correct=r.correct and not failed, failed=failed,
        reason=reason, fields=fields, source=where,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ generic reader


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
            f"{where}: no per-sample metric found (keys: {sorted(row)}) and no stock task's reader recognised "
            "the log (by task name, the results JSON's task config or the metric's shape); is this an lmms-eval "
            f"--log_samples file? If it is a copy of a stock task, force its reader with --reader NAME "
            f"({', '.join(reader_names())}) or name the metric with --metric"
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
    failed, reason = row_failure(row)
    if rec is not None and not failed and rec.get("failed"):  # a task's own dict metric that says it failed
        failed, reason = True, None if rec.get("reason") is None else str(rec["reason"])
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


# ------------------------------------------------------------------------------------------------ arms (pooling)

Key = tuple[str, str]  # (task, doc id)


@dataclass
class Arm:
    """One arm of a comparison (baseline, candidate, blind): one or several logs pooled, keyed by
    ``(task, doc id)``; ``task`` is also put into every record's fields (for ``--by task``)."""

    name: str
    logs: list[SampleLog]
    records: dict[Key, SampleRecord] = field(default_factory=dict)
    questions: dict[Key, Any] = field(default_factory=dict)
    tasks: dict[Key, str] = field(default_factory=dict)  # the task of the log each key was read from

    @property
    def keys(self) -> list[Key]:
        return list(self.records)


def expand_sources(sources, arm: str) -> list[Path]:
    """The sample logs of one arm: each source a file, a folder (every ``*samples*.jsonl`` under it) or a
    glob pattern; errors name the source that matched nothing."""
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise AttributionError(f"--{arm}: no sample log given")
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.rglob("*samples*.jsonl"))
            if not found:
                raise AttributionError(
                    f"--{arm} {p}: a folder without *samples*.jsonl files (lmms-eval --log_samples)"
                )
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(x) for x in _glob(str(item)))
            if not found:
                raise AttributionError(
                    f"--{arm} {p}: no such sample log (expected lmms-eval's --log_samples JSONL)"
                )
        out += [f for f in found if f.resolve() not in {o.resolve() for o in out}]
    return out


def _glob(pattern: str) -> list[str]:
    import glob

    return [x for x in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(x)]


def load_arms(
    sources: dict[str, Any], metric: str | None = None, reader: str | None = None
) -> tuple[dict[str, Arm], dict]:
    """Read every arm (``{"baseline": files, "candidate": files, "blind": files or None}``), pool each arm's
    logs by ``(task, doc id)`` and run the pairing checks; returns the arms and :func:`check_pairing`'s summary.
    ``metric`` / ``reader``: as :func:`load_samples` takes them, for every log."""
    paths = {arm: expand_sources(src, arm) for arm, src in sources.items() if src is not None}
    _check_distinct_files(paths)
    logs = {arm: [load_samples(p, metric, reader=reader) for p in ps] for arm, ps in paths.items()}
    single = all(len(v) == 1 for v in logs.values())
    label = pairing_task(logs["baseline"][0].task) if single else None
    arms = {arm: _pool(arm, v, label) for arm, v in logs.items()}
    return arms, check_pairing(arms)


def load_arm(
    name: str, sources, metric: str | None = None, reader: str | None = None, pair_with: Arm | None = None
) -> Arm:
    """One more arm's logs (e.g. the Encoder section's oracle or a control run), pooled as :func:`load_arms`
    pools them: by id alone when it and ``pair_with`` are one log each, else by (task, doc id)."""
    logs = [load_samples(p, metric, reader=reader) for p in expand_sources(sources, name)]
    single = pair_with is not None and len(pair_with.logs) == 1 and len(logs) == 1
    return _pool(name, logs, pairing_task(pair_with.logs[0].task) if single else None)


def _check_distinct_files(paths: dict[str, list[Path]]) -> None:
    seen: dict[Path, str] = {}
    for arm, ps in paths.items():
        for p in ps:
            other = seen.setdefault(p.resolve(), arm)
            if other != arm:
                raise AttributionError(
                    f"{p} is given as both the {other} and the {arm} log; each arm needs its own run's log"
                )


def _pool(arm: str, logs: list[SampleLog], label: str | None) -> Arm:
    """Key every record by (task, doc id); ``label``: the one task name when every arm has one log (then docs
    pair by id alone, e.g. ``videomme`` with its blind twin ``videomme_no_visual``)."""
    out = Arm(arm, logs)
    where: dict[str, Path] = {}
    for log in logs:
        task = label if label is not None else pairing_task(log.task)
        if label is None and not log.task:
            raise AttributionError(
                f"{log.path}: cannot tell which task this log holds (lmms-eval names sample logs "
                "<date>_samples_<task>.jsonl); keep that name to pool several logs per arm"
            )
        if task in where:
            raise AttributionError(
                f"--{arm}: task {task!r} is given twice ({where[task]} and {log.path}); pass one run's log per task"
            )
        where[task] = log.path
        for i, rec in log.records.items():
            if "task" in rec.fields:
                rec.fields["doc_task"] = rec.fields["task"]
            rec.fields["task"] = task
            out.records[(task, i)] = rec
            out.questions[(task, i)] = log.questions[i]
            out.tasks[(task, i)] = log.task
    return out


def _show(keys: list[Key], n: int = 5) -> str:
    shown = ", ".join(f"{t}/{i!r}" if t else repr(i) for t, i in keys[:n])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _files(arm: Arm) -> str:
    return ", ".join(str(log.path) for log in arm.logs[:3]) + (" ..." if len(arm.logs) > 3 else "")


def check_pairing(arms: dict[str, Arm]) -> dict:
    """The pairing checks (raise :class:`AttributionError`): every arm holds the same (task, doc id) keys,
    paired docs are the same question (:func:`check_questions`), and a ``blind`` arm holds no video log.
    Returns ``{"questions_checked", "questions_unverified", "evidence", "doc_hash_ignored", "blind_verified"}``
    for the report (counts: the largest over the arms compared with the baseline)."""
    ref = arms["baseline"]
    for arm in list(arms)[1:]:
        _check_same_keys(ref, arms[arm])
    out: dict = {"questions_checked": 0, "questions_unverified": 0, "evidence": {}}
    for arm in list(arms)[1:]:
        got = check_questions(ref, arms[arm])
        out["questions_checked"] = max(out["questions_checked"], got["checked"])
        out["questions_unverified"] = max(out["questions_unverified"], got["unverified"])
        for kind, n in got["evidence"].items():
            out["evidence"][kind] = max(out["evidence"].get(kind, 0), n)
    out["doc_hash_ignored"] = sum(log.doc_hash_ignored for arm in arms.values() for log in arm.logs)
    out["blind_verified"] = _check_blind(arms["blind"]) if "blind" in arms else None
    return out


def _check_same_keys(ref: Arm, other: Arm) -> None:
    a, b = set(ref.records), set(other.records)
    if a == b:
        return
    only_a, only_b = sorted(a - b), sorted(b - a)
    raise AttributionError(
        f"the {ref.name} and {other.name} logs hold different questions: {len(only_a)} doc ids only in "
        f"{_files(ref)} ({ref.name}){': ' + _show(only_a) if only_a else ''}; {len(only_b)} only in "
        f"{_files(other)} ({other.name}){': ' + _show(only_b) if only_b else ''}. Compare logs of the same "
        "tasks, split and --limit."
    )


#: what a pair agreeing on proves it is the same question (target, answer and fields only narrow it down)
STRONG_EVIDENCE = ("doc", "prompt", "doc_hash")


def compare_questions(
    q1: dict, q2: dict, gold: bool = True, ignore: frozenset[str] = frozenset(), twin: bool = False
) -> tuple[list[str], list[str]]:
    """``(differences, agreements)`` of two question identities (:func:`question_of`), each a short text /
    an evidence kind. Compared when both logged them: the ``doc`` fields both have, the prompt, the
    ``doc_hash`` (only a match counts: moved data changes it), the gold ``target`` / ``answer`` (``gold``:
    when both logs are of one task or its twins, which encode the gold alike) and the reader's ``fields``;
    ``ignore``: doc / field names that legitimately differ (the oracle input's ``density``); ``twin``: the
    logs are of a task and its twin (``videomme`` / ``videomme_no_visual``), whose prompts may differ."""
    diffs: list[str] = []
    agree: list[str] = []
    for kind in ("doc", "fields"):
        a, b = q1.get(kind), q2.get(kind)
        common = sorted((set(a) & set(b)) - ignore) if a is not None and b is not None else []
        bad = [k for k in common if a[k] != b[k]]
        diffs += [f"{kind}.{k} {a[k]!r} vs {b[k]!r}" for k in bad[:2]]
        agree += [kind] if common and not bad else []
    if "input" in q1 and "input" in q2:
        same = q1["input"] == q2["input"]
        agree += ["prompt"] if same else []
        diffs += [] if same or twin else [f"prompt {_where_differ(q1['input'], q2['input'])}"]
    if q1.get("doc_hash") is not None and q1.get("doc_hash") == q2.get("doc_hash"):
        agree.append("doc_hash")
    for kind in ("target", "answer") if gold else ():
        if kind in q1 and kind in q2:
            same = q1[kind] == q2[kind]
            agree += [kind] if same else []
            diffs += [] if same else [f"{kind} {q1[kind]!r} vs {q2[kind]!r}"]
    return diffs, agree


def _where_differ(a: str, b: str, width: int = 40) -> str:
    """Two texts shown from just before their first difference."""
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, i - 12)
    return f"{_excerpt(a, lo, i + width)!r} vs {_excerpt(b, lo, i + width)!r}"


def _excerpt(text: str, lo: int, hi: int) -> str:
    return ("..." if lo else "") + text[lo:hi] + ("..." if len(text) > hi else "")


def check_questions(ref: Arm, other: Arm, ignore: frozenset[str] = frozenset()) -> dict:
    """Whether the docs ``other`` shares with ``ref`` are the same questions, by content
    (:func:`compare_questions`); raises naming the first doc ids that differ and how. A pair is verified when
    one kind of :data:`STRONG_EVIDENCE` agrees and nothing differs; a pair with nothing but a gold answer or
    fields to compare is counted unverified. Returns ``{"checked", "unverified", "evidence": {kind: pairs}}``."""
    bad: list[tuple[Key, list[str]]] = []
    evidence: Counter = Counter()
    checked = unverified = 0
    for key, q in ref.questions.items():
        if key not in other.questions:
            continue
        tasks = ref.tasks.get(key, ""), other.tasks.get(key, "")
        gold = pairing_task(tasks[0]) == pairing_task(tasks[1])
        diffs, agree = compare_questions(q, other.questions[key], gold, ignore, gold and tasks[0] != tasks[1])
        if diffs:
            bad.append((key, diffs))
        elif set(agree) & set(STRONG_EVIDENCE):
            checked += 1
            evidence.update(agree)
        else:
            unverified += 1
    if bad:
        first = "; ".join(f"{_show([k])}: {', '.join(d)}" for k, d in bad[:3])
        raise AttributionError(
            f"the {ref.name} and {other.name} logs pair {len(bad)} doc ids with different questions: "
            f"{_show([k for k, _ in bad])}. First differences: {first}. Were they run on different data "
            f"(another synth seed, another dataset version)? {ref.name}: {_files(ref)}; {other.name}: {_files(other)}"
        )
    return {"checked": checked, "unverified": unverified, "evidence": dict(sorted(evidence.items()))}


def video_evidence(log: SampleLog) -> tuple[bool | None, str]:
    """Whether a log was answered with the video: (True/False, why) from a video-free task name
    (``*_no_visual*``, ``*_blind*``), the records' ``blind: true`` (a blind task), the plugin's provenance
    (``controls.video``: ``none`` withholds the video from every task of the run) or, without provenance, the
    records' ``blind: false`` (the task gives the video); (None, why) if unknown."""
    if video_free(log.task):
        return False, f"its task {log.task!r} is a video-free variant"
    flags = {r.fields.get("blind") for r in log.records.values()} - {None}
    if flags == {True}:
        return False, "its records say blind: true"
    prov = log.provenance
    if isinstance(prov, dict):
        video = (prov.get("controls") or {}).get("video", "full")
        return video not in ("none", "blind", "off", False), f"its provenance says controls.video={video!r}"
    if False in flags:
        return True, "its records say blind: false (the video was given)"
    return None, "no provenance, no 'blind' field and a video task name"


def _check_blind(arm: Arm) -> bool:
    """Raise when a log given as --blind was answered with the video; False when that cannot be told."""
    verified = True
    for log in arm.logs:
        video, why = video_evidence(log)
        if video:
            raise AttributionError(
                f"{log.path} is given as --blind but was answered with the video ({why}); pass the log of a "
                "run without video (model_args video=none, or a *_blind / *_no_visual task)"
            )
        verified = verified and video is False
    return verified
