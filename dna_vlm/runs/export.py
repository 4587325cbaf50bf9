"""``dna-vlm export RUN OUT``: a training run dir made one self-contained model folder.

A run dir is pieces (``adapter/``, ``dna/``, ``projector.safetensors``) applied to a base model that lives
elsewhere. The export loads the run exactly as evaluation does (:func:`dna_vlm.runs.loading.load_model`: base,
DnA layers, LoRA merged, projector) and writes::

    OUT/config.json, model.safetensors,        the merged model as save_pretrained writes it (stock module
        generation_config.json                 names; the positive branches' tuned weights are in here)
    OUT/processor + tokenizer files            as the processor's save_pretrained writes them
    OUT/dna/                                   save_dna(positive=False): the negative branches + DnA options
                                               (the control layers' options for a softmax run trained on them)
    OUT/dna_vlm_export.json                    format, the run's run_config.json (whole), digest of every file

``dna_vlm.load_model(OUT)`` and the lmms-eval plugin's ``pretrained=OUT`` rebuild it bit for bit (same logits
as loading the run dir). With a ``dna/`` part, config.json is guarded so plain transformers refuses it naming
dna-vlm (:mod:`dna_vlm.runs.formats`); an export without one (a run on the model's own attention) is a plain
HF checkpoint every loader reads as is.

Atomic: everything is written into ``.OUT.tmp-PID`` beside OUT and renamed into place (an earlier export at
OUT, only with ``--overwrite``, is moved aside first and removed after); OUT is never half written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dna_vlm.files import atomic_write_json, remove_path
from dna_vlm.runs.config import RUN_CONFIG, RunError
from dna_vlm.runs.formats import (
    EXPORT_FORMAT,
    EXPORT_MANIFEST,
    EXPORT_MODEL_TYPE,
    guard_model_config,
    is_export,
    verify_export,
)
from dna_vlm.runs.loading import load_model, manifest, model_dir, verify_run_dir
from dna_vlm.version import __version__

__all__ = ["add_parser", "export_run", "register_auto_classes"]


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    dtype: str = "float32",
    allow_base_mismatch: bool = False,
) -> Path:
    """Write the run at ``run_dir`` as one model folder ``out`` (see the module docstring); returns ``out``.

    Refuses (:class:`RunError`, nothing written) an incomplete or mixed run dir, a base model other than the
    run's (unless ``allow_base_mismatch``), and an existing ``out`` unless ``overwrite`` and it is an export."""
    run_dir, out = Path(run_dir), Path(out)
    run = verify_run_dir(run_dir)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    remove_path(stage)
    try:
        model, processor = load_model(run_dir=run_dir, dtype=dtype, allow_base_mismatch=allow_base_mismatch)
        dna_dir = _write_model(model, processor, stage)
        record = {
            "format": EXPORT_FORMAT,
            "dna_vlm_version": __version__,
            "attention": run.attention,
            "dna_dir": dna_dir,
            "dtype": dtype,
            "run_dir": str(run_dir.resolve()),
            "run": run.to_dict(),
            "files": manifest(stage, sorted(p.name for p in stage.iterdir())),
        }
        atomic_write_json(stage / EXPORT_MANIFEST, record)  # last: it lists every other file
        _swap_in(stage, out)
    finally:
        remove_path(stage)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RunError(f"{out}: exists and is not a folder; pick another OUT")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise RunError(f"{out} exists; pass --overwrite (overwrite=True) to replace the export there")
    if not is_export(out):
        what = "a run dir" if (out / RUN_CONFIG).is_file() else "not a dna-vlm export"
        raise RunError(f"{out} is {what}: --overwrite only replaces an earlier export; pick another OUT")


def _write_model(model, processor, stage: Path) -> str | None:
    """save_pretrained of the merged model with its DnA part split off into ``stage/dna``; returns "dna" or
    None (a model on its own attention: a plain HF checkpoint)."""
    from dna_vlm.checkpoint import save_dna
    from dna_vlm.patching import is_patched, unpatch

    dna_dir = None
    if is_patched(model):
        save_dna(model, stage / "dna", positive=False)  # the tuned positive weights go to model.safetensors
        unpatch(model)  # the original modules, holding the merged weights: stock names in model.safetensors
        dna_dir = "dna"
    model.save_pretrained(str(stage), safe_serialization=True)
    processor.save_pretrained(str(stage))
    if dna_dir:
        guard_model_config(stage)
    return dna_dir


