"""The per-sample record and the failure encoding: the one home of both.

Used by the lmms-eval plugin (:mod:`dna_vlm.eval.lmms.plugin`, which marks failures), the project's tasks
(``eval/lmms/tasks/utils.py``, which turn model outputs into records) and ``attribute`` (:mod:`dna_vlm.eval.logs.samples`,
which reads records back from sample logs). Nothing else defines these formats.

**Failure encoding.** A sample fails when the model cannot load its visual (missing or corrupt video, a
task's ``doc_to_visual`` that raises or calls ``sys.exit``) and the plugin runs with ``bad_video=skip``
(with the default ``fail`` the run stops instead). The failure travels through three channels:

- ``generate_until`` output: the text ``"[dna_vlm:failed] <reason>"``, or ``"[dna_vlm:failed] <decoy> |
  <reason>"`` when the task names its gold letter (:func:`failed_response`; read back with
  :func:`failure_reason`);
- ``loglikelihood`` output: ``(FAILED_LOSS, False)`` for every option of the doc, the gold one(s)
  ``(FAILED_GOLD_LOSS, False)`` (:func:`failed_losses`; read back with :func:`is_failed_loss`). A pair carries no text, so the reason is kept in this process's
  registry (:func:`note_failure`, read back with :func:`noted_reason`), keyed by the video's resolved path
  and by ``"<task>:<doc_id>"`` (never by a doc's ``id`` alone: ids collide across tasks);
- the sample log (``--log_samples``): the row's metric ``failed`` is 1 and the record has ``failed: true`` and
  a ``reason`` (:meth:`SampleRecord.to_log`; read back with :func:`logged_failure`).

Any lmms-eval sample-log row, of a stock task too, tells whether its sample failed: :func:`row_failure`
reads the raw responses (``resps`` / ``filtered_resps``) of every output type. So that a stock metric never
scores a failure right, the plugin (with ``bad_video=skip``) makes the failure *lose*: in
``multiple_choice`` the gold option gets :data:`FAILED_GOLD_LOSS` (every other option :data:`FAILED_LOSS`,
so ``argmin`` -- plain or length-normalised -- picks a wrong one); in ``generate_until`` the text names a
wrong option letter (the decoy) right after the prefix, before the (lower-cased) reason, so letter parsers
-- including those that guess at random when nothing parses -- read a wrong answer.

**Provenance.** What a run evaluated (base model, run dir + weight digest, DnA options, frame sampling,
input controls, bad-video policy, failures) is written by the plugin beside the sample logs as
``<date>_dna_vlm.json`` and into the results JSON under ``config.dna_vlm``; :func:`read_provenance` finds
it from a sample log's path.

**Sample record.** :class:`SampleRecord`: one question's outcome. The tasks log it under the metric
:data:`RECORD_METRIC` (the task YAMLs' ``metric_list`` names it too) as::

    {"id", "category", "density", "video", "blind", "answer", "pred", "correct", "failed", "reason",
     "response" (generate_until) | "losses" (multiple_choice)}

``attribute`` reads any lmms-eval log into the same dataclass (see :mod:`dna_vlm.eval.logs.samples`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CORRECT_KEYS",
    "FAILED_GOLD_LOSS",
    "FAILED_LOGLIKELIHOOD",
    "FAILED_LOSS",
    "FAILED_METRIC",
    "FAILED_PREFIX",
    "OUTCOME_KEYS",
    "PROVENANCE_KEY",
    "RECORD_METRIC",
    "SampleRecord",
    "failed_losses",
    "failed_response",
    "failure_reason",
    "is_failed_loss",
    "logged_failure",
    "note_failure",
    "noted_reason",
    "provenance_path",
    "read_provenance",
    "row_failure",
]

FAILED_PREFIX = "[dna_vlm:failed]"
FAILED_LOSS = 1.0e9
FAILED_LOGLIKELIHOOD: tuple[float, bool] = (FAILED_LOSS, False)
#: the loss of a failed doc's gold option: loses to every other option even after division by its length
FAILED_GOLD_LOSS = FAILED_LOSS * 1.0e6
#: the provenance: ``config.<key>`` in the results JSON and ``<date>_<key>.json`` beside the sample logs
PROVENANCE_KEY = "dna_vlm"
#: the sample-log metric holding the record dict, and the 0/1 metric counting failures
RECORD_METRIC = "dna_vlm"
FAILED_METRIC = "failed"
#: keys of a record dict that may say whether the answer was right (first found wins)
CORRECT_KEYS = ("correct", "score", "acc", "accuracy")
#: keys of a record dict that describe the outcome; every other scalar key is a field to group by
OUTCOME_KEYS = frozenset({"correct", "score", "acc", "pred", "answer", "failed", "reason", "id"})
_UNKNOWN_VISUAL = "the model could not load this sample's visual"

#: doc key -> reason, for docs whose visual could not be loaded in this process
_FAILURES: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------ failures


def note_failure(key: str, reason: str) -> None:
    """Remember why the doc ``key`` failed (for the loglikelihood channel, which carries no text)."""
    _FAILURES[key] = reason


def noted_reason(key: str, default: str | None = _UNKNOWN_VISUAL) -> str | None:
    """The reason noted for ``key`` in this process, else ``default`` (a generic reason)."""
    return _FAILURES.get(key, default)


def failed_response(reason: str, decoy: str | None = None) -> str:
    """The ``generate_until`` answer of a failed sample: the prefix, the ``decoy`` (a wrong option letter,
    when the gold one is known) and the reason, lower-cased so that no letter parser reads an option in it."""
    reason = " ".join(str(reason).split()).lower()
    return f"{FAILED_PREFIX} {decoy} | {reason}" if decoy else f"{FAILED_PREFIX} {reason}"


def failure_reason(response: Any) -> str | None:
    """The reason carried by a failed ``generate_until`` response (or any round of a list), else None."""
    if isinstance(response, (list, tuple)):
        return next((r for r in map(failure_reason, response) if r is not None), None)
    if isinstance(response, str) and response.strip().startswith(FAILED_PREFIX):
        rest = response.strip()[len(FAILED_PREFIX) :].strip()
        head, sep, tail = rest.partition(" | ")
        if sep and len(head) == 1:  # the decoy letter
            rest = tail.strip()
        return rest or "unknown"
    return None


def failed_losses(n: int, gold: Sequence[int] = ()) -> list[tuple[float, bool]]:
    """The ``loglikelihood`` results of a failed doc's ``n`` options: the ``gold`` ones lose."""
    return [((FAILED_GOLD_LOSS if i in gold else FAILED_LOSS), False) for i in range(n)]


