"""dna_vlm.data.dataset: JSONL loading, validation errors with file:line, atomic writing."""

import json
import os

import pytest

from dna_vlm.data.dataset import DatasetError, Example, load_dataset, write_jsonl


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _row(**kw):
    row = {"id": "a", "video": "v/a.mp4", "question": "What?", "options": ["x", "y", "z"], "answer": "B"}
    row.update(kw)
    return row


def test_load_valid(tmp_path):
    absvid = str(tmp_path / "elsewhere" / "b.mp4")
    p = _write(
        tmp_path / "d.jsonl",
        [
            _row(category="color", density=2),
            "",
            {"id": 7, "video": absvid, "question": "Open?", "answer": "a cat"},
            _row(id="c", answer="c"),
        ],
    )
    exs = load_dataset(p)
    assert [e.id for e in exs] == ["a", "7", "c"]
    a, b, c = exs
    assert isinstance(a, Example)
    assert a.video == str(tmp_path / "v" / "a.mp4") and os.path.isabs(a.video)
    assert a.options == ["x", "y", "z"] and a.answer == "B"
    assert a.answer_index == 1 and a.answer_text == "y"
    assert a.extra == {"category": "color", "density": 2}
    assert a.source == f"{p}:1"
    assert b.video == absvid and b.options is None and b.answer == "a cat" and b.source == f"{p}:3"
    assert b.answer_index is None and b.answer_text == "a cat"
    assert c.answer == "C"  # letters are normalised to upper case


def test_relative_video_resolves_against_jsonl_folder_not_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "data"
    sub.mkdir()
    p = _write(sub / "d.jsonl", [_row(video="../clips/x.mp4")])
    monkeypatch.chdir(tmp_path / "data")
    (e,) = load_dataset("d.jsonl")
    assert e.video == str(tmp_path / "clips" / "x.mp4")
    assert p.exists()


@pytest.mark.parametrize(
    "bad, field",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"id": "b", "video": "x.mp4", "answer": "A"}), "'question'"),
        (json.dumps(_row(id="b", question="  ")), "'question'"),
        (json.dumps(_row(id="b", question=3)), "'question'"),
        (json.dumps(_row(id=True)), "'id'"),
        (json.dumps(_row(id=1.5)), "'id'"),
        (json.dumps(_row(id="")), "'id'"),
        (json.dumps(_row(id="a")), "not unique"),
        (json.dumps(_row(id="b", video="")), "'video'"),
        (json.dumps(_row(id="b", video=3)), "'video'"),
        (json.dumps(_row(id="b", options="x,y")), "'options'"),
        (json.dumps(_row(id="b", options=["only"])), "'options'"),
        (json.dumps(_row(id="b", options=["x", 2])), "'options'[1]"),
        (json.dumps(_row(id="b", options=["x", ""])), "'options'[1]"),
        (json.dumps(_row(id="b", answer="D")), "'answer'"),
        (json.dumps(_row(id="b", answer="AB")), "'answer'"),
        (json.dumps(_row(id="b", answer="y")), "'answer'"),
        (json.dumps(_row(id="b", answer=1)), "'answer'"),
        (json.dumps({"id": "b", "video": "x.mp4", "question": "q", "answer": ""}), "'answer'"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad, field):
    p = _write(tmp_path / "d.jsonl", [_row(), "", bad])
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    msg = str(ei.value)
    assert f"{p}:3:" in msg, msg
    assert field in msg, msg
    assert isinstance(ei.value, ValueError)


def test_duplicate_id_names_first_use(tmp_path):
    p = _write(tmp_path / "d.jsonl", [_row(id=5), _row(id="5")])
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: .*'5'.*first used at .*d\.jsonl:1"):
        load_dataset(p)


def test_answer_letter_message_lists_valid_letters(tmp_path):
    p = _write(tmp_path / "d.jsonl", [_row(answer="E", options=["a", "b", "c", "d"])])
    with pytest.raises(DatasetError, match="A, B, C, D"):
        load_dataset(p)


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(json.dumps(_row()).encode() + b"\n\xff\xfe\x00garbage\n")
    with pytest.raises(DatasetError, match=r"bin\.jsonl:2"):
        load_dataset(tmp_path / "bin.jsonl")
    with pytest.raises(DatasetError, match="not a file"):
        load_dataset(tmp_path)


def test_check_videos(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    p = _write(tmp_path / "d.jsonl", [_row(), _row(id="b", video="v/missing.mp4")])
    assert len(load_dataset(p)) == 2  # default: existence not checked
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: field 'video': file not found: .*missing\.mp4"):
        load_dataset(p, check_videos=True)


def test_write_jsonl_roundtrip_and_atomic(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    rows = [_row(), _row(id="b", extra_field=[1, 2], note="é")]
    write_jsonl(out, rows)
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == rows
    exs = load_dataset(out)
    assert exs[1].extra == {"extra_field": [1, 2], "note": "é"}
    # Examples are written back with videos relative to the output folder
    out2 = tmp_path / "sub" / "again.jsonl"
    write_jsonl(out2, exs)
    assert json.loads(out2.read_text().splitlines()[0])["video"] == os.path.join("v", "a.mp4")
    assert [e.__dict__ | {"source": ""} for e in load_dataset(out2)] == [
        e.__dict__ | {"source": ""} for e in exs
    ]
    assert sorted(os.listdir(tmp_path / "sub")) == ["again.jsonl", "out.jsonl"]  # no temp files left


def test_dataset_identity_changes_with_content_and_ids(tmp_path):
    from dna_vlm.data.dataset import dataset_identity

    p = _write(tmp_path / "d.jsonl", [_row(), _row(id="b")])
    ident = dataset_identity(p, load_dataset(p))
    assert ident["rows"] == 2 and ident == dataset_identity(p, load_dataset(p))
    _write(p, [_row(), _row(id="c")])  # same row count, another id
    changed = dataset_identity(p, load_dataset(p))
    assert changed["ids_digest"] != ident["ids_digest"] and changed["file_digest"] != ident["file_digest"]
    _write(p, [_row(), _row(id="b", question="Another question?")])  # same ids, other content
    edited = dataset_identity(p, load_dataset(p))
    assert edited["ids_digest"] == ident["ids_digest"] and edited["file_digest"] != ident["file_digest"]