def _swap_in(stage: Path, out: Path) -> None:
    """Rename the finished ``stage`` to ``out``; an earlier export there is moved aside first, removed after."""
    old = out.parent / f".{out.name}.old.tmp-{os.getpid()}"
    if out.exists() and any(out.iterdir()):
        remove_path(old)
        os.replace(out, old)
    elif out.exists():
        out.rmdir()
    os.replace(stage, out)
    remove_path(old)


# ------------------------------------------------------------------------ transformers' Auto classes

#: the hub keywords transformers' Auto classes pass along (a local export needs none: dropped)
_AUTO_KWARGS = {"cache_dir", "force_download", "local_files_only", "proxies", "subfolder", "token", "revision",
                "adapter_kwargs", "trust_remote_code"}  # fmt: skip


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModelForImageTextToText.from_pretrained(OUT)`` load a DnA export: they then
    return what :func:`dna_vlm.runs.loading.load_model` returns (the same model, bit for bit). Without this
    call they refuse it ("model type `dna_vlm`"). Process-wide, like every transformers registration; a second
    call does nothing."""
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForImageTextToText, PreTrainedConfig

    if EXPORT_MODEL_TYPE in CONFIG_MAPPING:
        return

    class DnaVlmExportConfig(PreTrainedConfig):
        """config.json of a DnA export as transformers reads it; the model comes from load_model."""

        model_type = EXPORT_MODEL_TYPE

    class DnaVlmExport:
        """The Auto classes' model class for a DnA export: ``from_pretrained`` is :func:`load_model`'s."""

        config_class = DnaVlmExportConfig

        @classmethod
        def from_pretrained(cls, path, *args, **kwargs):
            return _auto_load(path, args, kwargs)

    AutoConfig.register(EXPORT_MODEL_TYPE, DnaVlmExportConfig)
    AutoModelForImageTextToText.register(DnaVlmExportConfig, DnaVlmExport)


def _auto_load(path, args: tuple, kwargs: dict):
    """What ``AutoModelForImageTextToText.from_pretrained(path, *args, **kwargs)`` gets for a DnA export:
    :func:`load_model` with its ``dtype`` (default: the export's), ``device_map`` and ``attn_implementation``;
    any other argument is refused (it would be silently ignored)."""
    if kwargs.get("subfolder"):
        raise TypeError(f"{path}: a dna-vlm export is a whole folder; subfolder= is not for it")
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in _AUTO_KWARGS}
    kwargs.pop("config", None)  # the Auto class's own read of config.json
    dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else torch_dtype
    device = kwargs.pop("device_map", None) or "cpu"
    attn = kwargs.pop("attn_implementation", None)
    kwargs.pop("_from_auto", None)
    if args or kwargs:
        raise TypeError(
            f"{path}: a dna-vlm export takes dtype, device_map and attn_implementation here, not "
            f"{[*map(repr, args), *sorted(kwargs)]}; dna_vlm.load_model(path) has every option"
        )
    folder = model_dir(path)
    if folder is None or not is_export(folder):
        raise RunError(f"{path}: not a local dna-vlm export folder ({EXPORT_MANIFEST})")
    if dtype in (None, "auto"):
        dtype = verify_export(folder).get("dtype", "float32")
    device = device.get("", "cpu") if isinstance(device, dict) else device
    return load_model(folder, device=device, dtype=dtype, attn_implementation=attn)[0]


# ------------------------------------------------------------------------------------------------ CLI


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        description="Write a `dna-vlm train` run dir as one self-contained model folder: the LoRA merged, the "
        "projector in place, the DnA weights and options beside them. Load it with dna_vlm.load_model(OUT) "
        "or the lmms-eval plugin's pretrained=OUT (same logits as the run dir).",
    )
    p.add_argument("run_dir", metavar="RUN", help="a run dir written by `dna-vlm train`")
    p.add_argument("out", metavar="OUT", help="the folder to write (must not exist, or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights' dtype"
    )
    p.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="load the run onto a base model other than the one it was trained on (you know why)",
    )
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        out = export_run(args.run_dir, args.out, args.overwrite, args.dtype, args.allow_base_mismatch)
    except (ValueError, FileNotFoundError) as e:  # RunError, CheckpointMismatchError are ValueErrors
        print(f"dna-vlm export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} to {out}: load it with dna_vlm.load_model({str(out)!r})")
    return 0
