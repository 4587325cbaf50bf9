"""The embedded default's pretrained baseline (dna_vlm.tiny.pretrained): build, verify, load, refuse."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dna_vlm.tiny.pretrained import (
    ASSET_NAME,
    AssetError,
    Recipe,
    Stage,
    asset_record,
    build_asset,
    pretrained_baseline,
)


def _as_json(recipe: Recipe) -> dict:
    return json.loads(json.dumps(asdict(recipe)))


TINY = Recipe(stages=(Stage({}, (("shape", 2), ("all", 2))),), n_train=24, batch_size=4, data_seed=7)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("asset")
    rec = build_asset(root / "work", TINY, root / "assets")
    return root, rec


def test_build_writes_weights_and_a_record_that_says_how(built):
    root, rec = built
    assert rec["recipe"] == _as_json(TINY)
    assert [(p["stage"], p["category"]) for p in rec["phases"]] == [(0, "shape"), (0, "all")]
    assert all(p["final_loss"] > 0 for p in rec["phases"])
    assert rec["data"]["args"]["seed"] == 7 and rec["data"]["args"]["n_train"] == 24
    assert asset_record(root / "assets") == rec
    # the shape phase trained on shape questions only
    (data,) = (root / "work").glob("data0-*")
    rows = [json.loads(ln) for ln in (data / "train_shape.jsonl").read_text().splitlines()]
    assert rows and {r["category"] for r in rows} == {"shape"}


def test_load_gives_the_last_phases_weights(built, tmp_path):
    root, rec = built
    res = pretrained_baseline(tmp_path / "base", root / "assets")
    got = load_file(tmp_path / "base" / "model.safetensors")
    (last,) = (root / "work").glob("phase1-all-*")
    want = load_file(last / "model" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert json.loads((tmp_path / "base" / "dna_vlm_pretrained.json").read_text())["sha256"] == rec["sha256"]
    from dna_vlm.runs.loading import load_model

    model, processor = load_model(pretrained=res["path"])
    assert model.config.model_type == "llava_onevision" and processor is not None


def test_rebuild_resumes_finished_phases_and_redoes_changed_ones(built, tmp_path):
    root, rec = built
    again = build_asset(root / "work", TINY, root / "assets")
    assert again["sha256"] == rec["sha256"]  # phases were kept, not retrained
    longer = replace(TINY, stages=(Stage({}, (("shape", 2), ("all", 3))),))
    other = build_asset(root / "work", longer, tmp_path / "assets")
    assert other["phases"][1]["steps"] == 3 and other["sha256"] != rec["sha256"]  # not the stale 2-step run
    assert len(list((root / "work").glob("phase0-shape-*"))) == 1  # the unchanged first phase was reused


def test_a_second_stage_trains_on_the_same_scenes_drawn_its_way(built, tmp_path):
    """A stage's render settings draw its clips (same seeds, same scenes); the first stage's phases are reused
    from an earlier build; the record keeps every stage's render and names the last one the weights are for."""
    from dna_vlm.data import synth

    root, rec = built
    before = (synth.OUTLINE, synth.CUE)
    two = replace(
        TINY, stages=(*TINY.stages, Stage({"outline": [90, 90, 90], "cue": "grey outline"}, (("color", 2),)))
    )
    got = build_asset(root / "work", two, tmp_path / "assets")
    assert [(p["stage"], p["category"]) for p in got["phases"]] == [(0, "shape"), (0, "all"), (1, "color")]
    assert got["phases"][:2] == [{**p, "stage": 0} for p in rec["phases"]]  # reused, not retrained
    assert got["data"]["render"]["outline"] == [90, 90, 90] and got["data"]["render"]["cue"] == "grey outline"
    assert [r["outline"] for r in got["data"]["stages"]] == [list(before[0]), [90, 90, 90]]
    (d0,), (d1,) = (root / "work").glob("data0-*"), (root / "work").glob("data1-*")
    first, second = (
        [json.loads(ln) for ln in (d / "train.jsonl").read_text().splitlines()] for d in (d0, d1)
    )
    assert [r["target"] for r in first] == [r["target"] for r in second]  # the same scenes
    assert {r["question"] for r in second} >= {"What colour is the object with the grey outline?"}
    assert before == (synth.OUTLINE, synth.CUE)  # restored after the stage


