"""The embedded tiny video LLM (contract 4), prompts / inputs (contracts 2, 6) and run loading (contract 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dna_vlm.data.prompting import MCQ_INSTRUCTION, build_inputs, chat_prompt, format_question
from dna_vlm.tiny.default import build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny).eval()
    return model, processor


def _video(t=4, h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (t, h, w, 3), dtype=np.uint8)


def test_round_trip_offline(tiny, loaded):
    from transformers import LlavaOnevisionProcessor

    model, processor = loaded
    assert isinstance(processor, LlavaOnevisionProcessor)
    assert model.config.model_type == "llava_onevision"
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.text_config.model_type == "qwen2"
    assert type(model.model.vision_tower.encoder.layers[0].self_attn).__name__ == "SiglipAttention"
    meta = json.loads((tiny / "dna_vlm_tiny.json").read_text())
    assert meta["seed"] == 0 and meta["size"] == "small"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (tiny / name).is_file(), name


@pytest.mark.parametrize("num_frames", [1, 4, 6])
def test_processor_expands_video_tokens_to_model_features(loaded, num_frames):
    model, processor = loaded
    vc = model.config.vision_config
    side = vc.image_size // vc.patch_size
    expected = num_frames * ((side + 1) // 2) ** 2 + 1  # pooled 2x per frame, + the newline token
    batch = build_inputs(processor, [_video(num_frames)], ["What color is the square?"])
    assert int((batch["input_ids"] == model.config.video_token_id).sum()) == expected
    assert tuple(batch["pixel_values_videos"].shape) == (1, num_frames, 3, vc.image_size, vc.image_size)
    with torch.no_grad():
        out = model(**batch)  # raises if the placeholder count and the features disagree
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_generate(loaded):
    model, processor = loaded
    batch = build_inputs(processor, [_video(), _video(seed=1)], ["How many circles?", "Which direction?"])
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding for generation
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= batch["input_ids"].shape[1] + 4
    assert isinstance(processor.batch_decode(out[:, batch["input_ids"].shape[1] :]), list)


def test_tokenizer_handles_unseen_text():
    tok = build_tokenizer()
    for text in ["What colour is the zebra-crossing?", "naïve café 日本 🚀", "A. red\nB. blue"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids and tok.decode(ids) == text
    # known words are single tokens (not spelled out byte by byte)
    assert len(tok(" red", add_special_tokens=False)["input_ids"]) == 1
    for t in ("<video>", "<image>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_medium_size(tmp_path):
    from transformers import LlavaOnevisionConfig

    build_tiny_model(tmp_path, seed=3, size="medium")
    cfg = LlavaOnevisionConfig.from_pretrained(tmp_path)
    assert cfg.vision_config.image_size == 48 and cfg.text_config.hidden_size == 128
    with pytest.raises(ValueError, match="size"):
        build_tiny_model(tmp_path / "x", size="huge")


def test_text_pretraining_teaches_the_answer_format(tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    path = build_tiny_model(tmp_path, seed=0, pretrain_steps=30)
    stats = json.loads((path / "dna_vlm_tiny.json").read_text())["pretrain"]
    assert stats["steps"] == 30 and stats["final_loss"] < stats["first_loss"] - 1.0
    # only the LM moved: the vision tower equals a fresh build's
    fresh = LlavaOnevisionForConditionalGeneration.from_pretrained(
        build_tiny_model(tmp_path / "fresh", seed=0)
    )
    tuned = LlavaOnevisionForConditionalGeneration.from_pretrained(path)
    for (n, a), (_, b) in zip(
        fresh.model.vision_tower.named_parameters(),
        tuned.model.vision_tower.named_parameters(),
        strict=True,
    ):
        assert torch.equal(a, b), n
    assert not torch.equal(fresh.lm_head.weight, tuned.lm_head.weight)


def test_cli_tiny_model(tmp_path, capsys):
    from dna_vlm.cli import main

    assert main(["tiny-model", str(tmp_path / "m"), "--seed", "1"]) == 0
    assert (tmp_path / "m" / "config.json").is_file()


# ----------------------------------------------------------------------------------------- prompting


def test_format_question():
    assert format_question("How many?") == "How many?"
    assert format_question("How many?", None) == "How many?"
    text = format_question("Which colour?", ["red", "blue", "green"])
    assert text == f"Which colour?\nA. red\nB. blue\nC. green\n{MCQ_INSTRUCTION}"
    assert MCQ_INSTRUCTION == "Answer with the option's letter from the given choices directly."


def test_build_inputs_labels_mask_all_but_answer(loaded):
    model, processor = loaded
    tok = processor.tokenizer
    prompts = [format_question("What color?", ["red", "blue"]), "How many zebras are there?"]
    answers = ["B", "three zebras"]
    batch = build_inputs(processor, [_video(), _video(seed=2)], prompts, answers)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["attention_mask"][:, 0] == 1).all()  # right padding for training
    for row, answer in enumerate(answers):
        labels = batch["labels"][row]
        kept = labels[labels != -100]
        assert tok.decode(kept) == answer + tok.eos_token
        # the kept tokens are contiguous and equal the input ids there
        idx = (labels != -100).nonzero().flatten()
        assert (idx == torch.arange(idx[0], idx[-1] + 1)).all()
        assert (batch["input_ids"][row, idx] == kept).all()
    # padding is never a label
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_chat_prompt_memo_follows_the_template(tiny):
    """Rendered chat texts are reused, but a changed template renders anew (never a stale text)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny)
    first = chat_prompt(processor, "What color?", "A")
    assert chat_prompt(processor, "What color?", "A") == first
    processor.chat_template = processor.chat_template.replace("<|im_start|>", "<|im_start|> ")
    changed = chat_prompt(processor, "What color?", "A")
    assert changed != first and "<|im_start|> " in changed


