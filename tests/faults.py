"""Fault injection for the reliability tests, kept out of the package: run ``dna-vlm`` in this process
with a signal sent to itself at one named point of training, as a crash, a user's Ctrl-C or a scheduler would.

    python tests/faults.py train --output OUT ...     # with DNA_VLM_TEST_FAULT=POINT[=SIGNAL[*TIMES]]

POINT (each is a real moment of the production code, reached by wrapping the call that follows it):

- ``train:model_load``        before the trainer builds the model
- ``train:step:N``            after step N's metrics are written
- ``checkpoint:renamed``      after a checkpoint dir's rename, before ``latest.json`` points at it
- ``finalize:staged``         after the run dir's artefacts are staged, before any is swapped in
- ``finalize:swapped:NAME``   after the artefact NAME is swapped into the run dir

SIGNAL defaults to SIGKILL (no cleanup); ``SIGINT*2`` sends SIGINT twice.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

FAULT_ENV = "DNA_VLM_TEST_FAULT"
HERE = Path(__file__).resolve()


def _fire(action: str) -> None:
    sig, _, times = (action or "SIGKILL").partition("*")
    for _ in range(int(times or 1)):
        os.kill(os.getpid(), signal.Signals[sig])


def _before(owner, attr: str, when, action: str) -> None:
    """Wrap ``owner.attr`` so that the fault fires before a call for which ``when(*args, **kw)`` holds."""
    orig = getattr(owner, attr)

    @functools.wraps(orig)
    def wrapped(*args, **kw):
        if when(*args, **kw):
            _fire(action)
        return orig(*args, **kw)

    setattr(owner, attr, wrapped)


def _after(owner, attr: str, when, action: str) -> None:
    """Wrap ``owner.attr`` so that the fault fires after a call for which ``when(result, *args, **kw)`` holds."""
    orig = getattr(owner, attr)

    @functools.wraps(orig)
    def wrapped(*args, **kw):
        out = orig(*args, **kw)
        if when(out, *args, **kw):
            _fire(action)
        return out

    setattr(owner, attr, wrapped)


def install(spec: str) -> None:
    """Arm the fault ``POINT[=ACTION]`` (see the module docstring)."""
    from dna_vlm.train import finalize, state, trainer

    point, _, action = spec.partition("=")
    always = lambda *a, **k: True  # noqa: E731
    if point == "train:model_load":
        _before(trainer, "build_model", always, action)
    elif point.startswith("train:step:"):
        n = int(point.rsplit(":", 1)[1])
        _after(trainer.Trainer, "write_metrics", lambda _o, _self, rec, *a, **k: rec.get("step") == n, action)
    elif point == "checkpoint:renamed":
        _before(state, "atomic_write_json", lambda path, *a, **k: Path(path).name == "latest.json", action)
    elif point == "finalize:staged":
        _after(finalize, "manifest", always, action)
    elif point.startswith("finalize:swapped:"):
        name = point.split(":", 2)[2]

        def swapped(_o, src, dst, *a, **k) -> bool:
            return Path(dst).name == name and Path(src).parent.name.startswith(".final.tmp-")

        _after(finalize.os, "replace", swapped, action)  # this process only: the child runs nothing else
    else:
        raise SystemExit(f"tests/faults.py: unknown fault point {point!r} (see its docstring)")


def command(*args: str) -> list[str]:
    """argv that runs ``dna-vlm ARGS`` under this module (arm it with :data:`FAULT_ENV` in the child's env)."""
    return [sys.executable, str(HERE), *args]


if __name__ == "__main__":
    if os.environ.get(FAULT_ENV):
        install(os.environ[FAULT_ENV])
    from dna_vlm.cli import main

    sys.exit(main(sys.argv[1:]))
