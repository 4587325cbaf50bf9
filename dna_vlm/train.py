"""``dna-vlm train``: LoRA-tune the encoder -> projector path of a video LLM, with DnA or stock attention.

Flow: JSONL rows (:func:`dna_vlm.data.load_dataset`) -> frames (:func:`dna_vlm.video.sample_frames`,
``"segments"``) -> the model's own processor (:func:`dna_vlm.prompting.build_inputs`) -> an accelerate loop
over a DnA-patched (or stock, ``attention="softmax"``, the control arm with the same LoRA budget),
PEFT-wrapped model -> checkpoints -> the run dir (contract 5)::

    OUT/run_config.json          what evaluation needs (base model, arm, adapter/DnA/projector, frames)
    OUT/dna/                     save_dna (DnA arm): negative branches + lambdas
    OUT/adapter/                 PEFT LoRA adapter (safetensors): vision tower (+ projector with --projector lora)
    OUT/projector.safetensors    projector weights (--projector full)
    OUT/summary.json             trainable parameters by group, steps, losses, skipped videos, time
    OUT/metrics.jsonl            one JSON line per step (loss, lr, grad_norm, lambda, skipped, time) + eval
    OUT/checkpoints/step-NNNNNN/ trainable.safetensors, optimizer.safetensors, state.json (no pickle)
    OUT/checkpoints/latest.json  the newest complete checkpoint

What trains: LoRA on the vision tower's linear layers (q/k/v/out/fc1/fc2; never DnA's ``neg.*``), the DnA
negative branches fully, and the projector (full, LoRA or frozen). The LLM is frozen (optionally 4-bit).
Data order is a function of (seed, epoch) and every step reseeds the RNGs from (seed, step, rank), so a run
resumed from a checkpoint reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import atomic_save_safetensors, atomic_write_json
from .runs import RUN_FORMAT, RunError

__all__ = ["TrainConfig", "TrainError", "TrainInterrupted", "lora_target_modules", "train"]

CHOICES = {
    "tune": ("lora", "full"),
    "attention": ("dna", "softmax"),
    "projector": ("full", "lora", "frozen"),
    "neg_branch": ("full", "lowrank"),
    "mixed_precision": ("no", "bf16", "fp16"),
    "bad_video": ("skip", "fail"),
    "lr_schedule": ("constant", "linear", "cosine"),
    "dtype": ("float32", "bfloat16", "float16"),
    "device": ("auto", "cpu", "cuda"),
}
#: leaf names of the vision tower's linear layers LoRA adapts (attention q/k/v/out + MLP), across families
TOWER_LINEARS = (
    "q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "qkv", "proj", "fc1", "fc2",
    "linear_fc1", "linear_fc2", "up_proj", "down_proj", "gate_proj",
)  # fmt: skip
CKPT_DIR = "checkpoints"


class TrainError(RuntimeError):
    """Training stopped for a reason the user must act on (the message says what and where)."""


class TrainInterrupted(TrainError):
    """Stopped by a signal (SIGINT/SIGTERM) or ``stop_after``; a checkpoint was saved: rerun with resume."""


@dataclass
class TrainConfig:
    """Everything ``dna-vlm train`` takes; validated on construction."""

    model: str
    data: str
    output: str
    attention: str = "dna"
    tune: str = "lora"  # "full": every weight of a stock model (makes a stand-in pretrained checkpoint)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    projector: str = "full"
    neg_branch: str = "full"
    neg_rank: int | None = None
    shared_values: bool = False
    max_steps: int = 100
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-4
    dna_lr: float | None = None  # default: lr
    projector_lr: float | None = None  # default: lr
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    num_frames: int = 8
    dtype: str = "float32"
    device: str = "auto"  # auto: accelerate's choice (CUDA when available)
    load_in_4bit: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    save_every: int = 0  # 0: only at the end (and on interrupt / failure)
    keep_checkpoints: int = 1
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in this invocation
    bad_video: str = "skip"
    seed: int = 0
    eval_data: str | None = None
    eval_every: int = 0  # 0: only at the end (when eval_data is given)
    num_workers: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in run_config.json

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("model", "data", "output"):
            if not isinstance(getattr(self, name), (str, os.PathLike)) or not str(getattr(self, name)):
                raise ValueError(f"TrainConfig.{name} must be a non-empty path, got {getattr(self, name)!r}")
            setattr(self, name, str(getattr(self, name)))
        positive = ("lora_rank", "max_steps", "batch_size", "grad_accum", "num_frames", "keep_checkpoints")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("save_every", "warmup_steps", "eval_every", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("dna_lr", "projector_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0 or None, got {getattr(self, name)!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TrainConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("TrainConfig.weight_decay and max_grad_norm must be >= 0")
        if self.neg_branch == "lowrank" and (self.neg_rank is None or self.neg_rank < 1):
            raise ValueError("TrainConfig.neg_branch='lowrank' needs neg_rank >= 1")
        if self.neg_branch == "full" and self.neg_rank is not None:
            raise ValueError("TrainConfig.neg_rank is only used with neg_branch='lowrank'")
        if self.attention == "softmax" and (self.neg_branch != "full" or self.shared_values):
            raise ValueError("TrainConfig: neg_branch / shared_values apply only to attention='dna'")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"TrainConfig.stop_after must be >= 1 or None, got {self.stop_after!r}")
        if self.tune == "full" and (self.attention != "softmax" or self.load_in_4bit):
            raise ValueError(
                "TrainConfig.tune='full' trains every weight of a stock model into a new checkpoint: "
                "use attention='softmax' without load_in_4bit (then patch / LoRA-tune that checkpoint)"
            )
        if self.resume and self.overwrite:
            raise ValueError("TrainConfig: resume and overwrite exclude each other")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- model


def _tower_paths(model: nn.Module) -> tuple[list[str], str | None]:
    from .runs import find_projector, find_towers

    towers = [p for p, _ in find_towers(model)]
    proj = find_projector(model)
    return towers, (proj[0] if proj else None)


def lora_target_modules(model: nn.Module, projector: str = "full") -> str:
    """A PEFT ``target_modules`` regex naming exactly the vision tower's linear layers (q/k/v/out/fc1/fc2 and
    the like; never DnA's ``neg.*``), plus the projector's linears when ``projector == "lora"``."""
    towers, proj_path = _tower_paths(model)
    names = []
    for full_name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = full_name.split(".")
        tower = next((t for t in towers if t == "" or full_name.startswith(t + ".")), None)
        if tower is not None:
            rel = full_name[len(tower) + 1 :] if tower else full_name
            if parts[-1] in TOWER_LINEARS and "neg" not in rel.split(".") and not rel.startswith("head."):
                names.append(full_name)
        elif projector == "lora" and proj_path and full_name.startswith(proj_path + "."):
            names.append(full_name)
    if not names:
        raise TrainError(f"found no linear layers to LoRA-adapt in the vision tower(s) {towers}")
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _enable_checkpointing(base: nn.Module, towers: list[str], cfg: TrainConfig) -> None:
    """Gradient checkpointing on the vision tower(s) only (the frozen LLM stores no activations anyway)."""
    if not cfg.gradient_checkpointing:
        return
    for path in towers:
        tower = base.get_submodule(path)
        kwargs = {"use_reentrant": False}
        if hasattr(tower, "activation_checkpointing_enable"):  # transformers >= 5.x name
            tower.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(tower, "gradient_checkpointing_enable"):
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            raise TrainError(
                f"the vision tower {path} ({type(tower).__name__}) has no gradient checkpointing"
            )


def _load_frozen(cfg: TrainConfig, device: torch.device):
    """(model, processor, patch report or None): the base model with every weight frozen, then DnA-patched
    when ``attention="dna"``; :func:`_build_model` decides what trains."""
    from .patching import patch
    from .runs import load_base_model

    model, processor = load_base_model(
        cfg.model,
        device=device if cfg.load_in_4bit else "cpu",
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        load_in_4bit=cfg.load_in_4bit,
        trust_remote_code=cfg.trust_remote_code,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    report = None
    if cfg.attention == "dna":
        report = patch(
            model, neg_branch=cfg.neg_branch, neg_rank=cfg.neg_rank, shared_values=cfg.shared_values
        )
    return model, processor, report


def _unfreeze_dna_and_projector(
    base: nn.Module, cfg: TrainConfig, proj_path: str | None
) -> tuple[set[int], set[int]]:
    """Unfreeze DnA's negative branches and (``projector="full"``) the projector; returns the ids of the
    DnA parameters and of the projector's trainable ones (which include its LoRA under ``projector="lora"``)."""
    from .patching import dna_parameters

    dna_ids = set()
    if cfg.attention == "dna":
        for p in dna_parameters(base):
            p.requires_grad_(True)
            dna_ids.add(id(p))
    proj_ids = set()
    if proj_path is not None:
        for p in base.get_submodule(proj_path).parameters():
            if cfg.projector == "full":
                p.requires_grad_(True)
            if p.requires_grad:
                proj_ids.add(id(p))
    return dna_ids, proj_ids