def is_failed_loss(loss: float) -> bool:
    """Whether a ``loglikelihood`` loss is the failure sentinel (with margin: it may pass through float32)."""
    return loss >= FAILED_LOSS / 2


def logged_failure(row: dict, record: dict | None) -> tuple[bool, str | None]:
    """``(failed, reason)`` of a sample-log row: its ``failed`` metric or its record's ``failed``/``reason``."""
    failed = bool(row.get(FAILED_METRIC, False))
    if record is None:
        return failed, None
    reason = record.get("reason")
    return failed or bool(record.get("failed", False)), None if reason is None else str(reason)


def _as_loss(v) -> float | None:
    """A logged loss (lmms-eval writes them as strings) as a float, else None."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = v[0]
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _texts(x) -> list[str]:
    """Every string inside a (nested) logged response."""
    if isinstance(x, str):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _texts(item)]
    return []


def _loss_pairs(x) -> list[float] | None:
    """The losses of a logged ``multiple_choice`` / ``loglikelihood`` response ([[loss, greedy]] per option,
    possibly nested once more), else None."""
    if (
        isinstance(x, (list, tuple))
        and len(x) == 2
        and isinstance(x[1], (str, bool))
        and not isinstance(x[0], (list, tuple))
    ):
        loss = _as_loss(x)
        return None if loss is None or str(x[1]) not in ("True", "False") else [loss]
    if isinstance(x, (list, tuple)) and x:
        parts = [_loss_pairs(item) for item in x]
        if all(p is not None for p in parts):
            return [loss for p in parts for loss in p]
    return None


def row_failure(row: dict) -> tuple[bool, str | None]:
    """``(failed, reason)`` of one lmms-eval sample-log row, for any task and output type.

    A row failed when its record says so (the project's tasks), when a response is a failure text
    (``generate_until``, multi-round: any round) or when every loss of the doc is the failure sentinel
    (``loglikelihood`` / ``multiple_choice``; no reason travels with a loss: the provenance lists it)."""
    record = row.get(RECORD_METRIC)
    failed, reason = logged_failure(row, record if isinstance(record, dict) else None)
    if failed:
        return True, reason
    for key in ("filtered_resps", "resps"):
        value = row.get(key)
        losses = _loss_pairs(value)
        if losses:
            if all(is_failed_loss(v) for v in losses):
                return True, _UNKNOWN_VISUAL
            continue
        for text in _texts(value):
            why = failure_reason(text)
            if why is not None:
                return True, why
    return False, None


# ------------------------------------------------------------------------------------------------ provenance


def provenance_path(samples_path: str | os.PathLike) -> Path:
    """Where the plugin writes the provenance of the run that wrote ``samples_path``
    (``<dir>/<date>_samples_<task>.jsonl`` -> ``<dir>/<date>_dna_vlm.json``)."""
    p = Path(samples_path)
    prefix = p.name.split("_samples_")[0] if "_samples_" in p.name else p.stem
    return p.with_name(f"{prefix}_{PROVENANCE_KEY}.json")


def read_provenance(samples_path: str | os.PathLike) -> dict | None:
    """The provenance of the run that wrote the sample log ``samples_path``: the JSON beside it, else the
    results JSON's ``config.dna_vlm``; None when neither exists (another model, or an older dna-vlm)."""
    side = provenance_path(samples_path)
    candidates = [side, side.with_name(side.name.replace(f"_{PROVENANCE_KEY}.json", "_results.json"))]
    for i, path in enumerate(candidates):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable JSON file ({e}); rewrite it or remove it") from None
        found = data if i == 0 else (data.get("config") or {}).get(PROVENANCE_KEY)
        if isinstance(found, dict):
            return found
    return None


# ------------------------------------------------------------------------------------------------ the record


def _whole(v):
    """A numeric field as int (JSON rows give 2.0 for 2); NaN and non-numbers unchanged."""
    return int(v) if isinstance(v, (int, float)) and v == v else v


@dataclass
class SampleRecord:
    """One question's outcome, as a task logs it and as ``attribute`` reads it back.

    ``fields``: what a sample can be grouped by (``category``, ``density``, ``video``, ``blind``, ...).
    ``response`` / ``losses``: the raw generation or the per-option mean NLLs (None when not logged).
    ``source``: ``file:line`` the record was read from ("" when a task built it).
    """

    id: str
    answer: Any = None
    pred: Any = None
    correct: bool = False
    failed: bool = False
    reason: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    response: str | None = None
    losses: list[float] | None = None
    source: str = ""

    @classmethod
    def for_doc(cls, doc: dict, blind: bool) -> SampleRecord:
        """An unanswered record for a dataset row (a doc in the dna_vlm dataset format)."""
        fields = {
            "category": doc.get("category"),
            "density": _whole(doc.get("density")),
            "video": doc.get("video"),
            "blind": blind,
        }
        return cls(id=str(doc.get("id")), answer=str(doc.get("answer")), fields=fields)

    def mark_failed(self, reason: str) -> SampleRecord:
        """A failed sample is never counted right."""
        self.failed, self.reason, self.correct = True, reason, False
        return self

    def to_log(self) -> dict[str, Any]:
        """A task's ``process_results`` value: ``acc`` (0/1; a failed sample is wrong), the ``failed`` count
        and the record dict under :data:`RECORD_METRIC`."""
        rec = {"id": self.id, **self.fields, "answer": self.answer, "pred": self.pred}
        rec.update(correct=bool(self.correct), failed=bool(self.failed), reason=self.reason)
        if self.response is not None:
            rec["response"] = self.response
        if self.losses is not None:
            rec["losses"] = self.losses
        return {"acc": float(self.correct), FAILED_METRIC: int(self.failed), RECORD_METRIC: rec}
