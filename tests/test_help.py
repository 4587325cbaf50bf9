"""Every option of every command has a help text: each ``dna-vlm`` subcommand (dna_vlm.cli.SUBCOMMANDS) and
each ``python -m`` entry point; and every ``--help`` renders (a stray ``%`` in a help text breaks argparse)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from dna_vlm.cli import SUBCOMMANDS, build_parser


def _entry_points() -> dict[str, argparse.ArgumentParser]:
    """prog -> parser of the ``python -m`` entry points outside the ``dna-vlm`` command."""
    from dna_vlm.eval.lmms.run import build_parser as lmms_parser

    from dna_vlm.bench.video_decode import add_video_bench_args

    video = argparse.ArgumentParser(prog="python -m dna_vlm.bench.video_decode")
    add_video_bench_args(video)
    return {"python -m dna_vlm.eval.lmms.run": lmms_parser(), "python -m dna_vlm.bench.video_decode": video}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """``dna-vlm NAME`` -> its parser, for every subcommand of the real ``dna-vlm`` parser."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {f"dna-vlm {name}": p for name, p in sub.choices.items()}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    return {"dna-vlm": build_parser(), **_subcommands(), **_entry_points()}


def _missing_help(parser: argparse.ArgumentParser) -> list[str]:
    """The options and positionals of ``parser`` with no (or a blank) help text."""
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.help is argparse.SUPPRESS:
            continue
        if not (action.help or "").strip():
            out.append("/".join(action.option_strings) or action.dest)
    return out


def test_every_subcommand_is_walked():
    assert set(_subcommands()) == {f"dna-vlm {n}" for n in SUBCOMMANDS}


def test_every_option_has_help():
    missing = {prog: m for prog, p in _parsers().items() if (m := _missing_help(p))}
    assert not missing, f"options without a help text: {missing}"


@pytest.mark.parametrize("prog", sorted(_parsers()))
def test_help_renders(prog):
    parser = _parsers()[prog]
    text = parser.format_help()
    options = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert all(o in text for o in options)


def test_walker_sees_a_missing_help():
    p = argparse.ArgumentParser()
    p.add_argument("--with", help="documented")
    p.add_argument("--without")
    p.add_argument("target")
    assert _missing_help(p) == ["--without", "target"]


def test_dna_vlm_train_help_runs():
    """The installed entry point: ``dna-vlm train --help`` lists the new training options with their help."""
    env = {**os.environ, "COLUMNS": "400"}  # one line per help text: phrases are not wrapped apart
    proc = subprocess.run([sys.executable, "-m", "dna_vlm", "train", "--help"], capture_output=True, text=True,
                          timeout=120, check=False, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for words in ("--epochs", "--best-metric", "--report-to", "exported as OUT/best/"):
        assert words in proc.stdout
