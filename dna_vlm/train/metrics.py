"""``OUT/metrics.jsonl`` (one JSON line per step, plus eval records) and, with ``--report-to``, the same
numbers through accelerate's trackers: TensorBoard event files in ``OUT/tensorboard`` or a wandb run under
``OUT/wandb`` (``WANDB_MODE=offline`` keeps it local; ``wandb sync`` uploads it later)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from dna_vlm.files import atomic_write_bytes
from dna_vlm.train.errors import TrainError

__all__ = ["TRACKER_DIRS", "MetricsLog", "check_tracker", "tracker_values"]

#: --report-to -> (the package it needs, its folder in OUT)
TRACKER_DIRS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_tracker(report_to: str) -> None:
    """Refuse a tracker whose package is missing (accelerate would skip it silently) with the install hint."""
    if report_to == "none":
        return
    package = TRACKER_DIRS[report_to][0]
    if importlib.util.find_spec(package) is None:
        raise TrainError(
            f"--report-to {report_to} needs the {package} package: pip install {package} "
            "(or pass --report-to none: metrics.jsonl is written either way)"
        )


def tracker_values(rec: dict) -> dict[str, float]:
    """A metrics record as tracker scalars: ``eval_x`` -> ``eval/x``, the rest -> ``train/x`` (no step, no
    None, no text)."""
    out = {}
    for k, v in rec.items():
        if k == "step" or v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"] = v
    return out


class MetricsLog:
    """Appends metric records; on the non-main processes of a multi-process run it does nothing.

    Opening truncates the file to the records up to ``resume_step``, so lines logged after the checkpoint a
    run resumes from (a hard kill) are replaced by the resumed run's, not duplicated. That rewrite is atomic
    (temp + rename: a symlink at the path is replaced, its target untouched) and appends never follow a
    symlink (``O_NOFOLLOW``). ``acc``: the accelerate ``Accelerator`` made with ``log_with=report_to``
    (``report_to="none"``: no tracker); ``config``: the run's settings, recorded by the tracker.
    """

    def __init__(self, out: Path, resume_step: int, enabled: bool, acc=None, report_to: str = "none",
                 config: dict | None = None):  # fmt: skip
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.acc = acc if report_to != "none" else None
        if not enabled:
            return
        real = self.path.is_file() and not self.path.is_symlink()  # a symlink is replaced, never read
        keep = self._lines_up_to(resume_step) if resume_step > 0 and real else []
        atomic_write_bytes(self.path, "".join(x + "\n" for x in keep).encode())
        if self.acc is not None:
            self._start_tracker(out, resume_step, report_to, config or {})

    def _start_tracker(self, out: Path, resume_step: int, report_to: str, config: dict) -> None:
        hparams = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        if report_to == "tensorboard":  # OUT/tensorboard; a resumed run drops the events after its checkpoint
            self.acc.init_trackers(TRACKER_DIRS["tensorboard"][1], config=hparams,
                                   init_kwargs={"tensorboard": {"purge_step": resume_step + 1}})  # fmt: skip
        else:  # wandb writes OUT/wandb/<run>; resumed invocations are new wandb runs of the same group
            self.acc.init_trackers("dna-vlm", config=hparams, init_kwargs={
                "wandb": {"dir": str(out), "name": out.resolve().name, "group": str(out.resolve())}})  # fmt: skip

    def _lines_up_to(self, step: int) -> list[str]:
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        return keep

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.acc is not None:
            self.acc.log(tracker_values(rec), step=rec["step"])

    def close(self) -> None:
        """Finish the trackers (not accelerate's end_training: that also ends the process group)."""
        if self.acc is not None and self.enabled:
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc = None
