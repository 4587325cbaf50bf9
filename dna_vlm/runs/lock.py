"""One writer per output dir: an exclusive ``fcntl.flock`` on ``OUT/.dna-vlm.lock``.

``dna-vlm train`` and ``dna-vlm demo`` hold it for as long as they write ``OUT``; a second writer fails at
once with :class:`LockedError` naming the holder (pid, host, start time, command) read from the lock file's
JSON. The kernel drops a flock when its holder dies, however it dies, so a lock left by a dead process is
simply taken over (and the takeover is reported when the recorded pid is gone from this host). The lock file
is never deleted: deleting a flocked file lets two processes lock two different inodes of the same name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["LOCK_FILE", "LockedError", "OutputLock", "holder_info", "pid_alive"]

LOCK_FILE = ".dna-vlm.lock"


class LockedError(RuntimeError):
    """Another process holds the output dir's lock; the message names it."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder_info(path: Path) -> dict:
    """The JSON the holder wrote into the lock file ({} when empty or unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "another process (its pid is not recorded yet)"
    start = info.get("start")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)) if isinstance(start, (int, float)) else "?"
    )
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {when}: {info.get('command', '?')})"


class OutputLock:
    """``with OutputLock(out, "train"):`` holds ``out``'s lock; :attr:`took_over` describes a stale lock
    taken over (None otherwise). Re-entrant within one object only: open it once per writer."""

    def __init__(self, out: str | os.PathLike, what: str):
        self.out, self.what = Path(out), what
        self.path = self.out / LOCK_FILE
        self.fd: int | None = None
        self.took_over: str | None = None

    def acquire(self) -> OutputLock:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise LockedError(f"{self.path} is a symlink; remove it (lock files are never followed)")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{self.path}: cannot lock ({e}); does this file system support locks?"
                ) from e
            raise LockedError(
                f"{self.out} is in use by {_describe(holder_info(self.path))}: one writer per output dir; "
                f"wait for it to finish, stop it, or choose another output dir"
            ) from None
        self.took_over = self._stale_note(holder_info(self.path))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": time.time(), "what": self.what,
              "command": " ".join(sys.argv)[:300]}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _stale_note(old: dict) -> str | None:
        """A note when the file names a previous holder: it cannot hold the flock any more (we got it)."""
        pid, host = old.get("pid"), old.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return None
        if host == socket.gethostname() and pid_alive(pid):
            return None  # a live process that released the lock cleanly (or a reused pid): nothing stale
        return f"took over a stale lock of pid {pid} on host {host} (that process is gone)"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # no holder recorded; the file itself stays (see the module doc)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:  # a writer that failed half-way never keeps its output dir locked
        with contextlib.suppress(Exception):  # (at interpreter exit the modules may be gone)
            self.release()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
