"""dna-vlm attribute: numbers checked against hand-computed values on crafted lmms-eval sample logs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from dna_vlm.eval.attribute.compare import AttributionError, attribute, load_samples, summary_table
from dna_vlm.eval.logs.records import (
    FAILED_LOGLIKELIHOOD,
    SampleRecord,
    failed_response,
    failure_reason,
    is_failed_loss,
)
from dna_vlm.eval.stats import bonferroni, mcnemar_exact, paired_exact_ci, wilson_ci
from scipy.stats import binomtest

from dna_vlm.cli import main as cli_main


def hand_wilson(k, n, z=1.959963984540054):
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


# 20 docs: (baseline, candidate, blind, category, density)
# both right 6, fixed (W->R) 8, broken (R->W) 2, both wrong 4 -> McNemar on (8, 2): p = 0.109375
TABLE = (
    [(1, 1, 1, "color", 1)] * 3
    + [(1, 1, 0, "count", 2)] * 3
    + [(0, 1, 0, "color", 3)] * 5
    + [(0, 1, 1, "count", 3)] * 3
    + [(1, 0, 1, "color", 1)] * 1
    + [(1, 0, 0, "count", 2)] * 1
    + [(0, 0, 0, "color", 1)] * 3
    + [(0, 0, 1, "count", 2)] * 1
)


def row(
    doc_id, correct, category, density, *, failed=False, reason=None, uid=None, style="plugin", blind=False
):
    """One line as lmms-eval 0.7.3 writes it (``doc`` popped). style "plugin": the dna_vlm tasks' metrics
    (``acc``, ``failed``, ``dna_vlm`` record; see eval/records.py); "dict": one ``accuracy`` dict metric."""
    record = {
        "id": uid or f"q{doc_id:03d}",
        "category": category,
        "density": density,
        "video": f"videos/{doc_id}.mp4",
        "correct": bool(correct) and not failed,
        "pred": "A" if correct else "B",
        "answer": "A",
        "failed": failed,
        "reason": reason,
        "blind": blind,
    }
    line = {
        "doc_id": doc_id,
        "target": "A",
        "filtered_resps": "A" if correct else "B",
        "doc_hash": "x",
        "input": "q?",
    }
    if style == "plugin":
        return {**line, "acc": float(record["correct"]), "failed": int(failed), "dna_vlm": record}
    return {**line, "accuracy": {k: v for k, v in record.items() if k not in ("video", "blind")}}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def logs(tmp_path):
    paths = {}
    for j, arm in enumerate(("baseline", "candidate", "blind")):
        rows = [row(i, t[j], t[3], t[4], blind=arm == "blind") for i, t in enumerate(TABLE)]
        if arm == "candidate":
            rows = rows[::-1]  # order must not matter
        paths[arm] = write(tmp_path / f"{arm}.jsonl", rows)
    return paths


def test_headline_numbers(logs):
    r = attribute(logs["baseline"], logs["candidate"], bootstrap=2000)
    assert r["n"] == 20
    assert r["baseline_acc"] == pytest.approx(8 / 20)
    assert r["candidate_acc"] == pytest.approx(14 / 20)
    assert r["delta"] == pytest.approx(0.3)
    assert (r["fixed"], r["broken"], r["both_right"], r["both_wrong"]) == (8, 2, 6, 4)
    assert r["mcnemar_p"] == pytest.approx(0.109375)
    assert r["baseline_ci95"] == pytest.approx(hand_wilson(8, 20))
    assert r["candidate_ci95"] == pytest.approx(hand_wilson(14, 20))
    lo, hi = r["delta_ci95"]
    assert lo <= 0.3 <= hi and r["delta_ci"] == r["delta_ci95"]  # the headline is a family of one
    assert r["significant"] is False and lo < 0 < hi  # p = 0.109: the exact CI must include 0
    assert r["family"] == "headline" and r["p_adjusted"] == r["mcnemar_p"] and 0 < r["mde"] < 1
    assert "Bonferroni" in r["verdict_rule"]
    assert set(r["inputs"]) == {"baseline", "candidate"}
    assert len(r["inputs"]["baseline"]["sha256"]) == 64
    assert r["failed"]["excluded_docs"] == 0


def test_wilson_and_mcnemar_against_scipy():
    for k, n in [(0, 5), (3, 10), (10, 10), (47, 113), (1, 1)]:
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_ci(k, n) == pytest.approx([ci.low, ci.high], abs=1e-12)
        assert wilson_ci(k, n) == pytest.approx(hand_wilson(k, n), abs=1e-12)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * sum(math.comb(10, i) for i in range(3)) / 2**10)
    assert mcnemar_exact(8, 2) == pytest.approx(0.109375)
    assert mcnemar_exact(0, 0) == 1.0
    assert bonferroni([0.01, 0.04, 0.3]) == pytest.approx([0.03, 0.12, 0.9])
    # the delta's CI, by hand: 8 fixed / 2 broken of 20 -> 10/20 * (2 * CP(8 of 10) - 1)
    lo, hi = binomtest(8, 10).proportion_ci(method="exact")
    assert paired_exact_ci(8, 2, 20) == pytest.approx([0.5 * (2 * lo - 1), 0.5 * (2 * hi - 1)])


def test_by_group_numbers(logs):
    r = attribute(logs["baseline"], logs["candidate"], by="category,density", bootstrap=500)
    cat = r["by_group"]["category"]
    assert set(cat) == {"color", "count"}
    # color: RR 3, WR 5, RW 1, WW 3 -> n 12, baseline 4/12, candidate 8/12
    c = cat["color"]
    assert (c["n"], c["fixed"], c["broken"], c["both_right"], c["both_wrong"]) == (12, 5, 1, 3, 3)
    assert c["baseline_acc"] == pytest.approx(4 / 12) and c["candidate_acc"] == pytest.approx(8 / 12)
    assert c["delta"] == pytest.approx(4 / 12)
    assert c["mcnemar_p"] == pytest.approx(binomtest(1, 6, 0.5).pvalue)
    assert c["baseline_ci95"] == pytest.approx(hand_wilson(4, 12))
    d = r["by_group"]["density"]
    assert list(d) == ["1", "2", "3"]  # numeric order
    # density 3: 8 docs all fixed
    assert (d["3"]["n"], d["3"]["fixed"], d["3"]["delta"]) == (8, 8, 1.0)
    assert "only 8 discordant" in d["3"]["ci_warning"] and r["ci_warning"] is None  # 8 vs 10 discordant docs
    assert d["3"]["mcnemar_p"] == pytest.approx(2 / 2**8)
    # a family of 3: Bonferroni p, the CI at 1 - 0.05/3, the verdict from both
    assert d["3"]["p_adjusted"] == pytest.approx(3 * 2 / 2**8) and d["3"]["family"] == "by density"
    assert (
        d["3"]["significant"]
        and d["3"]["delta_ci"][0] > 0
        and d["3"]["ci_level"] == pytest.approx(1 - 0.05 / 3)
    )
    assert d["3"]["delta_ci"][0] < d["3"]["delta_ci95"][0] and d["3"]["mde"] is None
    # density 1: RR 3, RW 1, WW 3 -> delta -1/7
    assert d["1"]["delta"] == pytest.approx(-1 / 7)
    ps = [d[k]["mcnemar_p"] for k in d]
    assert [d[k]["p_adjusted"] for k in d] == pytest.approx(bonferroni(ps))
    assert not d["1"]["significant"] and d["1"]["mde"] > 0
    t = r["trends"]["density"]
    assert t["buckets"] == 3
    dens = np.array([x[4] for x in TABLE], float)
    diff = np.array([x[1] - x[0] for x in TABLE], float)
    assert t["slope"] == pytest.approx(np.polyfit(dens, diff, 1)[0])
    assert t["slope"] > 0 and t["slope_ci"][0] <= t["slope"] <= t["slope_ci"][1]
    assert t["family_size"] == 1 and t["significant"] == (t["slope_ci"][0] > 0 or t["slope_ci"][1] < 0)
    assert "category" not in r["trends"]


def test_blind_decomposition(logs):
    r = attribute(logs["baseline"], logs["candidate"], blind=logs["blind"], bootstrap=500)
    bl = r["blind"]
    k = np.array([t[2] for t in TABLE])
    assert bl["acc"] == pytest.approx(k.mean()) and bl["correct"] == 8
    cells = bl["cells"]
    assert cells == {"RRR": 3, "RRW": 3, "RWR": 1, "RWW": 1, "WRR": 3, "WRW": 5, "WWR": 1, "WWW": 3}
    dec = bl["decomposition"]
    assert dec["encoder_fixed"] == 8 and dec["encoder_fixed_blind_right"] == 3
    assert dec["encoder_broken"] == 2 and dec["encoder_broken_blind_right"] == 1
    assert dec["shared_errors"] == 3 and dec["video_hurts_both"] == 1
    assert dec["baseline_errors"] == 12 and dec["candidate_errors"] == 6
    assert dec["encoder_fixed"] + dec["shared_errors"] + dec["video_hurts_both"] == dec["baseline_errors"]
    assert dec["encoder_broken"] + dec["shared_errors"] + dec["video_hurts_both"] == dec["candidate_errors"]
    assert sum(dec["baseline_errors_share"].values()) == pytest.approx(1.0)
    assert dec["video_hurts_baseline"] == 4 and dec["video_hurts_candidate"] == 2
    rel = bl["video_reliance"]
    # baseline right & blind wrong: RRW 3 + RWW 1 = 4; baseline wrong & blind right: WRR 3 + WWR 1 = 4
    assert (rel["baseline"]["video_helps"], rel["baseline"]["video_hurts"]) == (4, 4)
    assert rel["baseline"]["delta"] == pytest.approx(0.0) and rel["baseline"]["mcnemar_p"] == 1.0
    # candidate: helps RRW 3 + WRW 5 = 8, hurts RWR 1 + WWR 1 = 2 -> +6/20
    assert (rel["candidate"]["video_helps"], rel["candidate"]["video_hurts"]) == (8, 2)
    assert rel["candidate"]["delta"] == pytest.approx(0.3)
    assert rel["candidate"]["delta"] == pytest.approx(r["candidate_acc"] - bl["acc"])
    ov = bl["blind_overlap"]
    # baseline right: RRR 3, RRW 3, RWR 1, RWW 1 = 8, of which blind right: 4
    assert (ov["baseline"]["blind_also_right"], ov["baseline"]["model_right"]) == (4, 8)
    assert ov["candidate"]["fraction"] == pytest.approx(6 / 14)


def test_failed_samples_policy(tmp_path):
    rows_b = [row(i, 1, "c", 1) for i in range(10)]
    rows_c = [row(i, 1, "c", 1) for i in range(10)]
    rows_c[3] = row(3, 0, "c", 1, failed=True, reason="missing video /x/3.mp4")
    rows_c[4] = row(4, 0, "c", 1, failed=True, reason="a|b\nc")
    rows_b[7] = row(7, 0, "c", 1, failed=True, reason="corrupt video")
    b, c = write(tmp_path / "b.jsonl", rows_b), write(tmp_path / "c.jsonl", rows_c)
    ex = attribute(b, c, bootstrap=0)
    assert ex["n"] == 7 and ex["n_total"] == 10 and ex["failed"]["excluded_docs"] == 3
    assert ex["baseline_acc"] == 1.0 and ex["delta"] == 0.0 and ex["delta_ci95"][0] < 0 < ex["delta_ci95"][1]
    assert "no discordant questions" in ex["ci_warning"] and ex["mde"] is not None
    assert ex["failed"]["candidate"] == [
        {"id": "q003", "reason": "missing video /x/3.mp4"},
        {"id": "q004", "reason": "a|b\nc"},
    ]
    assert ex["failed"]["counts"] == {"baseline": 1, "candidate": 2}
    wr = attribute(b, c, bootstrap=0, failed="wrong", out_dir=tmp_path / "w")
    assert wr["n"] == 10 and wr["failed"]["excluded_docs"] == 0
    assert (wr["fixed"], wr["broken"]) == (1, 2)
    assert wr["baseline_acc"] == 0.9 and wr["candidate_acc"] == 0.8
    md = (tmp_path / "w" / "report.md").read_text()
    assert "counted as wrong" in md and "missing video /x/3.mp4" in md and "| a\\|b c |" in md
    # a failed sample is never counted right, whatever its score says; dict-style failures work the same
    odd = write(tmp_path / "odd.jsonl", [{**row(0, 1, "c", 1), "acc": 1.0, "failed": 1}])
    assert load_samples(odd).records["q000"].correct == 0 and load_samples(odd).records["q000"].failed
    d = write(
        tmp_path / "d.jsonl",
        [row(i, 1, "c", 1, style="dict", failed=i == 2, reason="gone") for i in range(10)],
    )
    assert attribute(b, d, bootstrap=0)["failed"]["candidate"] == [{"id": "q002", "reason": "gone"}]
    all_failed = [row(i, 0, "c", 1, failed=True, reason="no video") for i in range(10)]
    with pytest.raises(AttributionError, match="all 10 docs failed"):
        attribute(write(tmp_path / "f.jsonl", all_failed), c)


def test_records_round_trip(tmp_path):
    """What the tasks log (records.SampleRecord.to_log) is what attribute reads back, failures included."""
    ok = SampleRecord.for_doc({"id": 7, "answer": "B", "category": "color", "density": 2.0}, blind=False)
    ok.pred, ok.correct = "B", True
    reason = failure_reason(failed_response("VideoError: /x/8.mp4: cannot decode"))
    bad = SampleRecord.for_doc({"id": 8, "answer": "A"}, blind=True).mark_failed(reason)
    assert is_failed_loss(FAILED_LOGLIKELIHOOD[0]) and not is_failed_loss(30.0)
    assert failure_reason("B") is None and failure_reason(["[dna_vlm:failed]"]) == "unknown"
    logged = [{"doc_id": i, "target": r.answer, **r.to_log()} for i, r in enumerate((ok, bad))]
    assert logged[0]["acc"] == 1.0 and logged[1]["acc"] == 0.0 and logged[1]["failed"] == 1
    recs = load_samples(write(tmp_path / "r.jsonl", logged)).records
    assert list(recs) == ["7", "8"]
    assert recs["7"].correct and not recs["7"].failed and recs["7"].pred == "B"
    assert recs["7"].fields["density"] == 2 and recs["7"].fields["category"] == "color"
    assert (
        recs["8"].failed
        and not recs["8"].correct
        and recs["8"].reason == reason == "videoerror: /x/8.mp4: cannot decode"  # records.py lower-cases it
    )
    assert recs["8"].fields["blind"] is True


def test_refuses_bad_logs(tmp_path, logs):
    short = write(tmp_path / "short.jsonl", [row(i, 1, "c", 1) for i in range(12)])
    other = write(tmp_path / "other.jsonl", [row(i, 1, "c", 1, uid=f"z{i}") for i in range(20)])
    with pytest.raises(AttributionError, match=r"8 doc ids only in .*baseline.jsonl.*'q012'.*0 only in"):
        attribute(logs["baseline"], short)
    with pytest.raises(AttributionError, match=r"20 doc ids only in .*20 only in .*'z0'"):
        attribute(logs["baseline"], other)
    with pytest.raises(AttributionError, match="blind"):
        attribute(logs["baseline"], logs["candidate"], blind=short)
    dup = write(tmp_path / "dup.jsonl", [row(0, 1, "c", 1), row(1, 1, "c", 1), row(0, 0, "c", 1)])
    with pytest.raises(AttributionError, match=r"dup.jsonl:3: duplicate doc id 'q000' \(first at line 1\)"):
        load_samples(dup)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(AttributionError, match=r"empty\.jsonl: no samples"):
        load_samples(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row(0, 1, "c", 1)) + "\n{not json\n")
    with pytest.raises(AttributionError, match=r"bad.jsonl:2: not valid JSON"):
        load_samples(bad)
    half = write(tmp_path / "half.jsonl", [{"doc_id": 0, "exact_match": 0.5}])
    with pytest.raises(AttributionError, match=r"half.jsonl:1: metric 'exact_match' gives 0.5"):
        load_samples(half)
    with pytest.raises(AttributionError, match="no such sample log"):
        load_samples(tmp_path / "nope.jsonl")
    with pytest.raises(AttributionError, match="no metric 'bleu'"):
        load_samples(logs["baseline"], metric="bleu")
    with pytest.raises(AttributionError, match=r"--by nope: no sample has a field 'nope'.*category"):
        attribute(logs["baseline"], logs["candidate"], by=["nope"])


def test_other_row_shapes(tmp_path):
    """A single dict metric, numeric metrics keyed by doc_id, and older logs that keep `doc` with its fields."""
    b = write(tmp_path / "bd.jsonl", [row(i, t[0], t[3], t[4], style="dict") for i, t in enumerate(TABLE)])
    c = write(tmp_path / "cd.jsonl", [row(i, t[1], t[3], t[4], style="dict") for i, t in enumerate(TABLE)])
    r = attribute(b, c, by="density", bootstrap=0)
    assert r["metric"]["baseline"] == "accuracy" and (r["fixed"], r["broken"]) == (8, 2)
    assert r["by_group"]["density"]["3"]["fixed"] == 8
    # the plugin's numeric `acc` chosen explicitly still takes ids, groups and failures from its record
    p = write(tmp_path / "p.jsonl", [row(i, t[1], t[3], t[4]) for i, t in enumerate(TABLE)])
    r = attribute(b, p, metric=None, by="category", bootstrap=0)
    assert r["metric"] == {"baseline": "accuracy", "candidate": "dna_vlm"} and r["fixed"] == 8
    assert load_samples(p, metric="acc").records["q004"].fields["category"] == "count"
    b = write(tmp_path / "b.jsonl", [{"doc_id": i, "target": "A", "acc": i % 2} for i in range(6)])
    c = write(tmp_path / "c.jsonl", [{"doc_id": i, "target": "A", "acc": 1} for i in range(6)])
    r = attribute(b, c, bootstrap=0)
    assert r["metric"] == {"baseline": "acc", "candidate": "acc"} and r["fixed"] == 3
    # several numeric metrics and no record: the user must choose
    multi = write(tmp_path / "m.jsonl", [{"doc_id": 0, "exact": 1, "f1": 1}])
    with pytest.raises(
        AttributionError, match=r"several metrics \['exact', 'f1'\]; choose one with --metric"
    ):
        load_samples(multi)
    assert load_samples(multi, metric="f1").metric == "f1"
    withdoc = [
        {"doc_id": 5 - i, "doc": {"id": f"v{i}", "density": i % 3}, "exact": bool(i % 2)} for i in range(6)
    ]
    d1 = write(tmp_path / "d1.jsonl", withdoc)
    d2 = write(tmp_path / "d2.jsonl", [{**w, "doc_id": i} for i, w in enumerate(withdoc)])
    r = attribute(d1, d2, by=["density"], bootstrap=0)
    assert r["n"] == 6 and r["delta"] == 0 and set(r["by_group"]["density"]) == {"0", "1", "2"}
    # a folder holding one samples file is accepted
    (tmp_path / "run" / "model").mkdir(parents=True)
    write(tmp_path / "run" / "model" / "20260101_samples_task.jsonl", [{"doc_id": 0, "acc": 1}])
    assert load_samples(tmp_path / "run").ids == ["0"]


def test_report_files_and_cli(tmp_path, logs, capsys):
    out = tmp_path / "rep"
    rc = cli_main(
        [
            "attribute",
            "--baseline", str(logs["baseline"]),
            "--candidate", str(logs["candidate"]),
            "--blind", str(logs["blind"]),
            "--by", "category,density",
            "--bootstrap", "300",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "density=3" in printed and "report.md" in printed
    rep = json.loads((out / "report.json").read_text())
    for key in (
        "n", "baseline_acc", "candidate_acc", "delta", "delta_ci95", "mcnemar_p", "fixed", "broken", "by_group",
        "baseline_ci95", "candidate_ci95", "both_right", "both_wrong", "failed", "blind", "significant", "inputs",
    ):  # fmt: skip
        assert key in rep, key
    assert rep["inputs"]["blind"]["path"].endswith("blind.jsonl")
    assert rep["group_order"]["density"] == ["1", "2", "3"]
    assert "NaN" not in (out / "report.json").read_text()
    for png in ("accuracy.png", "flips.png", "by_category.png", "by_density.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (out / "report.md").read_text()
    for text in ("## Definitions", "encoder-attributable", "McNemar", "## By density", "Trend over density"):
        assert text in md
    assert "fixed" in summary_table(rep)
    # errors go to stderr with exit code 2
    rc = cli_main(
        [
            "attribute",
            "--baseline",
            str(logs["baseline"]),
            "--candidate",
            str(tmp_path / "x.jsonl"),
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "no such sample log" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ pooling, pairing


def lmms_log(folder, task, rows, date="20260101_000000"):
    """A sample log under lmms-eval's own name (the task is read from it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write(folder / f"{date}_samples_{task}.jsonl", rows)


