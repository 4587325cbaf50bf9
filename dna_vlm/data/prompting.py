"""Prompts and model inputs for video questions, with or without the video: one builder for training,
evaluation and the blind (no-video) control.

- :func:`format_question` builds the user text; training and evaluation both use it.
- :func:`chat_prompt` formats it with the model's own chat template (a video placeholder unless
  ``video=False``).
- :func:`build_inputs` turns frames + prompts (+ answers) into the model's batch: the processor's batch with
  ``pixel_values_videos``, or with ``frames_list=None`` a text-only tokenizer batch; with answers, ``labels``
  are -100 everywhere except the answer tokens and the end-of-turn token after them.
- :func:`build_chat_inputs` does the same for conversations (:func:`example_turns` of a dataset row): every
  assistant turn is labelled (with all earlier turns as context, through the model's chat template), every
  other token is -100. A single question is the conversation of one user and one assistant turn, and
  :func:`build_inputs` with answers is exactly that case.
"""

from __future__ import annotations

import string
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dna_vlm.data.dataset import Turn

if TYPE_CHECKING:
    import torch

__all__ = [
    "MCQ_INSTRUCTION",
    "batch_to_device",
    "build_chat_inputs",
    "build_inputs",
    "chat_prompt",
    "chat_text",
    "end_of_turn_ids",
    "example_turns",
    "format_question",
    "model_placeholders",
    "takes_video",
]

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"  # the chat end-of-turn token of ChatML templates (Qwen2, the tiny model)