def test_build_inputs_errors(loaded):
    _, processor = loaded
    with pytest.raises(ValueError, match="2 videos, 1 prompts"):
        build_inputs(processor, [_video(), _video()], ["a"])
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        build_inputs(processor, [np.zeros((4, 8, 8), np.uint8)], ["a"])


# ------------------------------------------------------------------------------------------- runs


def test_load_model_base_and_dna_preserves_function(tiny, loaded):
    import dna_vlm
    from dna_vlm.runs.loading import load_model

    base, processor = load_model(tiny)
    patched, _ = load_model(tiny, attention="dna")
    assert not dna_vlm.is_patched(base) and dna_vlm.is_patched(patched)
    batch = build_inputs(processor, [_video()], ["What color?"])
    with torch.no_grad():
        a, b = base(**batch).logits, patched(**batch).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not base.training


def test_load_model_errors(tmp_path, tiny):
    from dna_vlm.runs.loading import RunError, load_model, read_run_config

    with pytest.raises(RunError, match=r"run_config\.json not found"):
        read_run_config(tmp_path)
    (tmp_path / "run_config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RunError, match="format"):
        load_model(run_dir=tmp_path)
    with pytest.raises(RunError, match="attention"):
        load_model(tiny, attention="linear")
    with pytest.raises(RunError, match="dtype"):
        load_model(tiny, dtype="float8")
    with pytest.raises(RunError, match="pretrained"):
        load_model()
    with pytest.raises(RunError, match="cannot load a model config"):
        load_model(str(tmp_path / "nowhere"))


def test_load_model_bfloat16(tiny):
    from dna_vlm.runs.loading import load_model

    model, _ = load_model(tiny, attention="dna", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_quantization_config_skips_tower_projector_head(tiny):
    from transformers import AutoConfig

    from dna_vlm.runs.loading import quantization_config

    q = quantization_config(AutoConfig.from_pretrained(tiny), torch.float32)
    assert q.load_in_4bit
    assert sorted(q.llm_int8_skip_modules) == ["lm_head", "model.multi_modal_projector", "model.vision_tower"]


def test_load_in_4bit_quantizes_only_the_llm(tiny):
    """bitsandbytes >= 0.45 runs 4-bit on CPU: the LLM's linears are Linear4bit, the tower/projector are not."""
    bnb = pytest.importorskip("bitsandbytes")
    from dna_vlm.runs.loading import load_model

    model, processor = load_model(tiny, attention="dna", load_in_4bit=True)
    assert isinstance(model.model.language_model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert type(model.model.vision_tower.encoder.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert type(model.model.multi_modal_projector.linear_1) is torch.nn.Linear
    batch = build_inputs(processor, [_video()], ["What color?"], ["A"])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


# ------------------------------------------------------------------------- every family (issue 12)
#: families whose processor inserts per-frame text (timestamps, "FrameN:") into the video placeholder:
#: dna_vlm.data.prompting._answer_labels finds the answer by expanding the placeholder token alone, so the labels
#: start inside the video block (fix proposed in the issue-12 report; strict: passes once it is applied)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from dna_vlm.tiny.default import tiny_families

    root = tmp_path_factory.mktemp("tiny_families")
    return {f: build_tiny_model(root / f, family=f) for f in tiny_families()}


def test_tiny_model_cli_family_loads_offline(tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLProcessor

    from dna_vlm.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["tiny-model", str(tmp_path / "q"), "--family", "qwen2_5_vl", "--seed", "3"]) == 0
    meta = json.loads((tmp_path / "q" / "dna_vlm_tiny.json").read_text())
    assert meta["family"] == "qwen2_5_vl" and meta["seed"] == 3
    processor = AutoProcessor.from_pretrained(tmp_path / "q")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "q")
    assert isinstance(processor, Qwen2_5_VLProcessor) and model.config.model_type == "qwen2_5_vl"
    assert processor.chat_template and "<|video_pad|>" in processor.chat_template
    with pytest.raises(SystemExit):
        main(["tiny-model", str(tmp_path / "x"), "--family", "gpt2"])


@pytest.mark.parametrize(
    "family",
    [
        "llava_onevision",
        "llava",
        "llava_next_video",
        "video_llava",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "video_llama_3",
        "internvl",
    ],
)
def test_every_family_builds_inputs_trains_and_generates(family_dirs, family):
    """Each tiny family: the adapter registry patches it, its processor builds a video batch whose labels mark
    exactly the answer and end of turn, the loss is finite, generation runs."""
    import dna_vlm
    from dna_vlm.runs.loading import load_base_model

    model, processor = load_base_model(family_dirs[family])
    assert model.config.model_type == family
    report = dna_vlm.patch(model)
    assert len(report.modules) >= 2
    q = format_question("What color is the square?", ["red", "blue"])
    batch = build_inputs(processor, [_video(h=32, w=32), _video(h=32, w=32, seed=1)], [q, q], ["A", "B"])
    tok = processor.tokenizer
    for row, answer in zip(batch["labels"], ["A", "B"], strict=True):
        assert tok.decode(row[row != -100]) == answer + "<|im_end|>"
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
        gen = build_inputs(processor, [_video(h=32, w=32)], [q])
        out = model.generate(**gen, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == gen["input_ids"].shape[1] + 3
