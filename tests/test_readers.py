"""The correctness-reader table (eval/readers.py): one test per stock lmms-eval 0.7.3 video task.

Every log line here is produced by the stock task's own ``utils.process_results`` on a doc in the task's
schema (the same call lmms-eval's evaluator makes), wrapped in the row fields lmms-eval 0.7.3 writes with
``--log_samples`` (``evaluator.py``: doc_id, doc, target, arguments, resps, filtered_resps, doc_hash, then
the metrics). ``attribute``'s reading must equal the stock aggregation's verdict for that doc.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from unittest import mock

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

from dna_vlm.eval.logs.readers import READERS, find_reader, pairing_task, video_free  # noqa: E402
from dna_vlm.eval.logs.records import failed_losses, failed_response  # noqa: E402
from dna_vlm.eval.logs.samples import AttributionError, load_samples  # noqa: E402


def stock(module: str):
    """A stock task's utils module, imported as lmms-eval's ``!function`` does (absolute import fallback).
    Some read ``$HF_HOME`` at import (nextqa requires it): point it at an empty folder for the import."""
    with mock.patch.dict(os.environ, {"HF_HOME": os.environ.get("HF_HOME") or tempfile.mkdtemp()}):
        return importlib.import_module(f"lmms_eval.tasks.{module}.utils")


def lmms_row(doc_id: int, doc: dict, target, results: list, metrics: dict, prompt: str = "Q?") -> dict:
    """One sample-log line as lmms-eval 0.7.3 writes it: the evaluator's dict (``_process_document``), then
    the tracker's rewrite before writing (``loggers/evaluation_tracker.py``: ``input`` = the prompt, responses
    flattened, ``target`` as text, ``arguments`` and ``doc`` dropped)."""
    from lmms_eval.utils import handle_non_serializable, hash_string

    row = {
        "doc_id": doc_id,
        "doc": doc,
        "target": target,
        "arguments": [prompt],
        "resps": [[r] for r in results],
        "filtered_resps": results,
        "token_counts": [None],
        "doc_hash": hash_string(
            json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False)
        ),
        **metrics,
    }
    row["input"] = row["arguments"][0]
    for key in ("resps", "filtered_resps"):
        if isinstance(row[key], list) and len(row[key]) == 1:
            row[key] = row[key][0]
    if row["resps"] == row["filtered_resps"] or row["resps"] == [row["filtered_resps"]]:
        row.pop("resps")
    row["target"] = str(row["target"])
    row.pop("arguments")
    row.pop("doc")
    return json.loads(json.dumps(row, default=handle_non_serializable))


def gen_rows(process, docs_and_responses, target):
    """Rows of a generate_until task: ``process(doc, [response])`` per (doc, response)."""
    return [lmms_row(i, d, target(d), [r], process(d, [r])) for i, (d, r) in enumerate(docs_and_responses)]


def ll_rows(process, docs_and_losses, target):
    """Rows of a multiple_choice task: ``process(doc, [(loss, greedy), ...])`` per doc."""
    rows = []
    for i, (d, losses) in enumerate(docs_and_losses):
        results = [(float(x), False) for x in losses]
        rows.append(lmms_row(i, d, target(d), [[str(x), "False"] for x, _ in results], process(d, results)))
    return rows


def read(tmp_path, task: str, rows: list[dict]):
    path = tmp_path / f"20260101_000000_samples_{task}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [(r.correct, r.failed) for r in load_samples(path).records.values()], load_samples(path)


RIGHT, WRONG, FAILED = (True, False), (False, False), (False, True)


# ------------------------------------------------------------------------------------------------ docs


def videomme_doc(answer="C"):
    return {
        "video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
        "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
        "task_type": "Counting Problem", "question": "How many red circles appear?",
        "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": answer,
    }  # fmt: skip


def test_videomme_and_no_visual(tmp_path):
    u = stock("videomme")
    data = [
        (videomme_doc(), "C"),
        (videomme_doc(), "The answer is B."),
        (videomme_doc(), failed_response("gone", "A")),
    ]
    for task in ("videomme", "videomme_no_visual", "videomme_w_subtitle"):
        got, log = read(tmp_path, task, gen_rows(u.videomme_process_results, data, lambda d: d["answer"]))
        assert got == [RIGHT, WRONG, FAILED] and log.reader == "videomme*"
    rec = log.records["0"]
    assert rec.pred == "C" and rec.answer == "C" and rec.fields["task_category"] == "Counting Problem"
    assert pairing_task("videomme_no_visual") == "videomme"


def test_twin_tasks_pair_with_their_video_task():
    """Blind and oracle twins pair with the task they twin; only the blind ones are video-free."""
    for twin in ("dna_vlm_synth_blind", "dna_vlm_synth_oracle"):
        assert pairing_task(twin) == "dna_vlm_synth"
    assert pairing_task("videomme_no_visual_local") == "videomme_local"
    assert video_free("dna_vlm_synth_blind") and video_free("videomme_no_visual")
    assert not video_free("dna_vlm_synth_oracle") and not video_free("dna_vlm_synth")
    assert pairing_task("dna_vlm_synth_oracles") == "dna_vlm_synth_oracles"  # a suffix, not any substring


def test_videomme_v2(tmp_path):
    u = stock("videomme_v2")
    doc = {**videomme_doc("B"), "group_type": "g", "group_structure": "s", "level": 1}
    data = [(doc, "B"), (doc, "D")]
    got, _ = read(
        tmp_path, "videomme_v2", gen_rows(u.videomme_v2_process_results, data, lambda d: d["answer"])
    )
    assert got == [RIGHT, WRONG]


def test_mvbench_every_subtask(tmp_path):
    u = stock("mvbench")
    doc = {
        "video": "a.mp4",
        "question": "What happens?",
        "candidates": ["run", "walk", "sit"],
        "answer": "walk",
    }
    data = [(doc, "(B) walk"), (doc, "A"), (doc, failed_response("missing video", "C"))]
    for sub in u.DATA_LIST:  # the 20 subtasks
        got, log = read(
            tmp_path, f"mvbench_{sub}", gen_rows(u.mvbench_process_results, data, lambda d: d["answer"])
        )
        assert got == [RIGHT, WRONG, FAILED], sub
    assert log.records["0"].answer == "B" and len(u.DATA_LIST) == 20


def egoschema_doc(answer="2"):
    opts = ["A. cooking", "B. cleaning", "C. painting", "D. reading", "E. sleeping"]
    return {
        "question_idx": "q1",
        "question": "What does c do?",
        "video_idx": "v1",
        "option": opts,
        "answer": answer,
    }


def test_egoschema_subset_both_output_types(tmp_path):
    u = stock("egoschema")
    d = egoschema_doc()
    gen = gen_rows(u.egoschema_process_results_generation, [(d, "C"), (d, "A."), (d, failed_response("x", "A"))],
                   u.egoschema_doc_to_answer)  # fmt: skip
    got, log = read(tmp_path, "egoschema_subset", gen)
    assert got == [RIGHT, WRONG, FAILED] and log.metric == "score"
    gold = int(d["answer"])
    losses = [[5, 4, 1, 3, 6], [1, 4, 2, 3, 6], [x for x, _ in failed_losses(5, [gold])]]
    got, log = read(tmp_path, "egoschema_subset_mcppl", ll_rows(u.egoschema_process_results, [(d, x) for x in losses],
                                                                u.egoschema_doc_to_answer))  # fmt: skip
    assert got == [RIGHT, WRONG, FAILED] and log.records["0"].pred == 2


def test_nextqa_mc(tmp_path):
    u = stock("nextqa")
    doc = {"video": 4010069381, "frame_count": 300, "width": 640, "height": 480, "question": "why did the boy run",
           "answer": 3, "qid": 7, "type": "CW", "a0": "to eat", "a1": "to sleep", "a2": "to swim", "a3": "to catch the ball",
           "a4": "to sing"}  # fmt: skip
    data = [(doc, "D"), (doc, "B. to sleep"), (doc, failed_response("gone", "A"))]
    got, log = read(
        tmp_path, "nextqa_mc_test", gen_rows(u.nextqa_mc_process_results, data, u.nextqa_doc_to_target)
    )
    assert got == [RIGHT, WRONG, FAILED] and log.records["0"].answer == "D" and log.records["0"].pred == "D"


def perception_doc():
    return {"video_name": "video_1", "question": "What is on the table?", "question_id": "q9",
            "options": ["a cup", "a ball", "a pen"], "answer_id": 1, "area": "memory", "reasoning": "descriptive",
            "tag": ["objects"]}  # fmt: skip


def test_perceptiontest_val_both_output_types(tmp_path):
    u = stock("perceptiontest.val")
    d = perception_doc()
    data = [(d, "B"), (d, "C"), (d, failed_response("gone", "A"))]
    got, _ = read(tmp_path, "perceptiontest_val_mc",
                  gen_rows(u.perceptiontest_val_process_results_mc, data, u.perceptiontest_val_doc_to_answer))  # fmt: skip
    assert got == [RIGHT, WRONG, FAILED]
    losses = [[3, 1, 2], [1, 2, 3], [x for x, _ in failed_losses(3, [1])]]
    rows = ll_rows(
        u.perceptiontest_val_process_results_mc_ppl,
        [(d, x) for x in losses],
        u.perceptiontest_val_doc_to_answer,
    )
    got, log = read(tmp_path, "perceptiontest_val_mcppl", rows)
    assert got == [RIGHT, WRONG, FAILED] and log.records["0"].fields["area"] == "memory"
    # one doc under three doc ids: its doc_hash cannot tell them apart and is dropped; the prompt stays
    assert "doc_hash" not in log.questions["0"] and log.doc_hash_ignored == 3 and log.questions["0"]["input"]


def lvb_doc():
    return {"video_path": "abc.mp4", "subtitle_path": "abc_en.json", "duration": 12.0, "duration_group": 15,
            "starting_timestamp_for_subtitles": 0, "question": "What color is the car?", "question_category": "S2E",
            "option0": "red", "option1": "blue", "option2": "green", "option3": "N/A", "option4": "N/A",
            "correct_choice": 1, "id": "abc_0", "video_id": "abc"}  # fmt: skip


def test_longvideobench_v_and_i(tmp_path):
    u = stock("longvideobench")
    d = lvb_doc()
    data = [(d, "B"), (d, "The answer is C"), (d, failed_response("gone", "A"))]
    for task in ("longvideobench_val_v", "longvideobench_val_i"):
        got, log = read(
            tmp_path, task, gen_rows(u.longvideobench_process_results, data, lambda d: d["correct_choice"])
        )
        assert got == [RIGHT, WRONG, FAILED]
    assert log.records["0"].pred == "B" and log.records["0"].fields["question_category"] == "S2E"


def test_mlvu_dev(tmp_path):
    u = stock("mlvu")
    doc = {"video_name": "count_1.mp4", "duration": 100, "question": "How many? (A) 1 (B) 2 (C) 3 (D) 4",
           "answer": "B", "task_type": "count"}  # fmt: skip
    data = [(doc, "B) 2"), (doc, "A"), (doc, failed_response("gone", "A"))]
    got, log = read(tmp_path, "mlvu_dev", gen_rows(u.mlvu_process_results, data, lambda d: d["answer"]))
    assert got == [RIGHT, WRONG, FAILED] and log.records["1"].fields["task_type"] == "count"


def test_timescope_and_videomathqa_mcq(tmp_path):
    u = stock("timescope")
    doc = {
        "id": "t1",
        "length": 60,
        "video": "t1.mp4",
        "type": "QA",
        "question": "Which? (A) x (B) y",
        "answer": "B",
    }
    data = [(doc, "B"), (doc, "A"), (doc, failed_response("gone", "A"))]
    got, _ = read(tmp_path, "timescope", gen_rows(u.timescope_process_results, data, lambda d: d["answer"]))
    assert got == [RIGHT, WRONG, FAILED]
    u = stock("videomathqa")
    doc = {"question_id": "m1", "length": "short", "category": "geometry", "answer": "C", "question": "Area?",
           "options": ["A. 1", "B. 2", "C. 3", "D. 4", "E. 5"]}  # fmt: skip
    data = [(dict(doc), "C"), (dict(doc), "E"), (dict(doc), failed_response("gone", "A"))]
    got, _ = read(
        tmp_path, "videomathqa_mcq", gen_rows(u.videomathqa_process_results, data, lambda d: d["answer"])
    )
    assert got == [RIGHT, WRONG, FAILED]


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("task", "says"),
    [
        ("activitynetqa", "GPT judge"),
        ("videochatgpt_temporal", "GPT judge"),
        ("nextqa_oe_val", "WUPS"),
        ("egoschema", "egoschema_subset"),
        ("egoschema_mcppl", "egoschema_subset"),
        ("perceptiontest_test_mc", "perceptiontest_val_mc"),
        ("longvideobench_test_v", "longvideobench_val_v"),
        ("mlvu_test", "mlvu_dev"),
        ("videomme_convert_mcq_oe", "open-ended"),
        ("videomathqa_mbin", "videomathqa_mcq"),
    ],
)
def test_graded_and_unlabelled_tasks_are_refused(tmp_path, task, says):
    """A refusal says why and what to use instead; the row is activitynetqa's real metric shape (its
    process_results calls the OpenAI API, so it is taken from ``activitynetqa/utils.py``'s return)."""
    rec = {"video_name": "v", "question": "q", "answer": "yes", "pred": "yes", "question_id": "1", "type": 0,
           "Correctness": "yes", "score": 1}  # fmt: skip
    path = tmp_path / f"20260101_samples_{task}.jsonl"
    path.write_text(json.dumps(lmms_row(0, {"q": 1}, "yes", ["yes"], {"gpt_eval_score": rec})) + "\n")
    with pytest.raises(AttributionError, match=f"cannot be compared question by question: .*{says}"):
        load_samples(path)