def test_pooled_logs_pair_by_task_and_doc_id(tmp_path):
    """Several logs per arm (files, a folder, a glob) pool by (task, doc id): the same doc ids in two tasks
    are different docs; --by task gives the per-task rows."""
    tasks = {"sub_a": TABLE[:10], "sub_b": TABLE[10:]}
    for arm, j in (("base", 0), ("cand", 1)):
        for task, table in tasks.items():
            lmms_log(tmp_path / arm, task, [row(i, t[j], t[3], t[4]) for i, t in enumerate(table)])
    files = sorted((tmp_path / "base").glob("*.jsonl"))
    r = attribute(files, tmp_path / "cand", by="task", bootstrap=0)
    assert r["n"] == 20 and (r["fixed"], r["broken"]) == (8, 2) and r["tasks"] == ["sub_a", "sub_b"]
    assert {k: g["n"] for k, g in r["by_group"]["task"].items()} == {"sub_a": 10, "sub_b": 10}
    assert r["by_group"]["task"]["sub_a"]["fixed"] == 4  # TABLE[:10]: 6 R->R, then 4 of the 5 W->R
    assert len(r["inputs"]["baseline"]["logs"]) == 2 and r["inputs"]["baseline"]["rows"] == 20
    g = attribute(str(tmp_path / "base" / "*_samples_sub_*.jsonl"), [str(tmp_path / "cand")], bootstrap=0)
    assert g["n"] == 20
    argv = ["attribute", "--baseline", *map(str, files), "--candidate", str(tmp_path / "cand" / "*.jsonl")]
    assert (
        cli_main([*argv, "--by", "task", "--bootstrap", "0", "--no-plots", "--out", str(tmp_path / "r")]) == 0
    )
    assert json.loads((tmp_path / "r" / "report.json").read_text())["group_order"]["task"] == [
        "sub_a",
        "sub_b",
    ]
    # the same task twice in one arm, an arm without one of the tasks, an unnamed log among several
    lmms_log(tmp_path / "twice", "sub_a", [row(i, 1, "c", 1) for i in range(10)], date="20260102")
    with pytest.raises(AttributionError, match=r"task 'sub_a' is given twice .*pass one run's log per task"):
        attribute([*files, tmp_path / "twice"], tmp_path / "cand")
    with pytest.raises(AttributionError, match=r"10 doc ids only in .*sub_b/'q000'"):
        attribute(files, files[0].parent.parent / "cand" / files[0].name)
    anon = write(tmp_path / "anon.jsonl", [row(i, 1, "c", 1) for i in range(10)])
    with pytest.raises(AttributionError, match=r"anon.jsonl: cannot tell which task"):
        attribute([files[0], anon], tmp_path / "cand")
    with pytest.raises(AttributionError, match=r"nope\*.jsonl: no such sample log"):
        attribute(str(tmp_path / "nope*.jsonl"), tmp_path / "cand")