def format_question(question: str, options: Sequence[str] | None = None) -> str:
    """The user text for a question: plain, or MCQ with lettered options and the answer-with-letter line."""
    if not options:
        return question
    if len(options) > 26:
        raise ValueError(f"at most 26 options are supported, got {len(options)}")
    lines = [question] + [f"{string.ascii_uppercase[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join([*lines, MCQ_INSTRUCTION])


def example_turns(example) -> tuple[Turn, ...]:
    """The conversation of a dataset row (:class:`~dna_vlm.data.dataset.Example`): its turns, or for a single
    question the user turn (:func:`format_question`, with the video) and the answer."""
    if example.turns:
        return tuple(example.turns)
    user = Turn("user", format_question(example.question, example.options), video=True)
    return (user, Turn("assistant", example.answer))


def model_placeholders(processor) -> list[str]:
    """The processor's own video / image placeholder strings: text holding one would be taken for a video."""
    names = ("video_token", "image_token")
    return [t for t in (getattr(processor, n, None) for n in names) if isinstance(t, str) and t]


def _tokenizer(processor):
    """The processor's tokenizer (a bare tokenizer is its own)."""
    return getattr(processor, "tokenizer", processor)


def end_of_turn_ids(tok) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the chat end-of-turn token, when it has them."""
    try:
        turn = tok.convert_tokens_to_ids(END_OF_TURN)
    except Exception:
        turn = None
    if turn == getattr(tok, "unk_token_id", None):  # not in the vocabulary
        turn = None
    return {i for i in (getattr(tok, "eos_token_id", None), turn) if isinstance(i, int) and i >= 0}


def takes_video(processor) -> bool:
    """Whether the processor takes ``videos=``; image-only ones (LLaVA-1.5) get each frame as an image."""
    return getattr(processor, "video_processor", None) is not None


def _messages(turns: Sequence[Turn], video: bool, n_images: int = 0) -> list[dict]:
    """Chat-template messages; the turn holding the video gets the video item (an image-only processor: one
    image item per frame) before its text."""
    msgs: list[dict[str, Any]] = []
    for t in turns:
        content: list[dict[str, Any]] = []
        if t.video and video:
            content = [{"type": "image"}] * n_images if n_images else [{"type": "video"}]
        msgs.append({"role": t.role, "content": [*content, {"type": "text", "text": t.text}]})
    return msgs


def _video_token(processor) -> str:
    return getattr(processor, "video_token", None) or "<video>"


def chat_prompt(
    processor, prompt: str, answer: str | None = None, video: bool = True, n_frames: int | None = None
) -> str:
    """The chat-formatted text (with the video placeholder unless ``video=False``). Without ``answer`` it ends
    with the generation prompt (the assistant turn's header); with ``answer`` it holds the full assistant turn.
    The processor's chat template, else its tokenizer's, else a plain LLaVA-style format. For an image-only
    processor the video is ``n_frames`` image placeholders."""
    turns = (Turn("user", prompt, video=True),) + (() if answer is None else (Turn("assistant", answer),))
    return chat_text(processor, turns, video=video, n_frames=n_frames)


def chat_text(processor, turns: Sequence[Turn], video: bool = True, n_frames: int | None = None) -> str:
    """A conversation rendered by the model's chat template (see :func:`chat_prompt`); it ends with the
    generation prompt when its last turn is not the assistant's."""
    n_images = 0 if takes_video(processor) else int(n_frames or 0)
    if video and not takes_video(processor) and not n_images:
        raise ValueError(f"{type(processor).__name__} takes images only: pass n_frames to chat_prompt")
    turns = tuple(turns)
    generation = not turns or turns[-1].role != "assistant"
    tok = _tokenizer(processor)
    owner = processor if getattr(processor, "chat_template", None) else tok
    if getattr(owner, "chat_template", None):
        key = (owner.chat_template, tok.bos_token, tok.eos_token, turns, video, n_images)
        memo = _chat_memo(owner)
        if memo is not None and key in memo:
            return memo[key]
        text = owner.apply_chat_template(
            _messages(turns, video, n_images), add_generation_prompt=generation, tokenize=False
        )
        if memo is not None:
            memo[key] = text
        return text
    return _plain_chat(processor, tok, turns, video)


def _plain_chat(processor, tok, turns: Sequence[Turn], video: bool) -> str:
    """LLaVA-1.5's plain format for a processor without a chat template:
    ``[system ]USER: <video>\nq ASSISTANT: a</s>USER: q2 ASSISTANT:``."""
    placeholder = f"{_video_token(processor)}\n" if video else ""
    parts = []
    for t in turns:
        if t.role == "system":
            parts.append(f"{t.text} ")
        elif t.role == "user":
            parts.append(f"USER: {placeholder if t.video else ''}{t.text} ASSISTANT:")
        else:
            parts.append(f" {t.text}{tok.eos_token or ''}")
    return "".join(parts)


#: rendered chat texts per processor / tokenizer: training renders the same rows every epoch, and the Jinja
#: template costs ~0.1 ms a row; keyed by the template and special tokens too, so a changed template renders anew
_CHAT_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHAT_MEMO_MAX = 200_000


def _chat_memo(owner) -> dict | None:
    try:
        memo = _CHAT_MEMO.setdefault(owner, {})
    except TypeError:  # an owner that cannot be weakly referenced or hashed: render every time
        return None
    if len(memo) > _CHAT_MEMO_MAX:
        memo.clear()
    return memo


def _as_video(frames) -> np.ndarray:
    arr = getattr(frames, "frames", frames)  # dna_vlm.video.decode.Frames or a bare array
    arr = np.asarray(arr)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected video frames of shape (T, H, W, 3), got {arr.shape}")
    return arr


def build_inputs(
    processor,
    frames_list: Sequence[Any] | None,
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    return_tensors: str = "pt",
):
    """The model's batch for ``len(prompts)`` questions, with their videos or (``frames_list=None``) without.

    ``frames_list``: one video per prompt (``Frames`` or uint8 ``(T, H, W, 3)`` arrays), or None for text-only
    inputs (the blind control). Without answers the batch ends at the assistant header, left-padded (for
    generation). With answers it holds the whole assistant turn, right-padded, plus ``labels`` (-100 except the
    answer tokens and the end-of-turn token).
    """
    n_videos = len(prompts) if frames_list is None else len(frames_list)
    if n_videos != len(prompts) or (answers is not None and len(answers) != len(prompts)):
        raise ValueError(
            f"build_inputs: got {n_videos} videos, {len(prompts)} prompts"
            + ("" if answers is None else f", {len(answers)} answers")
        )
    if not prompts:
        raise ValueError("build_inputs: empty batch")
    if answers is not None:  # a question and its answer: the conversation of one exchange
        convos = [
            (Turn("user", p, video=True), Turn("assistant", a)) for p, a in zip(prompts, answers, strict=True)
        ]
        return build_chat_inputs(processor, frames_list, convos, return_tensors)
    videos = None if frames_list is None else [_as_video(f) for f in frames_list]
    lens = [None] * len(prompts) if videos is None else [len(v) for v in videos]
    texts = [
        chat_prompt(processor, p, video=videos is not None, n_frames=t)
        for p, t in zip(prompts, lens, strict=True)
    ]
    return _encode(processor, texts, videos, "left", return_tensors)


def build_chat_inputs(
    processor,
    frames_list: Sequence[Any] | None,
    conversations: Sequence[Sequence[Turn]],
    return_tensors: str = "pt",
):
    """The training batch of ``len(conversations)`` conversations (each ending with an assistant turn), with
    their videos (one per conversation, placed in the turn marked ``video``) or (``frames_list=None``) without.

    Right-padded, with ``labels`` (B, L): the tokens of every assistant turn and the end-of-turn token after
    each; -100 elsewhere (system and user turns, the template's headers, the video, padding).
    """
    n_videos = len(conversations) if frames_list is None else len(frames_list)
    if n_videos != len(conversations):
        raise ValueError(f"build_chat_inputs: got {n_videos} videos, {len(conversations)} conversations")
    if not conversations:
        raise ValueError("build_chat_inputs: empty batch")
    for i, turns in enumerate(conversations):
        if not turns or turns[-1].role != "assistant":
            raise ValueError(f"build_chat_inputs: conversation {i} does not end with an assistant turn")
    videos = None if frames_list is None else [_as_video(f) for f in frames_list]
    with_video = videos is not None
    lens = [None] * len(conversations) if videos is None else [len(v) for v in videos]
    texts, prefixes = [], []  # prefixes[row]: (text before, text through) each assistant turn
    for turns, t in zip(conversations, lens, strict=True):
        turns = tuple(turns)
        texts.append(chat_text(processor, turns, video=with_video, n_frames=t))
        prefixes.append([
            tuple(chat_text(processor, turns[:j], video=with_video, n_frames=t) for j in (k, k + 1))
            for k, turn in enumerate(turns) if turn.role == "assistant"
        ])  # fmt: skip
    batch = _encode(processor, texts, videos, "right", return_tensors)
    batch["labels"] = _turn_labels(processor, batch, prefixes, texts, with_video)
    return batch


def _encode(processor, texts: list[str], videos: list[np.ndarray] | None, side: str, return_tensors: str):
    """Tokenize (and with videos, preprocess them) with ``side`` padding. Text-only: the chat template already
    holds any special tokens, so the tokenizer adds none."""
    tok = _tokenizer(processor)
    old_side = tok.padding_side
    tok.padding_side = side
    try:
        if videos is None:
            return tok(list(texts), padding=True, return_tensors=return_tensors, add_special_tokens=False)
        if not takes_video(processor):  # image-only: every frame is one image, in order
            images = [frame for v in videos for frame in v]
            return processor(text=list(texts), images=images, padding=True, return_tensors=return_tensors)
        return processor(text=list(texts), videos=videos, padding=True, return_tensors=return_tensors)
    finally:
        tok.padding_side = old_side


def _turn_labels(processor, batch, prefixes: list[list[tuple[str, str]]], texts: list[str], with_video: bool):
    """(B, L) labels: each assistant turn's tokens and the end-of-turn token after them; -100 elsewhere.

    An assistant turn is found from the END of its row: the tokens of ``text[len(prefix):]`` (that turn and all
    after it) must close the row. Processors that insert per-frame text (timestamps, "FrameN:") make the row's
    start differ from the prefix tokenized alone, so matching from the start would put labels inside the video
    block. Where the turn's tokens merge across the boundary, the longest common prefix of the prefix is the
    fallback. Earlier turns must render the same with and without the later ones (checked): a template that
    rewrites them (dropping earlier reasoning, say) cannot be trained on several turns this way.
    """
    import torch

    tok = _tokenizer(processor)
    ids = batch["input_ids"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    eos_ids = end_of_turn_ids(tok)
    for row, (row_prefixes, text) in enumerate(zip(prefixes, texts, strict=True)):
        row_ids = ids[row][batch["attention_mask"][row].bool()].tolist()  # right padding: real tokens first
        for k, (prefix, through) in enumerate(row_prefixes):
            if not text.startswith(through):
                raise ValueError(
                    f"build_chat_inputs: the chat template renders row {row}'s turns before assistant turn {k + 1} "
                    "differently once later turns follow; multi-turn labels need a template that keeps earlier "
                    "turns as they are"
                )
            start = _suffix_start(tok, prefix, text, row_ids)
            if start is None:
                start = _prefix_start(processor, tok, prefix, row_ids, with_video)
            end = next((j + 1 for j in range(start, len(row_ids)) if row_ids[j] in eos_ids), len(row_ids))
            if end <= start:
                raise ValueError(f"build_inputs: assistant turn {k + 1} of row {row} tokenized to nothing")
            labels[row, start:end] = ids[row, start:end]
    return labels


def _suffix_start(tok, prefix: str, text: str, row_ids: list[int]) -> int | None:
    """Where the assistant turn (``text`` after ``prefix``) starts in ``row_ids``, if it closes the row."""
    if not text.startswith(prefix):
        return None
    suffix = tok(text[len(prefix) :], add_special_tokens=False)["input_ids"]
    start = len(row_ids) - len(suffix)
    return start if suffix and start > 0 and row_ids[start:] == suffix else None


def _prefix_start(processor, tok, prefix: str, row_ids: list[int], with_video: bool) -> int:
    """Where the answer starts, by matching the prefix tokenized alone against the row's start."""
    prefix_ids = tok(prefix, add_special_tokens=with_video)["input_ids"]  # as _encode tokenized it
    video_id = getattr(processor, "video_token_id", None) if with_video else None
    if video_id is not None and _video_token(processor) in prefix:
        prefix_ids = _expand_video(prefix_ids, row_ids, video_id)
    return _common_prefix(prefix_ids, row_ids)


def _expand_video(prefix_ids: list[int], row_ids: list[int], video_id: int) -> list[int]:
    """``prefix_ids`` with each video placeholder repeated as often as the processor expanded it in ``row_ids``."""
    n_expanded = sum(1 for i in row_ids if i == video_id)
    n_placeholders = sum(1 for i in prefix_ids if i == video_id)
    per = (n_expanded // n_placeholders) if n_placeholders else 0
    expanded: list[int] = []
    for i in prefix_ids:
        expanded.extend([i] * per if i == video_id else [i])
    return expanded


def _common_prefix(prefix_ids: list[int], row_ids: list[int]) -> int:
    """Index of the first answer token: the prefix's length, or where tokenization merged across the
    boundary, the longest common prefix."""
    k = 0
    while k < min(len(prefix_ids), len(row_ids)) and row_ids[k] == prefix_ids[k]:
        k += 1
    return k


def batch_to_device(batch: Mapping[str, Any], device, float_dtype: torch.dtype | None = None) -> dict:
    """Move every tensor of ``batch`` to ``device``; floating tensors also to ``float_dtype`` (if given).

    Integer tensors (token ids, masks, grid sizes) keep their dtype; non-tensors pass through unchanged.
    """
    import torch

    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            dtype = float_dtype if (float_dtype is not None and v.is_floating_point()) else v.dtype
            v = v.to(device=device, dtype=dtype)
        out[k] = v
    return out
