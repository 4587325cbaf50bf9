"""Workarounds for lmms-eval 0.7.3 bugs that break a plugin model (applied when the plugin is imported).

lmms-eval discovers the ``dna_vlm`` model through the ``lmms_eval.models`` entry-point group, which it loads
while ``lmms_eval.models`` is being imported (``lmms_eval/models/__init__.py``: ``_initialize_model_registry``
-> ``ModelRegistryV2.load_entrypoint_manifests``). ``lmms_eval/evaluator.py`` imports ``lmms_eval.models`` at
line 31, before it binds ``unwrap_generation_output`` (line 32) and long before ``simple_evaluate`` calls
``_enable_reentrant_filelocks`` (line 533). So importing :mod:`dna_vlm.eval.lmms.plugin` (which calls
:func:`apply`) is early enough for every workaround below, with the stock ``lmms-eval`` / ``python -m
lmms_eval`` CLI.

Each workaround is minimal, idempotent and can be switched off for bug reports and tests with the environment
variable ``DNA_VLM_LMMS_COMPAT``: ``0`` (or ``off``) disables all of them; a comma list of names
(``-unwrap``, ``-filelock``, ``-provenance``, ``-task_index``, ``-stock_scores``) disables single ones.

1. ``unwrap`` -- ``lmms_eval/api/instance.py:44-71`` ``unwrap_generation_output`` normalises every model
   output, and its fallback ``return str(output), None`` (line 71) turns a ``loglikelihood`` result
   ``(float, bool)`` into the string ``"(-1.2, False)"``. The evaluator stores that string in ``req.resps``
   (``evaluator.py:1231-1233``), so ``ConfigurableTask.process_results`` for ``multiple_choice``
   (``api/task.py:1606``: ``lls, is_greedy = zip(*results)``) fails for every model and every
   ``multiple_choice`` task. Fix: a wrapper that returns ``(number, bool)`` tuples unchanged and defers to the
   original for everything else; installed on ``lmms_eval.api.instance`` and, if already imported, on
   ``lmms_eval.evaluator`` (which binds the name at import time).
2. ``filelock`` -- ``lmms_eval/evaluator.py:134`` (``_enable_reentrant_filelocks``, called from
   ``simple_evaluate`` at line 533) does ``import filelock._api``; filelock 4.x moved that module to
   ``filelock._core`` (``FileLockMeta``/``BaseFileLock``, ``_core/_settings.py::UNSET_FILE_MODE``), so every
   evaluation raises ``ModuleNotFoundError`` (installed here: filelock 4.3.1). Fix: when ``filelock._api`` is
   missing, register a tiny alias module ``filelock._api`` exposing ``FileLockMeta``, ``BaseFileLock`` and
   ``_UNSET_FILE_MODE`` from their 4.x homes. With filelock 3.x (which still has ``_api``) nothing is done.
   (Pinning ``filelock>=3.24.2,<4`` is consistent with the installed metadata -- huggingface_hub needs
   ``>=3.10``, virtualenv ``<5,>=3.24.2``, datasets/torch unpinned -- but the shim avoids downgrading a
   user's environment.)
3. ``provenance`` -- lmms-eval 0.7.3 records nothing about a model beyond its ``model_args`` string
   (``evaluator.py:692-697``, the model-info hook is commented out). Fix: a wrapper around
   ``EvaluationTracker.save_results_aggregated`` (``loggers/evaluation_tracker.py:169``) that, when the
   ``dna_vlm`` model was loaded in this process, adds its provenance under ``results["config"]["dna_vlm"]``
   and writes it beside the sample logs as ``<date>_dna_vlm.json`` (the samples use the same ``<date>``).
4. ``task_index`` (speed, not a bug) -- every evaluation builds a ``TaskManager`` whose
   ``_get_task_and_group`` (``lmms_eval/tasks/__init__.py:383``) parses each of the ~3,200 task YAMLs with
   PyYAML's pure-Python loader: 2.9 s per run on a 2-core EPYC, paid again by every run of one
   ``--config`` process (:func:`dna_vlm.eval.lmms.run.run_lmms_many`). Fix: the index of a folder is kept for
   the process and reused while no ``.yaml`` file under it was added, removed or changed (path, size,
   mtime_ns: one ``os.walk`` of stats, ~30 ms); each caller gets its own deep copy. The first run still
   indexes, so a single-run CLI call behaves exactly as before.
5. ``stock_scores`` (not a bug: what a stock score hides) -- with ``bad_video=skip`` a stock aggregate counts
   every failed doc (as wrong: the plugin makes failures lose). Fix: a wrapper around
   ``TaskOutput.calculate_aggregate_metric`` (``evaluator_utils.py:115``, called on rank 0 once every rank's
   values are gathered) that, when the ``dna_vlm`` model was loaded in this process and the task has failed
   docs, recomputes each aggregate with the task's own aggregation over the other docs and adds both numbers
   to the provenance (:func:`dna_vlm.eval.lmms.provenance.add_stock_scores`); lmms-eval's own numbers are
   unchanged.
6. The CLI exits 0 even when evaluation failed: ``lmms_eval/__main__.py:609-615`` catches every exception of
   ``cli_evaluate_single``, prints the traceback and appends ``None`` to the results (unless
   ``--verbosity DEBUG``). No code can fix that from a plugin; :mod:`dna_vlm.eval.lmms.run` runs the CLI and
   raises (with the stderr tail) when the results file is missing.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

__all__ = [
    "ENV",
    "applied",
    "apply",
    "enabled",
    "loglikelihood_tuple",
    "patch_filelock_api",
    "patch_provenance",
    "patch_stock_scores",
    "patch_task_index",
    "patch_unwrap",
]

ENV = "DNA_VLM_LMMS_COMPAT"
NAMES = ("unwrap", "filelock", "provenance", "task_index", "stock_scores")
_applied: dict[str, bool] = {}


def enabled(name: str) -> bool:
    """Whether workaround ``name`` is enabled by ``DNA_VLM_LMMS_COMPAT`` (default: all enabled)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "off", "false", "no", "none"):
        return False
    disabled = {v.strip().lstrip("-") for v in value.split(",") if v.strip().startswith("-")}
    return name not in disabled


