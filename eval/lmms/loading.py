"""``model_args`` of the ``dna_vlm`` lmms-eval model: parsing, validation and model loading.

Kept apart from :mod:`dna_vlm.eval.lmms.plugin` (the lmms-eval request handling) so the option rules read in
one place; every error names the ``model_args`` key, what was expected and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DNA_CONFIG",
    "EvalOptions",
    "accelerate_setup",
    "as_bool",
    "load_eval_model",
    "opt_int",
    "resolve_dna_arg",
]

#: the file that marks a :func:`dna_vlm.save_dna` dir
DNA_CONFIG = "dna_config.json"
_TRUE = ("1", "true", "yes", "on")


def as_bool(v) -> bool:
    """A ``model_args`` flag: a bool, or one of 1/true/yes/on (any case)."""
    return v if isinstance(v, bool) else str(v).strip().lower() in _TRUE


def opt_int(v, name: str) -> int | None:
    """A positive integer ``model_args`` value, or None when unset ("", "none")."""
    if v is None or v == "" or str(v).lower() == "none":
        return None
    try:
        out = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"dna_vlm: model_args {name} must be an integer, got {v!r}") from None
    if out < 1:
        raise ValueError(f"dna_vlm: model_args {name} must be >= 1, got {v!r}")
    return out


@dataclass(frozen=True)
class EvalOptions:
    """Frame sampling and batching; defaults come from the run when there is one."""

    max_frames: int
    fps: float | None
    batch_size: int
    max_new_tokens: int

    @classmethod
    def parse(cls, max_frames, fps, batch_size, max_new_tokens, run_config: dict) -> EvalOptions:
        fps_val = None if fps in (None, "", "none") else float(fps)
        if fps_val is not None and not fps_val > 0:
            raise ValueError(f"dna_vlm: model_args fps must be positive, got {fps!r}")
        bs = 1 if str(batch_size).startswith("auto") else opt_int(batch_size, "batch_size")
        return cls(
            max_frames=opt_int(max_frames, "max_frames") or int(run_config.get("num_frames") or 8),
            fps=fps_val,
            batch_size=bs or 1,
            max_new_tokens=opt_int(max_new_tokens, "max_new_tokens") or 32,
        )


def accelerate_setup(device: str | None, dtype: str | None):
    """``(accelerator, torch.device, dtype)`` for this process: rank, world size and the default device come
    from accelerate; ``dtype`` defaults to bfloat16 on CUDA, float32 elsewhere."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()
    if device in (None, "", "auto"):
        device = str(accelerator.device)
    elif accelerator.num_processes > 1 and str(device).startswith("cuda"):
        # data parallel: an explicit cuda device means "this process's GPU", not one GPU for all
        device = f"cuda:{accelerator.local_process_index}"
    dev = torch.device(device)
    if dtype in (None, "", "auto"):
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    return accelerator, dev, dtype


def resolve_dna_arg(
    dna: str | None, attention: str | None, pretrained: str | None = None
) -> tuple[dict, Path | None, Path | None]:
    """Classify ``dna=``: ``(run_config, run_dir, dna_dir)``; at most one of the two dirs is set.

    A training run dir is read with :func:`dna_vlm.runs.loading.read_run_config` (validated; errors name the file).
    ``pretrained`` a ``dna-vlm export`` folder: its run's config (frame defaults), and no ``dna=`` with it."""
    from dna_vlm.checkpoint import read_dna_config
    from dna_vlm.runs.formats import is_export
    from dna_vlm.runs.loading import RUN_CONFIG, read_run_config

    if pretrained not in (None, "") and is_export(Path(pretrained).expanduser()):
        if dna not in (None, ""):
            raise ValueError(
                f"dna_vlm: pretrained={pretrained} is a dna-vlm export, which holds its DnA weights already; "
                "drop dna="
            )
        return _export_run_config(Path(pretrained).expanduser()), None, None
    if dna in (None, ""):
        return {}, None, None
    p = Path(dna).expanduser()
    if is_export(p):
        raise ValueError(
            f"dna_vlm: dna={dna} is a dna-vlm export (a whole model): pass it as pretrained={dna}"
        )
    if (p / RUN_CONFIG).is_file():
        return read_run_config(p), p, None
    if (p / DNA_CONFIG).is_file():
        saved = read_dna_config(p).get("options", {}).get("attention", "dna")
        if attention not in (None, "", saved):
            raise ValueError(
                f"dna_vlm: dna={dna} was saved with attention={saved} but attention={attention} was asked; "
                "drop attention= or pass the matching value"
            )
        return {}, None, p
    raise ValueError(
        f"dna_vlm: dna={dna} is neither a training run dir ({RUN_CONFIG}) nor a save_dna dir ({DNA_CONFIG})"
    )


def _export_run_config(folder: Path) -> dict:
    """The run config an export was made from (its manifest checked first)."""
    from dna_vlm.runs.config import RunConfig
    from dna_vlm.runs.formats import EXPORT_MANIFEST, verify_export

    return RunConfig.from_dict(verify_export(folder).get("run"), folder / EXPORT_MANIFEST).to_dict()


def load_eval_model(
    pretrained: str | None,
    run_dir: Path | None,
    dna_dir: Path | None,
    attention: str | None,
    device,
    dtype: str,
    **load_kwargs: Any,
):
    """``(model, processor)`` in eval mode: the base model or a training run (:func:`dna_vlm.runs.loading.load_model`),
    then a ``save_dna`` dir's weights if given. ``load_kwargs``: ``attn_implementation``, ``load_in_4bit``,
    ``trust_remote_code``, ``allow_base_mismatch`` (as ``model_args`` strings)."""
    from dna_vlm.runs.loading import load_model

    model, processor = load_model(
        pretrained=pretrained or None,
        run_dir=str(run_dir) if run_dir is not None else None,
        # a save_dna dir patches the model itself below; loading it patched here would do it twice
        attention=None if dna_dir is not None else attention,
        device=str(device),
        dtype=dtype,
        attn_implementation=load_kwargs.get("attn_implementation") or None,
        load_in_4bit=as_bool(load_kwargs.get("load_in_4bit", False)),
        trust_remote_code=as_bool(load_kwargs.get("trust_remote_code", False)),
        allow_base_mismatch=as_bool(load_kwargs.get("allow_base_mismatch", False)),
    )
    if dna_dir is not None:
        model = _apply_saved_dna(model, dna_dir, dtype, device)
    model.eval()
    return model, processor


def _apply_saved_dna(model, dna_dir: Path, dtype: str, device):
    """Patch ``model`` with the DnA weights in ``dna_dir`` and move them next to the model's weights."""
    from dna_vlm.checkpoint import load_dna
    from dna_vlm.patching import dna_parameters
    from dna_vlm.runs.loading import resolve_dtype

    model = load_dna(model, dna_dir) or model
    dev = next((p.device for p in model.parameters() if p.device.type != "meta"), device)
    for prm in dna_parameters(model):  # DnA's new parameters are created in float32 on CPU
        prm.data = prm.data.to(device=dev, dtype=resolve_dtype(dtype))
    return model
