"""Readers of the training-data formats the field uses, into validated :class:`~dna_vlm.data.dataset.Example` rows.

Row formats (``data_format``; ``"auto"`` tells them apart row by row from their keys):

- ``qa``: the project's rows (``id``, ``video``, ``question``, ``options``?, ``answer``; README "Dataset format");
- ``llava``: LLaVA / LLaVA-OneVision / LLaVA-Video-178K rows: ``{"id", "video", "conversations": [{"from":
  "human"|"gpt"|"system", "value": ...}]}`` with an ``<image>`` (or ``<video>``) placeholder in the first human turn;
- ``sharegpt``: LLaMA-Factory's sharegpt video rows: ``{"messages": [{"role": "user"|"assistant"|"system",
  "content": ...}], "videos": [path]}`` (``system`` may also be a top-level string) with a ``<video>`` placeholder.

The two conversation formats take either key set (``conversations`` / ``messages``, ``from``/``value`` /
``role``/``content``, ``video`` / ``videos``); a forced format only insists on its list key. A conversation's
placeholder is removed from the text and the turn marked (:class:`~dna_vlm.data.dataset.Turn` ``video``): the
model's chat template puts the video where it expects it. One exchange without a system turn becomes a plain
question / answer row (the same code path as ``qa``); more keep their turns.

Containers (picked from the file): a JSON list (``[...]``, pretty-printed or on one line), JSONL, parquet, and a
``datasets`` folder written by ``save_to_disk`` (``datasets.load_from_disk``). JSON is parsed here, element by
element, so every error names ``file:line``; parquet / arrow rows are named ``file row N`` (0-based).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dna_vlm.data.dataset import (
    PLACEHOLDERS,
    DatasetError,
    Example,
    Turn,
    check_id,
    iter_jsonl,
    read_bytes,
    validate_row,
    video_path,
)

__all__ = ["FORMATS", "detect_format", "read_dataset", "read_rows"]

FORMATS = ("auto", "qa", "llava", "sharegpt")
ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
CONVO_KEYS = ("conversations", "messages")
ROW_KEYS = ("id", "video", "videos", "system", *CONVO_KEYS)
DATASETS_HINT = "reading parquet / datasets folders needs `datasets`: pip install 'dna-vlm[train]'"


def read_dataset(
    path: str | os.PathLike,
    data_format: str = "auto",
    video_root: str | os.PathLike | None = None,
    check_videos: bool = False,
    counts: Counter | None = None,
    errors: list[str] | None = None,
) -> list[Example]:
    """Read and validate every row of ``path`` (a JSON / JSONL / parquet file or a ``datasets`` folder).

    ``video_root``: the folder relative video paths resolve against (default: the folder holding ``path``).
    ``counts``: filled with rows per format. ``errors``: collect every bad row's message there and go on
    (what ``--check-data`` reports) instead of raising :class:`DatasetError` at the first.
    """
    if data_format not in FORMATS:
        raise DatasetError(f"data format {data_format!r}: expected one of {', '.join(FORMATS)}")
    path = Path(path)
    base_dir = _video_base(path, video_root)
    seen: dict[str, str] = {}
    examples: list[Example] = []
    for index, (source, row) in enumerate(read_rows(path)):
        try:
            fmt = detect_format(row, source) if data_format == "auto" else data_format
            examples.append(_read_row(fmt, row, source, index, base_dir, check_videos, seen))
        except DatasetError as e:
            if errors is None:
                raise
            errors.append(str(e))
            continue
        if counts is not None:
            counts[fmt] += 1
    if not examples and not errors:
        raise DatasetError(f"{path}: the dataset has no rows")
    return examples


def _video_base(path: Path, video_root: str | os.PathLike | None) -> Path:
    if video_root is None:
        return path.resolve().parent
    root = Path(os.path.expanduser(str(video_root))).resolve()
    if not root.is_dir():
        raise DatasetError(
            f"--video-root {video_root}: not a folder (the folder relative video paths start in)"
        )
    return root


def _read_row(fmt, row, source, index, base_dir, check_videos, seen) -> Example:
    if fmt == "qa":
        if isinstance(row, dict) and "question" not in row and any(k in row for k in CONVO_KEYS):
            raise DatasetError(
                f"{source}: a conversation row (it has {next(k for k in CONVO_KEYS if k in row)!r}) in the 'qa' "
                "format, which needs 'question' and 'answer': use --data-format auto, llava or sharegpt"
            )
        return validate_row(row, source, base_dir, check_videos, seen)
    return _conversation_row(fmt, row, source, index, base_dir, check_videos, seen)


def detect_format(row: Any, source: str) -> str:
    """The format of one row, from its keys: ``qa`` (``question``), ``llava`` (``conversations``) or
    ``sharegpt`` (``messages``)."""
    if not isinstance(row, dict):
        raise DatasetError(f"{source}: expected a JSON object per row, got {type(row).__name__}")
    if "question" in row or ("answer" in row and not any(k in row for k in CONVO_KEYS)):
        return "qa"
    if "conversations" in row:
        return "llava"
    if "messages" in row:
        return "sharegpt"
    raise DatasetError(
        f"{source}: cannot tell the row's format from its fields {sorted(row)}: expected 'question' and "
        "'answer' (the project's format), 'conversations' (LLaVA) or 'messages' (LLaMA-Factory sharegpt)"
    )


# -------------------------------------------------------------------------------------------- containers


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(source, row) of every row of a JSON list, JSONL, parquet file or ``datasets`` folder."""
    if path.is_dir():
        yield from _arrow_rows(path)
        return
    raw = read_bytes(path)
    if raw.startswith(b"PAR1") or path.suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    if raw.lstrip()[:1] == b"[":
        yield from _json_list_rows(path, raw)
        return
    try:
        yield from iter_jsonl(path)
    except DatasetError as e:
        if raw.lstrip()[:1] == b"{" and _is_one_object(raw):
            raise DatasetError(
                f"{path}: the file is one JSON object; expected a JSON list of rows ([{{...}}, ...]) or one "
                "JSON object per line (JSONL)"
            ) from e
        raise