def test_graded_metric_refused_without_task_name(tmp_path):
    """A renamed activitynetqa log (task unknown) is not misread as 0/1 either: graded metric names are refused."""
    rec = {"answer": "yes", "pred": "yes", "Correctness": "yes", "score": 1}
    path = tmp_path / "renamed.jsonl"
    path.write_text("".join(json.dumps({"doc_id": i, "gpt_eval_score": rec}) + "\n" for i in range(3)))
    with pytest.raises(AttributionError, match="'gpt_eval_score' is a graded score"):
        load_samples(path)


def test_table_is_small_and_ordered():
    assert len(READERS) <= 25
    assert find_reader("egoschema_subset_mcppl").read is not None and find_reader("egoschema").read is None
    assert find_reader("perceptiontest_val_mcppl").metric == "accuracy"
    assert find_reader("dna_vlm_synth") is None and find_reader("") is None


# ------------------------------------------------------------------------------------------------ identification


def results_config(folder, task: str, process_results, metric: str, aggregation) -> None:
    """The results JSON lmms-eval writes beside the sample logs, with the task's config as ``TaskConfig``
    dumps it (``evaluator.py``: ``configs[task] = task.dump_config()``; functions become their ``str``)."""
    from lmms_eval.api.task import TaskConfig
    from lmms_eval.utils import handle_non_serializable

    cfg = TaskConfig(task=task, process_results=process_results,
                     metric_list=[{"metric": metric, "aggregation": aggregation}]).to_dict()  # fmt: skip
    text = json.dumps({"results": {}, "configs": {task: cfg}}, default=handle_non_serializable)
    (folder / "20260101_000000_results.json").write_text(text)


