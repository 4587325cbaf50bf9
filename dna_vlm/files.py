"""Files: atomic writes, safetensors reads and writes, digests, temp-file cleanup (every writer imports these).

Readers never see a partial file: each writer writes a temp file in the target's folder, fsyncs it and renames
it over the target. Temp files get the mode a plainly created file would get under the current umask
(mkstemp alone makes 0600 files), read at write time, never by changing the process umask at import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SafetensorsFileError",
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_safetensors",
    "file_digest",
    "load_safetensors",
    "read_json",
    "remove_path",
    "remove_stale_temps",
    "sampled_digest",
    "umask_mode",
]

#: names of the temp files/dirs writers leave behind when killed: ``.NAME.XXXX.tmp`` (atomic_path) and
#: ``.NAME.tmp-PID`` (checkpoint and weight dirs written aside)
TEMP_NAME = re.compile(r"^\..+\.tmp(-\d+)?$")


class SafetensorsFileError(ValueError):
    """A safetensors file is missing, truncated or not safetensors; the message names the file."""


def umask_mode() -> int:
    """The mode a plainly created file gets under the current umask (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit fsync it and rename it over ``path``.

    On any exception the temp file is removed and the target is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())  # after the write: some writers (safetensors) recreate the file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; :class:`SafetensorsFileError` names the file when it is missing,
    truncated or not safetensors (safetensors' own errors never say which file)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SafetensorsFileError(f"{path}: file not found")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError, OSError, ...: all mean "this file is unusable"
        raise SafetensorsFileError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); it is truncated or damaged"
        ) from None


def check_safetensors(path: str | os.PathLike) -> list[str]:
    """The tensor names of a safetensors file, reading only its header; errors as :func:`load_safetensors`.
    (A file truncated inside its data is caught by a digest check, not here.)"""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SafetensorsFileError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:
        raise SafetensorsFileError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); it is truncated or damaged"
        ) from None


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sampled_digest(path: str | os.PathLike, full_below: int = 64 << 20, samples: int = 32) -> str:
    """A digest cheap for multi-GB weight files: the whole file below ``full_below`` bytes, else its size,
    its first 1 MiB (the safetensors header) and ``samples`` 1 MiB blocks spread evenly over it."""
    size = os.path.getsize(path)
    if size < full_below:
        return file_digest(path)
    h = hashlib.sha256(f"sampled:{size}:{samples}".encode())
    block = 1 << 20
    with open(path, "rb") as f:
        for i in range(samples + 1):
            f.seek(0 if i == 0 else (size - block) * i // samples)
            h.update(f.read(block))
    return "sampled:" + h.hexdigest()


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a symlink (never its target) or a directory tree; nothing if absent."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files/dirs interrupted writers left in ``folder`` (:data:`TEMP_NAME`); returns them.
    Call it only while holding the folder's writer lock (another writer's temp files are not stale)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    gone = [p for p in folder.iterdir() if TEMP_NAME.match(p.name)]
    for p in gone:
        remove_path(p)
    return gone


def read_json(path: str | os.PathLike, error: type[Exception], missing: str, damaged: str) -> Any:
    """The JSON document at ``path``; ``error(f"{path} not found: {missing}")`` when there is no file and
    ``error(f"{path}: not valid JSON (...); {damaged}")`` when it does not parse (never a bare JSONDecodeError)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} not found: {missing}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); {damaged}") from None
