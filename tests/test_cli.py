"""The `dna-vlm` command: version, help listing every subcommand, and the attention benchmark's smoke mode."""

import json

import pytest

import dna_vlm
from dna_vlm.bench.attention import SHAPES, flop_floor
from dna_vlm.cli import SUBCOMMANDS, main


def test_version_and_help(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and dna_vlm.__version__ in capsys.readouterr().out
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping: each subcommand's help on one line
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, (_module, help_line) in SUBCOMMANDS.items():
        assert name in out
        assert help_line in out, name  # every subcommand has a one-line description


def test_flop_floors_match_the_issue():
    # the encoder-layer floors the benchmark compares against (DnA FLOPs / stock FLOPs)
    assert [round(flop_floor(SHAPES[k]), 2) for k in ("vit-b", "so400m", "long")] == [1.20, 1.26, 1.46]


def test_bench_quick_prints_ratios(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-memory", "--compare-forms", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "DnA/stock" in text and "two-call" in text
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["what"] for r in rows} == {
        "attention core fwd", "encoder layer fwd", "attention core fwd+bwd", "encoder layer fwd+bwd",
    }  # fmt: skip
    assert all(r["ratio"] > 0 and r["stock_ms"] > 0 for r in rows)
