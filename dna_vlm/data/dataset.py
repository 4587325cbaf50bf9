"""Video QA datasets as JSONL: one validated row per line (the dataset format: README.md, "Dataset format").

Row format::

    {"id": str, "video": str, "question": str, "options": [str, ...], "answer": str, ...extra}

``video`` is a path relative to the JSONL file's folder (or absolute); ``options`` is optional and, when
present, ``answer`` is the option LETTER ("A", "B", ...). Any other field is kept in ``Example.extra``
(the synthetic set adds ``category`` and ``density``).

The other formats the field uses (LLaVA ``conversations``, LLaMA-Factory sharegpt ``messages``; JSON, JSONL,
parquet, a ``datasets`` folder) are read by :mod:`dna_vlm.data.formats` into the same :class:`Example`; a
conversation of more than one exchange (or with a system turn) keeps its turns in ``Example.turns``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dna_vlm.files import atomic_write_bytes, file_digest

__all__ = [
    "LETTERS",
    "PLACEHOLDERS",
    "DatasetError",
    "Example",
    "Turn",
    "check_id",
    "check_no_placeholder",
    "dataset_identity",
    "iter_jsonl",
    "load_dataset",
    "read_bytes",
    "validate_row",
    "video_path",
    "write_jsonl",
]

LETTERS = string.ascii_uppercase
CORE_FIELDS = ("id", "video", "question", "options", "answer")
#: video placeholders the field writes in the text (LLaVA: "<image>" even for videos; LLaMA-Factory: "<video>")
PLACEHOLDERS = ("<image>", "<video>")


class DatasetError(ValueError):
    """A dataset file or one of its rows is invalid; the message names ``file:line`` and the field."""


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation: ``role`` "system", "user" or "assistant", its text without any video placeholder, and
    ``video``: the row's video goes in this (user) turn, where the model's chat template puts a video."""

    role: str
    text: str
    video: bool = False


