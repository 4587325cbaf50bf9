"""What a ``dna_vlm`` lmms-eval run evaluated: the provenance record, built at load time.

The plugin builds it once (:func:`build_provenance`), logs the patch table, keeps it in this process
(:func:`current`) and adds the failures it meets (:func:`add_failure`). When lmms-eval saves its results,
:mod:`dna_vlm.eval.lmms.compat` (workaround ``provenance``) puts the record into the results JSON under
``config.dna_vlm`` and writes it beside the sample logs as ``<date>_dna_vlm.json``;
:func:`dna_vlm.eval.logs.records.read_provenance` reads it back from a sample log's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_failure", "build_provenance", "current", "patch_table", "reset", "weights_digest"]

log = logging.getLogger("dna_vlm.eval.lmms.plugin")

#: the record of the dna_vlm model loaded last in this process, until its run's results are saved
_CURRENT: list[dict[str, Any]] = []
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_digest(folder: str | Path | None) -> dict | None:
    """``{"sha256": digest over every weight file (relative path + :func:`dna_vlm.files.sampled_digest`),
    "files": [...]}`` of a run or ``save_dna`` dir, None without one."""
    from dna_vlm.files import sampled_digest

    if folder is None:
        return None
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + sampled_digest(p).encode())
    return {"sha256": h.hexdigest(), "files": [str(p.relative_to(root)) for p in files]}


def _config_digest(model) -> dict:
    """The base model's identity: its ``name_or_path``, model type and a digest of its config."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return {
        "name_or_path": getattr(cfg, "_name_or_path", None),
        "model_type": getattr(cfg, "model_type", None),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def patch_table(model) -> list[dict]:
    """One row per attention module DnA (or the softmax control layer) replaced; [] for a stock model."""
    from dna_vlm.patching import patch_state

    state = patch_state(model)
    if state is None:
        return []
    return [{"index": layer.index, "tower": layer.tower, "module": layer.key} for layer in state.layers]


def _dna_options(model) -> dict | None:
    from dataclasses import asdict

    from dna_vlm.patching import patch_state

    state = patch_state(model)
    if state is None:
        return None
    return {"family": state.family, "attention_class": state.attention_class, **asdict(state.options)}


def _kernel(model) -> dict:
    """The attention implementation(s) of the model and its vision config."""
    cfg = getattr(model, "config", None)
    vision = getattr(cfg, "vision_config", None)
    return {
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "vision_attn_implementation": getattr(vision, "_attn_implementation", None),
    }


def build_provenance(
    model, info: dict, run_dir, dna_dir, sampling: dict, controls: dict, bad_video: str
) -> dict:
    """The record of this process's model (kept as :func:`current`) and a log of its patch table."""
    import dna_vlm

    table = patch_table(model)
    weights_dir = run_dir if run_dir is not None else dna_dir
    record = {
        "dna_vlm_version": dna_vlm.__version__,
        "base_model": {"pretrained": info.get("pretrained"), **_config_digest(model)},
        "run_dir": None if run_dir is None else str(Path(run_dir).resolve()),
        "dna_dir": None if dna_dir is None else str(Path(dna_dir).resolve()),
        "weights": weights_digest(weights_dir),
        "attention": info.get("attention"),
        "dna_options": _dna_options(model),
        "kernel": _kernel(model),
        "dtype": info.get("dtype"),
        "patch_table": table,
        "frame_sampling": sampling,
        "controls": controls,
        "bad_video": bad_video,
        "failures": [],
    }
    _CURRENT[:] = [record]
    _log_table(record)
    return record


def _log_table(record: dict) -> None:
    table = record["patch_table"]
    if not table:
        log.warning("dna_vlm: stock model (no attention module patched), attention=%s", record["attention"])
        return
    opts = record["dna_options"] or {}
    lines = [
        f"dna_vlm: patched {len(table)} attention modules (family={opts.get('family')}, "
        f"attention={opts.get('attention')}, init={opts.get('init')}, neg_branch={opts.get('neg_branch')})"
    ]
    lines += [f"  {row['index']:>3}  {row['module']}" for row in table]
    log.warning("\n".join(lines))


def current() -> dict:
    """The provenance of the model loaded last in this process ({} before one is loaded)."""
    return _CURRENT[0] if _CURRENT else {}


def reset() -> None:
    """Forget the current record: called once a run's results are saved, so a later run in the same process
    (lmms-eval ``--config`` with several runs) of a model that is not ``dna_vlm`` records none."""
    _CURRENT.clear()


def add_failure(record: dict, task: str, doc_id, path: str | None, reason: str) -> None:
    """Add a failed sample (``bad_video=skip``) to a provenance ``record``."""
    record.setdefault("failures", []).append({"task": task, "doc_id": doc_id, "path": path, "reason": reason})
