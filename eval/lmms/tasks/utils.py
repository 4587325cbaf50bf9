"""Helpers of the dna_vlm lmms-eval tasks (local JSONL video QA in the project's dataset format).

The YAMLs load the JSONL with lmms-eval's own local-JSON path (``dataset_path: json`` + ``dataset_kwargs:
data_files``, i.e. the offline HF ``datasets`` json builder). lmms-eval 0.7.3 does not expand environment
variables in task YAMLs (only cache dirs: ``api/task.py::_expand_cache_path``), so the tasks use
:class:`LocalVideoQATask`, a ``ConfigurableTask`` whose ``download`` expands ``$VARS`` / ``~`` in
``data_files`` first, validates the rows with :func:`dna_vlm.data.dataset.load_dataset` (errors name ``file:line``
and the field) and adds ``video_path`` (the video's absolute path; ``video`` may be relative to the JSONL).

Sample-log record (``--log_samples``): every doc's line carries ``acc`` (0/1; a failed sample counts as
wrong), ``failed`` (0/1) and ``dna_vlm``, the record dict; the record and the failure encoding are defined in
:mod:`dna_vlm.eval.logs.records` (:class:`~dna_vlm.eval.logs.records.SampleRecord`). ``category`` / ``density`` are
null when the row has none.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from dna_vlm.eval.logs.records import SampleRecord, failure_reason, is_failed_loss, noted_reason
from lmms_eval.api.task import ConfigurableTask

from dna_vlm.data.dataset import LETTERS

_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


# ------------------------------------------------------------------------------------------------ dataset


def _expand(path: str, task: str) -> str:
    missing = [m.group(1) for m in _VAR.finditer(path) if not os.environ.get(m.group(1))]
    if missing:
        raise ValueError(
            f"task {task}: data file {path!r} needs the environment variable(s) {', '.join(missing)} "
            "(the path of a JSONL in the dna_vlm dataset format), or copy the task YAML and set "
            "dataset_kwargs.data_files to a path"
        )
    return os.path.abspath(os.path.expanduser(os.path.expandvars(path)))


class LocalVideoQATask(ConfigurableTask):
    """A ConfigurableTask over a local JSONL (``dataset_path: json``) whose ``data_files`` may use ``$VARS``."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        config = {k: v for k, v in dict(config or {}).items() if k != "class"}
        super().__init__(config=config, **kwargs)

    def download(self, dataset_kwargs=None) -> None:
        from dna_vlm.data.dataset import load_dataset

        task = self.config.task
        dk = dict(dataset_kwargs or {})
        files = dk.get("data_files")
        if not files:
            raise ValueError(f"task {task}: dataset_kwargs.data_files is required")
        if isinstance(files, (str, list)):
            files = {self.config.test_split or "test": files}
        resolved: dict[str, str] = {}
        for split, f in dict(files).items():
            if isinstance(f, list):
                if len(f) != 1:
                    raise ValueError(f"task {task}: one JSONL per split, got {f!r}")
                f = f[0]
            resolved[split] = _expand(str(f), task)
        for path in resolved.values():
            examples = load_dataset(path)  # validates every row (DatasetError names file:line and field)
            if self.config.output_type == "multiple_choice":
                bad = [e.source for e in examples if not e.options]
                if bad:
                    raise ValueError(
                        f"task {task}: multiple_choice needs 'options' in every row; missing at {bad[0]}"
                        + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                    )
        dk["data_files"] = resolved
        super().download(dk)
        for split, path in resolved.items():
            base = os.path.dirname(path)

            def _abs(row, base=base):
                v = row["video"]
                return {"video_path": v if os.path.isabs(v) else os.path.normpath(os.path.join(base, v))}

            self.dataset[split] = self.dataset[split].map(_abs, load_from_cache_file=False)
        self.dataset_no_image = self.dataset


# ------------------------------------------------------------------------------------------------ docs


def _options(doc) -> list[str] | None:
    opts = doc.get("options")
    return list(opts) if opts else None


def doc_to_visual(doc) -> list[str]:
    return [doc["video_path"]]