def loglikelihood_tuple(output: Any) -> bool:
    """True for a ``loglikelihood`` result: a 2-tuple ``(number, bool)``."""
    if not (isinstance(output, tuple) and len(output) == 2):
        return False
    value, greedy = output
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number:
        try:  # numpy / torch scalars
            import numbers

            is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        except Exception:  # pragma: no cover
            is_number = False
    return is_number and (isinstance(greedy, bool) or type(greedy).__name__ in ("bool_", "bool"))


def patch_unwrap() -> bool:
    """Workaround 1 (see the module docstring). Returns True when the patch is (now) installed."""
    import lmms_eval.api.instance as instance

    original = instance.unwrap_generation_output
    if getattr(original, "_dna_vlm_patched", False):
        return True

    def unwrap_generation_output(output):
        if loglikelihood_tuple(output):
            return (float(output[0]), bool(output[1])), None
        return original(output)

    unwrap_generation_output._dna_vlm_patched = True  # type: ignore[attr-defined]
    unwrap_generation_output.__wrapped__ = original  # type: ignore[attr-defined]
    unwrap_generation_output.__doc__ = original.__doc__
    instance.unwrap_generation_output = unwrap_generation_output
    evaluator = sys.modules.get("lmms_eval.evaluator")
    if evaluator is not None and getattr(evaluator, "unwrap_generation_output", None) is original:
        evaluator.unwrap_generation_output = unwrap_generation_output
    return True


def patch_filelock_api() -> bool:
    """Workaround 2 (see the module docstring). Returns True when an alias module was installed."""
    try:
        import filelock._api

        return False
    except ImportError:
        pass
    import filelock
    from filelock._core import BaseFileLock, FileLockMeta

    try:
        from filelock._core._settings import UNSET_FILE_MODE
    except ImportError:  # pragma: no cover - other 4.x layouts
        UNSET_FILE_MODE = -1
    mod = types.ModuleType("filelock._api")
    mod.__doc__ = (
        "Alias installed by dna_vlm.eval.lmms.compat: lmms-eval 0.7.3 imports filelock._api, "
        "which filelock 4.x moved to filelock._core."
    )
    mod.FileLockMeta = FileLockMeta  # type: ignore[attr-defined]
    mod.BaseFileLock = BaseFileLock  # type: ignore[attr-defined]
    mod._UNSET_FILE_MODE = UNSET_FILE_MODE  # type: ignore[attr-defined]
    sys.modules["filelock._api"] = mod
    filelock._api = mod  # type: ignore[attr-defined]
    return True