def test_pairing_checks(tmp_path):
    """Issue 13 item 4: paired docs must be the same question; no file in two arms; a video log is no --blind."""

    def docs(seed, folder="/data/a"):
        return [
            {
                **row(i, i % 2, "c", 1),
                "doc": {"id": f"q{i:03d}", "question": f"q{seed}-{i}", "video": f"{folder}/{i}.mp4"},
            }
            for i in range(8)
        ]

    a = lmms_log(tmp_path / "a", "synth", docs(0))
    moved = lmms_log(
        tmp_path / "m", "synth", docs(0, folder="/other/machine")
    )  # same questions, files elsewhere
    r = attribute(a, moved, bootstrap=0)
    assert r["pairing"]["questions_checked"] == 8 and r["pairing"]["questions_unverified"] == 0
    other_seed = docs(1)
    other_seed[0]["doc"]["question"] = "q0-0"  # the first doc agrees, the other 7 do not
    b = lmms_log(tmp_path / "b", "synth", other_seed)
    with pytest.raises(
        AttributionError, match=r"pair 7 doc ids with different questions.*synth/'q001', synth/'q002'"
    ):
        attribute(a, b)
    # without `doc` (lmms-eval 0.7.3 drops it), doc_hash and the prompt (`input`) decide: one match suffices
    h1 = write(
        tmp_path / "h1.jsonl",
        [{**row(i, 1, "c", 1), "doc_hash": f"h{i}", "input": f"Q{i}"} for i in range(4)],
    )
    h2 = write(
        tmp_path / "h2.jsonl",
        [
            {**row(i, 1, "c", 1), "doc_hash": f"h{i}" if i else "zz", "input": f"Q{i}" if i else "Q?"}
            for i in range(4)
        ],
    )
    with pytest.raises(AttributionError, match=r"pair 1 doc ids with different questions.*'q000'"):
        attribute(h1, h2)
    moved = [
        {**row(i, 1, "c", 1), "doc_hash": f"other{i}", "input": f"Q{i}"} for i in range(4)
    ]  # paths in doc
    assert (
        attribute(h1, write(tmp_path / "h5.jsonl", moved), bootstrap=0)["pairing"]["questions_checked"] == 4
    )
    with pytest.raises(
        AttributionError, match=r"h1.jsonl is given as both the baseline and the candidate log"
    ):
        attribute(h1, tmp_path / "." / "h1.jsonl")


