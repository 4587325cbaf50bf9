"""Training state on disk: the run record, checkpoints (no pickle), the latest pointer and resume checks.

    OUT/checkpoints/step-NNNNNN/  trainable.safetensors, optimizer.safetensors, state.json
    OUT/checkpoints/latest.json   {"dir": "step-NNNNNN", "step": N}: the newest complete checkpoint

A checkpoint is written aside and renamed into place whole, then the pointer moves to it, so a kill at any
moment leaves the previous checkpoint usable. Every step reseeds the RNGs from (seed, step, rank) and the
data order is a function of (seed, epoch), so resuming from a checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

import enum
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_save_safetensors, atomic_write_json
from ..rundir import RUN_CONFIG
from .config import TrainConfig
from .errors import TrainError

__all__ = [
    "CKPT_DIR",
    "RESUMABLE_CHANGES",
    "Checkpoints",
    "Restored",
    "RunRecord",
    "Start",
    "StartKind",
    "flatten_optimizer",
    "latest_checkpoint",
    "load_trainable",
    "prepare_output",
    "seed_all",
    "unflatten_optimizer",
]

CKPT_DIR = "checkpoints"
STATE_FORMAT = "dna-vlm-train-state/1"
#: what a previous run may have left in OUT; --overwrite deletes exactly these
RUN_FILES = (RUN_CONFIG, CKPT_DIR, "metrics.jsonl", "dna", "adapter", "projector.safetensors",
             "summary.json", "tensorboard")  # fmt: skip
#: keys of TrainConfig that may differ between an interrupted run and its resumption
RESUMABLE_CHANGES = {
    "max_steps", "resume", "overwrite", "stop_after", "save_every", "keep_checkpoints", "progress",
    "num_workers", "eval_data", "eval_every", "bad_video", "extra", "device",
}  # fmt: skip


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@dataclass
class RunRecord:
    """What the run has done so far; checkpoints carry it, so a resumed run reports the whole run."""

    losses: list[float] = field(default_factory=list)  # mean loss of each step
    skipped: list[dict] = field(default_factory=list)  # each unreadable video once, with its first step
    skip_events: int = 0  # unreadable videos met, counting repeats
    elapsed_before: float = 0.0  # seconds spent by earlier invocations
    t0: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t0)

    def add_skipped(self, bad: list[dict], step: int) -> list[dict]:
        """Count the unreadable videos of one micro-batch; returns those not seen before (to warn about)."""
        known = {b["video"] for b in self.skipped}
        new = []
        for b in bad:
            self.skip_events += 1
            if b["video"] not in known:
                known.add(b["video"])
                new.append({**b, "first_step": step + 1})
        self.skipped.extend(new)
        return new


# ------------------------------------------------------------------------------------ where to start


class StartKind(enum.Enum):
    FRESH = "fresh"  # step 0 in an empty (or emptied) OUT
    RESUME = "resume"  # from Start.checkpoint
    FINISHED = "finished"  # --resume of a run that already reached max_steps: nothing to do


@dataclass(frozen=True)
class Start:
    kind: StartKind
    checkpoint: Path | None = None  # set for RESUME
    note: str | None = None  # what to tell the user


def prepare_output(out: Path, cfg: TrainConfig, acc) -> Start:
    """Where this invocation starts; clears a previous run under ``overwrite`` and refuses to mix two runs.

    ``acc``: the accelerate ``Accelerator`` (only the main process deletes; every process looks first)."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            return Start(StartKind.FRESH, note=f"{out}: no checkpoint to resume from; starting from step 0")
        step = _read_state(ckpt)["step"]
        if step >= cfg.max_steps and (out / RUN_CONFIG).is_file():
            note = f"{out}: already trained to step {step} (max_steps {cfg.max_steps})"
            return Start(StartKind.FINISHED, ckpt, note)
        return Start(StartKind.RESUME, ckpt)
    existing = [p for p in (RUN_CONFIG, CKPT_DIR, "metrics.jsonl") if (out / p).exists()]
    acc.wait_for_everyone()  # every process has looked before the main one deletes anything
    if existing:
        if not cfg.overwrite:
            raise TrainError(
                f"{out} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
                "--overwrite to start over, or choose another --output"
            )
        if acc.is_main_process:
            for p in RUN_FILES:
                q = out / p
                shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
    acc.wait_for_everyone()
    return Start(StartKind.FRESH)


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint ``OUT/checkpoints/latest.json`` points to, None without a pointer."""
    pointer = out / CKPT_DIR / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (json.JSONDecodeError, KeyError) as e:
        raise TrainError(f"{pointer}: unreadable checkpoint pointer ({e}); remove it to start over") from e
    path = out / CKPT_DIR / name
    if not (path / "state.json").is_file():
        raise TrainError(f"{pointer} points to {path}, which is incomplete or missing")
    return path


def _read_state(path: Path) -> dict:
    try:
        return json.loads((path / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise TrainError(
            f"{path / 'state.json'}: not valid JSON ({e}); resume from another checkpoint"
        ) from e


# -------------------------------------------------------------------------------------- optimiser


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state_dict as (tensors for safetensors, JSON-able rest): ``state.<idx>.<key>`` tensors."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Restored:
    """A checkpoint read back and checked against this invocation's settings."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict  # an optimiser state_dict
    scheduler: dict
    scaler: dict | None
    record: RunRecord


