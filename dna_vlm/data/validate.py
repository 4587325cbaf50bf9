"""Check training data before anything loads: every row of every file, with a summary.

``dna-vlm check-data FILE...`` and ``dna-vlm train ... --check-data`` read each file with
:func:`dna_vlm.data.formats.read_dataset` (every bad row is listed with its ``file:line`` / row, field and what
was expected, not only the first), check that every video exists, and print rows per format, turns, videos
and a histogram of answer lengths (words per assistant turn). Exit 0 when all is well, 2 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dna_vlm.data.dataset import DatasetError, Example
from dna_vlm.data.formats import FORMATS, read_dataset

__all__ = ["DataReport", "add_parser", "check_data", "check_files"]

#: answer-length buckets (words): upper bounds, the last open
BUCKETS = (1, 3, 7, 15, 31, 63, 127)
SHOWN_ERRORS = 20


@dataclass
class DataReport:
    """What :func:`check_data` found in one file."""

    path: str
    rows: int = 0
    formats: Counter = field(default_factory=Counter)
    exchanges: Counter = field(default_factory=Counter)  # assistant turns per row -> rows
    system_turns: int = 0
    answer_words: list[int] = field(default_factory=list)  # one entry per assistant turn
    videos: int = 0  # distinct video files
    missing: list[str] = field(default_factory=list)  # "source: path" of rows whose video is not a file
    errors: list[str] = field(default_factory=list)  # bad rows' messages

    @property
    def ok(self) -> bool:
        return not self.errors and not self.missing and self.rows > 0

    def format(self) -> str:
        """The summary as printed (multi-line)."""
        status = "OK" if self.ok else "PROBLEMS"
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items())) or "none"
        lines = [f"{self.path}: {self.rows} valid rows ({fmts}); {len(self.errors)} bad rows -- {status}"]
        lines += [f"  bad row: {e}" for e in self.errors[:SHOWN_ERRORS]]
        if len(self.errors) > SHOWN_ERRORS:
            lines.append(f"  ... and {len(self.errors) - SHOWN_ERRORS} more bad rows")
        if self.rows:
            per = ", ".join(f"{v} with {k}" for k, v in sorted(self.exchanges.items()))
            lines.append(
                f"  turns: {len(self.answer_words)} assistant turns (rows: {per}); {self.system_turns} system turns"
            )
            lines.append(f"  videos: {self.videos} distinct files, {len(self.missing)} missing")
            lines += [f"  missing video: {m}" for m in self.missing[:SHOWN_ERRORS]]
            lines.append("  answer length (words per assistant turn):")
            lines += [f"    {label:>8} {n:>7}  {bar}" for label, n, bar in _histogram(self.answer_words)]
        return "\n".join(lines)


def _histogram(values: list[int]) -> list[tuple[str, int, str]]:
    """(bucket label, count, bar) over :data:`BUCKETS`; empty buckets after the last used one are left out."""
    counts, lo = [], 1
    for hi in (*BUCKETS, None):
        n = sum(1 for v in values if v >= lo and (hi is None or v <= hi))
        label = f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")
        counts.append((label, n))
        lo = (hi or 0) + 1
    used = max((i for i, (_, n) in enumerate(counts) if n), default=0)
    top = max((n for _, n in counts), default=0) or 1
    return [(label, n, "#" * round(40 * n / top)) for label, n in counts[: used + 1]]


def check_data(
    path: str | os.PathLike, data_format: str = "auto", video_root: str | os.PathLike | None = None
) -> DataReport:
    """Read every row of ``path`` (bad rows collected, not raised) and check its videos exist."""
    report = DataReport(str(path))
    try:
        examples = read_dataset(path, data_format, video_root, counts=report.formats, errors=report.errors)
    except DatasetError as e:  # the file itself (missing, not JSON, ...): nothing more to read
        report.errors.append(str(e))
        return report
    _tally(report, examples)
    return report


def _tally(report: DataReport, examples: list[Example]) -> None:
    from dna_vlm.data.prompting import example_turns

    videos: dict[str, str] = {}
    for ex in examples:
        turns = example_turns(ex)
        answers = [t for t in turns if t.role == "assistant"]
        report.exchanges[len(answers)] += 1
        report.system_turns += sum(t.role == "system" for t in turns)
        report.answer_words += [len(t.text.split()) for t in answers]
        videos.setdefault(ex.video, ex.source)
    report.rows = len(examples)
    report.videos = len(videos)
    report.missing = [f"{src}: {v}" for v, src in videos.items() if not Path(v).is_file()]


def check_files(paths: list[str], data_format: str = "auto", video_root: str | None = None, out=None) -> int:
    """Check each file, print its report (``out``, default stdout); 0 when every file is clean, else 2."""
    out = out or sys.stdout
    reports = [check_data(p, data_format, video_root) for p in paths]
    for r in reports:
        print(r.format(), file=out)
    return 0 if all(r.ok for r in reports) else 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check-data")  # its one-line help: dna_vlm.cli
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="JSON / JSONL / parquet file or `datasets` folder"
    )
    p.add_argument(
        "--data-format", choices=FORMATS, default="auto", help="row format (default: auto, per row)"
    )
    p.add_argument(
        "--video-root",
        default=None,
        help="folder relative video paths start in (default: the data file's folder)",
    )
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    return check_files(args.files, args.data_format, args.video_root)