def _is_one_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _json_list_rows(path: Path, raw: bytes) -> Iterator[tuple[str, Any]]:
    """Elements of a JSON list, each named by the line it starts on (one-line files: ``file:1 row N``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not valid UTF-8 ({e})") from e
    decoder, n = json.JSONDecoder(), len(text)
    one_line = "\n" not in text.strip()
    i, line, counted = _skip_ws(text, text.index("[") + 1), 1, 0
    index = 0
    while i < n and text[i] != "]":
        line += text.count("\n", counted, i)
        counted = i
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        yield (f"{path}:{line} row {index}" if one_line else f"{path}:{line}"), value
        index += 1
        i = _skip_ws(text, end)
        if i < n and text[i] == ",":
            i = _skip_ws(text, i + 1)
        elif i >= n or text[i] != "]":
            lineno = text.count("\n", 0, i) + 1
            raise DatasetError(f"{path}:{lineno}: invalid JSON (expected ',' or ']' after row {index - 1})")
    if i >= n or text[_skip_ws(text, i + 1) :].strip():
        lineno = text.count("\n", 0, min(i, n)) + 1
        raise DatasetError(f"{path}:{lineno}: invalid JSON (the list is not closed by one final ']')")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a parquet file, streamed in batches by pyarrow (what ``datasets`` reads parquet with;
    ``Dataset.from_parquet`` would first copy the file into the HF cache)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DatasetError(f"{path}: {DATASETS_HINT}") from e
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path} row {index}", _drop_nulls(row)
                index += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{path}: cannot read as parquet ({e})") from e


def _arrow_rows(folder: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a ``datasets`` folder (``Dataset.save_to_disk``; a ``DatasetDict`` folder with one split, or
    FOLDER/SPLIT)."""
    try:
        import datasets
    except ImportError as e:
        raise DatasetError(f"{folder}: {DATASETS_HINT}") from e
    if not ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
        raise DatasetError(
            f"{folder}: a folder that is not a `datasets` save_to_disk folder (no state.json / dataset_dict.json); "
            "pass a JSON, JSONL or parquet file or such a folder"
        )
    try:
        ds = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DatasetError(f"{folder}: cannot load the datasets folder ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DatasetError(
                f"{folder}: a DatasetDict with splits {sorted(ds)}: pass one split's folder, e.g. "
                f"{folder / sorted(ds)[0]}"
            )
        (split,) = ds
        folder, ds = folder / split, ds[split]
    for index, row in enumerate(ds):
        yield f"{folder} row {index}", _drop_nulls(row)