def test_blind_arm_must_be_blind(tmp_path):
    """A --blind log that saw the video is refused: its records say so, or the plugin's provenance does."""
    seeing = write(tmp_path / "seeing.jsonl", [row(i, 1, "c", 1, blind=False) for i in range(4)])
    with pytest.raises(
        AttributionError, match=r"seeing.jsonl is given as --blind but was answered with the video"
    ):
        rows = [row(i, 1, "c", 1) for i in range(4)]
        attribute(write(tmp_path / "h3.jsonl", rows), write(tmp_path / "h4.jsonl", rows), blind=seeing)
    plain = [{"doc_id": i, "doc": {"id": i}, "acc": i % 2} for i in range(4)]
    vid, blind = lmms_log(tmp_path / "v", "qa", plain), lmms_log(tmp_path / "k", "qa", plain)
    (tmp_path / "k" / "20260101_000000_dna_vlm.json").write_text(json.dumps({"controls": {"video": "full"}}))
    with pytest.raises(
        AttributionError, match=r"answered with the video \(its provenance says controls.video='full'\)"
    ):
        attribute(vid, lmms_log(tmp_path / "c", "qa", plain), blind=blind)
    (tmp_path / "k" / "20260101_000000_dna_vlm.json").write_text(json.dumps({"controls": {"video": "none"}}))
    r = attribute(vid, lmms_log(tmp_path / "c", "qa", plain), blind=blind, bootstrap=0)
    assert r["pairing"]["blind_verified"] is True and r["arms"]["blind"]["runs"][0]["controls"] == {
        "video": "none"
    }
    assert r["arms"]["baseline"] == {"runs": [], "without_provenance": [str(vid)]}
    # a stock blind twin pairs with its video task by name
    twin = lmms_log(tmp_path / "t", "qa_no_visual", plain)
    assert attribute(vid, lmms_log(tmp_path / "c", "qa", plain), blind=twin, bootstrap=0)["blind"]["n"] == 4


