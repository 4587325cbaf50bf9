"""Correctness readers: how ``attribute`` gets a per-question right/wrong out of each lmms-eval task's log.

lmms-eval tasks log very different per-sample metrics: a 0/1 number (``exact_match``), a dict with a 0/1
``score`` (videomme, mvbench), a prediction and an answer to compare (egoschema ``score: {pred,
ground_truth}``, longvideobench ``lvb_acc: {answer, parsed_pred}``, mlvu, perceptiontest ``_mcppl``
``{pred_id, answer_id}``) or a graded score that is not right/wrong at all (activitynetqa's GPT score 0-5,
NExT-QA's WUPS). :data:`READERS` is the one table: task-name pattern -> the metric it reads and how. Each
reader reproduces the stock task's own aggregation rule for one doc (cited in its docstring), so the mean of
the readings is the stock accuracy. A :class:`TaskReader` with ``read=None`` is a refusal: its ``why`` says
why the task has no per-question right answer and what to use instead.

Tasks not in the table (the project's own ``dna_vlm_*`` tasks, or logs renamed so the task is unknown) go
through the generic reader in :mod:`dna_vlm.eval.logs.samples` (a 0/1 metric, or a record dict with ``correct``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BLIND_SUFFIXES",
    "GRADED_METRICS",
    "ORACLE_SUFFIXES",
    "READERS",
    "ReadError",
    "Reading",
    "TaskReader",
    "find_reader",
    "graded_metric",
    "pairing_task",
    "video_free",
]

#: task-name parts of a task's video-free twin (stock ``videomme_no_visual``, the project's ``*_blind``)
BLIND_SUFFIXES = ("_no_visual", "_blind")
#: task-name parts of a task's oracle twin: the same questions on a cleaner input (``dna_vlm_synth_oracle``)
ORACLE_SUFFIXES = ("_oracle",)
_BLIND_PART = re.compile("(" + "|".join(BLIND_SUFFIXES) + r")(?=_|$)")
_TWIN_PART = re.compile("(" + "|".join(BLIND_SUFFIXES + ORACLE_SUFFIXES) + r")(?=_|$)")
_LETTERS = "ABCDEFGHIJ"


class ReadError(ValueError):
    """A log row does not hold what its task's reader needs (the caller adds ``file:line``)."""


@dataclass(frozen=True)
class Reading:
    """One doc's outcome as a reader sees it: right/wrong, the parsed prediction and the gold answer, and
    scalar fields to group by (``--by``)."""

    correct: bool
    pred: Any = None
    answer: Any = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskReader:
    """``pattern``: fnmatch pattern of lmms-eval task names; ``metric``: the sample-log key read;
    ``read(value, row) -> Reading``, or None for a refused (graded / unlabelled) task, with ``why``."""

    pattern: str
    metric: str
    read: Callable[[Any, dict], Reading] | None
    why: str = ""

    def refuse(self, task: str) -> ReadError:
        return ReadError(
            f"task {task!r} (metric {self.metric!r}) cannot be compared question by question: {self.why}"
        )


# ------------------------------------------------------------------------------------------------ helpers


def _field(value: Any, key: str, metric: str) -> Any:
    if not isinstance(value, dict) or key not in value:
        have = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ReadError(
            f"metric {metric!r} has no {key!r} (has: {have}); is this log from another lmms-eval version?"
        )
    return value[key]


def _as01(v: Any, what: str) -> bool:
    if isinstance(v, bool) or (isinstance(v, (int, float)) and v in (0, 1)):
        return bool(v)
    raise ReadError(f"{what} is {v!r}; expected 0/1")


def _scalars(d: dict, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: d[k] for k in keys if k in d and (d[k] is None or isinstance(d[k], (str, int, float, bool)))}


def _doc(row: dict) -> dict:
    doc = row.get("doc")
    return doc if isinstance(doc, dict) else {}


def _response(row: dict) -> Any:
    """The (first) filtered response of a row: generated text, or None."""
    r = row.get("filtered_resps")
    while isinstance(r, list) and r:
        r = r[0]
    return r if isinstance(r, str) else None


# ------------------------------------------------------------------------------------------------ readers


def _score01(metric: str, pred: str, answer: str, fields: tuple[str, ...] = ()) -> Callable:
    """A reader of ``metric: {<pred>, <answer>, score: 0/1, ...}`` whose stock rule already is 0/1."""

    def read(v: Any, row: dict) -> Reading:
        ok = _as01(_field(v, "score", metric), f"{metric}.score")
        return Reading(ok, v.get(pred), v.get(answer), _scalars(v, fields))

    read.__doc__ = f"``{metric}``: ``score`` (0/1) compares ``{pred}`` with ``{answer}``."
    return read


#: videomme/utils.py::videomme_process_results: score = 1.0 iff pred_answer == answer (lower-cased)
_videomme = _score01("videomme_perception_score", "pred_answer", "answer",
                     ("duration", "category", "sub_category", "task_category", "videoID", "question_id"))  # fmt: skip