def _drop_nulls(value: Any) -> Any:
    """Arrow gives every row every column / struct field (None where a row had none): drop those again."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ conversations


def _conversation_row(fmt, row, source, index, base_dir, check_videos, seen) -> Example:
    """A LLaVA / sharegpt row as an :class:`Example` (one exchange: a plain question; more: its turns)."""
    if not isinstance(row, dict):
        raise DatasetError(f"{source}: expected a JSON object per row, got {type(row).__name__}")
    key = _convo_key(fmt, row, source)
    for img in ("image", "images"):
        if row.get(img):
            raise DatasetError(
                f"{source}: field {img!r}: image rows are not supported (dna-vlm trains on videos; drop the row)"
            )
    rid = check_id(row.get("id", f"row{index}"), source, seen)
    vpath = video_path(_one_video(row, source), source, base_dir, check_videos)
    turns = _turns(row, key, source)
    extra = {k: v for k, v in row.items() if k not in ROW_KEYS}
    seen[rid] = source
    users = [t for t in turns if t.role == "user"]
    single = len(turns) == 2 and users[0].text
    return Example(
        id=rid,
        video=str(vpath),
        question=users[0].text,
        options=None,
        answer=turns[-1].text,
        extra=extra,
        source=source,
        turns=() if single else tuple(turns),
    )


def _convo_key(fmt: str, row: dict, source: str) -> str:
    keys = ("conversations",) if fmt == "llava" else CONVO_KEYS
    present = [k for k in keys if k in row]
    if len(present) != 1:
        got = "both" if present else "neither"
        raise DatasetError(
            f"{source}: the {fmt} format needs {' or '.join(map(repr, keys))} (a list of turns); "
            f"the row has {got}" + ("" if present else f" (its fields: {sorted(row)})")
        )
    return present[0]


def _one_video(row: dict, source: str) -> Any:
    if "video" in row and "videos" in row:
        raise DatasetError(f"{source}: both 'video' and 'videos': give one")
    if "videos" in row:
        videos = row["videos"]
        if not isinstance(videos, list) or len(videos) != 1:
            n = len(videos) if isinstance(videos, list) else type(videos).__name__
            raise DatasetError(f"{source}: field 'videos' must be a list of exactly one video path, got {n}")
        return videos[0]
    if "video" not in row:
        raise DatasetError(
            f"{source}: missing field 'video' (or 'videos'): every row needs one video (text-only rows are "
            "not trained on)"
        )
    return row["video"]


def _turns(row: dict, key: str, source: str) -> list[Turn]:
    """The row's turns: roles mapped, order checked, the one placeholder found and removed."""
    items = row[key]
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{source}: field {key!r} must be a non-empty list of turns, got {items!r}")
    raw = [_raw_turn(item, f"field {key!r}[{i}]", source) for i, item in enumerate(items)]
    if "system" in row:
        system = row["system"]
        if not isinstance(system, str):
            raise DatasetError(f"{source}: field 'system' must be a string, got {type(system).__name__}")
        if raw[0][0] == "system":
            raise DatasetError(f"{source}: a top-level 'system' and a system turn in {key!r}: give one")
        if system.strip():
            raw.insert(0, ("system", system, "field 'system'"))
    _check_order(raw, key, source)
    return _place_video(raw, source)


def _raw_turn(item: Any, where: str, source: str) -> tuple[str, str, str]:
    """(role, text, where) of one turn: from/value or role/content."""
    if not isinstance(item, dict):
        raise DatasetError(f"{source}: {where} must be an object, got {type(item).__name__}")
    role_key, text_key = ("from", "value") if "from" in item else ("role", "content")
    if role_key not in item or text_key not in item:
        raise DatasetError(
            f"{source}: {where} needs 'from' and 'value' (LLaVA) or 'role' and 'content' (sharegpt); "
            f"got fields {sorted(item)}"
        )
    role, text = item[role_key], item[text_key]
    if role not in ROLE_NAMES:
        raise DatasetError(
            f"{source}: {where}[{role_key!r}]: role {role!r} is not supported; expected one of "
            f"{', '.join(map(repr, ROLE_NAMES))}"
        )
    if not isinstance(text, str):
        raise DatasetError(f"{source}: {where}[{text_key!r}] must be a string, got {type(text).__name__}")
    return ROLE_NAMES[role], text, f"{where}[{text_key!r}]"


def _check_order(raw: list[tuple[str, str, str]], key: str, source: str) -> None:
    """An optional system turn, then user / assistant alternating, ending with an assistant turn."""
    body = raw[1:] if raw[0][0] == "system" else raw
    for i, (role, _, where) in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            what = "a second system turn" if role == "system" else f"{_a(role)} {role} turn"
            raise DatasetError(
                f"{source}: {where.rsplit('[', 1)[0]}: {what} where {_a(expected)} {expected} turn was expected (an "
                "optional system turn first, then user and assistant turns alternating)"
            )
    if not body or body[-1][0] != "assistant":
        raise DatasetError(
            f"{source}: field {key!r} must end with an assistant turn (the answer trained on); "
            + ("it has no user turn" if not body else f"it ends with a {body[-1][0]} turn")
        )


def _a(word: str) -> str:
    return "an" if word == "assistant" else "a"


def _place_video(raw: list[tuple[str, str, str]], source: str) -> list[Turn]:
    """Turns with the placeholder removed: exactly one, in the first user turn (where the video goes)."""
    found = [
        (i, ph) for i, (_, text, _) in enumerate(raw) for ph in PLACEHOLDERS for _ in range(text.count(ph))
    ]
    first_user = next(i for i, (role, _, _) in enumerate(raw) if role == "user")
    if len(found) != 1:
        raise DatasetError(
            f"{source}: the row has one video and {len(found)} video placeholders ('<image>' / '<video>') in its "
            f"turns: expected exactly one, in the first user turn ({raw[first_user][2]})"
        )
    at, ph = found[0]
    if at != first_user:
        raise DatasetError(
            f"{source}: {raw[at][2]}: the video placeholder {ph!r} must be in the first user turn "
            f"({raw[first_user][2]}), where the video is put"
        )
    turns = []
    for i, (role, text, where) in enumerate(raw):
        text = text.replace(ph + "\n", "").replace(ph, "").strip() if i == at else text.strip()
        if not text and i != at:
            raise DatasetError(f"{source}: {where} is empty")
        turns.append(Turn(role, text, video=i == at))
    return turns
