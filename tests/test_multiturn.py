"""Multi-turn training: every assistant turn supervised (checked token by token against the tiny model's own chat
template), the prompt masked, the video where the template puts it; single questions unchanged; a run of 20
steps on multi-turn rows with an evaluation (~7 s on a 2-core Xeon: not marked slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import COLOURS, make_clip, tiny_model

from dna_vlm.data.dataset import Example, Turn
from dna_vlm.data.prompting import build_chat_inputs, build_inputs, example_turns, format_question

CONVOS = [
    (
        Turn("system", "You describe videos."),
        Turn("user", "What color is the moving square?", video=True),
        Turn("assistant", "red"),
        Turn("user", "Which way does it move?"),
        Turn("assistant", "to the right side"),
        Turn("user", "Is it a square?"),
        Turn("assistant", "yes"),
    ),
    (Turn("user", "What color?", video=True), Turn("assistant", "blue")),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("mt"))


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny)


def _video(t=4, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (t, 32, 32, 3), dtype=np.uint8)


def _expected_mask(processor, turns, video: bool) -> tuple[list[bool], list[int]]:
    """(supervised?, token id) per token of the template's own rendering: supervised are an assistant turn's
    content and its <|im_end|>, from the tokenizer's character offsets over the text ``apply_chat_template``
    writes (the video is one placeholder token there)."""
    tok = processor.tokenizer
    messages = []
    for t in turns:
        items = [{"type": "video"}] if t.video and video else []
        messages.append({"role": t.role, "content": [*items, {"type": "text", "text": t.text}]})
    text = processor.apply_chat_template(messages, tokenize=False)
    spans, pos = [], 0
    for t in turns:  # each assistant turn, in order: its content and the end-of-turn token after it
        if t.role == "assistant":
            head = text.index("<|im_start|>assistant\n", pos) + len("<|im_start|>assistant\n")
            assert text[head:].startswith(t.text + "<|im_end|>")
            pos = head + len(t.text) + len("<|im_end|>")
            spans.append((head, pos))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == text
    return [any(s <= a and b <= e for s, e in spans) for a, b in enc["offset_mapping"]], enc["input_ids"]


def test_text_only_labels_match_the_template_token_by_token(processor):
    batch = build_chat_inputs(processor, None, CONVOS)
    for row, turns in enumerate(CONVOS):
        mask, ids = _expected_mask(processor, turns, video=False)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids and batch["attention_mask"][row, n:].sum() == 0
        got = (batch["labels"][row] != -100).tolist()
        assert got == mask + [False] * (len(got) - n)  # prompts, headers, system turn and padding: masked
        kept = batch["labels"][row][batch["labels"][row] != -100]
        assert (kept == batch["input_ids"][row][batch["labels"][row] != -100]).all()
        want = "".join(t.text + "<|im_end|>" for t in turns if t.role == "assistant")
        assert processor.tokenizer.decode(kept) == want


def test_video_labels_match_the_template_with_the_placeholder_expanded(processor):
    batch = build_chat_inputs(processor, [_video(), _video(seed=1)], CONVOS)
    video_id = processor.tokenizer.convert_tokens_to_ids(processor.video_token)
    for row, turns in enumerate(CONVOS):
        mask, ids = _expected_mask(processor, turns, video=True)
        at = ids.index(video_id)  # the one placeholder the template wrote, in the first user turn
        n_video = int((batch["input_ids"][row] == video_id).sum())
        assert n_video > 1 and ids.count(video_id) == 1
        expected = mask[:at] + [False] * n_video + mask[at + 1 :]
        got = (batch["labels"][row] != -100).tolist()
        assert got == expected + [False] * (len(got) - len(expected))
    with torch.no_grad():  # the batch is one the model takes (the video features fill the placeholders)
        from transformers import LlavaOnevisionForConditionalGeneration

        model = LlavaOnevisionForConditionalGeneration.from_pretrained(processor.tokenizer.name_or_path)
        assert torch.isfinite(model(**batch).loss)


def test_a_single_question_is_one_code_path_for_every_format(processor):
    qa = Example("a", "v.mp4", "What color?", ["red", "blue"], "B")
    llava_one = Example("b", "v.mp4", format_question("What color?", ["red", "blue"]), None, "B")
    old = build_inputs(processor, [_video()], [format_question("What color?", ["red", "blue"])], ["B"])
    for ex in (qa, llava_one):
        new = build_chat_inputs(processor, [_video()], [example_turns(ex)])
        assert new.keys() == old.keys()
        for k in old:
            assert torch.equal(new[k], old[k]), k


def test_a_template_that_rewrites_earlier_turns_is_refused(processor):
    tok = processor.tokenizer
    old = tok.chat_template
    try:  # like reasoning templates: earlier assistant turns lose their content once a later turn follows
        tok.chat_template = old.replace(
            "{% if message['content'] is string %}",
            "{% if message['role'] == 'assistant' and not loop.last %}{% elif message['content'] is string %}",
        )
        with pytest.raises(ValueError, match="renders row 0's turns before assistant turn 1 differently"):
            build_chat_inputs(tok, None, CONVOS[:1])
    finally:
        tok.chat_template = old


def test_the_models_own_placeholder_in_text_is_refused_before_training(processor, tmp_path):
    from dna_vlm.train import TrainConfig, TrainError
    from dna_vlm.train.batches import MicroBatches

    cfg = TrainConfig(model="m", data="d", output=str(tmp_path / "o"))
    ok = Example("a", "v.mp4", "What color?", ["red", "blue"], "A", source="d.jsonl:1")
    bad = Example("b", "v.mp4", "What color?", ["red", "<video> blue"], "A", source="d.jsonl:2")
    MicroBatches([ok], processor, cfg, 0, 1)
    with pytest.raises(TrainError, match=r"d\.jsonl:2: a user turn holds '<video>', this model's video"):
        MicroBatches([ok, bad], processor, cfg, 0, 1)


# ------------------------------------------------------------------------------------ end to end


def _multiturn_rows(folder, n: int, seed: int) -> list[dict]:
    """LLaVA rows of three exchanges about a moving coloured square (colour, direction, a yes/no)."""
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    names, rows = list(COLOURS), []
    for i in range(n):
        colour = names[(i + seed) % len(names)]
        video = make_clip(folder / "videos" / f"mt{seed}_{i}.mp4", colour, seed=seed * 100 + i)
        convo = [
            ("human", "<image>\nWhat color is the moving square?"), ("gpt", colour),
            ("human", "Which way does it move?"), ("gpt", "right"),
            ("human", f"Is it {names[(i + seed + 1) % 4]}?"), ("gpt", "no"),
        ]  # fmt: skip
        rows.append({"id": f"mt{seed}-{i}", "video": f"videos/{video.name}",
                     "conversations": [{"from": f, "value": v} for f, v in convo]})  # fmt: skip
    return rows


def test_train_20_steps_on_multi_turn_rows_with_evaluation(tiny, tmp_path):
    from dna_vlm.train import TrainConfig, train

    data, val = tmp_path / "train.json", tmp_path / "val.jsonl"
    data.write_text(json.dumps(_multiturn_rows(tmp_path, 8, 0), indent=1))
    val.write_text("".join(json.dumps(r) + "\n" for r in _multiturn_rows(tmp_path, 4, 1)))
    cfg = TrainConfig(model=str(tiny), data=str(data), eval_data=str(val), output=str(tmp_path / "run"),
                      max_steps=20, num_frames=4, batch_size=4, lr=3e-3, progress=False)  # fmt: skip
    out = train(cfg)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert sum(losses[-4:]) / 4 < sum(losses[:3]) / 3 - 0.1, losses
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert evals and np.isfinite(evals[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["eval_loss"] == pytest.approx(evals[-1])