#: videomme_v2/utils.py::videomme_v2_process_results: the same dict under 12 keys; score 0/1 (upper-cased)
_videomme_v2 = _score01(
    "videomme_v2_overall_acc", "pred_answer", "answer", ("group_type", "level", "video_id")
)
#: mvbench/utils.py::mvbench_process_results: score = mcq_acc(gt_answer, pred_answer) (0/1)
_mvbench = _score01("mvbench_accuracy", "pred_answer", "gt_answer")


def _egoschema(v: Any, row: dict) -> Reading:
    """``score: {pred, ground_truth}``: right iff ``str(ground_truth) == str(pred)``, exactly
    ``egoschema/utils.py::egoschema_aggregate_score``. ``pred`` is the option index (-1 = unparsed)."""
    pred, gold = _field(v, "pred", "score"), _field(v, "ground_truth", "score")
    if gold is None or str(gold).strip() in ("", "-1"):
        raise ReadError(
            f"score.ground_truth is {gold!r}: this doc has no label (only EgoSchema's subset is labelled)"
        )
    return Reading(str(gold) == str(pred), pred, gold)


def _nextqa_mc(v: Any, row: dict) -> Reading:
    """``exact_match``: True iff the parsed letter equals ``OPTIONS[doc["answer"]]``
    (``nextqa/utils.py::nextqa_mc_process_results``); the gold index is the logged ``target``."""
    gold = _doc(row).get("answer", row.get("target"))
    gold = int(gold) if isinstance(gold, str) and gold.isdigit() else gold
    answer = _LETTERS[gold] if isinstance(gold, int) and 0 <= gold < len(_LETTERS) else gold
    return Reading(
        _as01(v, "exact_match"), _response(row), answer, _scalars(_doc(row), ("type", "qid", "video"))
    )


def _perceptiontest_mc(v: Any, row: dict) -> Reading:
    """``accuracy: {pred_id, answer_id, correct}``: ``correct`` (0/1) is what
    ``perceptiontest/val/utils.py::perceptiontest_val_aggregate_accuracy`` counts."""
    ok = _as01(_field(v, "correct", "accuracy"), "accuracy.correct")
    return Reading(
        ok, v.get("pred_id"), v.get("answer_id"), _scalars(_doc(row), ("area", "reasoning", "tag"))
    )


def _perceptiontest_mcppl(v: Any, row: dict) -> Reading:
    """``accuracy: {pred_id, answer_id, ...}`` without ``correct``: right iff ``pred_id == int(answer_id)``
    (the argmin option is the gold one; the generation variant's own rule)."""
    pred, gold = _field(v, "pred_id", "accuracy"), _field(v, "answer_id", "accuracy")
    try:
        ok = int(pred) == int(gold)
    except (TypeError, ValueError):
        raise ReadError(
            f"accuracy.pred_id / answer_id are {pred!r} / {gold!r}; expected option indices"
        ) from None
    return Reading(ok, pred, gold, _scalars(v, ("area", "reasoning", "tag")))


def _longvideobench(v: Any, row: dict) -> Reading:
    """``lvb_acc: {answer, parsed_pred, ...}``: right iff ``parsed_pred == answer`` (or is in it, for a list),
    as ``longvideobench/utils.py::eval_multi_choice``. Note the stock parser guesses a random letter when the
    response holds none."""
    gold, pred = _field(v, "answer", "lvb_acc"), _field(v, "parsed_pred", "lvb_acc")
    ok = pred in gold if isinstance(gold, list) else pred == gold
    return Reading(ok, pred, gold, _scalars(v, ("duration_group", "question_category")))


def _compare(
    metric: str, pred: str, answer: str, fields: tuple[str, ...] = (), fold: bool = False
) -> Callable:
    """A reader of ``metric: {<pred>, <answer>, ...}``: right iff they are equal (``fold``: case-insensitive)."""

    def read(v: Any, row: dict) -> Reading:
        p, a = _field(v, pred, metric), _field(v, answer, metric)
        ok = str(p).lower() == str(a).lower() if fold else p == a
        return Reading(ok, p, a, _scalars(v, fields))

    read.__doc__ = f"``{metric}``: right iff ``{pred} == {answer}``{' (case-insensitive)' if fold else ''}."
    return read


#: timescope/utils.py::timescope_aggregate_results: pred_answer.lower() == answer.lower()
_timescope = _compare(
    "timescope_perception_score", "pred_answer", "answer", ("length", "task_type"), fold=True
)
#: videomathqa/utils.py::videomathqa_mcq_aggregate_results: pred_answer == answer
_videomathqa = _compare("videomathqa_perception_score", "pred_answer", "answer", ("category", "duration"))


