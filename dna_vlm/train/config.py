"""``TrainConfig``: every training setting, defined once.

Each field carries its default, help text, allowed values and value check (:func:`option`); the
``dna-vlm train`` options are generated from the fields (:func:`add_arguments`) and parsed back without
copying fields by hand (:meth:`TrainConfig.from_args`). DnA's own option rules are checked by
:class:`dna_vlm.options.DnAOptions`, not repeated here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import MISSING, dataclass

from dna_vlm.options import ARMS, NEG_BRANCHES, DnAOptions

__all__ = [
    "DEFAULT_STEPS",
    "GROUPS",
    "TrainConfig",
    "add_arguments",
    "option",
    "resumable_fields",
    "total_steps",
]

#: the steps of a run that names neither --max-steps nor --epochs
DEFAULT_STEPS = 100

#: titles of the option groups of ``dna-vlm train --help``, in the order they are listed
GROUPS = {
    "io": "inputs and output",
    "arm": "arm: attention, tuning, LoRA, projector, DnA branch",
    "optim": "steps, batch and optimiser",
    "model": "model loading and precision",
    "run": "checkpoints, resuming, bad videos, seed, evaluation and data loading",
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    """A finite number (nan / inf are refused: they would reach the optimiser and JSON as NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: value checks a field may name: (predicate, what is expected)
CHECKS = {
    "path": (lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "", "a non-empty path"),
    "positive_int": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "count": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "positive": (lambda v: _is_num(v) and v > 0, "> 0"),
    "nonnegative": (lambda v: _is_num(v) and v >= 0, ">= 0"),
    "fraction": (lambda v: _is_num(v) and 0 <= v < 1, "in [0, 1)"),
    "mapping": (lambda v: isinstance(v, dict), "a dict"),
}


def option(
    default=MISSING,
    *,
    help: str,
    group: str,
    check: str | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    flag: str | None = None,
    env: str | None = None,
    cli: bool = True,
    resumable: bool = False,
    default_factory=MISSING,
):
    """A :class:`TrainConfig` field with what ``--help`` shows and what validation checks.

    ``check``: a key of :data:`CHECKS` (None passes when the default is None); ``shown``: the default as
    ``--help`` words it (else the value); ``flag``: the option string (else ``--field-name``); ``env``: an
    environment variable that overrides the default on the command line only; ``cli=False``: Python API only;
    ``resumable``: the field may differ between an interrupted run and its ``--resume`` (see
    :func:`resumable_fields`).
    """
    assert group in GROUPS and (check is None or check in CHECKS)
    meta = {"help": help, "group": group, "check": check, "choices": choices, "shown": shown}
    meta |= {"flag": flag, "env": env, "cli": cli, "resumable": resumable}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@dataclass
class TrainConfig:
    """Everything ``dna-vlm train`` takes; validated on construction (``ValueError`` naming the field)."""

    # -- inputs and output
    model: str = option(
        help="local model dir or hub id (e.g. the output of `dna-vlm tiny-model`)", group="io", check="path"
    )
    data: str = option(
        help="training data: the project's JSONL (id, video, question, options?, answer), LLaVA "
        "`conversations` or LLaMA-Factory sharegpt `messages` rows, as JSON / JSONL / parquet or a `datasets` "
        "save_to_disk folder (README, 'Bring your data')",
        group="io",
        check="path",
    )
    output: str = option(
        help="run dir to write (checkpoints, metrics, weights, run_config.json)", group="io", check="path"
    )
    data_format: str = option(
        "auto",
        choices=("auto", "qa", "llava", "sharegpt"),
        group="io",
        help="row format of --data / --eval-data: auto tells them apart row by row; qa: the project's rows",
    )
    video_root: str | None = option(
        None,
        check="path",
        group="io",
        shown="the data file's folder",
        help="folder relative video paths of --data / --eval-data start in",
    )
    check_data: bool = option(
        False,
        group="io",
        resumable=True,
        help="only validate --data / --eval-data (every row, videos present), print a summary and exit: no "
        "model is loaded (also: `dna-vlm check-data FILE`)",
    )
    # -- the arm
    attention: str = option(
        "dna",
        choices=ARMS,
        group="arm",
        help="dna: patch the vision tower with DnA; softmax: keep stock attention "
        "(the control arm, same LoRA budget)",
    )
    tune: str = option(
        "lora",
        choices=("lora", "full"),
        group="arm",
        help="lora: LoRA on the vision tower, LLM frozen; full: every weight of a stock model "
        "-> OUT/model (a stand-in pretrained checkpoint; needs --attention softmax)",
    )
    lora_rank: int = option(
        8, check="positive_int", group="arm", help="LoRA rank of the tower's linear layers"
    )
    lora_alpha: float = option(
        16.0, check="positive", group="arm", help="LoRA alpha (updates scaled by alpha/rank)"
    )
    lora_dropout: float = option(0.0, check="fraction", group="arm", help="dropout on the LoRA input")
    projector: str = option(
        "full",
        choices=("full", "lora", "frozen"),
        group="arm",
        help="full: train its weights; lora: LoRA on its linears; frozen: keep it",
    )
    neg_branch: str = option(
        "full",
        choices=NEG_BRANCHES,
        group="arm",
        help="DnA's negative branch: full (own Q-/V- maps, as in the paper) or lowrank "
        "(Q- = Q+ + BA, V- = BA; needs --neg-rank)",
    )
    neg_rank: int | None = option(None, group="arm", shown="none", help="rank of --neg-branch lowrank")
    shared_values: bool = option(False, group="arm", help="DnA ablation: V- = V+ (one value subspace)")
    dna_dtype: str = option(
        "float32",
        choices=("float32", "model"),
        group="arm",
        help="dtype of DnA's own parameters (lambda, Q-, V-): float32 master weights (cast to the model's "
        "dtype in the forward; in bf16 lambda would not move) or the model's dtype",
    )
    # -- steps, batch and optimiser
    max_steps: int | None = option(
        None,
        check="positive_int",
        group="optim",
        shown=f"{DEFAULT_STEPS} unless --epochs",
        help="optimiser steps of the whole run (give this or --epochs, not both)",
        resumable=True,
    )
    epochs: float | None = option(
        None,
        check="positive",
        group="optim",
        shown="none",
        help="passes over the training rows instead of --max-steps: steps = ceil(epochs x "
        "ceil(rows / (batch size x processes)) / grad accum); may be fractional",
        resumable=True,
    )
    batch_size: int = option(
        2, check="positive_int", group="optim", help="examples per micro-batch, per process"
    )
    grad_accum: int = option(1, check="positive_int", group="optim", help="micro-batches per optimiser step")
    lr: float = option(
        1e-4,
        check="positive",
        group="optim",
        help="peak learning rate (LoRA; and DnA / projector unless set below)",
    )
    dna_lr: float | None = option(
        None, check="positive", group="optim", shown="--lr", help="learning rate of the DnA branch"
    )
    projector_lr: float | None = option(
        None, check="positive", group="optim", shown="--lr", help="learning rate of the projector"
    )
    weight_decay: float = option(
        0.0,
        check="nonnegative",
        group="optim",
        help="AdamW weight decay (never on DnA's lambdas, biases or norms)",
    )
    lr_schedule: str = option(
        "cosine",
        choices=("constant", "linear", "cosine"),
        group="optim",
        help="learning-rate schedule after the warm-up",
    )
    warmup_steps: int = option(0, check="count", group="optim", help="steps of linear warm-up")
    max_grad_norm: float = option(
        1.0,
        check="nonnegative",
        group="optim",
        help="clip the total gradient norm to this (0 disables clipping)",
    )
    # -- the model: inputs, loading, precision
    num_frames: int = option(8, check="positive_int", group="model", help="frames sampled per video")
    seek: str = option(
        "exact",
        choices=("exact", "keyframe"),
        group="model",
        help="exact: the sampled frames; keyframe: the nearest keyframes (much faster on long videos; "
        "times move by up to half a keyframe interval, a whole one after the last keyframe)",
    )
    dtype: str = option(
        "float32",
        choices=("float32", "bfloat16", "float16"),
        group="model",
        help="dtype the model is loaded in",
    )
    device: str = option(
        "auto",
        choices=("auto", "cpu", "cuda"),
        group="model",
        help="auto: accelerate's choice (CUDA when available); cpu forces CPU (also under accelerate launch)",
        resumable=True,
    )
    load_in_4bit: bool = option(
        False, group="model", help="quantize the LLM to 4-bit (bitsandbytes); the tower stays full"
    )
    mixed_precision: str = option(
        "no",
        choices=("no", "bf16", "fp16"),
        group="model",
        env="ACCELERATE_MIXED_PRECISION",
        help="autocast precision; on the command line the default follows "
        "`accelerate launch --mixed_precision`",
    )
    gradient_checkpointing: bool = option(False, group="model", help="on the vision tower (less memory)")
    attn_implementation: str | None = option(
        None, group="model", shown="the model's", help="passed to from_pretrained (e.g. sdpa, eager)"
    )
    trust_remote_code: bool = option(False, group="model", help="allow the model repo's own code")
    # -- checkpoints, resuming, bad videos, seed, evaluation, data loading
    save_every: int = option(
        0,
        check="count",
        group="run",
        help="checkpoint every N steps (0: only at the end, on interrupt and on failure)",
        resumable=True,
    )
    keep_checkpoints: int = option(
        1, check="positive_int", group="run", help="step checkpoints kept", resumable=True
    )
    resume: bool = option(False, group="run", help="continue from OUT's latest checkpoint", resumable=True)
    overwrite: bool = option(False, group="run", help="delete a previous run in OUT first", resumable=True)
    stop_after: int | None = option(
        None,
        check="positive_int",
        group="run",
        shown="run to --max-steps",
        help="stop (with a checkpoint) after N steps in this invocation",
        resumable=True,
    )
    bad_video: str = option(
        "skip",
        choices=("skip", "fail"),
        group="run",
        help="an unreadable video: skip (count and list it) or fail (checkpoint, then stop naming the file)",
        resumable=True,
    )
    seed: int = option(0, check="count", group="run", help="seed of data order, frames and initialisation")
    eval_data: str | None = option(
        None,
        check="path",
        group="run",
        shown="none",
        help="validation JSONL: answer loss logged at the end (and --eval-every)",
        resumable=True,
    )
    eval_every: int = option(
        0, check="count", group="run", help="evaluate every N steps (0: only at the end)", resumable=True
    )
    best_metric: str = option(
        "none",
        choices=("none", "accuracy", "loss"),
        group="run",
        help="keep the best evaluation's checkpoint by eval accuracy (higher wins) or eval loss (lower "
        "wins): never deleted by --keep-checkpoints, exported as OUT/best/ (a run dir) at the end; "
        "needs --eval-data",
    )
    report_to: str = option(
        "none",
        choices=("none", "tensorboard", "wandb"),
        group="run",
        help="also log the metrics through accelerate's trackers: tensorboard (OUT/tensorboard) or "
        "wandb (files under OUT/wandb; WANDB_MODE=offline keeps them local); metrics.jsonl is always written",
        resumable=True,
    )
    num_workers: int = option(
        0, check="count", group="run", help="data loader processes decoding videos", resumable=True
    )
    prefetch: int = option(
        0,
        check="count",
        group="run",
        help="micro-batches decoded ahead by a background thread while the model computes (0: none)",
        resumable=True,
    )
    frame_cache: str | None = option(
        None,
        check="path",
        group="run",
        shown="none",
        help="directory of an on-disk frame cache shared by runs (decode each video once for all arms)",
        resumable=True,
    )
    frame_memory_mb: float = option(
        512.0,
        check="nonnegative",
        group="run",
        help="MiB of decoded frames kept in memory per loader process: a draw that lands on frames decoded "
        "before (every epoch for clips no longer than --num-frames) is not decoded again (0: off)",
        resumable=True,
    )
    progress: bool = option(
        True, group="run", flag="--no-progress", shown="shown", help="hide the progress bar", resumable=True
    )
    extra: dict = option(  # noqa: RUF009 (option() is a dataclasses.field)
        default_factory=dict,
        group="run",
        check="mapping",
        cli=False,
        help="free-form values recorded in run_config.json",
        resumable=True,
    )

    def dna_options(self) -> DnAOptions:
        """The :class:`DnAOptions` this run patches with (the arm, and the DnA arm's negative branch)."""
        if self.attention == "softmax":
            return DnAOptions(attention="softmax")
        return DnAOptions(
            neg_branch=self.neg_branch, neg_rank=self.neg_rank, shared_values=self.shared_values
        )

    def __post_init__(self):
        for f in dataclasses.fields(self):
            self._check_field(f)
        try:  # the DnA branch's own rules (neg_rank only with lowrank, ...): one place, DnAOptions
            self.dna_options()
        except ValueError as e:
            raise ValueError(f"TrainConfig: {e}") from None
        if self.attention == "softmax" and (self.neg_branch != "full" or self.shared_values):
            raise ValueError("TrainConfig: neg_branch / shared_values apply only to attention='dna'")
        if self.tune == "full" and (self.attention != "softmax" or self.load_in_4bit):
            raise ValueError(
                "TrainConfig.tune='full' trains every weight of a stock model into a new checkpoint: "
                "use attention='softmax' without load_in_4bit (then patch / LoRA-tune that checkpoint)"
            )
        if self.resume and self.overwrite:
            raise ValueError("TrainConfig: resume and overwrite exclude each other")
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                f"TrainConfig: max_steps ({self.max_steps}) and epochs ({self.epochs}) both set: "
                "give one of them (--max-steps or --epochs)"
            )
        if self.best_metric != "none" and self.eval_data is None:
            raise ValueError(
                f"TrainConfig.best_metric={self.best_metric!r} needs eval_data (--eval-data, the validation "
                "rows it is measured on)"
            )

    def _check_field(self, f: dataclasses.Field) -> None:
        value, choices, check = getattr(self, f.name), f.metadata["choices"], f.metadata["check"]
        if choices is not None and value not in choices:
            raise ValueError(f"TrainConfig.{f.name}={value!r}: expected one of {choices}")
        if check is None or (value is None and f.default is None):
            return
        ok, expected = CHECKS[check]
        if not ok(value):
            expected += " or None" if f.default is None else ""
            raise ValueError(f"TrainConfig.{f.name} must be {expected}, got {value!r}")
        if check == "path":
            setattr(self, f.name, str(value))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of parsed ``dna-vlm train`` options (see :func:`add_arguments`)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.metadata["cli"]})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, in field order and :data:`GROUPS`, each with its help
    text and default (``--help`` shows both); ``dest`` is the field name: :meth:`TrainConfig.from_args`."""
    hints = typing.get_type_hints(TrainConfig)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["cli"]:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            groups[f.metadata["group"]].add_argument(flag, dest=f.name, **_argument(f, hints[f.name]))


def _argument(f: dataclasses.Field, hint) -> dict:
    """``add_argument`` keywords of field ``f``: type, action, choices, default and the help text."""
    meta, help = f.metadata, f.metadata["help"].replace("%", "%%")
    if f.default is MISSING and f.default_factory is MISSING:
        return {"required": True, "help": help + " (required)"}
    shown = meta["shown"].replace("%", "%%") if meta["shown"] else None
    if hint is bool:
        on = not f.default  # the flag turns the setting on (store_true) or off (--no-x, store_false)
        return {
            "action": "store_true" if on else "store_false",
            "help": f"{help} (default: {shown or 'off'})",
        }
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    default = (os.environ.get(meta["env"]) or f.default) if meta["env"] else f.default
    kw = {"type": kinds[0], "default": default, "help": f"{help} (default: {shown or '%(default)s'})"}
    if meta["choices"]:
        kw["choices"] = meta["choices"]
    return kw


def total_steps(cfg: TrainConfig, n_rows: int, num_processes: int) -> int:
    """The run's optimiser steps: ``max_steps``, else ``epochs`` passes over ``n_rows`` training rows
    (micro-batches of ``batch_size`` per process, ``grad_accum`` of them a step; at least one step), else
    :data:`DEFAULT_STEPS`."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if cfg.epochs is None:
        return DEFAULT_STEPS
    per_epoch = math.ceil(n_rows / (cfg.batch_size * num_processes))  # micro-batches of one pass
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum - 1e-9))


def resumable_fields() -> frozenset[str]:
    """The :class:`TrainConfig` fields that may change when a run is resumed (``option(resumable=True)``)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))
