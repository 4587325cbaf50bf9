"""`dna-vlm bench` rows of issue 14 (smoke: structure and correctness, never a timing claim)."""

import json

import pytest

from dna_vlm.bench import SHAPES, flop_floor, layer_flops
from dna_vlm.cli import main


def test_lowrank_flop_floors():
    s = SHAPES["vit-b"]
    # rank-r pairs for Q- and V- (4 C r MACs per token) plus the second QK^T / PV (2 N C)
    extra = 2 * (4 * s.C * 8 + 2 * s.N * s.C) * s.B * s.N
    assert layer_flops(s, True, 8) == pytest.approx(layer_flops(s, False) + extra)
    for name in ("vit-b", "so400m", "long"):
        sh = SHAPES[name]
        assert 1.0 < flop_floor(sh, 8) < flop_floor(sh, 32) < flop_floor(sh)
    assert [round(flop_floor(SHAPES[k], 8), 3) for k in ("vit-b", "so400m")] == [1.044, 1.102]


def test_bench_quick_lowrank_and_breakdown(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--no-memory", "--lowrank-ranks", "4", "--breakdown", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "lowrank r=4" in text and "DnA (_Combine)" in text
    data = json.loads(out.read_text())
    layer = [r for r in data["rows"] if r["what"].startswith("encoder layer")]
    assert {r["arm"] for r in layer} == {"dna", "lowrank r=4"}
    assert all(r["ratio"] > 0 and r["floor"] > 1 for r in layer)
    assert {r["arm"] for r in data["rows"] if r["what"].startswith("attention core")} == {"dna"}
    (parts,) = data["breakdown"].values()
    assert set(parts) == {
        "stock (1 SDPA)",
        "2 SDPA",
        "2 SDPA, -q_neg",
        "DnA, addcmul combine",
        "DnA (_Combine)",
    }
    assert all(v > 0 for v in parts.values())
    (share,) = [v for k, v in data["attention_share"].items() if k.endswith(" fwd")]
    assert 0 < share["core_flop_share"] < 1


def test_video_bench_quick_speed_rows(tmp_path, capsys):
    out = tmp_path / "video.json"
    argv = ["bench", "--video", "--quick", "--video-cache-dir", str(tmp_path), "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "keyframe/exact" in text and "cached/cold" in text and "wait share" in text
    rows = json.loads(out.read_text())["rows"]
    tables = {r["table"] for r in rows}
    assert tables == {"decord_vs_pyav", "seek", "resize", "cache", "prefetch"}
    (seek,) = [r for r in rows if r["table"] == "seek"]
    # 4 s clip, keyframes at 0 and 2 s: the 8 samples land on those two, at most one interval (2 s) away
    # (half an interval between keyframes, up to a whole one after the last)
    assert seek["distinct_keyframes"] == 2 and 0 < seek["mean_error_s"] <= seek["max_error_s"] <= 2.0
    (cache,) = [r for r in rows if r["table"] == "cache"]
    assert cache["identical"] and cache["warm_hits"] > 0
    (resize,) = [r for r in rows if r["table"] == "resize"]
    assert resize["size"] == [64, 64] and resize["mean_abs_pixel_diff"] < 20
    steps = {r["step"] for r in rows if r["table"] == "prefetch"}
    assert steps == {"sleep", "cpu", "train loader, sleep"}
    for r in rows:
        if r["table"] == "prefetch":
            assert 0 <= r["wait_share_on"] <= 1 and 0 <= r["wait_share_off"] <= 1 and r["depth"] == 2
