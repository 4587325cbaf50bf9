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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BLIND_SUFFIXES",
    "GENERIC",
    "GRADED_METRICS",
    "ORACLE_SUFFIXES",
    "READERS",
    "ReadError",
    "Reading",
    "TaskReader",
    "find_reader",
    "identify_reader",
    "oracle_twin",
    "pairing_task",
    "reader_named",
    "reader_names",
    "refused_metric",
    "video_free",
]

#: task-name parts of a task's video-free twin (stock ``videomme_no_visual``, the project's ``*_blind``)
BLIND_SUFFIXES = ("_no_visual", "_blind")
#: task-name parts of a task's oracle twin: the same questions on a cleaner input (``dna_vlm_synth_oracle``)
ORACLE_SUFFIXES = ("_oracle",)
_BLIND_PART = re.compile("(" + "|".join(BLIND_SUFFIXES) + r")(?=_|$)")
_ORACLE_PART = re.compile("(" + "|".join(ORACLE_SUFFIXES) + r")(?=_|$)")
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
    ``read(value, row) -> Reading``, or None for a refused (graded / unlabelled) task, with ``why``;
    ``functions``: stock function names (``process_results`` / aggregation) that identify the task in the
    results JSON's task config; ``shape(value)``: whether a metric value has this task's shape (set only
    where no other stock task's metric has it)."""

    pattern: str
    metric: str
    read: Callable[[Any, dict], Reading] | None
    why: str = ""
    functions: tuple[str, ...] = ()
    shape: Callable[[Any], bool] | None = None

    @property
    def name(self) -> str:
        """The name ``--reader`` takes: the pattern without its wildcard (``mvbench_*`` -> ``mvbench``)."""
        return self.pattern.rstrip("*").rstrip("_")

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


def _has(*keys: str) -> Callable[[Any], bool]:
    """A shape test: the metric value is a dict with every one of ``keys``."""
    return lambda v: isinstance(v, dict) and all(k in v for k in keys)


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

#: task-name pattern -> reader; the first matching pattern wins (by name, and by config functions)
READERS: tuple[TaskReader, ...] = (
    TaskReader(
        "videomme_convert_mcq_oe", "acc_score", None, "it is open-ended, scored by an LLM judge" + _MC_INSTEAD
    ),
    TaskReader("videomme_v2*", "videomme_v2_overall_acc", _videomme_v2,
               functions=("videomme_v2_process_results",), shape=_has("pred_answer", "answer")),
    TaskReader("videomme*", "videomme_perception_score", _videomme,
               functions=("videomme_process_results",), shape=_has("pred_answer", "answer")),
    TaskReader("mvbench_*", "mvbench_accuracy", _mvbench,
               functions=("mvbench_process_results",), shape=_has("pred_answer", "gt_answer")),
    TaskReader("egoschema_subset*", "score", _egoschema,
               functions=("egoschema_aggregate_score",), shape=_has("pred", "ground_truth")),
    TaskReader(
        "egoschema*", "submission", None, _NO_LABELS + "; use egoschema_subset / egoschema_subset_mcppl",
        functions=("egoschema_aggregate_mc", "egoschema_aggregate_mc_ppl"),
    ),
    TaskReader("nextqa_mc_*", "exact_match", _nextqa_mc, functions=("nextqa_mc_process_results",)),
    TaskReader(
        "nextqa_oe_*",
        "WUPS",
        None,
        "WUPS is a graded word-similarity score (0-1), not right/wrong; "
        "use nextqa_mc_test (the same videos, multiple choice)",
        functions=("nextqa_process_results",),
    ),
    TaskReader(
        "perceptiontest_test_*", "submission", None, _NO_LABELS + "; use perceptiontest_val_mc / _mcppl",
        functions=("perceptiontest_aggregate_mc", "perceptiontest_aggregate_mc_ppl"),
    ),
    TaskReader("perceptiontest_val_mcppl*", "accuracy", _perceptiontest_mcppl,
               functions=("perceptiontest_val_process_results_mc_ppl",),
               shape=lambda v: _has("pred_id", "answer_id")(v) and "correct" not in v),
    TaskReader("perceptiontest_val_mc*", "accuracy", _perceptiontest_mc,
               functions=("perceptiontest_val_process_results_mc",), shape=_has("pred_id", "answer_id", "correct")),
    TaskReader(
        "longvideobench_test_*", "submission", None, _NO_LABELS + "; use longvideobench_val_v / _i",
        functions=("longvideobench_aggregate_results_for_submission",),
    ),
    TaskReader("longvideobench_*", "lvb_acc", _longvideobench,
               functions=("longvideobench_aggregate_results",), shape=_has("answer", "parsed_pred")),
    # mlvu dev / test and videomathqa mcq / mbin log the same metric dict: only their aggregation tells them apart
    TaskReader("mlvu_dev*", "mlvu_percetion_score", _mlvu,
               functions=("mlvu_aggregate_results_dev",), shape=_has("pred_answer", "answer")),
    TaskReader("mlvu_test*", "mlvu_percetion_score", None, _NO_LABELS + "; use mlvu_dev",
               functions=("mlvu_aggregate_results_test",), shape=_has("pred_answer", "answer")),
    TaskReader("timescope*", "timescope_perception_score", _timescope,
               functions=("timescope_process_results",), shape=_has("pred_answer", "answer")),
    TaskReader("videomathqa_mcq*", "videomathqa_perception_score", _videomathqa,
               functions=("videomathqa_mcq_aggregate_results",), shape=_has("pred_answer", "answer")),
    TaskReader(
        "videomathqa_mbin*",
        "videomathqa_perception_score",
        None,
        "its score is per question group (multi-binary: right only if every binary variant is), not per doc; "
        "use videomathqa_mcq",
        functions=("videomathqa_multi_binary_aggregate_results",),
        shape=_has("pred_answer", "answer"),
    ),
    TaskReader("activitynetqa*", "gpt_eval_score", None, _GPT + _MC_INSTEAD),
    TaskReader("videochatgpt*", "gpt_eval_score", None, _GPT + _MC_INSTEAD),
    TaskReader("video_detail_description*", "gpt_eval_score", None, _GPT + _MC_INSTEAD),
)  # fmt: skip

#: the reader name that forces the generic reader (``--reader generic``)
GENERIC = "generic"

#: metric names that are graded (never 0/1 correctness), refused in the generic reader too
GRADED_METRICS = re.compile(r"gpt|llm|judge|wups|cider|meteor|rouge|bleu|bertscore|^mae$|^rmse$|^obo", re.I)


def find_reader(task: str | None) -> TaskReader | None:
    """The table entry for ``task`` by its name (None for an unknown or unnamed task)."""
    if not task:
        return None
    return next((r for r in READERS if fnmatch.fnmatchcase(task, r.pattern)), None)


def reader_names() -> list[str]:
    """Every name ``--reader`` takes (the table's, then ``generic``)."""
    return [r.name for r in READERS] + [GENERIC]


def reader_named(name: str) -> TaskReader | None:
    """The reader ``--reader name`` forces (None for ``generic``); an unknown name raises listing them."""
    if name == GENERIC:
        return None
    found = next((r for r in READERS if name in (r.name, r.pattern)), None)
    if found is None:
        raise ReadError(f"--reader {name!r}: no such reader; readers: {', '.join(reader_names())}")
    return found


def identify_reader(task: str, row: dict, functions: Sequence[str] = ()) -> tuple[TaskReader | None, str]:
    """``(reader or None for the generic one, how it was identified)`` for a log of ``task`` whose first row
    is ``row``; ``functions``: the function names in the task's config in the results JSON (``[]`` when
    there is none). Raises :class:`ReadError` when the metric's shape fits several tasks and nothing else
    tells them apart."""
    by_name = find_reader(task)
    if by_name is not None:
        return by_name, "task name"
    by_config = next((r for r in READERS if set(r.functions) & set(functions)), None)
    if by_config is not None:
        return by_config, "results config"
    fits = [r for r in READERS if r.shape is not None and r.metric in row and r.shape(row[r.metric])]
    if len(fits) > 1:
        names = ", ".join(r.name for r in fits)
        raise ReadError(
            f"task {task!r}: its metric {fits[0].metric!r} has the shape of several stock tasks ({names}) and no "
            "results JSON beside the log names its functions; choose one with --reader NAME"
        )
    return (fits[0], "metric shape") if fits else (None, GENERIC)


def refused_metric(metric: str) -> ReadError | None:
    """A refusal for a metric whose name says it is graded (GPT/LLM judges, WUPS, captioning scores) or a
    benchmark-server submission (no labels); None for any other metric."""
    if metric == "submission":
        return ReadError(
            "metric 'submission' is a file for a benchmark's submission server (its labels are not public): "
            "no question has a right answer here; evaluate the task's labelled split"
        )
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


def oracle_twin(task: str) -> bool:
    """Whether ``task`` is an oracle twin by its name (``*_oracle*``: the same questions on a cleaner input)."""
    return bool(_ORACLE_PART.search(task))
