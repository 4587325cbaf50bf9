"""dna_vlm.data.formats / validate: the project's rows, LLaVA and sharegpt rows in JSON, JSONL, parquet and
`datasets` folders; bad rows named with file:line (or row) and field; `dna-vlm check-data` and
`dna-vlm train --check-data` (no model loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from dna_vlm.data.dataset import DatasetError, Example, Turn, dataset_identity, load_dataset, write_jsonl
from dna_vlm.data.formats import read_dataset
from dna_vlm.data.validate import check_data

QA = {"id": "q1", "video": "v/a.mp4", "question": "What colour?", "options": ["red", "blue"], "answer": "B"}
LLAVA_ONE = {
    "id": "l1",
    "video": "v/b.mp4",
    "data_source": "academic",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat happens in the video?"},
        {"from": "gpt", "value": "A square moves right."},
    ],
}
LLAVA_MULTI = {
    "id": "l2",
    "video": "v/c.mp4",
    "conversations": [
        {"from": "system", "value": "You describe videos."},
        {"from": "human", "value": "<image>\nWhat colour is the square?"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "Where does it go?"},
        {"from": "gpt", "value": "To the right."},
    ],
}
SHAREGPT = {
    "messages": [
        {"role": "user", "content": "<video>Why is this video funny?"},
        {"role": "assistant", "content": "The cat slips."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "It gets up."},
    ],
    "videos": ["v/d.mp4"],
    "system": "Be brief.",
}
TURNS_MULTI = (
    Turn("system", "You describe videos."),
    Turn("user", "What colour is the square?", video=True),
    Turn("assistant", "Red."),
    Turn("user", "Where does it go?"),
    Turn("assistant", "To the right."),
)
TURNS_SHAREGPT = (
    Turn("system", "Be brief."),
    Turn("user", "Why is this video funny?", video=True),
    Turn("assistant", "The cat slips."),
    Turn("user", "And then?"),
    Turn("assistant", "It gets up."),
)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _no_source(examples):
    return [{k: v for k, v in e.__dict__.items() if k != "source"} for e in examples]


def _check_mixed(exs, root):
    """The four rows QA, LLAVA_ONE, LLAVA_MULTI, SHAREGPT as read from any container."""
    qa, one, multi, sg = exs
    assert qa == Example(
        "q1", str(root / "v" / "a.mp4"), "What colour?", ["red", "blue"], "B", source=qa.source
    )
    # one exchange: a plain question (same code path as the project's rows), placeholder gone
    assert (one.question, one.answer, one.turns, one.options) == (
        "What happens in the video?",
        "A square moves right.",
        (),
        None,
    )
    assert one.extra == {"data_source": "academic"} and one.video == str(root / "v" / "b.mp4")
    assert multi.turns == TURNS_MULTI and multi.question == "What colour is the square?"
    assert multi.answer == "To the right."
    assert sg.turns == TURNS_SHAREGPT and sg.id == "row3" and sg.video == str(root / "v" / "d.mp4")


def test_project_jsonl_reads_as_load_dataset(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [QA, {**QA, "id": "q2", "options": None, "answer": "free text"}])
    p.write_text(p.read_text().replace('"options": null, ', ""))
    assert read_dataset(p) == load_dataset(p)  # same rows, same sources
    counts = Counter()
    read_dataset(p, counts=counts)
    assert counts == {"qa": 2}


def test_json_list_pretty_and_one_line_name_lines_and_rows(tmp_path):
    rows = [QA, LLAVA_ONE, LLAVA_MULTI, SHAREGPT]
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(rows, indent=2))
    exs = read_dataset(pretty)
    _check_mixed(exs, tmp_path)
    text = pretty.read_text().splitlines()
    for ex, row in zip(exs, rows, strict=True):  # each row named by the line its object starts on
        line = int(ex.source.rsplit(":", 1)[1])
        assert (
            text[line - 1].strip() == "{" and json.dumps(row, indent=2).splitlines()[1].strip() in text[line]
        )
    one = tmp_path / "one.json"
    one.write_text(json.dumps(rows))
    exs = read_dataset(one)
    _check_mixed(exs, tmp_path)
    assert [e.source for e in exs] == [f"{one}:1 row {i}" for i in range(4)]


def test_jsonl_of_conversations_and_video_root(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "clips").mkdir()
    p = _jsonl(tmp_path / "data" / "d.jsonl", [QA, LLAVA_ONE, LLAVA_MULTI, SHAREGPT])
    _check_mixed(read_dataset(p), tmp_path / "data")  # relative videos: the data file's folder
    exs = read_dataset(p, video_root=tmp_path / "clips")
    assert [e.video for e in exs] == [str(tmp_path / "clips" / "v" / f"{n}.mp4") for n in "abcd"]
    with pytest.raises(DatasetError, match=r"--video-root .*nope: not a folder"):
        read_dataset(p, video_root=tmp_path / "nope")


def test_parquet_and_datasets_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [QA, LLAVA_ONE, LLAVA_MULTI, SHAREGPT]
    columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    pq.write_table(pa.table(columns), tmp_path / "d.parquet")  # a column per field: null where a row has none
    exs = read_dataset(tmp_path / "d.parquet")
    _check_mixed(exs, tmp_path)
    assert [e.source for e in exs] == [f"{tmp_path / 'd.parquet'} row {i}" for i in range(4)]

    ds = datasets.Dataset.from_dict(columns)
    ds.save_to_disk(str(tmp_path / "saved"))
    saved = read_dataset(tmp_path / "saved")
    _check_mixed(saved, tmp_path)
    assert _no_source(saved) == _no_source(exs) and saved[2].source == f"{tmp_path / 'saved'} row 2"
    ident = dataset_identity(tmp_path / "saved", saved)  # a folder has a digest too (resume checks it)
    assert ident == dataset_identity(tmp_path / "saved", saved) and ident["rows"] == 4

    datasets.DatasetDict(train=ds).save_to_disk(str(tmp_path / "one_split"))
    assert _no_source(read_dataset(tmp_path / "one_split")) == _no_source(exs)
    datasets.DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DatasetError, match=r"splits \['test', 'train'\]: pass one split's folder"):
        read_dataset(tmp_path / "two")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a `datasets` save_to_disk folder"):
        read_dataset(tmp_path / "plain")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="cannot read as parquet"):
        read_dataset(tmp_path / "broken.parquet")


def test_multi_turn_rows_round_trip_through_write_jsonl(tmp_path):
    exs = read_dataset(_jsonl(tmp_path / "d.jsonl", [QA, LLAVA_ONE, LLAVA_MULTI, SHAREGPT]))
    out = write_jsonl(tmp_path / "out" / "again.jsonl", exs)
    assert _no_source(read_dataset(out)) == _no_source(exs)  # videos written relative to out/


def test_forced_format(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [LLAVA_ONE])
    assert read_dataset(p, "llava")[0].answer == "A square moves right."
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: a conversation row .* use --data-format auto"):
        read_dataset(p, "qa")
    p2 = _jsonl(tmp_path / "e.jsonl", [SHAREGPT])
    with pytest.raises(DatasetError, match=r"e\.jsonl:1: the llava format needs 'conversations'"):
        read_dataset(p2, "llava")
    assert read_dataset(p2, "sharegpt")[0].turns == TURNS_SHAREGPT
    with pytest.raises(DatasetError, match="expected one of auto, qa, llava, sharegpt"):
        read_dataset(p, "alpaca")


def _convo(*turns, **kw):
    row = {"id": "x", "video": "v.mp4", "conversations": [{"from": f, "value": v} for f, v in turns]}
    return row | kw


BAD_ROWS = [
    ([1, 2], "expected a JSON object per row, got list"),
    ({"id": "x", "video": "v.mp4", "prompt": "q"}, "cannot tell the row's format from its fields"),
    (_convo(("human", "<image>\nq"), ("gpt", "a"), ("gpt", "b")),
     r"field 'conversations'\[2\]: an assistant turn where a user turn was expected"),
    (_convo(("gpt", "<image>a"), ("human", "q")), r"field 'conversations'\[0\]: an assistant turn where a user"),
    (_convo(("human", "<image>\nq"), ("gpt", "a"), ("human", "more?")), "must end with an assistant turn"),
    (_convo(("human", "<image>\nq"), ("system", "s"), ("gpt", "a")), "a second system turn"),
    (_convo(("human", "q"), ("gpt", "a")), "0 video placeholders .* expected exactly one, in the first user turn"),
    (_convo(("human", "<image><image>q"), ("gpt", "a")), "2 video placeholders"),
    (_convo(("human", "q"), ("gpt", "a"), ("human", "<video>q2"), ("gpt", "b")),
     r"field 'conversations'\[2\]\['value'\]: the video placeholder '<video>' must be in the first user turn"),
    (_convo(("human", "<image>q"), ("gpt", "  ")), r"field 'conversations'\[1\]\['value'\] is empty"),
    (_convo(("human", "<image>q"), ("bot", "a")), r"\['from'\]: role 'bot' is not supported"),
    (_convo(("human", "<image>q"), ("gpt", 3)), r"\['value'\] must be a string, got int"),
    ({"id": "x", "video": "v.mp4", "conversations": [{"speaker": "human", "text": "<image>q"}]},
     "needs 'from' and 'value' .* or 'role' and 'content'"),
    ({"id": "x", "video": "v.mp4", "conversations": []}, "must be a non-empty list of turns"),
    ({"id": "x", "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]},
     "missing field 'video' \\(or 'videos'\\): every row needs one video"),
    ({"messages": [{"role": "user", "content": "<video>q"}, {"role": "assistant", "content": "a"}],
      "videos": ["a.mp4", "b.mp4"]}, "'videos' must be a list of exactly one video path, got 2"),
    (_convo(("human", "<image>q"), ("gpt", "a"), image="x.jpg"), "field 'image': image rows are not supported"),
    (_convo(("human", "<image>q"), ("gpt", "a"), video=""), "field 'video' must be a non-empty string"),
    (_convo(("human", "<image>q"), ("gpt", "a"), id="first"), "'first' is not unique"),
    ({**QA, "id": "p", "question": "<image>\nWhat colour?"}, "field 'question' holds the video placeholder '<image>'"),
    ({**QA, "id": "p", "answer": "Z"}, "field 'answer' must be an option letter"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<video>q"},
                   {"role": "assistant", "content": "a"}], "videos": ["a.mp4"], "system": "t"},
     "a top-level 'system' and a system turn"),
]  # fmt: skip


@pytest.mark.parametrize("bad, message", BAD_ROWS)
@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_bad_rows_name_their_line_field_and_what_was_expected(tmp_path, bad, message, container):
    first = _convo(("human", "<image>q"), ("gpt", "a"), id="first")
    if container == "jsonl":
        p = _jsonl(tmp_path / "d.jsonl", [first, bad])
        where = f"{p}:2: "
    else:
        p = tmp_path / "d.json"
        p.write_text("[\n" + json.dumps(first) + ",\n" + json.dumps(bad) + "\n]\n")
        where = f"{p}:3: "
    with pytest.raises(DatasetError, match=message) as ei:
        read_dataset(p)
    assert str(ei.value).startswith(where), str(ei.value)


def test_broken_containers(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[\n" + json.dumps(LLAVA_ONE) + ',\n{"id": \n')
    with pytest.raises(DatasetError, match=r"d\.json:4: invalid JSON \(Expecting value"):
        read_dataset(p)
    p.write_text(json.dumps([LLAVA_ONE]) + " trailing")
    with pytest.raises(DatasetError, match=r"d\.json:1: invalid JSON \(the list is not closed"):
        read_dataset(p)
    p.write_text(json.dumps([LLAVA_ONE])[:-1] + " {}]")  # no comma between rows
    with pytest.raises(DatasetError, match=r"expected ',' or '\]' after row 0"):
        read_dataset(p)
    p.write_text(json.dumps(LLAVA_ONE, indent=2))
    with pytest.raises(DatasetError, match="the file is one JSON object; expected a JSON list"):
        read_dataset(p)
    p.write_text("[]")
    with pytest.raises(DatasetError, match="the dataset has no rows"):
        read_dataset(p)


def test_check_data_collects_every_bad_row_and_missing_video(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("b.mp4", "c.mp4"):
        (tmp_path / "v" / name).write_bytes(b"x")
    rows = [
        LLAVA_ONE,
        {**LLAVA_MULTI, "id": "m1"},
        {**LLAVA_MULTI, "id": "m2"},
        [1],
        {"id": "m1", **SHAREGPT},
        QA,
    ]
    report = check_data(_jsonl(tmp_path / "d.jsonl", rows))
    assert not report.ok and report.rows == 4 and report.formats == {"llava": 3, "qa": 1}
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{tmp_path / 'd.jsonl'}:{i}" for i in (4, 5)]
    assert "not unique" in report.errors[1]
    assert report.exchanges == {1: 2, 2: 2} and report.system_turns == 2
    assert sorted(report.answer_words) == [1, 1, 1, 3, 3, 4]  # "Red." "B" ... "A square moves right."
    assert report.videos == 3 and report.missing == [f"{tmp_path / 'd.jsonl'}:6: {tmp_path / 'v' / 'a.mp4'}"]
    text = report.format()
    assert "4 valid rows (llava 3, qa 1); 2 bad rows -- PROBLEMS" in text
    assert "6 assistant turns (rows: 2 with 1, 2 with 2); 2 system turns" in text
    assert "       1       3  ########################################" in text


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "dna_vlm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_check_data_cli_and_train_check_data_load_no_model(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("b.mp4", "c.mp4"):
        (tmp_path / "v" / name).write_bytes(b"x")
    good = tmp_path / "good.json"
    good.write_text(json.dumps([LLAVA_ONE, LLAVA_MULTI], indent=1))
    r = _cli("check-data", str(good), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (
        "2 valid rows (llava 2); 0 bad rows -- OK" in r.stdout and "2 distinct files, 0 missing" in r.stdout
    )
    # the train command with --check-data: the model path does not even exist, OUT is never made
    bad = _jsonl(tmp_path / "bad.jsonl", [_convo(("human", "q"), ("gpt", "a"))])
    args = ["train", "--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "out"), "--check-data"]
    r = _cli(*args, "--data", str(good), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "-- OK" in r.stdout and not (tmp_path / "out").exists()
    r = _cli(*args, "--data", str(good), "--eval-data", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and f"{bad}:1: the row has one video and 0 video placeholders" in r.stdout
    assert not (tmp_path / "out").exists()
    r = _cli(*args, "--data", str(good), "--video-root", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert r.returncode == 2 and "not a folder" in r.stdout


def test_the_readme_examples_read(tmp_path):
    """The 10-row examples of README "Bring your data" are valid rows of their formats."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Bring your data", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```json\n")[1:]]
    assert len(blocks) == 3
    counts = Counter()
    for i, (block, name) in enumerate(zip(blocks, ("d.jsonl", "l.json", "s.json"), strict=True)):
        (tmp_path / name).write_text(block)
        exs = read_dataset(tmp_path / name, counts=counts)
        assert len(exs) == 10 and len({e.id for e in exs}) == 10, name
        if i:
            assert sum(bool(e.turns) for e in exs) == 5  # rows 5-9: two exchanges (row 9 with a system turn)
    assert counts == {"qa": 10, "llava": 10, "sharegpt": 10}
