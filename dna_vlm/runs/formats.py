"""What dna-vlm writes for other tools, guarded so that a foreign loader fails naming dna-vlm instead of
silently building another model; each writer sits beside its reader.

- The exported model folder (``dna-vlm export``): ``config.json`` + ``model.safetensors`` + processor files
  (a ``save_pretrained`` folder), ``dna/`` (a ``save_dna`` dir: the negative branches and the DnA options) and
  ``dna_vlm_export.json`` (:data:`EXPORT_MANIFEST`: what it was exported from, and the digest of every file).
  With a ``dna/`` part, ``config.json`` says ``"model_type": "dna_vlm"`` (every ``Auto*`` class refuses it:
  "model type `dna_vlm` ... not recognize") and its ``vision_config`` is a sentence naming dna-vlm (a model
  class's own ``from_pretrained`` refuses it: the strict config check prints it); the real ``model_type``,
  ``architectures`` and ``vision_config`` are kept under its ``"dna_vlm"`` key, which
  :func:`export_model_config` reads back. Tokenizers and processors still load from the folder.
- The run dir's PEFT adapter (``adapter/adapter_config.json``): its ``peft_type`` is a sentence naming dna-vlm
  (``PeftModel.from_pretrained`` / ``PeftConfig.from_pretrained`` fail with it: a KeyError), the real one is
  under ``"dna_vlm"``; :func:`read_adapter_config` reads both this and the plain files of older run dirs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from dna_vlm.files import atomic_write_json, read_json, sampled_digest
from dna_vlm.runs.config import RunError

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_MANIFEST",
    "EXPORT_MODEL_TYPE",
    "export_model_config",
    "guard_adapter_config",
    "guard_model_config",
    "is_export",
    "read_adapter_config",
    "verify_export",
]

EXPORT_FORMAT = "dna-vlm-export/1"
EXPORT_MANIFEST = "dna_vlm_export.json"
#: config.json's model_type in an export with DnA layers: no transformers class is registered for it
EXPORT_MODEL_TYPE = "dna_vlm"
_KEY = "dna_vlm"  # config.json / adapter_config.json key holding what the guard replaced
_MOVED = ("model_type", "architectures", "vision_config")  # config.json keys the guard replaces
_SAVED_AS = {"model_type": "base_model_type"}  # their names in the record, where not their own
_HOW = (
    "load it with dna_vlm.load_model(PATH) (pip install dna-vlm); plain transformers would build the model "
    "without its DnA layers"
)
ADAPTER_SENTINEL = (
    "dna-vlm run part: this LoRA adapter is one of the pieces of a dna-vlm run (DnA layers and projector "
    "weights beside it); load the run dir with dna_vlm.load_model(RUN_DIR), or make one folder with "
    "`dna-vlm export RUN_DIR OUT`"
)


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``dna-vlm export`` (it holds :data:`EXPORT_MANIFEST`)."""
    return (Path(path) / EXPORT_MANIFEST).is_file()


def guard_model_config(folder: Path) -> None:
    """Rewrite ``folder/config.json`` (a ``save_pretrained`` config) so no plain transformers loader builds
    it: see the module docstring. Its digest changes, so call it before the manifest is made."""
    path = folder / "config.json"
    config = read_json(path, RunError, missing="save_pretrained wrote none", damaged="re-export the run")
    # never a "model_type" key in the record: a model class meeting another model_type takes the first
    # nested dict that has its own as the whole config (LlavaOnevisionConfig would build its 7B default)
    config[_KEY] = {_SAVED_AS.get(k, k): config.get(k) for k in _MOVED}
    config["model_type"] = EXPORT_MODEL_TYPE
    config["architectures"] = ["DnaVlmExport"]
    config["vision_config"] = f"dna-vlm export with DnA layers: {_HOW}"
    atomic_write_json(path, config)


def export_model_config(folder: Path):
    """The transformers config of an exported model folder (its real ``model_type`` etc. put back when
    :func:`guard_model_config` replaced them)."""
    from transformers import CONFIG_MAPPING

    path = folder / "config.json"
    data = read_json(
        path, RunError, missing=f"{folder} is not a complete export", damaged="re-export the run"
    )
    if data.get("model_type") == EXPORT_MODEL_TYPE:
        saved = data.get(_KEY)
        if not isinstance(saved, dict) or not isinstance(saved.get(_SAVED_AS["model_type"]), str):
            raise RunError(
                f"{path}: model_type {EXPORT_MODEL_TYPE!r} without its {_KEY!r} record; re-export the run"
            )
        restored = {k: copy.deepcopy(saved.get(_SAVED_AS.get(k, k))) for k in _MOVED}
        data = {k: v for k, v in data.items() if k != _KEY} | restored
    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise RunError(f"{path}: model_type {model_type!r} is not one this transformers version knows")
    try:
        return CONFIG_MAPPING[model_type].from_dict(data)
    except (ValueError, TypeError) as e:
        raise RunError(f"{path}: not a config this transformers can build ({e})") from None


def verify_export(folder: str | os.PathLike) -> dict:
    """The export's manifest (:data:`EXPORT_MANIFEST`) after checking every file it lists is there with the
    recorded digest; :class:`RunError` names the file otherwise."""
    folder = Path(folder)
    path = folder / EXPORT_MANIFEST
    record = read_json(
        path, RunError, missing=f"{folder} is not a dna-vlm export", damaged="re-export the run"
    )
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RunError(f"{path}: format {got!r}, expected {EXPORT_FORMAT!r} (another dna-vlm version?)")
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        raise RunError(f"{path}: no 'files' manifest; re-export the run")
    for rel, digest in sorted(files.items()):
        f = folder / rel
        if (
            Path(rel).is_absolute()
            or ".." in Path(rel).parts
            or not f.resolve().is_relative_to(folder.resolve())
        ):
            raise RunError(f"{path}: files[{rel!r}] must be a path inside the export")
        if not f.is_file():
            raise RunError(
                f"{f}: missing; the export is incomplete: re-export the run (dna-vlm export --overwrite)"
            )
        if sampled_digest(f) != digest:
            raise RunError(
                f"{f}: content differs from {EXPORT_MANIFEST}; the export was changed: re-export the run"
            )
    return record


def guard_adapter_config(adapter_dir: Path) -> None:
    """Rewrite a run's ``adapter_config.json`` (PEFT's) so PEFT refuses it with :data:`ADAPTER_SENTINEL`."""
    path = adapter_dir / "adapter_config.json"
    config = read_json(path, RunError, missing="PEFT's save_pretrained wrote none", damaged="retrain")
    config[_KEY] = {"peft_type": config.get("peft_type")}
    config["peft_type"] = ADAPTER_SENTINEL
    atomic_write_json(path, config)


def read_adapter_config(adapter_dir: Path):
    """The ``PeftConfig`` of a run's adapter dir, guarded (:func:`guard_adapter_config`) or plain (run dirs
    written before the guard)."""
    from peft import PeftConfig

    path = adapter_dir / "adapter_config.json"
    data = read_json(path, RunError, missing=f"the run's PEFT adapter dir {adapter_dir} is incomplete",
                     damaged="retrain")  # fmt: skip
    saved = data.pop(_KEY, None)
    if saved is not None:
        if data.get("peft_type") != ADAPTER_SENTINEL or not isinstance(saved, dict):
            raise RunError(
                f"{path}: a {_KEY!r} record without dna-vlm's guard; retrain (the file was edited)"
            )
        data["peft_type"] = saved.get("peft_type")
    try:
        return PeftConfig.from_peft_type(**data)
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path}: unreadable PEFT adapter config ({e!r})") from None