def test_renamed_stock_task_is_read_by_what_its_log_carries(tmp_path):
    """Issue 25 item 4: a user's copy of a stock task under its own name failed with "no per-sample metric
    found" (readers were chosen by task name only). The reader now comes from the task config in the results
    JSON (its stock functions) or, without one, from the metric's shape."""
    u = stock("egoschema")
    d = egoschema_doc()
    rows = gen_rows(u.egoschema_process_results_generation, [(d, "C"), (d, "A."), (d, failed_response("x", "A"))],
                    u.egoschema_doc_to_answer)  # fmt: skip
    got, log = read(tmp_path, "my_egoschema_copy", rows)  # no results JSON: the metric's shape
    assert got == [RIGHT, WRONG, FAILED] and (log.reader, log.reader_by) == (
        "egoschema_subset*",
        "metric shape",
    )
    u = stock("longvideobench")
    lvb = gen_rows(
        u.longvideobench_process_results, [(lvb_doc(), "B"), (lvb_doc(), "C")], lambda d: d["correct_choice"]
    )
    results_config(
        tmp_path, "lvb_local", u.longvideobench_process_results, "lvb_acc", u.longvideobench_aggregate_results
    )
    got, log = read(tmp_path, "lvb_local", lvb)
    assert got == [RIGHT, WRONG] and (log.reader, log.reader_by) == ("longvideobench_*", "results config")