def doc_to_visual_blind(doc) -> list:
    return []


def doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    from dna_vlm.data.prompting import format_question

    return format_question(doc["question"], _options(doc))


def doc_to_target(doc) -> str:
    return str(doc["answer"])


def doc_to_choice(doc) -> list[str]:
    return list(LETTERS[: len(_options(doc) or [])])


def doc_to_target_index(doc) -> int:
    return LETTERS.index(str(doc["answer"]).strip())


# ------------------------------------------------------------------------------------------------ scoring


def _normalize(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", str(text).lower())
    return " ".join(text.split())


def parse_letter(response: str, options: list[str]) -> str | None:
    """The option letter a free-form answer picks, or None."""
    letters = LETTERS[: len(options)]
    t = str(response).strip()
    m = re.match(r"^[\(\[]?([A-Z])[\)\]]?(?:[.:,)\s]|$)", t)
    if m and m.group(1) in letters:
        return m.group(1)
    m = re.search(r"\b(?:answer|option)(?:\s+is)?\s*[:\-]?\s*[\(\[]?([A-Z])\b", t, re.IGNORECASE)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    for cand in re.findall(r"\b([A-Z])\b", t):
        if cand in letters:
            return cand
    norm = _normalize(t)
    hits = [letters[i] for i, o in enumerate(options) if _normalize(o) and _normalize(o) in norm]
    return hits[0] if len(hits) == 1 else None


def _generate_results(doc, results, blind: bool) -> dict[str, Any]:
    response = results[0] if results else ""
    if isinstance(response, (list, tuple)):  # multi-round: the last round answers
        response = response[-1] if response else ""
    response = "" if response is None else str(response)
    record = SampleRecord.for_doc(doc, blind)
    record.response = response
    reason = failure_reason(response)
    if reason is not None:  # the text holds it lower-cased; the plugin noted it as it was
        return record.mark_failed(_noted_reason(doc, default=reason)).to_log()
    options = _options(doc)
    if options:
        record.pred = parse_letter(response, options)
        record.correct = record.pred == record.answer.strip()
    else:
        record.pred = response.strip()
        record.correct = _normalize(response) == _normalize(record.answer)
    return record.to_log()


def process_results_generate(doc, results, **kwargs) -> dict[str, Any]:
    return _generate_results(doc, results, blind=False)


def process_results_generate_blind(doc, results, **kwargs) -> dict[str, Any]:
    return _generate_results(doc, results, blind=True)


def _mc_results(doc, results, blind: bool) -> dict[str, Any]:
    record = SampleRecord.for_doc(doc, blind)
    pairs = list(results)
    if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
        raise TypeError(
            f"loglikelihood results should be (loss, is_greedy) pairs, got {pairs[:2]!r}: lmms-eval 0.7.3's "
            "api/instance.py::unwrap_generation_output turns them into strings; dna_vlm.eval.lmms.compat "
            "fixes that when the dna_vlm model is loaded (is DNA_VLM_LMMS_COMPAT disabling it?)"
        )
    record.losses = [float(p[0]) for p in pairs]
    if any(is_failed_loss(loss) for loss in record.losses):
        return record.mark_failed(_noted_reason(doc)).to_log()
    pred = min(range(len(record.losses)), key=record.losses.__getitem__)
    record.pred = LETTERS[pred]
    record.correct = record.pred == record.answer.strip()
    return record.to_log()


def _noted_reason(doc, **default) -> str:
    """Why the plugin could not load ``doc``'s video: noted under the video's resolved path (a doc id is
    not unique across tasks)."""
    path = doc.get("video_path")
    return noted_reason(str(Path(path).resolve()) if path else str(doc.get("id")), **default)


def process_results_mc(doc, results, **kwargs) -> dict[str, Any]:
    return _mc_results(doc, results, blind=False)


def process_results_mc_blind(doc, results, **kwargs) -> dict[str, Any]:
    return _mc_results(doc, results, blind=True)


# ------------------------------------------------------------------------------------------------ aggregation


def aggregate_sum(items) -> int:
    return int(sum(items))


def aggregate_count(items) -> int:
    return len(list(items))
