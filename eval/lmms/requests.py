"""The visual side of the ``dna_vlm`` model's requests: pre-flight, frames, input controls and failures.

:class:`RequestVisuals` is what :class:`dna_vlm.eval.lmms.plugin.DnaVLM` asks for a request's inputs. It
keys docs by ``(task, split, doc_id, doc_to_visual)`` -- never by a doc's ``id`` field or its position
alone -- and frames by the video's identity (:class:`dna_vlm.eval.lmms.visuals.FrameLoader`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dna_vlm.eval.lmms.controls import Controls, apply_video_control, visual_seed
from dna_vlm.eval.lmms.provenance import add_failure
from dna_vlm.eval.lmms.visuals import (
    FrameLoader,
    Visual,
    VisualFailure,
    check_video,
    resolve_visual,
    strip_image_placeholders,
)
from dna_vlm.eval.logs.records import note_failure

__all__ = ["BadVideoError", "Loaded", "RequestVisuals", "request_parts"]

log = logging.getLogger("dna_vlm.eval.lmms.plugin")


class BadVideoError(RuntimeError):
    """``bad_video=fail`` met unreadable videos; the message lists every one (task, doc id, path, reason)."""


@dataclass
class Loaded:
    """A request's model inputs: ``frames`` (None: text-only) after the video control, the prompt text, the
    noise seed of the visual; or ``failed`` (the reason) for a sample whose visual could not be loaded."""

    frames: np.ndarray | None = None
    context: str = ""
    seed: int = 0
    failed: str | None = None


def request_parts(args: tuple) -> tuple[str, Any, Any, str, str]:
    """``(context, doc_to_visual, doc_id, task, split)`` of a request's ``args``, any request type."""
    return args[0], args[2], args[-3], args[-2], args[-1]


def _failure_keys(task: str, doc_id, path: str | None) -> list[str]:
    keys = [f"{task}:{doc_id}"]
    if path:
        keys.append(str(Path(path).resolve()))
    return keys