def test_corrupt_weights_are_refused_by_digest(built, tmp_path):
    root, _ = built
    bad = tmp_path / "assets"
    bad.mkdir()
    (bad / f"{ASSET_NAME}.json").write_text((root / "assets" / f"{ASSET_NAME}.json").read_text())
    raw = bytearray((root / "assets" / f"{ASSET_NAME}.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (bad / f"{ASSET_NAME}.safetensors").write_bytes(bytes(raw))
    with pytest.raises(AssetError, match=r"sha256.*rebuild"):
        pretrained_baseline(tmp_path / "base", bad)


def test_weights_that_do_not_fit_the_model_are_refused(built, tmp_path):
    from dna_vlm.tiny.pretrained import _sha256

    root, _ = built
    bad = tmp_path / "assets"
    bad.mkdir()
    save_file({"not_a_model_weight": torch.zeros(3)}, bad / f"{ASSET_NAME}.safetensors")
    rec = json.loads((root / "assets" / f"{ASSET_NAME}.json").read_text())
    rec["sha256"] = _sha256(bad / f"{ASSET_NAME}.safetensors")
    (bad / f"{ASSET_NAME}.json").write_text(json.dumps(rec))
    with pytest.raises(AssetError, match=r"does not fit.*--baseline train"):
        pretrained_baseline(tmp_path / "base", bad)


def test_missing_record_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(AssetError, match=r"unreadable.*pretrain_default\.py"):
        asset_record(tmp_path)


def test_the_shipped_asset_is_the_recipe_in_code_and_loads(tmp_path):
    """The committed weights match their digest, fit the model this transformers builds, and were trained by
    today's Recipe() on data rendered as the synthetic set renders it now."""
    from dna_vlm.data.synth import generate_dataset

    rec = asset_record()
    assert rec["recipe"] == _as_json(Recipe())
    pretrained_baseline(tmp_path / "base")
    meta = generate_dataset(tmp_path / "d", n_train=1, n_val=0, n_test=0)["meta"]
    assert rec["data"]["render"] == meta["render"]


def test_phase_data_concatenates_terms_with_unique_ids(tmp_path):
    from dna_vlm.tiny.pretrained import _phase_data

    rows = [{"id": f"r{i}", "category": c} for i, c in enumerate(["color", "shape", "motion", "shape"])]
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _phase_data(str(src), "all") == str(src)
    got = [json.loads(ln) for ln in Path(_phase_data(str(src), "all+shape")).read_text().splitlines()]
    assert [r["id"] for r in got] == ["r0", "r1", "r2", "r3", "r1-1", "r3-1"]
    assert [r["category"] for r in got[4:]] == ["shape", "shape"]
    with pytest.raises(ValueError, match="'size'"):
        _phase_data(str(src), "all+size")


def test_demo_baseline_stage_loads_the_asset_and_refuses_other_clips(tmp_path):
    """The demo's baseline stage (`--baseline asset`): the shipped weights for clips rendered as the asset's were;
    clips rendered with other geometry are refused, naming both and the fix."""
    from dna_vlm.eval.demo.pipeline import _asset_baseline

    render = asset_record()["data"]["render"]
    got = _asset_baseline({"meta": {"render": render}}, tmp_path / "a")
    assert got["asset"]["sha256"] == asset_record()["sha256"] and got["run"] is None
    with pytest.raises(AssetError, match=r"rendered with.*--baseline train"):
        _asset_baseline({"meta": {"render": {**render, "travel": 0.35}}}, tmp_path / "b")
