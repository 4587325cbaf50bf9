"""dna_vlm.data.synth: the synthetic dense-scene video QA set."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dna_vlm.cli import main as cli_main
from dna_vlm.data import synth
from dna_vlm.data.dataset import LETTERS, load_dataset
from dna_vlm.data.synth import CATEGORIES, COLORS, DIRECTIONS, SHAPES, VALUES, generate_dataset, render_clip
from dna_vlm.video.decode import sample_frames, video_info

SMALL = dict(n_train=96, n_val=12, n_test=24, seed=0, max_density=3, frames=8, size=64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    return generate_dataset(out, **SMALL)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_layout_and_loader(dataset):
    out = Path(dataset["out_dir"])
    for split, n in (("train", 96), ("val", 12), ("test", 24)):
        exs = load_dataset(dataset[split], check_videos=True)  # contract-1 rows, videos present
        assert len(exs) == n
        for e in exs:
            assert len(e.options) == 4 and e.answer in "ABCD"
            assert e.extra["category"] in CATEGORIES and 0 <= e.extra["density"] <= 3
            assert e.options[e.answer_index] == e.extra["answer_value"]
            assert sorted(e.options) == sorted(VALUES[e.extra["category"]])
            assert e.extra["target"][e.extra["category"]] == e.extra["answer_value"]
            assert len(e.extra["distractors"]) == e.extra["density"]
            assert synth.CUE in e.question
    meta = json.loads((out / "meta.json").read_text())
    assert meta == dataset["meta"]
    assert meta["args"]["seed"] == 0 and meta["splits"]["train"]["n"] == 96
    assert len(list((out / "videos").glob("*.mp4"))) == 132
    assert not list(out.rglob("*.tmp"))


def test_shuffled_option_order(tmp_path):
    res = generate_dataset(tmp_path / "shuf", **{**SMALL, "n_val": 0, "n_test": 0}, option_order="shuffled")
    rows = _rows(res["train"])
    assert (
        max(Counter(r["answer"] for r in rows).values()) - min(Counter(r["answer"] for r in rows).values())
        <= 1
    )
    # the answer letter does not leak the answer value: each value shows up under several letters
    for c in CATEGORIES:
        for v in VALUES[c]:
            assert len({r["answer"] for r in rows if r["answer_value"] == v}) >= 2
    with pytest.raises(ValueError, match="option_order='sorted'"):
        generate_dataset(tmp_path / "bad", **SMALL, option_order="sorted")


def test_balanced_priors(dataset):
    rows = _rows(dataset["train"])
    n = len(rows)
    for key, k in (("answer", 4), ("category", 3), ("density", 4)):
        counts = Counter(r[key] for r in rows)
        assert len(counts) == k
        assert max(counts.values()) - min(counts.values()) <= 1, (key, counts)
    assert set(Counter(r["density"] for r in rows)) == {0, 1, 2, 3}
    for c in CATEGORIES:
        vals = Counter(r["answer_value"] for r in rows if r["category"] == c)
        assert set(vals) == set(VALUES[c]) and max(vals.values()) - min(vals.values()) <= 1
    # a blind model that always answers the most frequent letter (or value) per question is at chance
    by_q = {}
    for r in rows:
        by_q.setdefault(r["question"], Counter())[r["answer"]] += 1
    blind = sum(max(c.values()) for c in by_q.values()) / n
    assert blind <= 0.25 + 3 * 3 / n
    # canonical order (default): the options are the category's values in their fixed order
    for r in rows:
        assert r["options"] == list(VALUES[r["category"]])
        assert r["options"][LETTERS.index(r["answer"])] == r["answer_value"]
    hist = dataset["meta"]["splits"]["train"]
    assert hist["answers"] == {x: n // 4 for x in LETTERS[:4]}
    assert hist["densities"] == {str(d): n // 4 for d in range(4)}


def test_distractors_show_other_option_values(dataset):
    for r in _rows(dataset["train"]):
        c = r["category"]
        vals = [d[c] for d in r["distractors"]]
        assert r["answer_value"] not in vals and len(set(vals)) == len(vals)


def test_every_video_decodes_with_expected_frames(dataset):
    for split in ("train", "val", "test"):
        for e in load_dataset(dataset[split]):
            info = video_info(e.video)
            assert (info.num_frames, info.height, info.width) == (8, 64, 64)
            assert info.fps == pytest.approx(8.0)
    f = sample_frames(load_dataset(dataset["val"])[0].video, 8)
    assert f.frames.shape == (8, 64, 64, 3)


def _near(pixel, rgb, tol=45):
    return np.abs(pixel.astype(int) - np.asarray(rgb)).max() <= tol


def test_rendered_target_matches_answer(dataset):
    """Decode clips and check the answer against the pixels: colour at the target's centre, its outline, its
    motion from start to end, and (on uncluttered clips) its shape. The pixel checks take the clips where the
    target is drawn over every distractor (at a random depth it may be covered)."""
    rows = _rows(dataset["train"])
    out = Path(dataset["out_dir"])
    r_px = synth.OBJECT_RADIUS * 64
    checked = Counter()
    for row in rows:
        if row.get("target_depth", row["density"]) != row["density"]:
            continue
        f = sample_frames(out / row["video"], 8).frames
        t = row["target"]
        (x0, y0), (x1, y1) = t["start"], t["end"]
        # colour: the target's centre (it is drawn on top) in the first and last frame
        assert _near(f[0, int(y0), int(x0)], COLORS[t["color"]]), row["id"]
        assert _near(f[-1, int(y1), int(x1)], COLORS[t["color"]]), row["id"]
        # the outline: some pixels of its grey around the centre in the first frame
        yy, xx = np.mgrid[0:64, 0:64]
        ring = np.abs(np.hypot(xx + 0.5 - x0, yy + 0.5 - y0) - r_px) < 3.5
        assert sum(_near(p, synth.OUTLINE, 25) for p in f[0][ring]) >= 6, row["id"]
        # motion: start and end centres (whose pixels were checked above) differ along the stated direction
        ux, uy = DIRECTIONS[t["motion"]]
        assert (x1 - x0) * ux + (y1 - y0) * uy > 10 and abs((x1 - x0) * uy) + abs((y1 - y0) * ux) < 0.02
        if row["category"] == "color":
            assert row["options"][LETTERS.index(row["answer"])] == t["color"]
        if row["category"] == "motion":
            assert row["options"][LETTERS.index(row["answer"])] == t["motion"]
        if row["density"] == 0:
            # shape: the target-coloured pixels match the stated shape better than any other shape's mask
            near = np.abs(f[0].astype(int) - np.asarray(COLORS[t["color"]])).max(axis=2) <= 60
            from dna_vlm.data.synth import shape_mask

            dx, dy = xx + 0.5 - x0, yy + 0.5 - y0
            iou = {
                s: (near & shape_mask(s, dx, dy, r_px)).sum() / (near | shape_mask(s, dx, dy, r_px)).sum()
                for s in SHAPES
            }
            assert max(iou, key=iou.get) == t["shape"], (row["id"], iou)
            checked["shape"] += 1
        checked[row["category"]] += 1
    assert checked["shape"] >= 10 and checked["color"] >= 10 and checked["motion"] >= 10


def test_decoded_clip_equals_rerender(dataset):
    out = Path(dataset["out_dir"])
    for row in _rows(dataset["test"])[:6]:
        ref = render_clip(row, 8, 64)
        got = sample_frames(out / row["video"], 8).frames
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff.mean() < 6.0  # lossy codec (chroma subsampling blurs colour edges), same picture
        blocks = lambda v: v.reshape(8, 16, 4, 16, 4, 3).mean(axis=(2, 4))  # noqa: E731
        assert np.abs(blocks(got.astype(float)) - blocks(ref.astype(float))).mean() < 3.0


def test_density_brings_distractors_closer(dataset):
    """The nearest distractor starts closer as the density grows (GAP shrinks)."""
    dist = {d: [] for d in range(1, 4)}
    for row in _rows(dataset["train"]):
        if row["distractors"]:
            near = min(np.hypot(*np.subtract(d["start"], row["target"]["start"])) for d in row["distractors"])
            dist[row["density"]].append(near)
    means = [np.mean(dist[d]) for d in (1, 2, 3)]
    assert means[0] > means[1] > means[2]


def test_deterministic_and_idempotent(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", **SMALL)
    for split in ("train", "val", "test"):
        assert _rows(again[split]) == _rows(dataset[split])
    assert (tmp_path / "again" / "meta.json").read_bytes() == (
        Path(dataset["out_dir"]) / "meta.json"
    ).read_bytes()
    for split in ("train", "val", "test"):  # the videos too, byte for byte
        for row in _rows(dataset[split]):
            a = (Path(dataset["out_dir"]) / row["video"]).read_bytes()
            assert a == (tmp_path / "again" / row["video"]).read_bytes(), row["id"]
    # same args: nothing rewritten
    meta = tmp_path / "again" / "meta.json"
    mtime = meta.stat().st_mtime_ns
    res = generate_dataset(tmp_path / "again", **SMALL)
    assert meta.stat().st_mtime_ns == mtime and res["meta"] == json.loads(meta.read_text())
    # another seed: another data set
    other = generate_dataset(tmp_path / "again", **{**SMALL, "seed": 1})
    assert meta.stat().st_mtime_ns != mtime and other["meta"]["args"]["seed"] == 1
    assert _rows(other["train"]) != _rows(dataset["train"])
    # a missing video forces regeneration
    vid = next((tmp_path / "again" / "videos").glob("*.mp4"))
    vid.unlink()
    generate_dataset(tmp_path / "again", **{**SMALL, "seed": 1})
    assert vid.exists()


def test_options(tmp_path):
    res = generate_dataset(tmp_path / "s", n_train=8, n_val=0, n_test=4, max_density=1, frames=12, size=48)
    rows = _rows(res["train"])
    assert {r["density"] for r in rows} == {0, 1}
    assert _rows(res["val"]) == []
    info = video_info(tmp_path / "s" / rows[0]["video"])
    assert (info.num_frames, info.height, info.width) == (12, 48, 48)
    for bad in (dict(max_density=4), dict(frames=1), dict(size=33), dict(n_train=-1)):
        with pytest.raises(ValueError):
            generate_dataset(tmp_path / "bad", **bad)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["synth-data", str(out), "--n-train", "8", "--n-val", "4", "--n-test", "4", "--seed", "3"])
    assert rc == 0
    assert len(load_dataset(out / "train.jsonl")) == 8
    assert json.loads((out / "meta.json").read_text())["args"]["seed"] == 3
    assert "meta.json" in capsys.readouterr().out
    assert cli_main(["synth-data", str(out), "--max-density", "9"]) == 2
    assert "max_density" in capsys.readouterr().err


def test_changed_rendering_regenerates(tmp_path, monkeypatch):
    small = dict(n_train=4, n_val=0, n_test=4)
    generate_dataset(tmp_path / "s", **small)
    meta = tmp_path / "s" / "meta.json"
    mtime = meta.stat().st_mtime_ns
    monkeypatch.setattr(synth, "OBJECT_RADIUS", 0.12)
    res = generate_dataset(tmp_path / "s", **small)
    assert meta.stat().st_mtime_ns != mtime and res["meta"]["render"]["object_radius"] == 0.12


# ----------------------------------------------------------------------------------------------------------
# label fields and the oracle input (issue 11)


def test_label_fields_name_the_target(dataset):
    for split in ("train", "val", "test"):
        for row in _rows(dataset[split]):
            for attr, field in synth.LABEL_FIELDS.items():
                assert row[field] == row["target"][attr] and row[field] in VALUES[attr], row["id"]
            assert row[synth.LABEL_FIELDS[row["category"]]] == row["answer_value"]


def test_oracle_rows_match_test_rows(dataset):
    out = Path(dataset["out_dir"])
    test, oracle = _rows(dataset["test"]), _rows(dataset["test_oracle"])
    assert Path(dataset["test_oracle"]) == out / "test_oracle.jsonl"
    assert [r["id"] for r in oracle] == [r["id"] for r in test]
    same = ("question", "options", "answer", "category", "answer_value", "target", "background")
    for t, o in zip(test, oracle, strict=True):
        assert {k: o[k] for k in same} == {k: t[k] for k in same}, t["id"]
        assert {k: o[k] for k in synth.LABEL_FIELDS.values()} == {
            k: t[k] for k in synth.LABEL_FIELDS.values()
        }
        assert o["distractors"] == [] and o["density"] == 0 and o["source_density"] == t["density"]
        assert o["video"] != t["video"] and (out / o["video"]).is_file()
        # re-rendered: the decoded clip is the scene without distractors, not the test clip
        got = sample_frames(out / o["video"], 8).frames.astype(int)
        ref = render_clip({**t, "distractors": []}, 8, 64).astype(int)
        assert np.abs(got - ref).mean() < 6.0
        if t["density"] > 0:
            test_clip = sample_frames(out / t["video"], 8).frames.astype(int)
            assert np.abs(got - test_clip).mean() > np.abs(got - ref).mean(), t["id"]
    assert load_dataset(dataset["test_oracle"], check_videos=True)  # a valid dataset file
    meta = json.loads((out / "meta.json").read_text())
    assert meta["oracle"]["n"] == len(test) and all((out / v).is_file() for v in meta["videos"])


def _digest_without_labels(res) -> str:
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for row in _rows(res[split]):
            for field in synth.LABEL_FIELDS.values():
                row.pop(field)
            h.update(json.dumps(row, sort_keys=True).encode())
            h.update((Path(res["out_dir"]) / row["video"]).read_bytes())
    return h.hexdigest()


def test_existing_fields_and_videos_unchanged(tmp_path):
    """Adding the label fields and the oracle split, and making the geometry, outline, layout, depth and wording
    settings, left every existing field and video byte as it was with the old settings: the digest was
    computed with the generator before issue 11 (dna-vlm-synth/1) for these arguments."""
    old = dict(object_radius=0.16, travel=0.35, gap=(0.9, -0.5), outline=(255, 255, 255), layout="ring",
               target_depth="top", cue="white outline")  # fmt: skip
    with synth.rendering(**old):
        res = generate_dataset(tmp_path / "d", n_train=6, n_val=3, n_test=8, seed=0)
    assert _digest_without_labels(res) == "158a433240801cef5a5c39f6791909437f02ea656a5f06fe49dd3e8d2059bdd9"


def test_missing_oracle_output_regenerates(tmp_path):
    small = dict(n_train=4, n_val=0, n_test=4)
    res = generate_dataset(tmp_path / "s", **small)
    Path(res["test_oracle"]).unlink()
    generate_dataset(tmp_path / "s", **small)
    assert Path(res["test_oracle"]).is_file()
    vid = next((tmp_path / "s" / "videos" / "oracle").glob("*.mp4"))
    vid.unlink()
    generate_dataset(tmp_path / "s", **small)
    assert vid.is_file()


def test_distractor_outline_draws_a_ring_of_its_colour(monkeypatch):
    """DISTRACTOR_OUTLINE gives every distractor an outline of that colour; the target keeps the white one."""
    scene = {"target": {"color": "red", "shape": "square", "motion": "left", "start": [20.0, 20.0]},
             "distractors": [{"color": "blue", "shape": "square", "motion": "left", "start": [44.0, 44.0]}],
             "background": [30, 30, 30]}  # fmt: skip
    monkeypatch.setattr(synth, "OUTLINE", (255, 255, 255))
    plain = synth.render_clip(scene, 2, 64)
    monkeypatch.setattr(synth, "DISTRACTOR_OUTLINE", (140, 140, 140))
    ringed = synth.render_clip(scene, 2, 64)
    changed = np.any(plain != ringed, axis=-1)
    assert changed.any() and (ringed[changed] == 140).all()  # only the distractor's ring differs
    assert (ringed == 255).all(axis=-1).sum() == (plain == 255).all(
        axis=-1
    ).sum()  # the white outline as before


# ----------------------------------------------------------------------------------------------------------
# render settings (issue 21: a target found by its outline, not by where or how it is drawn)


def test_rendering_sets_and_restores_the_settings():
    before = {n: getattr(synth, n) for n in synth.SETTINGS}
    with synth.rendering(layout="ring", outline=[1, 2, 3], cue="red outline"):
        assert synth.LAYOUT == "ring" and synth.OUTLINE == (1, 2, 3)  # a JSON list is taken as a tuple
        assert synth.questions()["color"] == "What colour is the object with the red outline?"
        assert synth._render_params()["cue"] == "red outline"
    assert {n: getattr(synth, n) for n in synth.SETTINGS} == before
    with (
        pytest.raises(ValueError, match=r"unknown render setting.*'colour'.*'layout'"),
        synth.rendering(colour=1),
    ):
        pass
    with pytest.raises(ValueError, match="LAYOUT must be"), synth.rendering(layout="grid"):
        synth._offset([0.0, 0.0], 1.0, 0.0, 0, 2, 0.0)


@pytest.mark.parametrize("density", [2, 3])
def test_polygon_layout_leaves_no_object_in_the_middle(density):
    """Layout "ring" stands the distractors around the target, so it is the group's centre; "polygon" makes every
    object a vertex of one regular polygon (each as far from the centre as the others, neighbours ``dist`` apart)."""
    start, dist = [30.0, 30.0], 10.0

    def group(layout):
        with synth.rendering(layout=layout):
            return np.array(
                [start] + [synth._offset(start, dist, 0.4, i, density, 0.0) for i in range(density)]
            )

    ring, poly = group("ring"), group("polygon")
    assert np.hypot(*(ring[0] - ring.mean(axis=0))) < 1e-9  # the target is the centre
    radii = np.hypot(*(poly - poly.mean(axis=0)).T)
    assert np.allclose(radii, radii[0]) and radii[0] > 1
    sides = [np.hypot(*(poly[i] - poly[(i + 1) % len(poly)])) for i in range(len(poly))]
    assert np.allclose(sides, dist)


def test_random_target_depth_is_recorded_and_drawn(tmp_path):
    with synth.rendering(target_depth="random"):
        res = generate_dataset(tmp_path / "d", n_train=40, n_val=0, n_test=4)
        rows = _rows(res["train"])
        assert all(0 <= r["target_depth"] <= r["density"] for r in rows)
        assert len({r["target_depth"] for r in rows if r["density"] == 3}) > 1
        oracle = _rows(res["test_oracle"])
        assert all(r["distractors"] == [] for r in oracle)
    # a distractor on the target's spot covers it at depth 0 and is covered at depth 1
    obj = {"shape": "square", "motion": "left", "start": [32.0, 32.0]}
    scene = {
        "target": {**obj, "color": "red"},
        "distractors": [{**obj, "color": "blue"}],
        "background": [20] * 3,
    }
    assert tuple(render_clip(scene, 2, 64)[0, 32, 32]) == COLORS["red"]  # no depth recorded: on top
    assert tuple(render_clip({**scene, "target_depth": 0}, 2, 64)[0, 32, 32]) == COLORS["blue"]
    assert tuple(render_clip({**scene, "target_depth": 1}, 2, 64)[0, 32, 32]) == COLORS["red"]


def test_outline_above_background_follows_each_clips_background():
    scene = {"target": {"color": "red", "shape": "square", "motion": "left", "start": [32.0, 32.0]},
             "distractors": [], "background": [30, 30, 30]}  # fmt: skip
    with synth.rendering(outline_above_bg=40):
        frame = render_clip(scene, 2, 64)[0]
    values = {tuple(p) for p in frame.reshape(-1, 3)}
    assert values == {(30, 30, 30), (70, 70, 70), COLORS["red"]}