class RequestVisuals:
    """Pre-flight and per-request inputs (see the module docstring)."""

    def __init__(
        self,
        loader: FrameLoader,
        controls: Controls,
        bad_video: str,
        processor=None,
        accelerator=None,
        provenance: dict | None = None,
    ):
        self.loader, self.controls, self.bad_video = loader, controls, bad_video
        self.processor, self.accelerator = processor, accelerator
        self.provenance = provenance if provenance is not None else {}
        self._visuals: dict[tuple, Visual | VisualFailure] = {}
        self.failed: Counter[str] = Counter()  # task -> failed docs in this call (this process)
        self._logged: set[tuple] = set()
        self._new: list[tuple] = []  # this call's failures, for the provenance

    # ------------------------------------------------------------------------------------ pre-flight

    def prepare(self, requests, docs) -> None:
        """Resolve every request's visual and open every video once; with ``bad_video=fail`` raise ONE
        :class:`BadVideoError` listing every unreadable one. ``docs(task, split, doc_id)`` -> the doc."""
        self._visuals.clear()
        if self.controls.video == "none":
            return  # the blind twin never opens a video
        opened: dict[str, VisualFailure | None] = {}
        bad: list[str] = []
        for req in requests:
            _ctx, dtv, doc_id, task, split = request_parts(req.args)
            key = (task, split, doc_id, dtv)
            if key in self._visuals:
                continue
            try:
                visual = resolve_visual(dtv, docs(task, split, doc_id), doc_id)
                if visual.kind == "images":
                    visual.images = None  # re-read when needed: never hold every doc's images
                if visual.kind == "video":
                    if visual.path not in opened:
                        opened[visual.path] = _try_open(visual.path)
                    if opened[visual.path] is not None:
                        raise opened[visual.path]
                self._visuals[key] = visual
            except VisualFailure as e:
                self._visuals[key] = e
                bad.append(f"  task={task} doc_id={doc_id} path={e.path}: {e}")
        self._raise_if_failing(bad)
        paths = [v.path for v in self._visuals.values() if isinstance(v, Visual) and v.kind == "video"]
        self.loader.start_prefetch(paths)  # dict order = request order = the order frames are asked for

    def _raise_if_failing(self, bad: list[str]) -> None:
        if self.bad_video != "fail":
            return
        n = len(bad)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            import torch

            total = self.accelerator.gather(torch.tensor([n], device=self.accelerator.device))
            n_all = int(total.sum())
        else:
            n_all = n
        if n_all:
            raise BadVideoError(
                f"dna_vlm: {n_all} unreadable video(s) (bad_video=fail; fix or remove them, or pass "
                f"model_args bad_video=skip to run without them){'' if n else ' on other processes'}:\n"
                + "\n".join(bad)
            )

    # ------------------------------------------------------------------------------------ per request

    def load(self, args: tuple, doc, visuals_override=None) -> Loaded:
        """The inputs of one request (``visuals_override``: a multi-round's new visuals)."""
        context, dtv, doc_id, task, split = request_parts(args)
        key = (task, split, doc_id, dtv)
        try:
            if visuals_override is not None:
                visual = resolve_visual(lambda _d: visuals_override, doc, doc_id)
            elif self.controls.video == "none":
                visual = Visual("none")
            else:
                visual = self._visuals.get(key) or resolve_visual(dtv, doc, doc_id)
                if isinstance(visual, VisualFailure):
                    raise visual
                if visual.kind == "images" and visual.images is None:
                    visual = resolve_visual(dtv, doc, doc_id)
            frames = self.loader.frames(visual) if self.controls.video != "none" else None
        except VisualFailure as e:
            return Loaded(failed=self._fail(task, doc_id, e), context=context)
        if visual.kind == "images" or self.controls.video == "none":
            context = strip_image_placeholders(context, self.processor)
        seed = 0
        if frames is not None and (self.controls.video == "shuffled" or self.controls.degrades):
            seed = visual_seed(frames, self.controls.seed)
        return Loaded(apply_video_control(frames, self.controls.video, self.controls.seed), context, seed)

    def _fail(self, task: str, doc_id, e: VisualFailure) -> str:
        reason = str(e)
        if self.bad_video == "fail":
            raise BadVideoError(
                f"dna_vlm: unreadable video (bad_video=fail; fix it or pass model_args bad_video=skip):\n"
                f"  task={task} doc_id={doc_id} path={e.path}: {reason}"
            )
        for k in _failure_keys(task, doc_id, e.path):
            note_failure(k, reason)
        if (task, doc_id) not in self._logged:  # once per doc (a question's options share it)
            self._logged.add((task, doc_id))
            log.warning("dna_vlm: task %s doc %s failed: %s", task, doc_id, reason)
            self.failed[task] += 1
            self._new.append((task, doc_id, e.path, reason))
        return reason

    def report(self, kind: str) -> None:
        """End of a request-type call: stop prefetching; log how many samples failed (``bad_video=skip``) and
        add them -- from every process -- to the provenance (rank 0 writes it), with the frame cache's fault
        (``frame_cache_faults``: it was bypassed, no sample failed for it)."""
        self.loader.stop_prefetch()
        new, faults = self._new, [self.loader.cache_fault] if self.loader.cache_fault else []
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([(list(new), faults)])
            new = [f for part, _ in parts for f in part]
            faults = [f for _, part in parts for f in part]
        for f in new:
            add_failure(self.provenance, *f)
        if faults:
            known = self.provenance.setdefault("frame_cache_faults", [])
            known.extend(f for f in dict.fromkeys(faults) if f not in known)
        self._new = []
        if self.failed:
            per = ", ".join(f"{t}: {n}" for t, n in sorted(self.failed.items()))
            log.warning(
                "dna_vlm: %d %s sample(s) failed and were kept as failures (bad_video=skip) -- %s. "
                "Each is marked in the sample log (dna_vlm.eval.logs.records.row_failure) and scored wrong by the "
                "stock metric where the output type allows; python -m dna_vlm.eval.lmms.run prints how.",
                sum(self.failed.values()),
                kind,
                per,
            )
        self.failed.clear()
        self._logged.clear()


def _try_open(path: str) -> VisualFailure | None:
    try:
        check_video(path)
    except VisualFailure as e:
        return e
    return None