class Checkpoints:
    """Writes and reads ``OUT/checkpoints`` for one run (fixed: settings, processes, data layout)."""

    def __init__(self, out: Path, cfg: TrainConfig, num_processes: int, per_epoch: int, global_bs: int):
        self.root, self.cfg, self.num_processes = out / CKPT_DIR, cfg, num_processes
        self.per_epoch, self.global_bs = per_epoch, global_bs

    def save(self, step: int, reason: str, trainable: dict, optimizer: dict, scheduler: dict,
             scaler: dict | None, record: RunRecord) -> Path:  # fmt: skip
        """Write ``step-NNNNNN`` whole, point latest.json at it, drop the oldest beyond keep_checkpoints."""
        name = f"step-{step:06d}"
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        atomic_save_safetensors(trainable, tmp / "trainable.safetensors", metadata={"step": str(step)})
        atomic_save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        atomic_write_json(tmp / "state.json", self._state(step, reason, opt_meta, scheduler, scaler, record))
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        atomic_write_json(self.root / "latest.json", {"dir": name, "step": step})
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir() and p.name != name)
        for old in done[: max(0, len(done) - (self.cfg.keep_checkpoints - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _state(self, step, reason, opt_meta, scheduler, scaler, record: RunRecord) -> dict:
        cfg = self.cfg
        return {
            "format": STATE_FORMAT,
            "step": step,
            "micro_batches_done": step * cfg.grad_accum,
            "epoch": (step * cfg.grad_accum) // self.per_epoch,
            "data_order": {"scheme": "permutation(seed, epoch)", "seed": cfg.seed,
                           "per_epoch": self.per_epoch, "global_batch": self.global_bs},
            "rng": {"scheme": "reseeded each step from (seed, step, rank)", "seed": cfg.seed,
                    "next_step": step},
            "optimizer": opt_meta,
            "scheduler": scheduler,
            "scaler": scaler,
            "skipped": record.skipped,
            "skip_events": record.skip_events,
            "losses": record.losses,
            "elapsed_s": record.elapsed(),
            "reason": reason,
            "config": cfg.to_dict(),
            "num_processes": self.num_processes,
        }  # fmt: skip

    def load(self, path: Path) -> Restored:
        """Read the checkpoint at ``path``; refuses one saved with other settings or another process count."""
        from safetensors.torch import load_file

        state = _read_state(path)
        old = state["config"]
        diffs = [
            f"{k}: {old.get(k)!r} -> {v!r}"
            for k, v in self.cfg.to_dict().items()
            if k not in RESUMABLE_CHANGES and old.get(k) != v
        ]
        if diffs:
            raise TrainError(
                f"{path}: cannot resume with different settings ({'; '.join(diffs)}); "
                "use the original settings or a new --output"
            )
        if state["num_processes"] != self.num_processes:
            raise TrainError(
                f"{path}: saved with {state['num_processes']} processes, resuming with {self.num_processes}; "
                "the data order would differ: resume with the same number of processes"
            )
        record = RunRecord(state["losses"], state["skipped"], state["skip_events"], state["elapsed_s"])
        opt = unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        trainable = load_file(str(path / "trainable.safetensors"))
        return Restored(int(state["step"]), trainable, opt, state["scheduler"], state.get("scaler"), record)


def load_trainable(
    params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor], path: Path
) -> None:
    """Copy a checkpoint's trainable tensors into ``params`` (name -> parameter); the names must match."""
    if set(tensors) != set(params):
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise TrainError(
            f"{path}: trainable weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n]))
