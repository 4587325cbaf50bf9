"""Training state on disk: the run record, checkpoints (no pickle), the latest pointer and resume checks.

    OUT/checkpoints/step-NNNNNN/  trainable.safetensors, optimizer.safetensors, state.json
    OUT/checkpoints/latest.json   {"dir": "step-NNNNNN", "step": N}: the newest complete checkpoint

A checkpoint is written aside and renamed into place whole, then the pointer moves to it, so a kill at any
moment leaves the previous checkpoint usable. Resume takes the newest complete step dir (the pointer is a
hint: a kill between a rename and the pointer write, or a deleted pointer, loses nothing), refuses changed
data or another base model (digests recorded in state.json), and never deletes a checkpoint newer than the
one it writes. Every step reseeds the RNGs from (seed, step, rank) and the
data order is a function of (seed, epoch), so resuming from a checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

import enum
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dna_vlm.files import (
    SafetensorsFileError,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    remove_path,
)
from dna_vlm.runs.config import RUN_CONFIG, RunError
from dna_vlm.runs.loading import identity_differences, verify_run_dir
from dna_vlm.train.config import TrainConfig, resumable_fields
from dna_vlm.train.distributed import shard_like
from dna_vlm.train.errors import TrainError

__all__ = [
    "BEST_DIR",
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
    "run_is_complete",
    "seed_all",
    "unflatten_optimizer",
]

CKPT_DIR = "checkpoints"
#: OUT/best/: the run dir (OUT's layout) of the --best-metric checkpoint's weights, written at the end
BEST_DIR = "best"
STATE_FORMAT = "dna-vlm-train-state/1"
#: what a previous run may have left in OUT; --overwrite deletes exactly these
RUN_FILES = (RUN_CONFIG, CKPT_DIR, "metrics.jsonl", "dna", "adapter", "projector.safetensors",
             "summary.json", "tensorboard", "wandb", BEST_DIR)  # fmt: skip
#: keys of TrainConfig that may differ between an interrupted run and its resumption
RESUMABLE_CHANGES = resumable_fields()
#: paths compared resolved, and by the identity of what they hold (a moved run dir / model / data resumes)
PATH_KEYS = ("model", "data", "output")
STEP_DIR = re.compile(r"^step-(\d+)$")


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
    cache_faults: list[str] = field(default_factory=list)  # "DIR: error" of a frame cache bypassed, once each
    best: dict | None = None  # {"metric", "value", "step"} of the best evaluation so far (--best-metric)
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

    def add_cache_faults(self, faults: list[str]) -> None:
        """Remember each frame-cache fault once (the cache was bypassed: frames decoded directly)."""
        self.cache_faults.extend(f for f in dict.fromkeys(faults) if f not in self.cache_faults)


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
        ckpt, note = latest_checkpoint(out)
        if ckpt is None:
            if (out / RUN_CONFIG).exists():
                raise TrainError(
                    f"{out} holds a finished run but no checkpoint to resume from ({out / CKPT_DIR} has none): "
                    "pass --overwrite to train it again from step 0, or choose another --output"
                )
            return Start(StartKind.FRESH, note=f"{out}: no checkpoint to resume from; starting from step 0")
        step = _read_state(ckpt)["step"]
        if step >= cfg.max_steps and run_is_complete(out, step):
            note = f"{out}: already trained to step {step} (max_steps {cfg.max_steps})"
            return Start(StartKind.FINISHED, ckpt, note)
        return Start(StartKind.RESUME, ckpt, note)
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
                remove_path(out / p)  # a symlink is removed, never followed
    acc.wait_for_everyone()
    return Start(StartKind.FRESH)


def run_is_complete(out: Path, step: int) -> bool:
    """Whether ``out`` holds the committed run dir of ``step`` (run_config.json of that step, manifest
    intact); False for a run dir whose finalisation was interrupted (resume then finalises again)."""
    try:
        return verify_run_dir(out).steps == step
    except RunError:
        return False


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """[(step, dir)] of the complete step dirs (renamed into place whole, with state.json), oldest first."""
    found = []
    for p in root.glob("step-*") if root.is_dir() else []:
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> tuple[Path | None, str | None]:
    """(the newest complete checkpoint in ``OUT/checkpoints`` or None, a note when the pointer
    ``latest.json`` was missing, unreadable or behind and the step dirs were scanned instead)."""
    root = out / CKPT_DIR
    dirs = _step_dirs(root)
    if not dirs:
        return None, None
    pointer, newest = root / "latest.json", dirs[-1][1]
    try:
        named = json.loads(pointer.read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = "missing" if not pointer.exists() else f"unreadable ({type(e).__name__})"
        return newest, f"{pointer} {why}: resuming from the newest complete checkpoint found, {newest.name}"
    if named != newest.name:
        return newest, f"{pointer} names {named}; the newest complete checkpoint is {newest.name}: using it"
    return newest, None


def _read_state(path: Path) -> dict:
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainError(
            f"{path / 'state.json'}: not valid JSON ({e}); delete {path} to resume from the previous checkpoint"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise TrainError(
            f"{path / 'state.json'}: no integer 'step'; delete {path} to resume from the previous"
        )
    return state


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

    def __init__(self, out: Path, cfg: TrainConfig, num_processes: int, per_epoch: int, global_bs: int,
                 identity: dict | None = None, sharding: str = "none"):  # fmt: skip
        """``identity``: {"model": base_identity, "data": dataset_identity} recorded and checked on resume;
        ``sharding``: how the model is spread (:data:`dna_vlm.train.distributed.SHARDINGS`), recorded only:
        the tensors are whole in every case, so a run resumes under another sharding."""
        self.root, self.cfg, self.num_processes = out / CKPT_DIR, cfg, num_processes
        self.per_epoch, self.global_bs, self.identity = per_epoch, global_bs, identity or {}
        self.sharding = sharding

    def save(self, step: int, reason: str, trainable: dict, optimizer: dict, scheduler: dict,
             scaler: dict | None, record: RunRecord) -> Path:  # fmt: skip
        """Write ``step-NNNNNN`` whole, point latest.json at it, drop the oldest beyond keep_checkpoints
        (never the best one, ``record.best``)."""
        name = f"step-{step:06d}"
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        remove_path(tmp)
        tmp.mkdir(parents=True)
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        atomic_save_safetensors(trainable, tmp / "trainable.safetensors", metadata={"step": str(step)})
        atomic_save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        atomic_write_json(tmp / "state.json", self._state(step, reason, opt_meta, scheduler, scaler, record))
        path = self.root / name
        remove_path(path)
        os.replace(tmp, path)
        atomic_write_json(self.root / "latest.json", {"dir": name, "step": step})
        best = (record.best or {}).get("step")  # the --best-metric checkpoint is kept besides
        older = [p for s, p in _step_dirs(self.root) if s < step and s != best]  # newer ones: never touched
        for old in older[: max(0, len(older) - (self.cfg.keep_checkpoints - 1))]:
            remove_path(old)
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
            "cache_faults": record.cache_faults,
            "best": record.best,
            "losses": record.losses,
            "elapsed_s": record.elapsed(),
            "reason": reason,
            "config": cfg.to_dict(),
            "identity": self.identity,
            "num_processes": self.num_processes,
            "sharding": self.sharding,
        }  # fmt: skip

    def load(self, path: Path) -> Restored:
        """Read the checkpoint at ``path``; refuses one saved with other settings, other data, another base
        model or another process count, and names the file of a damaged one."""
        state = _read_state(path)
        self._check_settings(path, state)
        if state["num_processes"] != self.num_processes:
            raise TrainError(
                f"{path}: saved with {state['num_processes']} processes, resuming with {self.num_processes}; "
                "the data order would differ: resume with the same number of processes"
            )
        record = RunRecord(state["losses"], state["skipped"], state["skip_events"], state["elapsed_s"],
                           cache_faults=state.get("cache_faults", []), best=state.get("best"))  # fmt: skip
        try:
            opt = unflatten_optimizer(load_safetensors(path / "optimizer.safetensors"), state["optimizer"])
            trainable = load_safetensors(path / "trainable.safetensors")
        except SafetensorsFileError as e:
            raise TrainError(
                f"{e}. Delete {path} to resume from the previous checkpoint, or restore the file"
            ) from None
        return Restored(int(state["step"]), trainable, opt, state["scheduler"], state.get("scaler"), record)

    def _check_settings(self, path: Path, state: dict) -> None:
        """Settings, paths (resolved) and identities (data, base model) must match the checkpoint's."""
        old, new = state["config"], self.cfg.to_dict()
        old = {**_field_defaults(), **old}  # a setting newer than the checkpoint: it ran with the default
        diffs = [
            f"{k}: {old.get(k)!r} -> {v!r}"
            for k, v in new.items()
            if k not in RESUMABLE_CHANGES and k not in PATH_KEYS and old.get(k) != v
        ]
        ident = state.get("identity") or {}
        for key, what in (("model", "base model"), ("data", "training data")):
            changed = _identity_changes(key, ident.get(key), self.identity.get(key))
            if changed:
                diffs.append(f"{what} {new[key]} changed since the checkpoint ({changed})")
            elif not ident.get(key) and _resolved(old.get(key)) != _resolved(new[key]):
                diffs.append(f"{key}: {old.get(key)!r} -> {new[key]!r}")
        if diffs:
            raise TrainError(
                f"{path}: cannot resume with different settings ({'; '.join(diffs)}); "
                "use the original settings and data, or a new --output"
            )