def patch_provenance() -> bool:
    """Workaround 3 (see the module docstring). Returns True when the wrapper is (now) installed."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    original = EvaluationTracker.save_results_aggregated
    if getattr(original, "_dna_vlm_patched", False):
        return True

    def save_results_aggregated(self, results, samples, datetime_str):
        from pathlib import Path

        from dna_vlm.eval.lmms.provenance import current, reset
        from dna_vlm.eval.logs.records import PROVENANCE_KEY

        record = current()
        if record and isinstance(results, dict):
            results.setdefault("config", {})[PROVENANCE_KEY] = record
        out = original(self, results, samples, datetime_str)
        if record and self.output_path and getattr(self, "date_id", None):
            folder = Path(self.output_path) / self.general_config_tracker.model_name_sanitized
            from dna_vlm.files import atomic_write_json

            atomic_write_json(folder / f"{self.date_id}_{PROVENANCE_KEY}.json", record)
        reset()  # this run is done: the next run in this process records its own model or nothing
        return out

    save_results_aggregated._dna_vlm_patched = True  # type: ignore[attr-defined]
    save_results_aggregated.__wrapped__ = original  # type: ignore[attr-defined]
    EvaluationTracker.save_results_aggregated = save_results_aggregated
    return True


def _yaml_signature(task_dir: str) -> tuple:
    """(path, size, mtime_ns) of every ``.yaml`` under ``task_dir``, sorted: what the task index reads."""
    sig = []
    for root, _dirs, files in os.walk(task_dir):
        for f in files:
            if f.endswith(".yaml"):
                st = os.stat(os.path.join(root, f))
                sig.append((os.path.join(root, f), st.st_size, st.st_mtime_ns))
    return tuple(sorted(sig))


def patch_task_index() -> bool:
    """Workaround 4 (see the module docstring). Returns True when the wrapper is (now) installed."""
    import copy

    from lmms_eval.tasks import TaskManager

    original = TaskManager._get_task_and_group
    if getattr(original, "_dna_vlm_patched", False):
        return True
    memo: dict[str, tuple[tuple, Any]] = {}

    def _get_task_and_group(self, task_dir: str):
        sig = _yaml_signature(task_dir)
        hit = memo.get(task_dir)
        if hit is None or hit[0] != sig:
            memo[task_dir] = hit = (sig, original(self, task_dir))
        return copy.deepcopy(hit[1])

    _get_task_and_group._dna_vlm_patched = True  # type: ignore[attr-defined]
    _get_task_and_group.__wrapped__ = original  # type: ignore[attr-defined]
    TaskManager._get_task_and_group = _get_task_and_group
    return True


def patch_stock_scores() -> bool:
    """Workaround 5 (see the module docstring). Returns True when the wrapper is (now) installed."""
    import logging

    from lmms_eval.evaluator_utils import TaskOutput

    original = TaskOutput.calculate_aggregate_metric
    if getattr(original, "_dna_vlm_patched", False):
        return True

    def calculate_aggregate_metric(self, bootstrap_iters=100000):
        original(self, bootstrap_iters=bootstrap_iters)
        from dna_vlm.eval.lmms.provenance import add_stock_scores, current

        record = current()
        if record and self.task is not None:
            try:
                add_stock_scores(record, self)
            except Exception as e:  # a task's own aggregation failing on fewer docs must not stop the run
                logging.getLogger("dna_vlm.eval.lmms.plugin").warning(
                    "dna_vlm: task %s: the stock score without the failed docs could not be computed (%s: %s)",
                    self.task_name, type(e).__name__, e,
                )  # fmt: skip

    calculate_aggregate_metric._dna_vlm_patched = True  # type: ignore[attr-defined]
    calculate_aggregate_metric.__wrapped__ = original  # type: ignore[attr-defined]
    TaskOutput.calculate_aggregate_metric = calculate_aggregate_metric
    return True


def apply() -> dict[str, bool]:
    """Apply every enabled workaround once; returns ``{name: installed}``."""
    fns = (("unwrap", patch_unwrap), ("filelock", patch_filelock_api), ("provenance", patch_provenance),
           ("task_index", patch_task_index), ("stock_scores", patch_stock_scores))  # fmt: skip
    for name, fn in fns:
        if name in _applied or not enabled(name):
            continue
        _applied[name] = bool(fn())
    return dict(_applied)


def applied() -> dict[str, bool]:
    """What :func:`apply` installed in this process."""
    return dict(_applied)
