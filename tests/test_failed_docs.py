"""Issue 25 item 3: a failed doc is never scored right by a stock metric, and the stock score is also given
without the failed docs.

Every stock task the readers support (``dna_vlm.eval.logs.readers.READERS``; the local copies of
``tests/test_stock_tasks.py``: stock YAML and utils unchanged, local data in the stock schema), one real
lmms-eval run with ``bad_video=skip`` in which docs 0 and 1 of every task lose their video (doc 0's gold is
option 0 / "A" everywhere: ``egoschema_subset_mcppl``'s gold is the digit string "0", which the plugin did not
recognise, so all five options got the same sentinel, the stock argmin took option 0 and scored the failed
doc right). Then: the stock per-doc metric and the reader count each failed doc wrong, lmms-eval's own
aggregate equals the share of the surviving doc that is right, the provenance lists no doc whose gold was
unknown and holds each stock score recomputed without the failed docs, which the run wrapper prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

from dna_vlm.eval.logs.readers import find_reader  # noqa: E402
from dna_vlm.eval.logs.records import read_provenance, row_failure  # noqa: E402
from test_stock_tasks import N_ROWS, PTEST, PTEST_FIX, STOCK_ACC, TASKS, _run, _write_task  # noqa: E402

#: the docs whose video is deleted (their golds: option 0 and 1)
GONE = (0, 1)


def _delete_videos(hf: Path, task: str) -> None:
    _stock_yaml, _split, build, video = TASKS[task]
    for i in GONE:
        (hf / video(build(i))).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    from dna_vlm.tiny.default import build_tiny_model

    root = tmp_path_factory.mktemp("failed_docs")
    hf = root / "hf"
    (root / "tasks").mkdir()
    for task in TASKS:
        _write_task(root, hf, task)
    for task in TASKS:
        _delete_videos(hf, task)
    (root / "tasks" / "ptest_fix.py").write_text(PTEST_FIX)  # see test_stock_tasks.PTEST_FIX
    cfg = root / "tasks" / "perceptiontest_val_mcppl_local.yaml"
    cfg.write_text(
        cfg.read_text().replace(f"{PTEST}.perceptiontest_val_aggregate_accuracy", "ptest_fix.accuracy")
    )
    tiny = build_tiny_model(root / "tiny")
    return _run(root, hf, f"pretrained={tiny},max_frames=2,bad_video=skip", list(TASKS), "out")


def _rows(run: dict, task: str) -> dict[int, dict]:
    return {r["doc_id"]: r for r in map(json.loads, Path(run["samples"][task]).read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("task", [*TASKS])
def test_a_failed_doc_is_never_counted_right(failed_run, task):
    rows = _rows(failed_run, task)
    assert sorted(rows) == list(range(N_ROWS))
    assert [d for d, r in rows.items() if row_failure(r)[0]] == list(GONE)
    reader = find_reader(task)
    assert reader is not None and reader.read is not None, task
    readings = {d: reader.read(r[reader.metric], r) for d, r in rows.items()}
    assert not any(readings[d].correct for d in GONE), {d: readings[d] for d in GONE}
    prov = read_provenance(failed_run["samples"][task])
    assert [g for g in prov["gold_unknown"] if g["task"] == task] == []
    if task in STOCK_ACC:  # lmms-eval's own number counts the failed docs wrong ...
        _pattern, key, scale = STOCK_ACC[task]
        survivor = float(readings[N_ROWS - 1].correct)
        stock = failed_run["results_json"]["results"][task][key] / scale
        assert stock == pytest.approx(survivor / N_ROWS, abs=1e-6), (task, stock)
        # ... and the provenance adds it without them, beside it
        score = prov["stock_scores"][task][key]
        assert score["stock"] == pytest.approx(stock * scale) and score["failed"] == len(GONE)
        assert score["n"] == N_ROWS and score["without_failed"] == pytest.approx(survivor * scale)


@pytest.mark.slow
def test_the_wrapper_prints_the_stock_score_without_failures(failed_run):
    summary = failed_run["stderr"]
    assert "egoschema_subset_mcppl_local: 2 of 3 failed" in summary
    assert "stock score,none = " in summary and "without the 2 failed docs: " in summary


class _Task:
    """What the plugin sees of an lmms-eval task: ``doc_to_visual`` is its bound method."""

    def __init__(self, target, choices=None):
        self.target, self.choices = target, choices

    def doc_to_visual(self, doc):
        return [doc["video"]]

    def doc_to_target(self, doc):
        return self.target(doc) if callable(self.target) else self.target

    def doc_to_choice(self, doc):
        if self.choices is None:
            raise TypeError("not a multiple_choice task")
        return self.choices


@pytest.mark.parametrize(
    ("target", "choices", "gold"),
    [
        ("0", ["cook", "clean", "paint"], [0]),  # EgoSchema: the index as a digit string
        (2, ["cook", "clean", "paint"], [2]),
        ("clean", ["cook", "clean", "paint"], [1]),  # the option's text: lmms-eval's own rule
        ("1", ["0", "1", "2"], [1]),  # a text match wins over the index
        ("(C)", ["cook", "clean", "paint"], [2]),
        ([0, "paint"], ["cook", "clean", "paint"], [0, 2]),
        ("zebra", ["cook", "clean", "paint"], None),
        ("7", ["cook", "clean", "paint"], None),
        (True, ["cook", "clean", "paint"], None),
    ],
)
def test_gold_option_of_a_failed_doc(target, choices, gold):
    from dna_vlm.eval.lmms.inference import gold_indices

    task = _Task(target, choices)
    assert gold_indices(task.doc_to_visual, {}, [f" {c}" for c in choices]) == gold
    assert gold_indices(lambda doc: [], {}, choices) is None  # a plain function: no task to ask


def test_decoy_letter_is_never_the_gold_letter():
    from dna_vlm.eval.lmms.inference import decoy_letter

    prompt = "Question: what?\nOption:\n(A) run\n(B) walk\n(C) sit\n"
    assert decoy_letter(_Task("0").doc_to_visual, {}) == "B"  # EgoSchema's digit string
    assert decoy_letter(_Task(0).doc_to_visual, {}) == "B"
    assert decoy_letter(_Task("A").doc_to_visual, {}) == "B"
    assert decoy_letter(_Task("walk").doc_to_visual, {}, prompt) == "A"  # MVBench: the option's line
    assert decoy_letter(_Task("A cat").doc_to_visual, {}, prompt) is None  # not the letter A
    assert decoy_letter(_Task("(B) walk").doc_to_visual, {}) == "A"
    assert decoy_letter(_Task("fly").doc_to_visual, {}, prompt) is None


def test_a_failed_doc_with_an_unknown_gold_is_said_loudly(tmp_path, caplog):
    """Item 3: where the gold cannot be determined the failure cannot be made to lose: it is logged and
    listed in the provenance (``gold_unknown``), for both request types."""
    from dna_vlm.eval.lmms.plugin import DnaVLM
    from lmms_eval.api.instance import Instance
    from train_helpers import tiny_model

    lm = DnaVLM(pretrained=str(tiny_model(tmp_path)), max_frames=2, bad_video="skip")
    lm.task_dict = {"t": {"test": [{"video": str(tmp_path / "gone.mp4")}]}}
    task = _Task("zebra", ["cook", "clean"])
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    dtv = task.doc_to_visual
    ll = [Instance("loglikelihood", ("Q?", c, dtv, 0, "t", "test"), 0, meta) for c in ("cook", "clean")]
    gen = Instance("generate_until", ("Q?", {"max_new_tokens": 2}, dtv, 0, "t", "test"), 0, meta)
    with caplog.at_level("WARNING"):
        assert lm.loglikelihood(ll) == [(1e9, False), (1e9, False)]  # ties: the stock argmin may pick gold
        (text,) = lm.generate_until([gen])
    assert text.startswith("[dna_vlm:failed] ") and " | " not in text  # no decoy letter to give
    assert lm.provenance["gold_unknown"] == [
        {"task": "t", "doc_id": 0, "kind": "loglikelihood", "target": "'zebra'"},
        {"task": "t", "doc_id": 0, "kind": "generate_until", "target": "'zebra'"},
    ]
    assert "its gold option is unknown" in caplog.text and "MAY COUNT IT RIGHT" in caplog.text