def test_ambiguous_shape_needs_the_config_or_reader(tmp_path):
    """videomathqa mcq / mbin log the same metric dict: without a results JSON the error lists both and asks
    for --reader; the results JSON's aggregation tells them apart; --reader forces one and an unknown name
    lists every reader."""
    u = stock("videomathqa")
    doc = {"question_id": "m1", "length": "short", "category": "geometry", "answer": "C", "question": "Area?",
           "options": ["A. 1", "B. 2", "C. 3", "D. 4", "E. 5"]}  # fmt: skip
    rows = gen_rows(
        u.videomathqa_process_results, [(dict(doc), "C"), (dict(doc), "E")], lambda d: d["answer"]
    )
    path = tmp_path / "20260101_000000_samples_vmq_local.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        AttributionError, match=r"several stock tasks \(videomathqa_mcq, videomathqa_mbin\).*--reader"
    ):
        load_samples(path)
    forced = load_samples(path, reader="videomathqa_mcq")
    assert [r.correct for r in forced.records.values()] == [True, False] and forced.reader_by == "--reader"
    with pytest.raises(
        AttributionError,
        match=r"--reader 'nope': no such reader; readers: videomme_convert_mcq_oe, .*, generic",
    ):
        load_samples(path, reader="nope")
    results_config(tmp_path, "vmq_local", u.videomathqa_process_results, "videomathqa_perception_score",
                   u.videomathqa_multi_binary_aggregate_results)  # fmt: skip
    with pytest.raises(
        AttributionError, match=r"cannot be compared question by question: its score is per question group"
    ):
        load_samples(path)


