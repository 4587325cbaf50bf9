"""Validation during training: the answer loss and the accuracy of the ``--eval-data`` rows, and which
evaluation is the best so far (``--best-metric``).

Accuracy of one row (frames sampled ``"uniform"``, as evaluation does):

- multiple choice (``options``): the option whose letter, given as the answer, has the highest likelihood
  (sum of the log-probabilities of its answer tokens; the end-of-turn token that closes every answer left
  out) is the model's choice; correct when it is the gold letter (lmms-eval's ``acc`` of a multiple_choice
  task). Ties go to the first option.
- open-ended: correct when greedy decoding would write exactly the answer and stop: every answer token and
  the end-of-turn token after it are the argmax given the tokens before (teacher forcing, one forward pass;
  lmms-eval's ``is_greedy``).

Every process scores its share of the rows (row ``i`` on process ``i % world``) in the same number of
forward passes (a process with fewer rows runs a text-only pass it does not count), so collectives stay
matched; counts are summed over processes. A row whose video cannot be read is not counted (``skipped``).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import torch

from dna_vlm.data.prompting import (
    IGNORE_INDEX,
    batch_to_device,
    build_inputs,
    end_of_turn_ids,
    format_question,
)

__all__ = ["EvalResult", "answer_accuracy", "improves", "row_scores"]

#: metric name -> (metrics.jsonl key, True when higher is better)
BEST_METRICS = {"accuracy": ("eval_accuracy", True), "loss": ("eval_loss", False)}


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of the ``--eval-data`` rows."""

    loss: float  # mean answer-token loss
    accuracy: float | None  # fraction of scored rows answered correctly (None: no readable row)
    rows: int  # rows scored
    skipped: int  # rows whose video could not be read

    def record(self, step: int) -> dict:
        """The metrics.jsonl line."""
        return {"step": step, "eval_loss": self.loss, "eval_accuracy": self.accuracy,
                "eval_rows": self.rows, "eval_skipped": self.skipped}  # fmt: skip

    def value(self, metric: str) -> float | None:
        return self.accuracy if metric == "accuracy" else self.loss


def improves(metric: str, value: float | None, best: dict | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` ({"metric", "value", "step"} or None); ties keep the
    earlier step (a later equal value is no improvement)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    higher = BEST_METRICS[metric][1]
    return value > best["value"] if higher else value < best["value"]


@torch.no_grad()
def row_scores(model, batch: dict, eos_ids: set[int], trim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-likelihood (n,), greedy (n,) bool) of each sequence's labelled answer.

    ``batch``: a :func:`build_inputs` batch with ``labels`` (n, L), -100 outside the answer and its closing
    end-of-turn token. The log-likelihood leaves out the end-of-turn tokens that close the answer; ``greedy``
    includes them (greedy decoding stops there). ``trim``: logits only at the labelled positions."""
    labels = batch["labels"]
    target = labels[:, 1:]  # (n, L-1): the token at t+1 is predicted at position t
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if trim:
        keep = (target != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
        logits, target = model(**inputs, logits_to_keep=keep).logits, target[:, keep]  # (n, K, V), (n, K)
    else:
        logits = model(**inputs).logits[:, :-1]  # (n, L-1, V)
    mask = target != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (n, K)
    greedy = ((logits.argmax(-1) == target) | ~mask).all(dim=1)
    answer = mask.clone()
    for row in range(answer.shape[0]):  # drop the closing end-of-turn token(s) from the likelihood
        pos = answer[row].nonzero().flatten().tolist()
        while len(pos) > 1 and int(target[row, pos[-1]]) in eos_ids:
            answer[row, pos.pop()] = False
    return (tok * answer).sum(dim=1), greedy


def _candidates(ex) -> tuple[str, list[str]]:
    """(prompt, answers to score): every option letter of an MCQ row, the answer of an open one."""
    prompt = format_question(ex.question, ex.options)
    if ex.options is None:
        return prompt, [ex.answer]
    return prompt, list(string.ascii_uppercase[: len(ex.options)])


def _correct(ex, loglik: torch.Tensor, greedy: torch.Tensor) -> bool:
    if ex.options is None:
        return bool(greedy[0])
    return string.ascii_uppercase[int(loglik.argmax())] == ex.answer


def answer_accuracy(model, processor, examples: list, cfg, acc, float_dtype: torch.dtype,
                    trim: bool = False) -> tuple[float | None, int, int]:  # fmt: skip
    """(accuracy, rows scored, rows skipped) of ``examples`` over all processes (see the module docstring).

    ``cfg``: the :class:`~dna_vlm.train.config.TrainConfig` (num_frames, seek, batch_size);
    ``acc``: the accelerate ``Accelerator``."""
    from dna_vlm.video.decode import VideoError, sample_frames

    eos_ids = end_of_turn_ids(getattr(processor, "tokenizer", processor))
    mine = list(range(acc.process_index, len(examples), acc.num_processes))
    per_process = math.ceil(len(examples) / acc.num_processes)
    correct = torch.zeros((), device=acc.device)
    counted, skipped = torch.zeros_like(correct), torch.zeros_like(correct)
    for start in range(0, per_process, cfg.batch_size):
        rows, frames, prompts, answers = [], [], [], []
        for i in mine[start : start + cfg.batch_size]:
            ex = examples[i]
            try:
                f = sample_frames(ex.video, num_frames=cfg.num_frames, strategy="uniform", seek=cfg.seek)
            except (VideoError, OSError):
                skipped += 1
                continue
            prompt, cands = _candidates(ex)
            rows.append((ex, len(cands)))
            frames += [f] * len(cands)
            prompts += [prompt] * len(cands)
            answers += cands
        if not rows:  # keep the forward passes matched across processes: a text-only pass, not counted
            ex = examples[0]
            batch = build_inputs(processor, None, [format_question(ex.question, ex.options)], [ex.answer])
            row_scores(model, batch_to_device(batch, acc.device, float_dtype), eos_ids, trim)
            continue
        batch = batch_to_device(build_inputs(processor, frames, prompts, answers), acc.device, float_dtype)
        loglik, greedy = row_scores(model, batch, eos_ids, trim)
        at = 0
        for ex, k in rows:
            correct += _correct(ex, loglik[at : at + k], greedy[at : at + k])
            counted += 1
            at += k
    correct, counted = acc.reduce(correct, "sum"), acc.reduce(counted, "sum")
    skipped = acc.reduce(skipped, "sum")
    n = int(counted)
    return (float(correct) / n if n else None), n, int(skipped)
