"""The demo's resumable stages: each finished stage leaves ``OUT/stages/<name>.json`` (its result and seconds)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from dna_vlm.files import atomic_write_json


class Stages:
    """Run named stages once; a stage's JSON marker (written last, atomically) records its result and time."""

    def __init__(self, out: Path, force: bool, fingerprint: str):
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.force, self.fingerprint = force, fingerprint
        self.times: dict[str, tuple[float, bool]] = {}  # name -> (seconds, resumed)

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        done = self.cached(name)
        if done is not None:
            return done
        print(f"[demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        return self.record(name, result, time.perf_counter() - t0)

    def cached(self, name: str) -> dict | None:
        """The result of stage ``name`` when a valid marker holds it (and it is not ``--force``d), else None."""
        marker = self.dir / f"{name}.json"
        if self.force or not marker.is_file():
            return None
        done = json.loads(marker.read_text())
        if done.get("fingerprint") != self.fingerprint:
            return None
        print(f"[demo] {name}: done earlier ({done['seconds']:.1f} s), resuming past it", flush=True)
        self.times[name] = (done["seconds"], True)
        return done["result"]

    def record(self, name: str, result: dict, seconds: float) -> dict:
        """Write the marker of a stage that ran as part of a group (see :meth:`_DemoRun._evaluate_group`)."""
        marker = self.dir / f"{name}.json"
        atomic_write_json(marker, {"fingerprint": self.fingerprint, "seconds": seconds, "result": result})
        self.times[name] = (seconds, False)
        print(f"[demo] {name}: {seconds:.1f} s", flush=True)
        # the result as a resumed run reads it (JSON types, keys sorted): a fresh run and a resumed one print the
        # same report, in the same order
        return json.loads(marker.read_text())["result"]

    def table(self) -> str:
        lines = [f"{'stage':<24} {'seconds':>9}", "-" * 34]
        for name, (sec, resumed) in self.times.items():
            lines.append(f"{name:<24} {sec:>9.1f}{'  (earlier run)' if resumed else ''}")
        total = sum(s for s, _ in self.times.values())
        lines.append(f"{'total':<24} {total:>9.1f}")
        return "\n".join(lines)
