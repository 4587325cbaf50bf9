"""The finished run dir (schema: :mod:`dna_vlm.runs.config`): weights, ``summary.json`` and, last, ``run_config.json``::

OUT/dna/                     save_dna (DnA arm): negative branches + lambdas
OUT/adapter/                 PEFT LoRA adapter (safetensors): vision tower (+ projector with --projector lora)
OUT/model/                   tune="full": a plain HF checkpoint (model + processor)
OUT/projector.safetensors    projector weights (--projector full)
OUT/summary.json             trainable parameters by group, steps, losses, skipped videos, time
OUT/run_config.json          what evaluation needs (:class:`dna_vlm.runs.config.RunConfig`) and the manifest
                             (digest of every file above); written last, it commits the run dir

Committed as a whole: everything is written into ``OUT/.final.tmp-PID`` first, then each artefact is swapped
into place and ``run_config.json`` (with the manifest of the new files) is written last. A kill between two
swaps leaves the old run_config.json beside some new files: its manifest no longer matches, so every load
(:func:`dna_vlm.runs.loading.verify_run_dir`) fails naming the file, and ``--resume`` finalises again from the final
checkpoint. A reader sees the old complete run, the new complete run, or a clear error, never a mixture.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from dna_vlm.files import atomic_save_safetensors, atomic_write_json, remove_path
from dna_vlm.runs.config import RUN_FORMAT, RunConfig
from dna_vlm.runs.formats import guard_adapter_config
from dna_vlm.runs.loading import ARTEFACTS, base_identity, manifest
from dna_vlm.train.config import TrainConfig
from dna_vlm.train.state import RunRecord

__all__ = ["WeightDirs", "make_run_config", "run_summary", "save_weights", "stage_dir", "write_run_dir"]

#: (dna_dir, adapter_dir, projector): names in OUT, None for what the run has not
WeightDirs = tuple[str | None, str | None, str | None]


def stage_dir(out: Path) -> Path:
    """A fresh ``OUT/.final.tmp-PID`` to write the run dir's artefacts into before they are swapped in."""
    stage = out / f".final.tmp-{os.getpid()}"
    remove_path(stage)
    stage.mkdir()
    return stage


def save_weights(m: nn.Module, stage: Path, cfg: TrainConfig, processor, proj_path: str | None) -> WeightDirs:
    """Save the DnA branches, the adapter (or full model) and the projector of the unwrapped model ``m``
    into ``stage`` (see :func:`stage_dir`); :func:`write_run_dir` swaps them into the run dir."""
    from dna_vlm.checkpoint import save_dna

    dna_dir = projector = None
    if cfg.attention == "dna":
        save_dna(m, stage / "dna")
        dna_dir = "dna"
    sub = "model" if cfg.tune == "full" else "adapter"
    m.save_pretrained(str(stage / sub), safe_serialization=True)  # full: a normal HF checkpoint
    if cfg.tune == "full":
        processor.save_pretrained(str(stage / sub))
    adapter_dir = "adapter" if cfg.tune == "lora" else None
    if adapter_dir:  # PEFT alone would apply it without the DnA layers or projector: make PEFT refuse it
        guard_adapter_config(stage / adapter_dir)
    if cfg.tune == "lora" and cfg.projector == "full" and proj_path is not None:
        proj = m.get_base_model().get_submodule(proj_path)
        atomic_save_safetensors(proj.state_dict(), stage / "projector.safetensors")
        projector = "projector.safetensors"
    return dna_dir, adapter_dir, projector


def _resolved(path: str) -> str:
    """An existing local path made absolute; anything else (a hub id) as given."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def make_run_config(
    cfg: TrainConfig, out: Path, proj_path: str | None, step: int, dirs: WeightDirs,
    attention_kernel: str | None = None,
) -> RunConfig:  # fmt: skip
    """What evaluation needs to rebuild the trained model (``attention_kernel``: see
    :func:`dna_vlm.train.model.attention_kernel_of`)."""
    from dna_vlm.version import __version__

    dna_dir, adapter_dir, projector = dirs
    base = cfg.model if cfg.tune == "lora" else str((out / "model").resolve())
    patched = cfg.attention == "dna" or cfg.tune == "lora"  # tune="full" trains a stock, unpatched model
    dna = cfg.dna_options().to_dict() if patched else None
    return RunConfig(
        format=RUN_FORMAT,
        dna_vlm_version=__version__,
        base_model=_resolved(base),
        attention=cfg.attention,
        attention_kernel=attention_kernel,
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
        "frame_cache_bypassed": record.cache_faults,  # faults that made the cache decode directly (no data lost)
        "lambda_mean_abs": lambda_mean,
        "elapsed_s": record.elapsed(),
        "num_processes": num_processes,
    }


def write_run_dir(out: Path, stage: Path, run_config: RunConfig, summary: dict) -> None:
    """Commit the staged artefacts: summary.json into the stage, each artefact swapped into ``out`` (the
    old one removed first: symlinks are replaced, never followed), then run_config.json with the manifest
    and the base model's identity, last."""
    import dataclasses

    atomic_write_json(stage / "summary.json", summary)
    files = manifest(stage)
    for name in ARTEFACTS:
        if (stage / name).exists():
            remove_path(out / name)
            os.replace(stage / name, out / name)
        elif name != "model":  # (OUT/model is only ever written by tune="full")
            remove_path(out / name)  # an artefact of an older write this run no longer has
    remove_path(stage)
    identity = base_identity(run_config.base_model)
    dataclasses.replace(run_config, files=files, base_identity=identity).write(out)
