"""`dna-vlm bench` rows of issue 14 (smoke: structure and correctness, never a timing claim)."""

import json
import platform
import subprocess
import sys

import pytest
import torch

from dna_vlm.attention import SoftmaxAttention
from dna_vlm.bench.attention import (
    CORE_FLOOR,
    QUICK,
    SHAPES,
    CoreFloorAttention,
    flop_floor,
    layer_flops,
    median_ci,
    peak_memory,
)
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
    # the score-reuse kernel: A maps, K B_q, (P- a_v) B_v (4 C r) and the rank-r score update and P- a_v (2 H N r)
    reuse = 2 * (4 * s.C * 8 + 2 * s.H * s.N * 8) * s.B * s.N
    assert layer_flops(s, True, 8, reuse_scores=True) == pytest.approx(layer_flops(s, False) + reuse)
    assert 1.0 < flop_floor(s, 8, reuse_scores=True) < flop_floor(s, 8)
    # rank 0: the second QK^T / PV alone (the 2-SDPA core arm)
    assert layer_flops(s, True, 0) == pytest.approx(layer_flops(s, False) + 2 * 2 * s.N * s.C * s.B * s.N)


def test_median_ci_order_statistics():
    # n = 20: P(Bin(20, 1/2) <= 5) = 0.0207 <= 0.025 < P(<= 6) = 0.0577, so the 95% CI is [x_(6), x_(15)]
    assert median_ci(list(range(1, 21))) == (10.5, 6, 15)
    # n = 7: only [min, max] reaches 95% (coverage 1 - 2/128); the order of the input does not matter
    assert median_ci([7, 1, 6, 2, 5, 3, 4]) == (4, 1, 7)
    # below 6 values no interval reaches 95%: [min, max]
    assert median_ci([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        median_ci([])


def test_peak_memory_counts_each_allocation_once():
    """linear -> matmul -> mm and softmax -> _softmax are nested ops: each output is allocated once, and the
    peak here is y and z alive together (2 x 4 MB), not the 5 x 4 MB a sum over nested events gives."""
    x, w = torch.randn(1000, 1000), torch.randn(1000, 1000)

    def f():
        y = torch.nn.functional.linear(x, w)
        z = torch.softmax(y, -1)
        del y
        return z

    assert peak_memory(f, torch.device("cpu")) == 2 * 1000 * 1000 * 4


def test_core_floor_attention_is_stock_attention():
    """DnA's core with Q- = Q+, V- = V+ and lambda = 0 gives stock attention's output exactly."""
    torch.manual_seed(0)
    stock = SoftmaxAttention(32, 4, qkv_bias=True)
    floor = CoreFloorAttention(32, 4, qkv_bias=True)
    floor.load_state_dict(stock.state_dict())
    x = torch.randn(2, 9, 32)
    assert torch.equal(floor(x), stock(x))


def test_bench_quick_lowrank_and_breakdown(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--no-memory", "--lowrank-ranks", "4", "--breakdown", "--json", str(out)]
    argv.append("--default-malloc")  # in-process: leave the test process's allocator alone
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "lowrank r=4" in text and "DnA (_Combine)" in text
    data = json.loads(out.read_text())
    layer = [r for r in data["rows"] if r["what"].startswith("encoder layer")]
    fwd = {"dna", "lowrank r=4", "lowrank r=4, 2 SDPA", CORE_FLOOR}  # CPU inference: the score-reuse kernel
    assert {r["arm"] for r in layer if r["what"] == "encoder layer fwd"} == fwd
    assert {r["arm"] for r in layer if r["what"] == "encoder layer fwd+bwd"} == {
        "dna",
        "lowrank r=4",
        CORE_FLOOR,
    }
    tiny = QUICK["tiny"]
    floors = {(r["what"], r["arm"]): r["floor"] for r in layer}
    assert floors[("encoder layer fwd", "lowrank r=4")] == pytest.approx(
        flop_floor(tiny, 4, reuse_scores=True)
    )
    assert floors[("encoder layer fwd", "lowrank r=4, 2 SDPA")] == pytest.approx(flop_floor(tiny, 4))
    assert floors[("encoder layer fwd+bwd", "lowrank r=4")] == pytest.approx(flop_floor(tiny, 4))
    assert all(r["ratio"] > 0 and r["floor"] > 1 for r in layer)
    for r in data["rows"]:  # the ratio and its CI are recomputable from the per-repetition times in the JSON
        ratios = [a / b for a, b in zip(r["dna_times_ms"], r["stock_times_ms"], strict=True)]
        assert len(ratios) == 3
        assert (r["ratio"], r["ratio_lo"], r["ratio_hi"]) == pytest.approx(median_ci(ratios))
        assert r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"]
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
    (floor,) = [r for r in layer if r["arm"] == CORE_FLOOR and r["what"] == "encoder layer fwd"]
    assert share["measured_floor"] == floor["ratio"] and "2-SDPA core layer" in text


def test_bench_steady_allocator_in_its_own_process(tmp_path):
    """The CLI's default sets glibc's thresholds (process-wide, so only in a child) and says so in the JSON;
    every row carries the page faults per call it measured."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--no-memory", "--lowrank-ranks", "", "--modes", "fwd", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "dna_vlm", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert data["allocator"].startswith("allocator: glibc mmap/trim thresholds")
    assert data["allocator"] in proc.stdout
    assert {r["arm"] for r in data["rows"]} == {"dna", CORE_FLOOR}
    assert all(r["stock_faults"] >= 0 and r["dna_faults"] >= 0 for r in data["rows"])


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