@dataclass
class Example:
    """One validated dataset row. ``video`` is an absolute path; ``source`` is ``"file:line"`` (or
    ``"file row N"`` for parquet / ``datasets`` folders).

    ``turns`` is empty for a single question (``question`` / ``options`` / ``answer`` are the row); for a
    conversation of several exchanges (or with a system turn) it holds every turn, trained on every assistant
    turn, and ``question`` / ``answer`` are its first user turn and its last assistant turn (for summaries).
    """

    id: str
    video: str
    question: str
    options: list[str] | None
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    turns: tuple[Turn, ...] = ()

    @property
    def answer_index(self) -> int | None:
        """Index of the answer in ``options`` (None for open-ended questions)."""
        return LETTERS.index(self.answer) if self.options is not None else None

    @property
    def answer_text(self) -> str:
        """The answer's option text for MCQ, else the answer itself."""
        return self.options[self.answer_index] if self.options is not None else self.answer

    def to_row(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """The JSONL row; with ``relative_to`` (a folder) the video path is written relative to it when possible."""
        video = self.video
        if relative_to is not None:
            with contextlib.suppress(ValueError):  # another drive on Windows: keep it absolute
                video = os.path.relpath(self.video, os.path.abspath(relative_to))
        if self.turns:  # a conversation: LLaVA-style rows (dna_vlm.data.formats reads them back)
            convo = [{"from": _LLAVA_ROLE[t.role], "value": ("<video>\n" if t.video else "") + t.text}
                     for t in self.turns]  # fmt: skip
            return {"id": self.id, "video": video, "conversations": convo, **self.extra}
        row: dict[str, Any] = {"id": self.id, "video": video, "question": self.question}
        if self.options is not None:
            row["options"] = list(self.options)
        row["answer"] = self.answer
        row.update(self.extra)
        return row


_LLAVA_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def _fail(source: str, msg: str) -> DatasetError:
    return DatasetError(f"{source}: {msg}")


def validate_row(row: Any, source: str, base_dir: Path, check_videos: bool, seen: dict[str, str]) -> Example:
    """The :class:`Example` of one row of the project's format (``seen``: ids met so far -> their source,
    updated); a bad row raises :class:`DatasetError` naming ``source`` and the field."""
    if not isinstance(row, dict):
        raise _fail(source, f"expected a JSON object per line, got {type(row).__name__}")
    missing = [k for k in ("id", "video", "question", "answer") if k not in row]
    if missing:
        raise _fail(source, f"missing required field(s) {', '.join(map(repr, missing))}")

    rid = check_id(row["id"], source, seen)
    vpath = video_path(row["video"], source, base_dir, check_videos)
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise _fail(source, f"field 'question' must be a non-empty string, got {question!r}")
    options = row.get("options")
    if options is not None:
        _check_options(options, source)
    answer = _check_answer(row["answer"], options, source)
    for name in ("question", "answer"):
        check_no_placeholder(row[name], f"field {name!r}", source)
    extra = {k: v for k, v in row.items() if k not in CORE_FIELDS}
    seen[rid] = source
    return Example(
        id=rid,
        video=str(vpath),
        question=question,
        options=list(options) if options is not None else None,
        answer=answer,
        extra=extra,
        source=source,
    )


def check_no_placeholder(text: str, where: str, source: str) -> None:
    """A video placeholder left in the text would reach the processor as a second video: refuse it here."""
    for ph in PLACEHOLDERS:
        if ph in text:
            raise _fail(
                source,
                f"{where} holds the video placeholder {ph!r}: in the project's format the video is put in by "
                "the model's chat template; remove it",
            )


def check_id(rid: Any, source: str, seen: dict[str, str]) -> str:
    """``rid`` as a unique, non-empty string id (``seen``: ids met so far -> their source)."""
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _fail(source, f"field 'id' must be a string or integer, got {type(rid).__name__}")
    rid = str(rid)
    if not rid.strip():
        raise _fail(source, "field 'id' is empty")
    if rid in seen:
        raise _fail(source, f"field 'id' {rid!r} is not unique (first used at {seen[rid]})")
    return rid


def video_path(video: Any, source: str, base_dir: Path, check_videos: bool) -> Path:
    """The row's video as a normalised path (relative ones resolve against ``base_dir``: the data file's folder
    or ``--video-root``)."""
    if not isinstance(video, str) or not video.strip():
        raise _fail(source, f"field 'video' must be a non-empty string (a path), got {video!r}")
    vpath = Path(os.path.expanduser(video))
    if not vpath.is_absolute():
        vpath = base_dir / vpath
    vpath = Path(os.path.normpath(vpath))
    if check_videos and not vpath.is_file():
        raise _fail(source, f"field 'video': file not found: {vpath}")
    return vpath


def _check_options(options: Any, source: str) -> None:
    if not isinstance(options, list) or len(options) < 2:
        raise _fail(source, f"field 'options' must be a list of at least 2 strings, got {options!r}")
    if len(options) > len(LETTERS):
        raise _fail(source, f"field 'options' has {len(options)} entries; at most {len(LETTERS)} supported")
    for i, opt in enumerate(options):
        if not isinstance(opt, str) or not opt.strip():
            raise _fail(source, f"field 'options'[{i}] must be a non-empty string, got {opt!r}")


def _check_answer(answer: Any, options: list | None, source: str) -> str:
    """The answer text; with options, the normalised option letter ("b " -> "B")."""
    if not isinstance(answer, str) or not answer.strip():
        raise _fail(source, f"field 'answer' must be a non-empty string, got {answer!r}")
    if options is None:
        return answer
    letter = answer.strip().upper()
    valid = LETTERS[: len(options)]
    if len(letter) != 1 or letter not in valid:
        raise _fail(
            source,
            f"field 'answer' must be an option letter in {', '.join(valid)} "
            f"(the row has {len(options)} options), got {answer!r}",
        )
    return letter


def load_dataset(path: str | os.PathLike, check_videos: bool = False) -> list[Example]:
    """Read and validate a JSONL dataset in the project's format (:mod:`dna_vlm.data.formats` reads the
    others).

    Blank lines are skipped. Every row is validated; the first bad one raises :class:`DatasetError` naming
    ``file:line`` and the field. Relative video paths resolve against the JSONL file's folder. With
    ``check_videos=True`` every video must exist (checked here, not when frames are read).
    """
    path = Path(path)
    base_dir = path.resolve().parent
    seen: dict[str, str] = {}
    examples = [validate_row(row, source, base_dir, check_videos, seen) for source, row in iter_jsonl(path)]
    if not examples:
        raise DatasetError(f"{path}: the dataset has no rows")
    return examples


def read_bytes(path: Path) -> bytes:
    """The file's bytes without a UTF-8 byte-order mark; a missing / unreadable file is a DatasetError."""
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(``"file:line"``, parsed value) of every non-blank line of a JSONL file; a line that is not UTF-8 or
    not JSON raises :class:`DatasetError` naming it."""
    path = Path(path)
    for lineno, bline in enumerate(read_bytes(path).splitlines(), start=1):
        source = f"{path}:{lineno}"
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _fail(source, f"not valid UTF-8 ({e})") from e
        if not line.strip():
            continue
        try:
            yield source, json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(source, f"invalid JSON ({e.msg} at column {e.colno})") from e


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Example]) -> Path:
    """Write rows (dicts or :class:`Example`) as JSONL, atomically (temp file + rename).

    ``Example`` rows get their video path written relative to the output folder when possible.
    """
    path = Path(path)
    lines = []
    for row in rows:
        if isinstance(row, Example):
            row = row.to_row(relative_to=path.resolve().parent)
        lines.append(json.dumps(dict(row), ensure_ascii=False, sort_keys=False))
    atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return path


def dataset_identity(path: str | os.PathLike, examples: list[Example]) -> dict:
    """What a resumed run checks its data against: the file's digest, its row count and a digest of its row
    ids in order (``{"file_digest", "rows", "ids_digest"}``)."""
    ids = hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()
    return {"file_digest": _data_digest(Path(path)), "rows": len(examples), "ids_digest": ids}


def _data_digest(path: Path) -> str:
    """sha256 of a data file, or of a folder's files (a ``datasets`` folder): their relative names and digests."""
    if not path.is_dir():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "\n".join(f"{p.relative_to(path).as_posix()} {file_digest(p)}" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()
