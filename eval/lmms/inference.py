"""What the ``dna_vlm`` lmms-eval model does per request, as plain functions: lmms-eval generation kwargs ->
``generate`` kwargs, greedy/sampled answers, the mean NLL of continuations, and what a failed doc answers
(the gold option via the task's own ``doc_to_target`` / ``doc_to_choice``, so that it can lose).

The request bookkeeping (batching, multi-round) is in :mod:`dna_vlm.eval.lmms.plugin`, visuals in
:mod:`dna_vlm.eval.lmms.requests` / :mod:`dna_vlm.eval.lmms.visuals`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from typing import Any

from dna_vlm.eval.logs.records import FAILED_LOGLIKELIHOOD, FAILED_LOSS

__all__ = [
    "chunks_by_kwargs",
    "continuation_nll",
    "decode_answers",
    "decoy_letter",
    "generate_kwargs",
    "gold_indices",
    "task_of",
]

log = logging.getLogger("dna_vlm.eval.lmms.plugin")


def task_of(doc_to_visual):
    """The lmms-eval task object behind a request: ``doc_to_visual`` is its bound method (None for a plain
    function, as in-process tests pass)."""
    owner = getattr(doc_to_visual, "__self__", None)
    return owner if hasattr(owner, "doc_to_target") else None


def _gold_strings(task, doc) -> list[str]:
    """The gold option(s) of ``doc`` as text, from the task's own ``doc_to_target`` / ``doc_to_choice``."""
    target = task.doc_to_target(doc)
    try:
        choices = task.doc_to_choice(doc)
    except Exception:  # not a multiple_choice task
        choices = None
    targets = target if isinstance(target, list) else [target]
    out = []
    for t in targets:
        if isinstance(t, int) and not isinstance(t, bool) and choices and 0 <= t < len(choices):
            out.append(str(choices[t]))
        elif isinstance(t, str):
            out.append(t)
    return out


def gold_indices(doc_to_visual, doc, continuations: list[str]) -> list[int]:
    """Which of a doc's option ``continuations`` are gold (so a failed doc can make them lose); [] when the
    task cannot say."""
    task = task_of(doc_to_visual)
    if task is None:
        return []
    try:
        gold = {g.strip() for g in _gold_strings(task, doc)}
    except Exception as e:  # a task's own function failing must not stop a skip-mode run
        log.warning("dna_vlm: cannot find the gold option of a failed doc (%s: %s)", type(e).__name__, e)
        return []
    return [i for i, c in enumerate(continuations) if str(c).strip() in gold]


_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)\s]|$)")


def decoy_letter(doc_to_visual, doc) -> str | None:
    """A wrong option letter for a failed ``generate_until`` doc (the first of A-E that is not the gold
    letter), or None when the task's target is not an option letter / index."""
    task = task_of(doc_to_visual)
    if task is None:
        return None
    try:
        target = task.doc_to_target(doc)
    except Exception:
        return None
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < 26:
        gold = chr(ord("A") + target)
    else:
        m = _LETTER.match(str(target).strip())
        if not m:
            return None
        gold = m.group(1)
    return next(c for c in "ABCDE" if c != gold)


def generate_kwargs(gen_kwargs: dict | None, default_max_new_tokens: int) -> tuple[dict, list[str]]:
    """lmms-eval's ``gen_kwargs`` -> (``generate`` kwargs, stop strings). Sampling settings apply only with
    ``do_sample``; greedy otherwise."""
    gk = dict(gen_kwargs or {})
    until = gk.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    out: dict[str, Any] = {"max_new_tokens": int(gk.get("max_new_tokens") or default_max_new_tokens)}
    do_sample = bool(gk.get("do_sample", False))
    temperature = gk.get("temperature")
    if temperature is not None and float(temperature) > 0 and do_sample:
        out["temperature"] = float(temperature)
        if gk.get("top_p") is not None:
            out["top_p"] = float(gk["top_p"])
    out["do_sample"] = do_sample
    if gk.get("num_beams") is not None:
        out["num_beams"] = int(gk["num_beams"])
    return out, [u for u in until if isinstance(u, str) and u]


def chunks_by_kwargs(requests, batch_size: int) -> list[list[int]]:
    """Request indices in contiguous chunks of at most ``batch_size`` with identical generation kwargs."""
    chunks: list[list[int]] = []
    last = None
    for i, req in enumerate(requests):
        key = json.dumps(req.args[1], sort_keys=True, default=str)
        if not chunks or key != last or len(chunks[-1]) >= batch_size:
            chunks.append([])
        chunks[-1].append(i)
        last = key
    return chunks


def decode_answers(tokenizer, input_ids, output_ids, until: list[str]) -> list[str]:
    """The generated text after the prompt, cut at the first stop string, stripped (one per row)."""
    new = output_ids[:, input_ids.shape[1] :]
    res = []
    for t in tokenizer.batch_decode(new, skip_special_tokens=True):
        for u in until:
            if u in t:
                t = t.split(u)[0]
        res.append(t.strip())
    return res


def continuation_nll(model, inputs: dict, labels, eos_ids: set[int]) -> list[tuple[float, bool]]:
    """``(mean NLL, is greedy)`` of each row's labelled continuation, without the end-of-turn token(s) closing
    it; :data:`~dna_vlm.eval.logs.records.FAILED_LOGLIKELIHOOD` for a row with no label or a non-finite NLL.

    ``labels``: (n, L), -100 outside the continuation. Only the logits from the first labelled position on
    are computed when the model takes ``logits_to_keep``."""
    import torch
    import torch.nn.functional as F

    n, L = labels.shape
    mask = labels != -100
    for row in range(n):
        pos = mask[row].nonzero().flatten().tolist()
        while len(pos) > 1 and int(labels[row, pos[-1]]) in eos_ids:
            mask[row, pos.pop()] = False
    first = int(mask.float().argmax(dim=1).min()) if mask.any() else L - 1
    keep = L - max(first - 1, 0)
    kwargs = (
        {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )
    with torch.inference_mode():
        logits = model(**inputs, **kwargs).logits.float()
    lg = logits[:, -keep:][:, :-1]  # (n, keep - 1, V): predictions of positions L-keep+1 .. L-1
    tgt, m = labels[:, L - keep + 1 :], mask[:, L - keep + 1 :]
    out = []
    for row in range(n):
        sel = m[row]
        if not bool(sel.any()):
            out.append(FAILED_LOGLIKELIHOOD)
            continue
        lrow, trow = lg[row][sel], tgt[row][sel]
        nll = F.cross_entropy(lrow, trow, reduction="mean").item()
        greedy = bool((lrow.argmax(-1) == trow).all())
        out.append((float(nll) if math.isfinite(nll) else FAILED_LOSS, greedy))
    return out
