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
import numbers
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
    "target_text",
    "task_of",
]

log = logging.getLogger("dna_vlm.eval.lmms.plugin")


def task_of(doc_to_visual):
    """The lmms-eval task object behind a request: ``doc_to_visual`` is its bound method (None for a plain
    function, as in-process tests pass)."""
    owner = getattr(doc_to_visual, "__self__", None)
    return owner if hasattr(owner, "doc_to_target") else None


def _choices(task, doc) -> list[str] | None:
    try:
        return [str(c).strip() for c in task.doc_to_choice(doc)]
    except Exception:  # not a multiple_choice task
        return None


def _as_index(target, n: int) -> int | None:
    """An option index from a target: an int, or a digit string (EgoSchema's ``answer`` is "0".."4"), in
    ``0..n-1``; None otherwise."""
    if isinstance(target, bool):
        return None
    if isinstance(target, numbers.Integral):
        i = int(target)
    elif isinstance(target, str) and target.strip().isdigit():
        i = int(target.strip())
    else:
        return None
    return i if 0 <= i < n else None


def _as_letter_index(target, n: int) -> int | None:
    """An option index from a target that is an option letter alone ("B", "(B)", "B."), in ``0..n-1``."""
    m = _LETTER_ALONE.match(target.strip()) if isinstance(target, str) else None
    i = ord(m.group(1)) - ord("A") if m else -1
    return i if 0 <= i < n else None


def _gold_of(target, texts: list[str], choices: list[str] | None) -> list[int] | None:
    """The option indices one target names: the option whose text it is (lmms-eval's own rule, on the
    continuations or the task's choices), else an index, else an option letter; None when it names none."""
    if isinstance(target, str):
        for options in (texts, choices or []):
            hits = [i for i, t in enumerate(options) if t == target.strip()]
            if hits and len(options) == len(texts):
                return hits
    i = _as_index(target, len(texts))
    if i is None:
        i = _as_letter_index(target, len(texts))
    return None if i is None else [i]


def gold_indices(doc_to_visual, doc, continuations: list[str]) -> list[int] | None:
    """Which of a doc's option ``continuations`` are gold, from the task's own ``doc_to_target`` /
    ``doc_to_choice`` (so a failed doc can make them lose); None when the task cannot say (a plain function
    as ``doc_to_visual``, a target that names no option, a task function that raises)."""
    task = task_of(doc_to_visual)
    if task is None:
        return None
    texts = [str(c).strip() for c in continuations]
    try:
        target = task.doc_to_target(doc)
        choices = _choices(task, doc)
    except Exception as e:  # a task's own function failing must not stop a skip-mode run
        log.warning("dna_vlm: cannot find the gold option of a failed doc (%s: %s)", type(e).__name__, e)
        return None
    gold: set[int] = set()
    for t in target if isinstance(target, list) else [target]:
        hits = _gold_of(t, texts, choices)
        if hits is None:
            return None
        gold.update(hits)
    return sorted(gold)


def target_text(doc_to_visual, doc) -> str:
    """The task's target of ``doc``, as short text for a report ("?" when it cannot be read)."""
    task = task_of(doc_to_visual)
    try:
        return repr(task.doc_to_target(doc))[:80] if task is not None else "? (no task object)"
    except Exception as e:
        return f"? ({type(e).__name__})"


_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])")  # "(B) walk", "B. walk", "B: walk", "B) walk"
_LETTER_ALONE = re.compile(r"^\(?([A-Z])\)?\.?$")
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-Z])[).:][ \t]*(.+?)[ \t]*$", re.M)


def _letter_in_prompt(context: str | None, target) -> str | None:
    """The letter of the one option line of the prompt (``(B) walk``, ``B. walk``, ``B: walk``) whose text is
    ``target``; None when no line or several do."""
    if not context or not isinstance(target, str) or not target.strip():
        return None
    want = target.strip().rstrip(".")
    found = {m.group(1) for m in _OPTION_LINE.finditer(context) if m.group(2).strip().rstrip(".") == want}
    return found.pop() if len(found) == 1 else None


def decoy_letter(doc_to_visual, doc, context: str | None = None) -> str | None:
    """A wrong option letter for a failed ``generate_until`` doc (the first of A-E that is not the gold
    letter), or None when the gold letter is unknown. The gold letter: the target itself (a letter, or an
    index as int or digit string), else the letter of the prompt's option line that reads as the target
    (MVBench's ``(A) run`` with target ``run``), else the letter a target starts with (``B. walk``)."""
    task = task_of(doc_to_visual)
    if task is None:
        return None
    try:
        target = task.doc_to_target(doc)
    except Exception:
        return None
    i = _as_index(target, 26)
    if i is None:
        i = _as_letter_index(target, 26)
    gold = chr(ord("A") + i) if i is not None else _letter_in_prompt(context, target)
    if gold is None:  # a target that starts with its letter ("B. walk")
        m = _LETTER.match(str(target).strip())
        gold = (m.group(1) or m.group(2)) if m else None
    return None if gold is None else next(c for c in "ABCDE" if c != gold)


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
