"""``OUT/metrics.jsonl`` (one JSON line per step, plus eval records) and, when installed, TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dna_vlm.files import atomic_write_bytes

__all__ = ["MetricsLog"]


class MetricsLog:
    """Appends metric records; on the non-main processes of a multi-process run it does nothing.

    Opening truncates the file to the records up to ``resume_step``, so lines logged after the checkpoint a
    run resumes from (a hard kill) are replaced by the resumed run's, not duplicated. That rewrite is atomic
    (temp + rename: a symlink at the path is replaced, its target untouched) and appends never follow a
    symlink (``O_NOFOLLOW``).
    """

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        real = self.path.is_file() and not self.path.is_symlink()  # a symlink is replaced, never read
        keep = self._lines_up_to(resume_step) if resume_step > 0 and real else []
        atomic_write_bytes(self.path, "".join(x + "\n" for x in keep).encode())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)
        except Exception:  # tensorboard not installed
            self.tb = None

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
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and v is not None:
                    self.tb.add_scalar(f"train/{k}" if not k.startswith("eval") else k, v, rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