def _group_trainable(model: nn.Module, dna_ids: set[int], proj_ids: set[int]) -> dict:
    """Trainable parameters by optimiser group ("lora", "dna", "projector"); anything else is a bug."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"lora": [], "dna": [], "projector": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in dna_ids:
            groups["dna"].append((n, p))
        elif id(p) in proj_ids and "lora_" not in n:  # the projector's own LoRA counts as "lora"
            groups["projector"].append((n, p))
        elif "lora_" in n:
            groups["lora"].append((n, p))
        else:
            raise TrainError(f"unexpected trainable parameter {n}")
    return groups


def _build_model(cfg: TrainConfig, device: torch.device):
    """(model, processor, groups -> [(name, param)], patch report, projector path).

    LoRA: a PEFT model with groups "lora", "dna", "projector". Full: the plain model, one group "full"."""
    from peft import LoraConfig, get_peft_model

    model, processor, report = _load_frozen(cfg, device)
    towers, proj_path = _tower_paths(model)
    if cfg.tune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        _enable_checkpointing(model, towers, cfg)
        return model, processor, {"full": list(model.named_parameters())}, report, proj_path
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(model, cfg.projector),
        bias="none",
    )
    model = get_peft_model(model, lora)
    base = model.get_base_model()
    dna_ids, proj_ids = _unfreeze_dna_and_projector(base, cfg, proj_path)
    _enable_checkpointing(base, towers, cfg)
    return model, processor, _group_trainable(model, dna_ids, proj_ids), report, proj_path


def _param_summary(groups, model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    out = {g: {"tensors": len(v), "params": sum(p.numel() for _, p in v)} for g, v in groups.items()}
    out["trainable"] = sum(v["params"] for v in out.values())
    out["total"] = total
    return out


def _format_summary(s: dict) -> str:
    rows = [
        f"  {g:<10} {s[g]['params']:>12,} params in {s[g]['tensors']:>4} tensors"
        for g in ("lora", "dna", "projector", "full")
        if g in s
    ]
    pct = 100.0 * s["trainable"] / max(s["total"], 1)
    return "\n".join(
        [
            "trainable parameters:",
            *rows,
            f"  {'total':<10} {s['trainable']:>12,} of {s['total']:,} ({pct:.3f}%)",
        ]
    )


# ---------------------------------------------------------------------------------------------- data


def _mix(*xs: int) -> int:
    return int(np.random.SeedSequence([int(x) for x in xs]).generate_state(1)[0])


class _MicroBatches(torch.utils.data.Dataset):
    """Micro-batch number g -> this process's rows, frames and processor batch (deterministic in g)."""

    def __init__(self, examples, processor, cfg: TrainConfig, rank: int, world: int, strategy="segments"):
        self.examples, self.processor, self.cfg = examples, processor, cfg
        self.rank, self.world, self.strategy = rank, world, strategy
        self.n = len(examples)
        self.global_bs = cfg.batch_size * world
        self.per_epoch = max(1, math.ceil(self.n / self.global_bs))
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # unbounded in principle; the sampler decides
        return 1 << 62

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng(_mix(self.cfg.seed, epoch)).permutation(self.n)}
        return self._perm[epoch]

    def rows(self, g: int) -> tuple[int, list[int]]:
        epoch, pos = divmod(g, self.per_epoch)
        perm = self.perm(epoch)
        start = pos * self.global_bs + self.rank * self.cfg.batch_size
        return epoch, [int(perm[(start + i) % self.n]) for i in range(self.cfg.batch_size)]

    def _frames(self, idx: int, epoch: int):
        from .video import sample_frames

        ex = self.examples[idx]
        seed = _mix(self.cfg.seed, epoch, idx) if self.strategy == "segments" else None
        return sample_frames(ex.video, num_frames=self.cfg.num_frames, strategy=self.strategy, seed=seed)

    def __getitem__(self, g: int) -> dict:
        from .video import VideoError

        epoch, rows = self.rows(g)
        good, bad = [], []
        tries = list(rows)
        extra = 0
        while tries:
            idx = tries.pop(0)
            try:
                good.append((idx, self._frames(idx, epoch)))
            except (VideoError, OSError) as e:
                ex = self.examples[idx]
                bad.append({"id": ex.id, "video": ex.video, "source": ex.source, "error": str(e)})
                if self.cfg.bad_video == "fail":
                    return {"g": g, "batch": None, "bad": bad, "rows": rows}
            if not tries and not good and extra < self.n:  # every row bad: draw the next ones in order
                _, nxt = self.rows(g + 1 + extra // self.cfg.batch_size)
                tries.append(nxt[extra % self.cfg.batch_size])
                extra += 1
        if not good:
            raise TrainError(
                f"no readable video in {self.cfg.data}: every row failed to decode ({bad[:2]} ...)"
            )
        return {"g": g, "batch": self._batch(good), "bad": bad, "rows": [i for i, _ in good]}

    def _batch(self, good):
        from .prompting import build_inputs, format_question

        exs = [self.examples[i] for i, _ in good]
        return build_inputs(
            self.processor,
            [f for _, f in good],
            [format_question(e.question, e.options) for e in exs],
            [e.answer for e in exs],
        )


def _identity(x):
    return x


class _Range(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _loader(ds: _MicroBatches, start: int, stop: int, num_workers: int):
    return torch.utils.data.DataLoader(
        ds,
        sampler=_Range(start, stop),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        persistent_workers=False,
    )


def _to_device(batch, device, float_dtype):
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(float_dtype)
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------- checkpoints


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _latest_checkpoint(out: Path) -> Path | None:
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


# Keys of TrainConfig that may differ between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {
    "max_steps", "resume", "overwrite", "stop_after", "save_every", "keep_checkpoints", "progress",
    "num_workers", "eval_data", "eval_every", "bad_video", "extra", "device",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- train


def _optimizer_groups(groups: dict, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: one learning rate per trainable group, and no weight decay on DnA's
    ``neg_scale`` (the lambdas) nor on biases / norms (``ndim <= 1``)."""
    lrs = {
        "lora": cfg.lr,
        "dna": cfg.dna_lr or cfg.lr,
        "projector": cfg.projector_lr or cfg.lr,
        "full": cfg.lr,
    }
    param_groups = []
    for g in ("lora", "dna", "projector", "full"):
        if not groups.get(g):
            continue
        decay = [p for n, p in groups[g] if not n.endswith("neg_scale") and p.ndim > 1]
        no_decay = [p for n, p in groups[g] if n.endswith("neg_scale") or p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr": lrs[g], "weight_decay": wd, "name": g})
    if not param_groups:
        raise TrainError("nothing to train: no LoRA, DnA or projector parameters are trainable")
    return param_groups


class _Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.stop_signal: str | None = None

    # -- helpers ------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, file=sys.stderr, flush=True)

    def lr_factor(self, step: int) -> float:
        c = self.cfg
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.lr_schedule == "constant":
            return 1.0
        span = max(1, c.max_steps - c.warmup_steps)
        frac = min(1.0, (step - c.warmup_steps) / span)
        return 1.0 - frac if c.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    def lambda_mean(self) -> float | None:
        from .patching import dna_layers

        vals = [layer.neg.neg_scale.detach().float().abs().mean() for _, layer in dna_layers(self.model)]
        return float(torch.stack(vals).mean()) if vals else None

    def trainable_state(self) -> dict[str, torch.Tensor]:
        m = self.acc.unwrap_model(self.model)
        return {n: p.detach() for n, p in m.named_parameters() if p.requires_grad}

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, reason: str) -> Path | None:
        self.acc.wait_for_everyone()
        tensors = self.trainable_state()
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer.state_dict())
        path = None
        if self.acc.is_main_process:
            root = self.out / CKPT_DIR
            name = f"step-{step:06d}"
            tmp = root / f".{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            atomic_save_safetensors(tensors, tmp / "trainable.safetensors", metadata={"step": str(step)})
            atomic_save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
            state = {
                "format": "dna-vlm-train-state/1",
                "step": step,
                "micro_batches_done": step * self.cfg.grad_accum,
                "epoch": (step * self.cfg.grad_accum) // self.ds.per_epoch,
                "data_order": {"scheme": "permutation(seed, epoch)", "seed": self.cfg.seed,
                               "per_epoch": self.ds.per_epoch, "global_batch": self.ds.global_bs},
                "rng": {"scheme": "reseeded each step from (seed, step, rank)", "seed": self.cfg.seed,
                        "next_step": step},
                "optimizer": opt_meta,
                "scheduler": self.scheduler.state_dict(),
                "scaler": (self.acc.scaler.state_dict() if getattr(self.acc, "scaler", None) else None),
                "skipped": self.skipped,
                "skip_events": self.skip_events,
                "losses": self.losses,
                "elapsed_s": self.elapsed(),
                "reason": reason,
                "config": self.cfg.to_dict(),
                "num_processes": self.acc.num_processes,
            }  # fmt: skip
            atomic_write_json(tmp / "state.json", state)
            path = root / name
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
            atomic_write_json(root / "latest.json", {"dir": name, "step": step})
            done = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
            for old in done[: max(0, len(done) - (self.cfg.keep_checkpoints - 1))]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> int:
        from safetensors.torch import load_file

        state = json.loads((path / "state.json").read_text())
        old = state["config"]
        diffs = [
            f"{k}: {old.get(k)!r} -> {v!r}"
            for k, v in self.cfg.to_dict().items()
            if k not in _RESUMABLE_CHANGES and old.get(k) != v
        ]
        if diffs:
            raise TrainError(
                f"{path}: cannot resume with different settings ({'; '.join(diffs)}); "
                "use the original settings or a new --output"
            )
        if state["num_processes"] != self.acc.num_processes:
            raise TrainError(
                f"{path}: saved with {state['num_processes']} processes, resuming with {self.acc.num_processes}; "
                "the data order would differ: resume with the same number of processes"
            )
        tensors = load_file(str(path / "trainable.safetensors"))
        m = self.acc.unwrap_model(self.model)
        params = {n: p for n, p in m.named_parameters() if p.requires_grad}
        if set(tensors) != set(params):
            missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
            raise TrainError(
                f"{path}: trainable weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t.to(params[n]))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        self.optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and getattr(self.acc, "scaler", None):
            self.acc.scaler.load_state_dict(state["scaler"])
        self.skipped, self.skip_events = state["skipped"], state["skip_events"]
        self.losses = state["losses"]
        self.elapsed_before = state["elapsed_s"]
        return int(state["step"])

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t0)

    # -- metrics ------------------------------------------------------------------------------------
    def open_metrics(self, resume_step: int) -> None:
        self.metrics_path = self.out / "metrics.jsonl"
        if not self.acc.is_main_process:
            return
        if resume_step == 0:
            self.metrics_path.write_text("")
        elif self.metrics_path.exists():  # drop lines logged after the checkpoint we resume from
            keep = []
            for line in self.metrics_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            self.metrics_path.write_text("".join(x + "\n" for x in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step + 1)
        except Exception:  # tensorboard not installed
            self.tb = None

    def write_metrics(self, rec: dict) -> None:
        if not self.acc.is_main_process:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and v is not None:
                    self.tb.add_scalar(f"train/{k}" if not k.startswith("eval") else k, v, rec["step"])

    # -- signals ------------------------------------------------------------------------------------
    def install_signals(self):
        self._old = {}

        def handler(signum, frame):
            if self.stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._old[sig] = signal.signal(sig, handler)

    def restore_signals(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)

    # -- eval ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.eval_examples:
            return None
        self.model.eval()
        ds = _MicroBatches(
            self.eval_examples, self.processor, dataclasses.replace(self.cfg, bad_video="skip"),
            self.acc.process_index, self.acc.num_processes, strategy="uniform",
        )  # fmt: skip
        total, count = torch.zeros((), device=self.acc.device), torch.zeros((), device=self.acc.device)
        n_batches = math.ceil(len(self.eval_examples) / ds.global_bs)
        for g in range(n_batches):
            item = ds[g]
            batch = _to_device(item["batch"], self.acc.device, self.float_dtype)
            out = self.model(**batch)
            n = (batch["labels"][:, 1:] != -100).sum()
            total += out.loss.float() * n
            count += n
        self.train_mode()
        total, count = self.acc.reduce(total, "sum"), self.acc.reduce(count, "sum")
        return float(total / count.clamp(min=1))

    def train_mode(self):
        self.model.train()
        if self.cfg.tune == "full":
            return
        lm = getattr(self.acc.unwrap_model(self.model).get_base_model(), "model", None)
        lm = getattr(lm, "language_model", None)
        if lm is not None:
            lm.eval()  # frozen: no dropout

    # -- main ---------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        self.start_accelerator()
        examples = self.load_examples()
        ckpt = self.prepare_output()
        if ckpt == "done":
            return self.out
        _seed_all(cfg.seed)  # before building: DnA / LoRA initialisation draws from it
        self.setup_model(examples)
        step = 0
        if isinstance(ckpt, Path):
            step = self.load_checkpoint(ckpt)
            self.log(f"resuming from {ckpt} (step {step})")
        self.open_metrics(step)
        if self.acc.is_main_process:
            atomic_write_json(self.out / "train_config.json", cfg.to_dict())
        self.install_signals()
        try:
            step = self.loop(step)
        finally:
            self.restore_signals()
            if getattr(self, "tb", None) is not None:
                self.tb.close()
        eval_loss = self.evaluate()
        if eval_loss is not None:
            self.write_metrics({"step": step, "eval_loss": eval_loss})
            self.log(f"eval loss at step {step}: {eval_loss:.4f}")
        self.save_checkpoint(step, "final")
        self.finalize(step, eval_loss)
        return self.out

    def start_accelerator(self) -> None:
        """The accelerator, the clock and the empty run record (a resume overwrites the record)."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.cfg
        use_cpu = cfg.device == "cpu" or not torch.cuda.is_available()  # torchrun on CPU: gloo, MULTI_CPU
        self.acc = Accelerator(
            cpu=use_cpu,
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.t0, self.elapsed_before = time.time(), 0.0
        self.skipped: list[dict] = []
        self.skip_events = 0
        self.losses: list[float] = []

    def load_examples(self) -> list:
        """The training rows (and sets ``eval_examples``); read before touching OUT so bad data fails early."""
        from .data import load_dataset

        cfg = self.cfg
        examples = load_dataset(cfg.data)  # malformed rows fail here with file:line
        if not examples:
            raise TrainError(f"{cfg.data}: the dataset is empty")
        self.eval_examples = load_dataset(cfg.eval_data) if cfg.eval_data else []
        return examples

    def setup_model(self, examples: list) -> None:
        """Build the model and optimiser, hand them to accelerate, and set up this process's data."""
        cfg = self.cfg
        model, self.processor, groups, report, self.proj_path = _build_model(cfg, self.acc.device)
        self.summary = _param_summary(groups, model)
        self.log(_format_summary(self.summary))
        if report is not None:
            self.log(f"DnA: {len(report.modules)} attention modules patched ({report.family}), "
                     f"{report.params_added:,} parameters added")  # fmt: skip
        optimizer = torch.optim.AdamW(
            _optimizer_groups(groups, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self.lr_factor(s))
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.float_dtype = next(p.dtype for p in self.trainable)
        self.ds = _MicroBatches(examples, self.processor, cfg, self.acc.process_index, self.acc.num_processes)

    def prepare_output(self):
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = _latest_checkpoint(self.out) if cfg.resume else None
        if cfg.resume:
            if ckpt is not None:
                state = json.loads((ckpt / "state.json").read_text())
                if state["step"] >= cfg.max_steps and (self.out / "run_config.json").is_file():
                    self.log(
                        f"{self.out}: already trained to step {state['step']} (max_steps {cfg.max_steps})"
                    )
                    return "done"
            else:
                self.log(f"{self.out}: no checkpoint to resume from; starting from step 0")
            return ckpt
        existing = [p for p in ("run_config.json", CKPT_DIR, "metrics.jsonl") if (self.out / p).exists()]
        self.acc.wait_for_everyone()  # every process has looked before the main one deletes anything
        if existing:
            if not cfg.overwrite:
                raise TrainError(
                    f"{self.out} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
                    "--overwrite to start over, or choose another --output"
                )
            if self.acc.is_main_process:
                for p in ("run_config.json", CKPT_DIR, "metrics.jsonl", "dna", "adapter", "projector.safetensors",
                          "summary.json", "tensorboard"):  # fmt: skip
                    q = self.out / p
                    shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
        self.acc.wait_for_everyone()
        return None

    def loop(self, step: int) -> int:
        """Train from ``step`` to ``max_steps`` (or ``stop_after`` steps); returns the step reached."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        start_step = step
        stop = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, step + cfg.stop_after)
        loader = _loader(self.ds, step * cfg.grad_accum, stop * cfg.grad_accum, cfg.num_workers)
        items = iter(loader)
        bar = tqdm(total=cfg.max_steps, initial=step, disable=not (acc.is_main_process and cfg.progress),
                   desc="train", dynamic_ncols=True)  # fmt: skip
        self.train_mode()
        try:
            while step < stop:
                rec = self.train_step(items, step)
                step = rec["step"]
                self.write_metrics(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", skipped=self.skip_events)
                self.after_step(step)
        finally:
            bar.close()
        if step < cfg.max_steps:  # stop_after
            self.save_checkpoint(step, "stop_after")
            raise TrainInterrupted(
                f"stopped after {step - start_step} steps (step {step} of {cfg.max_steps}) as asked; "
                f"checkpoint saved in {self.out / CKPT_DIR}: rerun with --resume to continue"
            )
        return step

    def train_step(self, items, step: int) -> dict:
        """One optimiser step over ``grad_accum`` micro-batches; returns its metrics record."""
        cfg, acc = self.cfg, self.acc
        _seed_all(_mix(cfg.seed, step, acc.process_index))  # per-step reseed: resumed runs match exactly
        t_step = time.time()
        micro_losses, skipped_now, grad_norm = [], 0, None
        for _ in range(cfg.grad_accum):
            item = next(items)
            skipped_now += self.handle_bad(item, step)
            batch = _to_device(item["batch"], acc.device, self.float_dtype)
            with acc.accumulate(self.model):
                loss = self.finite_loss(batch, item, step)
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = self.clip_gradients()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach().float())
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        step += 1
        mean_loss = float(acc.reduce(torch.stack(micro_losses).mean(), "mean"))
        self.losses.append(mean_loss)
        return {
            "step": step,
            "loss": mean_loss,
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "lambda_mean_abs": self.lambda_mean(),
            "skipped": skipped_now,
            "skipped_total": self.skip_events,
            "epoch": (step * cfg.grad_accum - 1) // self.ds.per_epoch,
            "step_time_s": time.time() - t_step,
            "elapsed_s": self.elapsed(),
        }

    def finite_loss(self, batch: dict, item: dict, step: int) -> torch.Tensor:
        """The forward pass's loss; a non-finite one on any process saves a checkpoint and stops the run."""
        loss = self.model(**batch).loss
        if self.any_process_flag(not bool(torch.isfinite(loss))):
            self.save_checkpoint(step, "non-finite loss")
            raise TrainError(
                f"non-finite loss ({loss.item()}) at step {step + 1} (rows {item['rows']}); "
                f"checkpoint at step {step} saved. Lower --lr or use --mixed-precision no"
            )
        return loss

    def clip_gradients(self):
        """Clip to ``max_grad_norm`` (0: no clipping); returns the total gradient norm either way."""
        if self.cfg.max_grad_norm > 0:
            return self.acc.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        return torch.norm(torch.stack([p.grad.norm() for p in self.trainable if p.grad is not None]))

    def after_step(self, step: int) -> None:
        """Periodic eval and checkpoint; on a signal (seen by any process) checkpoint and stop."""
        cfg = self.cfg
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            ev = self.evaluate()
            if ev is not None:
                self.write_metrics({"step": step, "eval_loss": ev})
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            self.save_checkpoint(step, "periodic")
        stop_sig = self.any_process_flag(self.stop_signal is not None)
        if stop_sig and step < cfg.max_steps:
            self.save_checkpoint(step, f"signal {self.stop_signal}")
            raise TrainInterrupted(
                f"interrupted ({self.stop_signal}) after step {step}; checkpoint saved in "
                f"{self.out / CKPT_DIR}: rerun with --resume to continue"
            )

    def any_process_flag(self, flag: bool) -> bool:
        if self.acc.num_processes == 1:
            return flag
        t = torch.tensor(1.0 if flag else 0.0, device=self.acc.device)
        return bool(self.acc.reduce(t, "sum") > 0)

    def handle_bad(self, item: dict, step: int) -> int:
        """Record unreadable videos; under ``bad_video="fail"`` save a checkpoint and stop naming the file."""
        from accelerate.utils import gather_object

        failed = self.cfg.bad_video == "fail" and item["batch"] is None
        if self.acc.num_processes > 1:
            any_bad = self.any_process_flag(bool(item["bad"]))
            bad = [b for sub in gather_object([item["bad"]]) for b in sub] if any_bad else []
            failed = self.any_process_flag(failed)
        else:
            bad = item["bad"]
        if failed:
            self.save_checkpoint(step, "bad video")
            first = bad[0] if bad else {"video": "?", "source": "?", "error": "?"}
            raise TrainError(
                f"unreadable video {first['video']} (dataset row {first['source']}): {first['error']}. "
                f"Checkpoint at step {step} saved in {self.out / CKPT_DIR}; fix or drop the row and rerun "
                "with --resume, or use --bad-video skip"
            )
        known = {b["video"] for b in self.skipped}
        for b in bad:
            self.skip_events += 1
            if b["video"] not in known:
                known.add(b["video"])
                self.skipped.append({**b, "first_step": step + 1})
                self.log(f"warning: skipping unreadable video {b['video']} ({b['source']}): {b['error']}")
        return len(bad)

    def finalize(self, step: int, eval_loss: float | None) -> None:
        """Write the run dir's weights, summary.json and (last, marking it complete) run_config.json."""
        acc = self.acc
        acc.wait_for_everyone()
        if acc.is_main_process:
            dirs = self.save_weights(acc.unwrap_model(self.model))
            run_config = self.run_config(step, *dirs)
            summary = self.run_summary(step, eval_loss)
            atomic_write_json(self.out / "summary.json", summary)
            atomic_write_json(self.out / "run_config.json", run_config)  # last: marks the run complete
            self.log(
                f"done: {step} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
                f"{len(self.skipped)} unreadable videos skipped; run dir {self.out}"
            )
        acc.wait_for_everyone()

    def save_weights(self, m: nn.Module) -> tuple[str | None, str | None, str | None]:
        """Save the DnA branches, the adapter (or full model) and the projector; their names in OUT
        (dna_dir, adapter_dir, projector), None for what this run has not."""
        from .checkpoint import save_dna

        cfg = self.cfg
        dna_dir = projector = None
        if cfg.attention == "dna":
            save_dna(m, self.out / "dna")
            dna_dir = "dna"
        sub = "model" if cfg.tune == "full" else "adapter"
        tmp = self.out / f".{sub}.tmp-{os.getpid()}"  # written aside, then swapped in whole
        shutil.rmtree(tmp, ignore_errors=True)
        m.save_pretrained(str(tmp), safe_serialization=True)  # full: a normal HF checkpoint
        if cfg.tune == "full":
            self.processor.save_pretrained(str(tmp))
        if (self.out / sub).exists():
            shutil.rmtree(self.out / sub)
        os.replace(tmp, self.out / sub)
        adapter_dir = "adapter" if cfg.tune == "lora" else None
        if cfg.tune == "lora" and cfg.projector == "full" and self.proj_path is not None:
            proj = m.get_base_model().get_submodule(self.proj_path)
            atomic_save_safetensors(proj.state_dict(), self.out / "projector.safetensors")
            projector = "projector.safetensors"
        return dna_dir, adapter_dir, projector

    def run_config(
        self, step: int, dna_dir: str | None, adapter_dir: str | None, projector: str | None
    ) -> dict:
        """run_config.json: what evaluation needs to rebuild the trained model (contract 5)."""
        from . import __version__

        cfg = self.cfg
        base = cfg.model if cfg.tune == "lora" else str((self.out / "model").resolve())
        if Path(base).exists():
            base = str(Path(base).resolve())
        return {
            "format": RUN_FORMAT,
            "dna_vlm_version": __version__,
            "base_model": base,
            "attention": cfg.attention,
            "tune": cfg.tune,
            "trained_from": str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model,
            "dna_dir": dna_dir,
            "adapter_dir": adapter_dir,
            "projector": projector,
            "projector_mode": cfg.projector,
            "projector_path": self.proj_path,
            "num_frames": cfg.num_frames,
            "frame_strategy": {"train": "segments", "eval": "uniform"},
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout},
            "dna": None if cfg.attention != "dna" else {
                "neg_branch": cfg.neg_branch, "neg_rank": cfg.neg_rank, "shared_values": cfg.shared_values},
            "load_in_4bit": cfg.load_in_4bit,
            "dtype": cfg.dtype,
            "steps": step,
            "seed": cfg.seed,
            "train_data": str(Path(cfg.data).resolve()),
            "extra": cfg.extra,
        }  # fmt: skip

    def run_summary(self, step: int, eval_loss: float | None) -> dict:
        """summary.json: trainable parameters, losses, skipped videos and time."""
        return {
            "steps": step,
            "trainable": self.summary,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "eval_loss": eval_loss,
            "skipped_videos": self.skipped,
            "skip_events": self.skip_events,
            "lambda_mean_abs": self.lambda_mean(),
            "elapsed_s": self.elapsed(),
            "num_processes": self.acc.num_processes,
        }


def train(config: TrainConfig | dict) -> Path:
    """Train per ``config`` (a :class:`TrainConfig` or its fields as a dict); returns the run dir.

    Raises :class:`TrainInterrupted` (a checkpoint was saved) when stopped by a signal or ``stop_after``,
    :class:`TrainError` for unreadable videos under ``bad_video="fail"`` (after saving a checkpoint) and
    other problems the user must fix, and ``dna_vlm.data.DatasetError`` for malformed rows (file:line).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    return _Trainer(cfg).run()


# ----------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="LoRA-tune the vision tower -> projector path (DnA or softmax control arm)",
        description="Patch a video LLM's vision tower with DnA (or keep softmax: the control arm with the same "
        "LoRA budget), LoRA-tune the tower, train DnA's negative branch and the projector, LLM frozen. "
        "Works under `accelerate launch` for multi-GPU. Writes a run dir that `dna-vlm eval` loads.",
    )
    # in this order: it is the order --help lists them in
    for add in (_add_path_args, _add_arm_args, _add_optim_args, _add_model_args, _add_run_args):
        add(p.add_argument)
    p.set_defaults(func=_main)


_DEFAULTS = TrainConfig.__dataclass_fields__


def _add_path_args(a) -> None:
    """Inputs and output."""
    a("--model", required=True, help="local model dir or hub id (e.g. the output of `dna-vlm tiny-model`)")
    a("--data", required=True, help="training JSONL (id, video, question, options?, answer)")
    a("--output", required=True, help="run dir to write")


def _add_arm_args(a) -> None:
    """The arm (DnA or softmax, LoRA or full tuning), LoRA, projector and DnA branch."""
    a("--attention", choices=CHOICES["attention"], default="dna")
    a(
        "--tune",
        choices=CHOICES["tune"],
        default="lora",
        help="lora (default): LoRA on the tower, LLM frozen; full: every weight of a stock model -> OUT/model",
    )
    a("--lora-rank", type=int, default=_DEFAULTS["lora_rank"].default)
    a("--lora-alpha", type=float, default=_DEFAULTS["lora_alpha"].default)
    a("--lora-dropout", type=float, default=_DEFAULTS["lora_dropout"].default)
    a("--projector", choices=CHOICES["projector"], default="full")
    a("--neg-branch", choices=CHOICES["neg_branch"], default="full")
    a("--neg-rank", type=int, default=None)
    a("--shared-values", action="store_true", help="DnA ablation: V- = V+")


def _add_optim_args(a) -> None:
    """Steps, batch and optimiser."""
    a("--max-steps", type=int, default=_DEFAULTS["max_steps"].default)
    a("--batch-size", type=int, default=_DEFAULTS["batch_size"].default, help="per process")
    a("--grad-accum", type=int, default=1)
    a("--lr", type=float, default=_DEFAULTS["lr"].default)
    a("--dna-lr", type=float, default=None, help="learning rate of the DnA branch (default: --lr)")
    a("--projector-lr", type=float, default=None, help="learning rate of the projector (default: --lr)")
    a("--weight-decay", type=float, default=0.0)
    a("--lr-schedule", choices=CHOICES["lr_schedule"], default="cosine")
    a("--warmup-steps", type=int, default=0)
    a("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")


def _add_model_args(a) -> None:
    """Inputs to the model, and how it is loaded and run."""
    a("--num-frames", type=int, default=_DEFAULTS["num_frames"].default)
    a("--dtype", choices=CHOICES["dtype"], default="float32", help="dtype the model is loaded in")
    a(
        "--device",
        choices=CHOICES["device"],
        default="auto",
        help="cpu forces CPU (also under accelerate launch)",
    )
    a(
        "--load-in-4bit",
        action="store_true",
        help="quantize the LLM to 4-bit (bitsandbytes); tower stays full",
    )
    a("--mixed-precision", choices=CHOICES["mixed_precision"], default=None,
      help="default: accelerate's config (no)")  # fmt: skip
    a("--gradient-checkpointing", action="store_true", help="on the vision tower")
    a("--attn-implementation", default=None, help="passed to from_pretrained (e.g. sdpa, eager)")
    a("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")


def _add_run_args(a) -> None:
    """Checkpoints, resuming, bad videos, seed, evaluation and data loading."""
    a("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    a("--keep-checkpoints", type=int, default=1)
    a("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    a("--overwrite", action="store_true", help="delete a previous run in OUT first")
    a(
        "--stop-after",
        type=int,
        default=None,
        help="stop (with a checkpoint) after N steps in this invocation",
    )
    a("--bad-video", choices=CHOICES["bad_video"], default="skip")
    a("--seed", type=int, default=0)
    a("--eval-data", default=None, help="validation JSONL: answer loss logged at the end (and --eval-every)")
    a("--eval-every", type=int, default=0)
    a("--num-workers", type=int, default=0, help="data loader processes decoding videos")
    a("--no-progress", action="store_true")


def _main(args: argparse.Namespace) -> int:
    from .data import DatasetError
    from .video import VideoError

    mp = args.mixed_precision
    if mp is None:
        mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    try:
        cfg = TrainConfig(
            model=args.model, data=args.data, output=args.output, attention=args.attention, tune=args.tune,
            lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            projector=args.projector, neg_branch=args.neg_branch, neg_rank=args.neg_rank,
            shared_values=args.shared_values, max_steps=args.max_steps, batch_size=args.batch_size,
            grad_accum=args.grad_accum, lr=args.lr, dna_lr=args.dna_lr, projector_lr=args.projector_lr,
            weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
            max_grad_norm=args.max_grad_norm, num_frames=args.num_frames, dtype=args.dtype, device=args.device,
            load_in_4bit=args.load_in_4bit, mixed_precision=mp,
            gradient_checkpointing=args.gradient_checkpointing, attn_implementation=args.attn_implementation,
            trust_remote_code=args.trust_remote_code, save_every=args.save_every,
            keep_checkpoints=args.keep_checkpoints, resume=args.resume, overwrite=args.overwrite,
            stop_after=args.stop_after, bad_video=args.bad_video, seed=args.seed, eval_data=args.eval_data,
            eval_every=args.eval_every, num_workers=args.num_workers, progress=not args.no_progress,
        )  # fmt: skip
        out = train(cfg)
    except TrainInterrupted as e:
        print(f"dna-vlm train: {e}", file=sys.stderr)
        return 3
    except (TrainError, RunError, DatasetError, VideoError, ValueError, FileNotFoundError) as e:
        print(f"dna-vlm train: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
