"""The run dir's ``run_config.json``: its one schema (:class:`RunConfig`), one writer and one reader.

``dna-vlm train`` writes it last, so its presence marks a complete run dir; everything that loads a run
(:func:`dna_vlm.runs.loading.load_model`, the lmms-eval plugin via :func:`dna_vlm.runs.loading.read_run_config`) reads it
through :meth:`RunConfig.read`, which names the file and the field when something is wrong::

    {"format": "dna-vlm-run/1", "base_model": str, "attention": "dna"|"softmax", "num_frames": int,
     "dna_dir": "dna"|null, "adapter_dir": "adapter"|null, "projector": "projector.safetensors"|null, ...}

Only ``format``, ``base_model``, ``attention`` and ``num_frames`` are required: hand-made minimal run dirs
(a ``save_dna`` dir plus this file) load too; absent optional fields read as their defaults.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dna_vlm.files import atomic_write_json, read_json
from dna_vlm.options import ARMS

__all__ = ["ATTENTIONS", "RUN_CONFIG", "RUN_FORMAT", "RunConfig", "RunError", "run_config_path"]

RUN_FORMAT = "dna-vlm-run/1"
RUN_CONFIG = "run_config.json"
ATTENTIONS = ARMS
REQUIRED = ("format", "base_model", "attention", "num_frames")


class RunError(ValueError):
    """A run dir or a model-loading option is invalid; the message names the file/option."""


def run_config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RUN_CONFIG


@dataclass(frozen=True)
class RunConfig:
    """What evaluation needs to rebuild a trained model; paths of weights are relative to the run dir."""

    base_model: str  # hub id or absolute path of the model the run dir's weights apply to
    attention: str  # "dna" | "softmax"
    num_frames: int  # frames per video the run was trained with
    format: str = RUN_FORMAT
    dna_vlm_version: str | None = None
    tune: str | None = None  # "lora" | "full"
    trained_from: str | None = None  # the --model training started from
    dna_dir: str | None = None  # save_dna dir (DnA arm)
    adapter_dir: str | None = None  # PEFT adapter dir (tune="lora")
    projector: str | None = None  # projector weights (projector_mode="full")
    projector_mode: str | None = None  # "full" | "lora" | "frozen"
    projector_path: str | None = None  # module path of the projector in the base model
    frame_strategy: dict | None = None  # {"train": "segments", "eval": "uniform"}
    lora: dict | None = None  # {"rank", "alpha", "dropout"}
    dna: dict | None = (
        None  # DnAOptions.to_dict() the run patched with, whole (null: not patched, tune="full")
    )
    # what computed the vision attention (dna_vlm.patching.attention_kernel): "dna_vlm-sdpa" for the DnA arm
    # and the fair softmax control (same adapter layers and SDPA call; load the control with
    # patch(model, attention="softmax")), "hf-<attn_implementation>" for a stock model; null: not recorded
    attention_kernel: str | None = None
    load_in_4bit: bool = False
    dtype: str | None = None
    steps: int | None = None
    seed: int | None = None
    train_data: str | None = None
    extra: dict = field(default_factory=dict)  # the caller's TrainConfig.extra, as given
    # what the run was trained on: {"config_digest", "weights": {file: digest}} (dna_vlm.runs.loading.base_identity)
    base_identity: dict | None = None
    # the manifest, {path relative to the run dir: digest} of every weight / summary file (written last,
    # with this file): a load checks it, so a run dir is one complete write or an error
    files: dict | None = None

    def __post_init__(self):
        _validate({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "RunConfig")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Write ``run_dir/run_config.json`` atomically (temp + rename); returns its path."""
        path = run_config_path(run_dir)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike = RUN_CONFIG) -> RunConfig:
        """Validate ``data`` (the JSON object of ``source``, named in errors); unknown keys are ignored."""
        if not isinstance(data, dict):
            raise RunError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != RUN_FORMAT:
            raise RunError(
                f"{source}: format {data.get('format')!r}, expected {RUN_FORMAT!r} "
                "(written by another tool or another dna-vlm version; retrain, or fix the file)"
            )
        for key in REQUIRED:
            if key not in data:
                raise RunError(
                    f"{source}: missing field {key!r} (a run dir written by `dna-vlm train` has it)"
                )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        _validate(kwargs, str(source))
        return cls(**kwargs)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunConfig:
        """The validated ``run_dir/run_config.json``; :class:`RunError` names the file and what is wrong."""
        path = run_config_path(run_dir)
        data = read_json(
            path,
            RunError,
            missing=f"{run_dir} is not a dna-vlm run dir (the output of `dna-vlm train`)",
            damaged="the run dir is damaged: retrain or restore the file",
        )
        return cls.from_dict(data, path)


def _allowed(hint) -> tuple[type, ...]:
    """The runtime types a field annotation admits (``str | None`` -> (str, NoneType))."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    return (type(None),) if hint is type(None) else (typing.get_origin(hint) or hint,)


def _type_ok(value, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: only a bool field takes it
        return bool in allowed
    return isinstance(value, allowed)


def _validate(values: dict, source: str) -> None:
    """Check the fields present in ``values`` (types from the annotations, then value rules)."""
    hints = typing.get_type_hints(RunConfig)
    for name, value in values.items():
        allowed = _allowed(hints[name])
        if not _type_ok(value, allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise RunError(f"{source}: field {name!r} must be {names}, got {value!r}")
    rules = {
        "format": (lambda v: v == RUN_FORMAT, repr(RUN_FORMAT)),
        "base_model": (bool, "a model path or hub id"),
        "attention": (lambda v: v in ATTENTIONS, f"one of {ATTENTIONS}"),
        "num_frames": (lambda v: v >= 1, ">= 1"),
    }
    for name, (ok, expected) in rules.items():
        if name in values and not ok(values[name]):
            raise RunError(f"{source}: field {name!r} must be {expected}, got {values[name]!r}")