def _mlvu(v: Any, row: dict) -> Reading:
    """``mlvu_percetion_score: {pred_answer, answer, task_type}``: right iff ``pred_answer == answer``
    (``mlvu/utils.py::mlvu_aggregate_results_dev``; the stock score then macro-averages over task types)."""
    m = "mlvu_percetion_score"
    gold, pred = _field(v, "answer", m), _field(v, "pred_answer", m)
    return Reading(pred == gold, pred, gold, _scalars(v, ("task_type",)))


# ------------------------------------------------------------------------------------------------ the table

_NO_LABELS = "its labels are not public (the stock metric is a submission file for the benchmark's server)"
_GPT = ("it is graded by a GPT judge (a 0-5 'score' plus a yes/no 'Correctness' that needs the OpenAI API "
        "and varies between judge runs), not by a per-question right answer")  # fmt: skip
_MC_INSTEAD = "; compare a multiple-choice video task instead (videomme, mvbench_*, nextqa_mc_test, ...)"

#: task-name pattern -> reader; the first matching pattern wins
READERS: tuple[TaskReader, ...] = (
    TaskReader(
        "videomme_convert_mcq_oe", "acc_score", None, "it is open-ended, scored by an LLM judge" + _MC_INSTEAD
    ),
    TaskReader("videomme_v2*", "videomme_v2_overall_acc", _videomme_v2),
    TaskReader("videomme*", "videomme_perception_score", _videomme),
    TaskReader("mvbench_*", "mvbench_accuracy", _mvbench),
    TaskReader("egoschema_subset*", "score", _egoschema),
    TaskReader(
        "egoschema*", "submission", None, _NO_LABELS + "; use egoschema_subset / egoschema_subset_mcppl"
    ),
    TaskReader("nextqa_mc_*", "exact_match", _nextqa_mc),
    TaskReader(
        "nextqa_oe_*",
        "WUPS",
        None,
        "WUPS is a graded word-similarity score (0-1), not right/wrong; "
        "use nextqa_mc_test (the same videos, multiple choice)",
    ),
    TaskReader(
        "perceptiontest_test_*", "submission", None, _NO_LABELS + "; use perceptiontest_val_mc / _mcppl"
    ),
    TaskReader("perceptiontest_val_mcppl*", "accuracy", _perceptiontest_mcppl),
    TaskReader("perceptiontest_val_mc*", "accuracy", _perceptiontest_mc),
    TaskReader("longvideobench_test_*", "submission", None, _NO_LABELS + "; use longvideobench_val_v / _i"),
    TaskReader("longvideobench_*", "lvb_acc", _longvideobench),
    TaskReader("mlvu_dev*", "mlvu_percetion_score", _mlvu),
    TaskReader("mlvu_test*", "mlvu_percetion_score", None, _NO_LABELS + "; use mlvu_dev"),
    TaskReader("timescope*", "timescope_perception_score", _timescope),
    TaskReader("videomathqa_mcq*", "videomathqa_perception_score", _videomathqa),
    TaskReader(
        "videomathqa_mbin*",
        "videomathqa_perception_score",
        None,
        "its score is per question group (multi-binary: right only if every binary variant is), not per doc; "
        "use videomathqa_mcq",
    ),
    TaskReader("activitynetqa*", "gpt_eval_score", None, _GPT + _MC_INSTEAD),
    TaskReader("videochatgpt*", "gpt_eval_score", None, _GPT + _MC_INSTEAD),
    TaskReader("video_detail_description*", "gpt_eval_score", None, _GPT + _MC_INSTEAD),
)

#: metric names that are graded (never 0/1 correctness), refused in the generic reader too
GRADED_METRICS = re.compile(r"gpt|llm|judge|wups|cider|meteor|rouge|bleu|bertscore|^mae$|^rmse$|^obo", re.I)


def find_reader(task: str | None) -> TaskReader | None:
    """The table entry for ``task`` (None for an unknown or unnamed task: use the generic reader)."""
    if not task:
        return None
    return next((r for r in READERS if fnmatch.fnmatchcase(task, r.pattern)), None)


def graded_metric(metric: str) -> ReadError | None:
    """A refusal for a metric whose name says it is graded (GPT/LLM judges, WUPS, captioning scores)."""
    if not GRADED_METRICS.search(metric):
        return None
    return ReadError(
        f"metric {metric!r} is a graded score (judge / similarity / error magnitude), not a per-question right "
        f"answer; compare a task with a 0/1 metric (multiple choice), or pass --metric for a 0/1 one"
    )


def pairing_task(task: str) -> str:
    """The task a log's docs pair with: a video-free or oracle twin pairs with its video task
    (``videomme_no_visual`` -> ``videomme``, ``videomme_no_visual_local`` -> ``videomme_local``,
    ``dna_vlm_synth_blind`` / ``dna_vlm_synth_oracle`` -> ``dna_vlm_synth``)."""
    return _TWIN_PART.sub("", task)


def video_free(task: str) -> bool:
    """Whether ``task`` is a video-free twin by its name (``*_no_visual*``, ``*_blind*``)."""
    return bool(_BLIND_PART.search(task))