def test_reader_flag_in_the_cli(tmp_path, capsys):
    """`dna-vlm attribute --reader NAME` forces a reader; `--help` lists them."""
    from dna_vlm.cli import main

    u = stock("videomathqa")
    doc = {"question_id": "m1", "length": "short", "category": "geometry", "answer": "C", "question": "Area?",
           "options": ["A. 1", "B. 2", "C. 3", "D. 4", "E. 5"]}  # fmt: skip
    logs = []
    for arm, resp in (("b", "C"), ("c", "E")):
        rows = gen_rows(u.videomathqa_process_results, [(dict(doc), resp)], lambda d: d["answer"])
        (tmp_path / arm).mkdir()
        logs.append(tmp_path / arm / "20260101_samples_vmq.jsonl")
        logs[-1].write_text(json.dumps(rows[0]) + "\n")
    argv = ["attribute", "--baseline", str(logs[0]), "--candidate", str(logs[1]), "--bootstrap", "0", "--no-plots",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2 and "--reader" in capsys.readouterr().err
    assert main([*argv, "--reader", "videomathqa_mcq"]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (rep["baseline_acc"], rep["candidate_acc"]) == (1.0, 0.0)
    assert rep["inputs"]["baseline"]["logs"][0]["reader_by"] == "--reader"
