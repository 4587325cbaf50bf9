"""`dna-vlm attribute` pairs the same questions only (issue 25 items 1 and 10): content decides, never
lmms-eval 0.7.3's constant ``doc_hash``; the probe join is checked too; a bad ``--probe`` file is one line.

The ``slow`` tests evaluate two synthetic test sets made with different seeds (same doc ids, other questions)
with the real plugin through lmms-eval, and a real ``dna-vlm probe`` on one of them. :func:`real_runs` also
serves ``tests/test_attribute_roles.py`` (built once per session).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dna_vlm.eval.attribute.compare import AttributionError, attribute
from dna_vlm.eval.logs.samples import NULL_DOC_HASH, load_samples

from dna_vlm.cli import main as cli_main

N_TEST = 8
_RUNS: dict = {}  # the session's real runs (shared with test_attribute_roles.py)


# ------------------------------------------------------------------------------------------------ real runs


def build_real_runs(root: Path) -> dict:
    """Synthetic test sets of seeds 0 and 1 (same ids, other questions), the tiny model, a DnA run dir, and
    lmms-eval runs with the plugin: on seed 0 the stock model (full video, video=none, encoder_noise=2, the
    oracle task) and the DnA run (full, video=none, encoder_noise=2); on seed 1 the stock model. Returns the
    sample logs by run name."""
    from dna_vlm.eval.lmms.run import LmmsSpec, run_lmms, run_lmms_many
    from train_helpers import lmms_env, tiny_model, write_dna_run

    import dna_vlm
    from dna_vlm.data.synth import generate_dataset
    from dna_vlm.runs.loading import load_model

    tiny = tiny_model(root)
    sets = {
        s: generate_dataset(root / f"seed{s}", n_train=24 * s, n_val=0, n_test=N_TEST, seed=s) for s in (0, 1)
    }
    model, _ = load_model(pretrained=str(tiny))
    dna_vlm.patch(model)
    with torch.no_grad():
        for name, p in dna_vlm.patching.dna_named_parameters(model):
            if "v_neg" in name and name.endswith("weight"):
                p.normal_(0, 0.02)
    run_dir = write_dna_run(model, root / "run_dna", tiny)

    def env(seed: int) -> dict:
        return lmms_env(
            root, DNA_VLM_SYNTH_JSONL=str(sets[seed]["test"]), DNA_VLM_SYNTH_ORACLE_JSONL=str(sets[seed]["test_oracle"]),
            LMMS_EVAL_DATASETS_CACHE=str(root / "hf" / f"lmms_datasets{seed}"),
        )  # fmt: skip

    stock = {"pretrained": str(tiny), "max_frames": 2}
    dna = {"dna": str(run_dir), "max_frames": 2}
    plan = {
        "base": (stock, "dna_vlm_synth"),
        "none": ({**stock, "video": "none"}, "dna_vlm_synth"),
        "noise2": ({**stock, "encoder_noise": 2}, "dna_vlm_synth"),
        "oracle": (stock, "dna_vlm_synth_oracle"),
        "dna": (dna, "dna_vlm_synth"),
        "dna_none": ({**dna, "video": "none"}, "dna_vlm_synth"),
        "dna_noise2": ({**dna, "encoder_noise": 2}, "dna_vlm_synth"),
    }
    specs = [LmmsSpec(a, [t], root / "out" / name, batch_size=4) for name, (a, t) in plan.items()]
    runs = run_lmms_many(specs, env=env(0), timeout=600)
    logs = {name: run.samples[plan[name][1]] for name, run in zip(plan, runs, strict=True)}
    other = run_lmms(stock, ["dna_vlm_synth"], root / "out" / "seed1", batch_size=4, env=env(1), timeout=600)
    logs["seed1"] = other.samples["dna_vlm_synth"]
    return {"root": root, "tiny": tiny, "sets": sets, "logs": logs}


def real_runs_for(tmp_path_factory) -> dict:
    if not _RUNS:
        _RUNS.update(build_real_runs(tmp_path_factory.mktemp("attribute_real")))
    return _RUNS


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    pytest.importorskip("lmms_eval")
    return real_runs_for(tmp_path_factory)


@pytest.fixture(scope="module")
def seed1_probe(real_runs):
    """A real `dna-vlm probe` of the stock tiny model, fitted and scored on the seed-1 set."""
    from dna_vlm.eval.probe.run import run_probe

    s1 = real_runs["sets"][1]
    run_probe(
        real_runs["root"] / "probe1", s1["train"], s1["test"], ["target_color", "target_shape", "target_motion"],
        model=str(real_runs["tiny"]), asked="target_{category}", num_frames=2, n_boot=0, n_jobs=1,
    )  # fmt: skip
    return real_runs["root"] / "probe1" / "probe.json"


# ------------------------------------------------------------------------------------------------ item 1


@pytest.mark.slow
def test_other_seed_is_refused_on_real_plugin_logs(real_runs, tmp_path):
    """Issue 25 item 1: two test sets made with different seeds (same doc ids), evaluated with the plugin,
    were reported as "N pairs verified to be the same question" (lmms-eval 0.7.3's doc_hash is sha256(null)
    on every row and one doc_hash match sufficed). Now they are refused, naming doc ids and what differs."""
    logs = real_runs["logs"]
    rows = [json.loads(x) for x in Path(logs["base"]).read_text().splitlines()]
    assert {r["doc_hash"] for r in rows} == {NULL_DOC_HASH}  # what lmms-eval 0.7.3 really writes
    base = load_samples(logs["base"])
    assert base.doc_hash_ignored == N_TEST and all("doc_hash" not in q for q in base.questions.values())
    with pytest.raises(
        AttributionError, match=r"pair \d+ doc ids with different questions: dna_vlm_synth/'test-0000"
    ):
        attribute(logs["base"], logs["seed1"], bootstrap=0)
    argv = [
        "attribute",
        "--baseline",
        str(logs["base"]),
        "--candidate",
        str(logs["seed1"]),
        "--out",
        str(tmp_path),
    ]
    assert cli_main(argv) == 2
    # the same questions (two models on one set) still pair, verified by their content
    r = attribute(logs["base"], logs["dna"], bootstrap=0)
    p = r["pairing"]
    assert p["questions_checked"] == N_TEST and p["questions_unverified"] == 0
    assert p["evidence"]["prompt"] == N_TEST and p["evidence"]["answer"] == N_TEST
    assert p["doc_hash_ignored"] == 2 * N_TEST and "doc_hash" not in p["evidence"]


@pytest.mark.slow
def test_probe_of_another_test_set_is_refused(real_runs, seed1_probe, tmp_path):
    """Issue 25 item 1 (probe join): a probe made on the seed-1 set was joined with seed-0 QA logs by id
    alone. Now its test rows are checked against the baseline's questions (its test file and its asked
    labels): refused; the same probe with the seed-1 QA logs is verified."""
    logs = real_runs["logs"]
    with pytest.raises(AttributionError, match=r"--probe .*probe.json: its test rows are not the baseline's"):
        attribute(logs["base"], logs["dna"], bootstrap=0, encoder={"probe": seed1_probe})
    ok = attribute(logs["seed1"], _copy(logs["seed1"], tmp_path), bootstrap=0, encoder={"probe": seed1_probe})
    assert ok["probe_join"]["verified"] and ok["probe_join"]["checked"] == N_TEST
    assert ok["probe_join"]["by"] == ["asked labels", "test file"]
    # without its test file, the asked labels alone still catch the other set
    moved = json.loads(Path(seed1_probe).read_text())
    moved["settings"]["test"] = str(tmp_path / "gone.jsonl")
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(AttributionError, match=r"probe label '.*' but the QA gold is"):
        attribute(logs["base"], logs["dna"], bootstrap=0, encoder={"probe": tmp_path / "moved.json"})


def _copy(log: Path, folder: Path) -> Path:
    """The same log under another folder (an arm needs its own file)."""
    dest = folder / "copy" / Path(log).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(Path(log).read_bytes())
    return dest


# ------------------------------------------------------------------------------------------------ fast


def _plugin_rows(seed: int, n: int = 6) -> list[dict]:
    """Rows as the plugin's dna_vlm_synth logs them (lmms-eval 0.7.3: no doc, doc_hash = sha256(null)); the
    question depends on the seed, the doc ids do not."""
    cats = ["color", "shape", "motion"]
    return [
        {"doc_id": i, "target": "ABCD"[(i + seed) % 4], "doc_hash": NULL_DOC_HASH, "input": f"What {cats[(i + seed) % 3]}?",
         "acc": 0.0, "failed": 0, "dna_vlm": {"id": f"test-{i:05d}", "category": cats[(i + seed) % 3], "density": 1,
         "video": f"videos/test-{i:05d}.mp4", "blind": False, "answer": "ABCD"[(i + seed) % 4], "pred": None,
         "correct": False, "failed": False}}
        for i in range(n)
    ]  # fmt: skip


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_constant_doc_hash_is_no_evidence(tmp_path):
    """Issue 25 item 1: the same-question check accepted a pair when its doc_hash matched, and lmms-eval
    0.7.3 writes one doc_hash for every doc. A hash shared by several doc ids (or sha256(null)) is dropped;
    pairs then stand or fall by their prompt, gold answer and fields."""
    a = _write(tmp_path / "a" / "20260101_samples_dna_vlm_synth.jsonl", _plugin_rows(0))
    b = _write(tmp_path / "b" / "20260101_samples_dna_vlm_synth.jsonl", _plugin_rows(1))
    with pytest.raises(
        AttributionError,
        match=r"pair 6 doc ids with different questions: .*fields.category 'color' vs 'shape'",
    ):
        attribute(a, b, bootstrap=0)
    shared = [
        {**r, "doc_hash": "h"} for r in _plugin_rows(1)
    ]  # one non-null value on every doc: as degenerate
    assert load_samples(_write(tmp_path / "h.jsonl", shared)).doc_hash_ignored == 6
    # without any content but the hash, a pair is unverified, never "verified"
    bare = [{"doc_id": i, "doc_hash": NULL_DOC_HASH, "acc": 1} for i in range(4)]
    r = attribute(_write(tmp_path / "x.jsonl", bare), _write(tmp_path / "y.jsonl", bare), bootstrap=0)
    assert r["pairing"]["questions_checked"] == 0 and r["pairing"]["questions_unverified"] == 4


@pytest.mark.parametrize(
    "content, says",
    [
        (
            json.dumps({"format": "dna-vlm-attribution/2", "n": 3}),
            "its format is 'dna-vlm-attribution/2' (a dna-vlm attribute report)",
        ),
        (
            '{"format": "dna-vlm-probe/1", "arms": {"softmax": {"labels": {}, "asked": {"predic',
            "not valid JSON (Unterminated string",
        ),
        (json.dumps({"arms": {"softmax": {"asked": None}}}), "arm 'softmax' has no 'labels'"),
        (json.dumps([1, 2]), "a JSON list, not an object"),
    ],
)
def test_bad_probe_file_is_one_line(tmp_path, capsys, content, says):
    """Issue 25 item 10: `attribute --probe` given a report.json raised KeyError: 'labels', a truncated
    probe.json a JSONDecodeError traceback. Now: exit 2 and one line naming the file and what was expected."""
    a = _write(tmp_path / "a" / "20260101_samples_dna_vlm_synth.jsonl", _plugin_rows(0))
    c = _write(tmp_path / "c" / "20260101_samples_dna_vlm_synth.jsonl", _plugin_rows(0))
    probe = tmp_path / "p.json"
    probe.write_text(content)
    argv = [
        "attribute",
        "--baseline",
        str(a),
        "--candidate",
        str(c),
        "--probe",
        str(probe),
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli_main([*argv, "--bootstrap", "0", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        f"--probe {probe}: {says}" in err
        and "expected the probe.json `dna-vlm probe --out DIR` writes" in err
    )


def test_twin_task_may_word_its_prompt_otherwise(tmp_path):
    """A video-free twin (``*_no_visual``) may phrase its prompt differently: there the gold answer and the
    fields decide; another gold is still a different question."""
    rows = _plugin_rows(0)
    twin = [{**r, "input": "Without the video: " + r["input"]} for r in rows]
    for r in twin:
        r["dna_vlm"] = {**r["dna_vlm"], "blind": True}
    a = _write(tmp_path / "a" / "20260101_samples_qa.jsonl", rows)
    c = _write(tmp_path / "c" / "20260101_samples_qa.jsonl", rows)
    k = _write(tmp_path / "k" / "20260101_samples_qa_no_visual.jsonl", twin)
    assert attribute(a, c, blind=k, bootstrap=0)["pairing"]["blind_verified"] is True
    other = [{**r, "target": "Z", "dna_vlm": {**r["dna_vlm"], "answer": "Z"}} for r in twin]
    with pytest.raises(
        AttributionError, match=r"the baseline and blind logs pair 6 doc ids .*target 'A' vs 'Z'"
    ):
        attribute(
            a, c, blind=_write(tmp_path / "k2" / "20260101_samples_qa_no_visual.jsonl", other), bootstrap=0
        )
