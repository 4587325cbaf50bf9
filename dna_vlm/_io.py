"""Atomic file writes and moving batches to a device: the one home of both (every writer imports these).

Readers never see a partial file: each writer writes a temp file in the target's folder, fsyncs it and renames
it over the target. Temp files get the mode a plainly created file would get under the current umask
(mkstemp alone makes 0600 files), read at write time, never by changing the process umask at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "batch_to_device",
    "umask_mode",
]


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
        os.chmod(tmp, umask_mode())
        yield tmp
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


def batch_to_device(batch: Mapping[str, Any], device, float_dtype: torch.dtype | None = None) -> dict:
    """Move every tensor of ``batch`` to ``device``; floating tensors also to ``float_dtype`` (if given).

    Integer tensors (token ids, masks, grid sizes) keep their dtype; non-tensors pass through unchanged.
    """
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            dtype = float_dtype if (float_dtype is not None and v.is_floating_point()) else v.dtype
            v = v.to(device=device, dtype=dtype)
        out[k] = v
    return out
