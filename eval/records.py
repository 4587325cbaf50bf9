"""The per-sample record and the failure encoding: the one home of both.

Used by the lmms-eval plugin (:mod:`dna_vlm.eval.lmms_plugin`, which marks failures), the project's tasks
(``eval/tasks/utils.py``, which turn model outputs into records) and ``attribute`` (:mod:`dna_vlm.eval.samples`,
which reads records back from sample logs). Nothing else defines these formats.

**Failure encoding.** A sample fails when the model cannot load its visual (missing or corrupt video, a
task's ``doc_to_visual`` that raises or calls ``sys.exit``); the run goes on. The failure
travels through three channels:

- ``generate_until`` output: the text ``"[dna_vlm:failed] <reason>"`` (:func:`failed_response`; read back
  with :func:`failure_reason`);
- ``loglikelihood`` output: ``(FAILED_LOSS, False)`` for every option of the doc (:data:`FAILED_LOGLIKELIHOOD`;
  read back with :func:`is_failed_loss`). A pair carries no text, so the reason is kept in this process's
  registry (:func:`note_failure`, read back with :func:`noted_reason`), keyed by :func:`doc_key`;
- the sample log (``--log_samples``): the row's metric ``failed`` is 1 and the record has ``failed: true`` and
  a ``reason`` (:meth:`SampleRecord.to_log`; read back with :func:`logged_failure`).

**Sample record.** :class:`SampleRecord`: one question's outcome. The tasks log it under the metric
:data:`RECORD_METRIC` (the task YAMLs' ``metric_list`` names it too) as::

    {"id", "category", "density", "video", "blind", "answer", "pred", "correct", "failed", "reason",
     "response" (generate_until) | "losses" (multiple_choice)}

``attribute`` reads any lmms-eval log into the same dataclass (see :mod:`dna_vlm.eval.samples`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CORRECT_KEYS",
    "FAILED_LOGLIKELIHOOD",
    "FAILED_LOSS",
    "FAILED_METRIC",
    "FAILED_PREFIX",
    "OUTCOME_KEYS",
    "RECORD_METRIC",
    "SampleRecord",
    "doc_key",
    "failed_response",
    "failure_reason",
    "is_failed_loss",
    "logged_failure",
    "note_failure",
    "noted_reason",
]

FAILED_PREFIX = "[dna_vlm:failed]"
FAILED_LOSS = 1.0e9
FAILED_LOGLIKELIHOOD: tuple[float, bool] = (FAILED_LOSS, False)
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


def doc_key(doc: Any, doc_id: Any) -> str:
    """The key of a doc in the failure registry: its ``id`` field, else lmms-eval's ``doc_id``."""
    if isinstance(doc, dict) and doc.get("id") is not None:
        return str(doc["id"])
    return str(doc_id)


def note_failure(key: str, reason: str) -> None:
    """Remember why the doc ``key`` failed (for the loglikelihood channel, which carries no text)."""
    _FAILURES[key] = reason


def noted_reason(key: str) -> str:
    """The reason noted for ``key`` in this process, else a generic one."""
    return _FAILURES.get(key, _UNKNOWN_VISUAL)


def failed_response(reason: str) -> str:
    """The ``generate_until`` answer of a failed sample."""
    return f"{FAILED_PREFIX} {reason}"


def failure_reason(response: Any) -> str | None:
    """The reason carried by a failed ``generate_until`` response (or a list of rounds), else None."""
    if isinstance(response, (list, tuple)) and response:
        response = response[0]
    if isinstance(response, str) and response.strip().startswith(FAILED_PREFIX):
        return response.strip()[len(FAILED_PREFIX) :].strip() or "unknown"
    return None


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
