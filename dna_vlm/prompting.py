"""Prompts and model inputs for video questions (project contracts 2 and 6).

- :func:`format_question` builds the user text; training and evaluation both use it.
- :func:`build_inputs` turns frames + prompts (+ answers) into the model's processor batch: the model's own
  chat template with a video placeholder, ``pixel_values_videos``, and with answers ``labels`` that are
  -100 everywhere except the answer tokens and the end-of-turn token after them.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MCQ_INSTRUCTION", "build_inputs", "chat_prompt", "format_question"]

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IGNORE_INDEX = -100


def format_question(question: str, options: Sequence[str] | None = None) -> str:
    """The user text for a question: plain, or MCQ with lettered options and the answer-with-letter line."""
    if not options:
        return question
    if len(options) > 26:
        raise ValueError(f"at most 26 options are supported, got {len(options)}")
    lines = [question] + [f"{string.ascii_uppercase[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join([*lines, MCQ_INSTRUCTION])


def _messages(prompt: str, answer: str | None) -> list[dict]:
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}
    ]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def _video_token(processor) -> str:
    return getattr(processor, "video_token", None) or "<video>"


def chat_prompt(processor, prompt: str, answer: str | None = None) -> str:
    """The chat-formatted text (with the video placeholder). Without ``answer`` it ends with the generation
    prompt (the assistant turn's header); with ``answer`` it holds the full assistant turn."""
    template_owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    if getattr(template_owner, "chat_template", None):
        return processor.apply_chat_template(
            _messages(prompt, answer), add_generation_prompt=answer is None, tokenize=False
        )
    # no chat template: a plain LLaVA-style format
    eos = processor.tokenizer.eos_token or ""
    text = f"USER: {_video_token(processor)}\n{prompt} ASSISTANT:"
    return text if answer is None else f"{text} {answer}{eos}"


def _as_video(frames) -> np.ndarray:
    arr = getattr(frames, "frames", frames)  # dna_vlm.video.Frames or a bare array
    arr = np.asarray(arr)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected video frames of shape (T, H, W, 3), got {arr.shape}")
    return arr


def build_inputs(
    processor,
    frames_list: Sequence[Any],
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    return_tensors: str = "pt",
):
    """The processor's batch for ``len(prompts)`` video questions.

    ``frames_list``: one video per prompt (``Frames`` or uint8 ``(T, H, W, 3)`` arrays). Without answers the
    batch ends at the assistant header, left-padded (for generation). With answers it holds the whole
    assistant turn, right-padded, plus ``labels`` (-100 except the answer tokens and the end-of-turn token).
    """
    if len(frames_list) != len(prompts) or (answers is not None and len(answers) != len(prompts)):
        raise ValueError(
            f"build_inputs: got {len(frames_list)} videos, {len(prompts)} prompts"
            + ("" if answers is None else f", {len(answers)} answers")
        )
    if not prompts:
        raise ValueError("build_inputs: empty batch")
    videos = [_as_video(f) for f in frames_list]
    tok = processor.tokenizer
    prefixes = [chat_prompt(processor, p) for p in prompts]
    texts = (
        prefixes
        if answers is None
        else [chat_prompt(processor, p, a) for p, a in zip(prompts, answers, strict=True)]
    )
    old_side = tok.padding_side
    tok.padding_side = "left" if answers is None else "right"
    try:
        batch = processor(text=list(texts), videos=videos, padding=True, return_tensors=return_tensors)
    finally:
        tok.padding_side = old_side
    if answers is None:
        return batch

    import torch

    ids = batch["input_ids"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    video_id = getattr(processor, "video_token_id", None)
    placeholder = _video_token(processor)
    eos_ids = {
        i
        for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
        if isinstance(i, int) and i >= 0
    }
    for row, (prefix, full) in enumerate(zip(prefixes, texts, strict=True)):
        row_ids = ids[row][batch["attention_mask"][row].bool()].tolist()  # right padding: real tokens first
        start = _answer_start(tok, prefix, full, row_ids, video_id, placeholder)
        end = len(row_ids)
        for j in range(start, len(row_ids)):
            if row_ids[j] in eos_ids:
                end = j + 1
                break
        if end <= start:
            raise ValueError(f"build_inputs: the answer of row {row} tokenized to nothing ({answers[row]!r})")
        labels[row, start:end] = ids[row, start:end]
    batch["labels"] = labels
    return batch


def _answer_start(tok, prefix: str, full: str, row_ids: list[int], video_id, placeholder: str) -> int:
    """Index of the first answer token in ``row_ids`` (the expanded, tokenized ``full`` text)."""
    prefix_ids = tok(prefix)["input_ids"]  # as the processor tokenizes (special tokens included)
    if video_id is not None and placeholder in prefix:
        n_expanded = sum(1 for i in row_ids if i == video_id)
        n_placeholders = sum(1 for i in prefix_ids if i == video_id)
        expanded: list[int] = []
        per = (n_expanded // n_placeholders) if n_placeholders else 0
        for i in prefix_ids:
            expanded.extend([i] * per if i == video_id else [i])
        prefix_ids = expanded
    n = len(prefix_ids)
    if row_ids[:n] == prefix_ids:
        return n
    # tokenization merged across the boundary: the longest common prefix
    k = 0
    while k < min(n, len(row_ids)) and row_ids[k] == prefix_ids[k]:
        k += 1
    return k
