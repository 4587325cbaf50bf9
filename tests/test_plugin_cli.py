"""The dna_vlm model through the stock lmms-eval CLI (slow): tasks written like lmms-eval's own (no ``id`` in
the docs, ``doc_to_visual`` that ``sys.exit``s on a missing video, a generate parser that guesses at random
when no letter parses, the stock ``multiple_choice`` metric), two of them with colliding doc ids.

- frames belong to their video: a task's per-doc outputs are identical alone and together with another;
- ``bad_video=skip``: every failed sample is recognisable from the sample log, scored wrong by the stock
  metric, listed in the provenance and in the end-of-run summary;
- ``bad_video=fail`` (default): ``python -m dna_vlm.eval.lmms.run`` exits non-zero listing every unreadable
  video;
- the provenance is in the results JSON and beside the sample logs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from dna_vlm.eval.lmms.run import read_samples, run_lmms
from dna_vlm.eval.logs.records import read_provenance, row_failure
from train_helpers import lmms_env, make_clip

pytestmark = pytest.mark.slow

STOCKISH = textwrap.dedent(
    '''
    """Task functions written the way lmms-eval 0.7.3's own video tasks are."""
    import os
    import random
    import re
    import sys

    LETTERS = "ABCDE"


    def doc_to_visual(doc):
        path = doc["video"]
        if not os.path.exists(path):
            sys.exit(f"video path:{path} does not exist, please check")
        return [path]


    def doc_to_text(doc, lmms_eval_specific_kwargs=None):
        opts = "\\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(doc["options"]))
        return f"{doc['question']}\\n{opts}\\nAnswer with the option's letter from the given choices directly."


    def doc_to_choice(doc):
        return list(LETTERS[: len(doc["options"])])


    def doc_to_target(doc):
        return LETTERS.index(doc["answer"])


    def doc_to_target_letter(doc):
        return doc["answer"]


    def process_generate(doc, results):
        # like longvideobench / egoschema: the first option letter, else a random guess
        text = results[0]
        m = re.search(r"[ABCDE]", text)
        pred = m.group(0) if m else random.choice(doc_to_choice(doc))
        return {"acc": float(pred == doc["answer"])}
    '''
)

MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function stockish.doc_to_visual
doc_to_text: !function stockish.doc_to_text
output_type: multiple_choice
doc_to_choice: !function stockish.doc_to_choice
doc_to_target: !function stockish.doc_to_target
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""

GEN_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function stockish.doc_to_visual
doc_to_text: !function stockish.doc_to_text
output_type: generate_until
doc_to_target: !function stockish.doc_to_target_letter
generation_kwargs:
  max_new_tokens: 4
  do_sample: false
  until: ["\\n\\n"]
process_results: !function stockish.process_generate
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""


def _rows(videos: list[Path], answers: str) -> str:
    return "".join(
        json.dumps(
            {"video": str(v), "question": "Which colour?", "options": ["red", "blue", "green"], "answer": a}
        )
        + "\n"
        for v, a in zip(videos, answers, strict=True)
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dna_vlm.tiny.default import build_tiny_model

    root = tmp_path_factory.mktemp("plugin_cli")
    tiny = build_tiny_model(root / "tiny")
    red = make_clip(root / "red.mp4", "red", n_frames=8, size=32, seed=1)
    blue = make_clip(root / "blue.mp4", "blue", n_frames=8, size=32, seed=2)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"not an mp4" * 20)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "stockish.py").write_text(STOCKISH)
    a, b = root / "a.jsonl", root / "b.jsonl"
    # the failing docs (2: deleted video, 3: corrupt) have gold answer A: equal losses would score them right
    a.write_text(_rows([red, blue, root / "deleted.mp4", corrupt], "ABAA"))
    b.write_text(_rows([blue, red], "BA"))  # doc ids 0 and 1 collide with task a's, other videos
    for name, yaml, data in (
        ("coll_a_mc", MC_YAML, a),
        ("coll_b_mc", MC_YAML, b),
        ("coll_a_gen", GEN_YAML, a),
    ):
        (tasks / f"{name}.yaml").write_text(yaml.format(task=name, data=data))
    env = lmms_env(root)
    return {"root": root, "tiny": tiny, "tasks": tasks, "env": env}


def _run(setup, tasks: list[str], out: str, **model_args):
    return run_lmms(
        {"pretrained": setup["tiny"], "max_frames": 2, **model_args},
        tasks,
        setup["root"] / out,
        include_path=setup["tasks"],
        batch_size=2,
        env=setup["env"],
        timeout=900,
    )


def _by_doc(path: Path) -> dict[int, dict]:
    return {r["doc_id"]: r for r in read_samples(path)}


def test_skip_collisions_failures_and_provenance(setup, capfd):
    together = _run(setup, ["coll_a_mc", "coll_b_mc", "coll_a_gen"], "together", bad_video="skip")
    alone = _run(setup, ["coll_b_mc"], "alone", bad_video="skip")

    # frames belong to their video: task b's docs get the same losses alone and next to task a
    b_alone, b_together = _by_doc(alone.samples["coll_b_mc"]), _by_doc(together.samples["coll_b_mc"])
    assert b_alone.keys() == b_together.keys() == {0, 1}
    for d in b_alone:
        assert b_alone[d]["filtered_resps"] == b_together[d]["filtered_resps"], d
    a_mc = _by_doc(together.samples["coll_a_mc"])
    assert a_mc[0]["filtered_resps"] != b_together[0]["filtered_resps"]  # same doc id, other video

    # skip: recognisable, scored wrong by the stock metrics, counted
    a_gen = _by_doc(together.samples["coll_a_gen"])
    for rows in (a_mc, a_gen):
        assert [d for d, r in rows.items() if row_failure(r)[0]] == [2, 3]
        assert rows[2]["acc"] == 0.0 and rows[3]["acc"] == 0.0  # gold is A for both
    assert "does not exist" in row_failure(a_gen[2])[1] and "corrupt.mp4" in row_failure(a_gen[3])[1]
    assert not any(row_failure(r)[0] for r in b_together.values())
    summary = together.failures
    assert set(summary) == {"coll_a_mc", "coll_a_gen"}
    assert summary["coll_a_mc"]["failed"] == 2 and summary["coll_a_mc"]["scored"]["acc"] == [0.0, 0.0]
    assert "dna_vlm: failed samples" in capfd.readouterr().err

    # provenance: beside the sample logs and in the results JSON
    prov = read_provenance(together.samples["coll_a_mc"])
    assert prov is not None and prov == together.results["config"]["dna_vlm"]
    assert prov["bad_video"] == "skip" and prov["controls"]["video"] == "full"
    assert prov["frame_sampling"]["num_frames"] == 2 and prov["base_model"]["config_sha256"]
    failed = {(f["task"], f["doc_id"]) for f in prov["failures"]}
    assert failed == {("coll_a_mc", 2), ("coll_a_mc", 3), ("coll_a_gen", 2), ("coll_a_gen", 3)}


def test_fail_is_the_default_and_run_lmms_exits_non_zero(setup):
    cmd = [
        sys.executable,
        "-m",
        "dna_vlm.eval.lmms.run",
        "--model_args",
        f"pretrained={setup['tiny']},max_frames=2",
        "--tasks",
        "coll_a_mc",
        "--include_path",
        str(setup["tasks"]),
        "--output_path",
        str(setup["root"] / "fail"),
    ]
    proc = subprocess.run(cmd, env=setup["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    err = proc.stderr
    assert "2 unreadable video(s)" in err and "bad_video=skip" in err
    assert "task=coll_a_mc doc_id=2" in err and "deleted.mp4 does not exist" in err
    assert "task=coll_a_mc doc_id=3" in err and "corrupt.mp4" in err
    assert "dna_vlm loglikelihood" not in err  # stopped before the first forward pass
