"""What a ``dna_vlm`` lmms-eval run evaluated: the provenance record, built at load time.

The plugin builds it once (:func:`build_provenance`), logs the patch table, keeps it in this process
(:func:`current`) and adds the failures it meets (:func:`add_failure`), the failed docs whose gold option it
could not find (:func:`add_gold_unknown`: a stock metric may score those right) and, once lmms-eval has
aggregated a task, each stock score recomputed without the failed docs (:func:`add_stock_scores`, through
:mod:`dna_vlm.eval.lmms.compat`'s workaround ``stock_scores``). When lmms-eval saves its results,
:mod:`dna_vlm.eval.lmms.compat` (workaround ``provenance``) puts the record into the results JSON under
``config.dna_vlm`` and writes it beside the sample logs as ``<date>_dna_vlm.json``;
:func:`dna_vlm.eval.logs.records.read_provenance` reads it back from a sample log's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

__all__ = [
    "add_failure",
    "add_gold_unknown",
    "add_stock_scores",
    "build_provenance",
    "current",
    "patch_table",
    "reset",
    "weights_digest",
]

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


def _vision_kernel(model) -> str | None:
    """What computes the vision attention (:func:`dna_vlm.patching.attention_kernel`), None for a model of a
    family the adapters do not know."""
    from dna_vlm.errors import UnsupportedModelError
    from dna_vlm.patching import attention_kernel

    try:
        return attention_kernel(model)
    except UnsupportedModelError:
        return None


def _kernel(model, trained_with: str | None) -> dict:
    """The attention implementation(s) of the model and its vision config; ``vision_attention``: what really
    computes the vision attention here, ``trained_with``: what did in training (the run's
    ``attention_kernel``; None without a run or for a run that predates the record)."""
    cfg = getattr(model, "config", None)
    vision = getattr(cfg, "vision_config", None)
    ran = _vision_kernel(model)
    if trained_with and ran and ran != trained_with:
        log.warning(
            "dna_vlm: the vision attention runs through %s here but the run trained through %s: outputs "
            "differ by the kernels' rounding; load it with the attn_implementation it trained with",
            ran,
            trained_with,
        )
    return {
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "vision_attn_implementation": getattr(vision, "_attn_implementation", None),
        "vision_attention": ran,
        "trained_with": trained_with,
    }


def build_provenance(
    model, info: dict, run_dir, dna_dir, sampling: dict, controls: dict, bad_video: str,
    trained_kernel: str | None = None,
) -> dict:  # fmt: skip
    """The record of this process's model (kept as :func:`current`) and a log of its patch table;
    ``trained_kernel``: the run's recorded ``attention_kernel``."""
    from dna_vlm.version import __version__

    table = patch_table(model)
    weights_dir = run_dir if run_dir is not None else dna_dir
    record = {
        "dna_vlm_version": __version__,
        "base_model": {"pretrained": info.get("pretrained"), **_config_digest(model)},
        "run_dir": None if run_dir is None else str(Path(run_dir).resolve()),
        "dna_dir": None if dna_dir is None else str(Path(dna_dir).resolve()),
        "weights": weights_digest(weights_dir),
        "attention": info.get("attention"),
        "dna_options": _dna_options(model),
        "kernel": _kernel(model, trained_kernel),
        "dtype": info.get("dtype"),
        "patch_table": table,
        "frame_sampling": sampling,
        "controls": controls,
        "bad_video": bad_video,
        "failures": [],
        "gold_unknown": [],
        "stock_scores": {},
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


def add_gold_unknown(record: dict, task: str, doc_id, kind: str, target: str) -> None:
    """Add a failed sample whose gold option the plugin could not find (so it could not make it lose) to a
    provenance ``record``; ``kind``: the request type, ``target``: the task's ``doc_to_target``, as text."""
    entry = {"task": task, "doc_id": doc_id, "kind": kind, "target": target}
    record.setdefault("gold_unknown", []).append(entry)


#: aggregations that must not run twice (they write a submission file or post to a benchmark's server)
_SIDE_EFFECTS = re.compile(r"submi|upload|server", re.I)


def add_stock_scores(record: dict, task_output) -> None:
    """Add, to a provenance ``record``, each stock aggregate of a task with failed samples recomputed with the
    task's own aggregation over the other docs: ``stock_scores[task]["<metric>,<filter>"] = {"stock",
    "without_failed", "n", "failed"}`` (``without_failed`` None when every doc failed), and log both numbers.

    ``task_output``: lmms-eval's ``TaskOutput`` after ``calculate_aggregate_metric`` (rank 0, gathered); its
    ``logged_samples`` (``--log_samples``) tell which docs failed (:func:`~dna_vlm.eval.logs.records.row_failure`)."""
    failed_ids = _failed_doc_ids(task_output.logged_samples)
    if not failed_ids:
        return
    task, aggregation = task_output.task_name, task_output.task.aggregation()
    for (metric, fkey), items in task_output.sample_metrics.items():
        fn = aggregation.get(metric)
        if fn is None or _SIDE_EFFECTS.search(f"{metric} {getattr(fn, '__name__', '')}"):
            continue
        doc_ids = _item_doc_ids(task_output.logged_samples, len(items))
        if doc_ids is None:
            log.warning(
                "dna_vlm: task %s: cannot tell which %s values are failed docs; not recomputed", task, metric
            )
            continue
        kept = [v for v, d in zip(items, doc_ids, strict=True) if d not in failed_ids]
        key = f"{metric},{fkey}"
        entry = {
            "stock": task_output.agg_metrics.get(key),
            "without_failed": _aggregate(fn, kept, task_output.task.args) if kept else None,
            "n": len(items),
            "failed": len(items) - len(kept),
        }
        record.setdefault("stock_scores", {}).setdefault(task, {})[key] = entry
        log.warning(
            "dna_vlm: task %s: stock %s = %s over %d docs, %d of them failed; without the failed docs: %s",
            task, key, entry["stock"], entry["n"], entry["failed"], entry["without_failed"],
        )  # fmt: skip


def _failed_doc_ids(rows: list[dict]) -> set:
    from dna_vlm.eval.logs.records import row_failure

    return {r.get("doc_id") for r in rows if row_failure(r)[0]}


def _item_doc_ids(rows: list[dict], n: int) -> list | None:
    """The doc id of each of ``n`` per-doc metric values: the logged rows in the same order (one block per
    filter when a task has several, all blocks alike); None when they do not line up."""
    ids = [r.get("doc_id") for r in rows]
    if not n or len(ids) % n:
        return None
    blocks = [ids[i : i + n] for i in range(0, len(ids), n)]
    return blocks[0] if all(b == blocks[0] for b in blocks) else None


def _aggregate(fn, items: list, args):
    """``fn(items)`` as lmms-eval calls an aggregation (``TaskOutput.calculate_aggregate_metric``)."""
    import inspect

    return fn(items, args=args) if "args" in inspect.signature(fn).parameters else fn(items)