def _field_defaults() -> dict:
    """The plain defaults of :class:`TrainConfig`'s fields."""
    import dataclasses

    fields = dataclasses.fields(TrainConfig)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def _resolved(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _identity_changes(key: str, old: dict | None, new: dict | None) -> str:
    """Words for what differs between two recorded identities ('' when equal or unknown)."""
    if not old or not new:
        return ""
    if key == "model":
        return "; ".join(identity_differences(old, new))
    parts = []
    if old.get("rows") != new.get("rows"):
        parts.append(f"{old.get('rows')} rows then, {new.get('rows')} now")
    if old.get("ids_digest") != new.get("ids_digest"):
        parts.append("row ids differ")
    if old.get("file_digest") != new.get("file_digest"):
        parts.append("file content differs")
    return ", ".join(parts)


def load_trainable(
    params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor], path: Path
) -> None:
    """Copy a checkpoint's trainable tensors into ``params`` (name -> parameter); names and shapes must match."""
    if set(tensors) != set(params):
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise TrainError(
            f"{path}: trainable weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    bad = [f"{n}: {tuple(t.shape)} vs {tuple(params[n].shape)}" for n, t in tensors.items()
           if t.shape != params[n].shape]  # fmt: skip
    if bad:
        raise TrainError(f"{path}: trainable weights of another model size ({'; '.join(bad[:3])})")
    with torch.no_grad():
        for n, t in tensors.items():  # a sharded (FSDP) parameter takes its shard of the whole tensor
            params[n].copy_(shard_like(t.to(params[n].dtype), params[n]))