def test_provenance_names_each_arm(tmp_path):
    prov = {
        "base_model": {"pretrained": "/models/tiny", "config_sha256": "c" * 64},
        "run_dir": "/runs/dna-v1", "weights": {"sha256": "w" * 64, "files": ["dna/dna.safetensors"]},
        "attention": "dna", "patch_table": [{"index": 0}, {"index": 1}], "controls": {"video": "full"},
        "frame_sampling": {"max_frames": 8}, "bad_video": "skip", "dna_vlm_version": "0.2",
    }  # fmt: skip
    rows = [row(i, i % 2, "c", 1) for i in range(6)]
    b, c = lmms_log(tmp_path / "b", "synth", rows), lmms_log(tmp_path / "c", "synth", rows)
    (tmp_path / "c" / "20260101_000000_dna_vlm.json").write_text(json.dumps(prov))
    stock = {**prov, "run_dir": None, "weights": None, "attention": "softmax", "patch_table": []}
    (tmp_path / "b" / "20260101_000000_results.json").write_text(json.dumps({"config": {"dna_vlm": stock}}))
    r = attribute(b, c, bootstrap=0, out_dir=tmp_path / "rep", plots=False)
    cand, base = r["arms"]["candidate"]["runs"][0], r["arms"]["baseline"]["runs"][0]
    assert (cand["model"], cand["run_dir"], cand["weights_sha256"], cand["patched_modules"]) == (
        "DnA", "/runs/dna-v1", "w" * 64, 2,
    )  # fmt: skip
    assert (base["model"], base["base_model"], base["run_dir"]) == ("stock", "/models/tiny", None)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| candidate | DnA (2 modules) | /models/tiny | /runs/dna-v1 | `wwwwwwwwwwwwwwww...`" in md
    assert "Pairing checks: docs paired by (task, doc id); 6 pairs verified" in md
