"""The finished run dir (contract 5): weights, ``summary.json`` and, last, ``run_config.json``::

OUT/dna/                     save_dna (DnA arm): negative branches + lambdas
OUT/adapter/                 PEFT LoRA adapter (safetensors): vision tower (+ projector with --projector lora)
OUT/model/                   tune="full": a plain HF checkpoint (model + processor)
OUT/projector.safetensors    projector weights (--projector full)
OUT/summary.json             trainable parameters by group, steps, losses, skipped videos, time
OUT/run_config.json          what evaluation needs (:class:`dna_vlm.rundir.RunConfig`); its presence marks
                             the run dir complete
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn

from .._io import atomic_save_safetensors, atomic_write_json
from ..rundir import RUN_FORMAT, RunConfig
from .config import TrainConfig
from .state import RunRecord

__all__ = ["WeightDirs", "make_run_config", "run_summary", "save_weights", "write_run_dir"]

#: (dna_dir, adapter_dir, projector): names in OUT, None for what the run has not
WeightDirs = tuple[str | None, str | None, str | None]


def save_weights(m: nn.Module, out: Path, cfg: TrainConfig, processor, proj_path: str | None) -> WeightDirs:
    """Save the DnA branches, the adapter (or full model) and the projector of the unwrapped model ``m``."""
    from ..checkpoint import save_dna

    dna_dir = projector = None
    if cfg.attention == "dna":
        save_dna(m, out / "dna")
        dna_dir = "dna"
    sub = "model" if cfg.tune == "full" else "adapter"
    tmp = out / f".{sub}.tmp-{os.getpid()}"  # written aside, then swapped in whole
    shutil.rmtree(tmp, ignore_errors=True)
    m.save_pretrained(str(tmp), safe_serialization=True)  # full: a normal HF checkpoint
    if cfg.tune == "full":
        processor.save_pretrained(str(tmp))
    if (out / sub).exists():
        shutil.rmtree(out / sub)
    os.replace(tmp, out / sub)
    adapter_dir = "adapter" if cfg.tune == "lora" else None
    if cfg.tune == "lora" and cfg.projector == "full" and proj_path is not None:
        proj = m.get_base_model().get_submodule(proj_path)
        atomic_save_safetensors(proj.state_dict(), out / "projector.safetensors")
        projector = "projector.safetensors"
    return dna_dir, adapter_dir, projector


def _resolved(path: str) -> str:
    """An existing local path made absolute; anything else (a hub id) as given."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def make_run_config(
    cfg: TrainConfig, out: Path, proj_path: str | None, step: int, dirs: WeightDirs
) -> RunConfig:
    """What evaluation needs to rebuild the trained model."""
    from .. import __version__

    dna_dir, adapter_dir, projector = dirs
    base = cfg.model if cfg.tune == "lora" else str((out / "model").resolve())
    dna = None
    if cfg.attention == "dna":
        dna = {"neg_branch": cfg.neg_branch, "neg_rank": cfg.neg_rank, "shared_values": cfg.shared_values}
    return RunConfig(
        format=RUN_FORMAT,
        dna_vlm_version=__version__,
        base_model=_resolved(base),
        attention=cfg.attention,
        tune=cfg.tune,
        trained_from=_resolved(cfg.model),
        dna_dir=dna_dir,
        adapter_dir=adapter_dir,
        projector=projector,
        projector_mode=cfg.projector,
        projector_path=proj_path,
        num_frames=cfg.num_frames,
        frame_strategy={"train": "segments", "eval": "uniform"},
        lora={"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout},
        dna=dna,
        load_in_4bit=cfg.load_in_4bit,
        dtype=cfg.dtype,
        steps=step,
        seed=cfg.seed,
        train_data=str(Path(cfg.data).resolve()),
        extra=cfg.extra,
    )


def run_summary(step: int, trainable: dict, record: RunRecord, eval_loss: float | None,
                lambda_mean: float | None, num_processes: int) -> dict:  # fmt: skip
    """summary.json: trainable parameters, losses, skipped videos and time."""
    return {
        "steps": step,
        "trainable": trainable,
        "first_loss": record.losses[0] if record.losses else None,
        "final_loss": record.losses[-1] if record.losses else None,
        "eval_loss": eval_loss,
        "skipped_videos": record.skipped,
        "skip_events": record.skip_events,
        "lambda_mean_abs": lambda_mean,
        "elapsed_s": record.elapsed(),
        "num_processes": num_processes,
    }


def write_run_dir(out: Path, run_config: RunConfig, summary: dict) -> None:
    """summary.json, then run_config.json (after the weights): written last, it marks the run dir complete."""
    atomic_write_json(out / "summary.json", summary)
    run_config.write(out)
