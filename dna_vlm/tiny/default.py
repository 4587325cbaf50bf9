"""The embedded default video LLM: a tiny LLaVA-OneVision built from a config (README, "The embedded default"), and tiny
models of every other supported family (:mod:`dna_vlm.tiny.kits`, ``--family``).

No download: real HF classes (``LlavaOnevisionForConditionalGeneration`` with a SigLIP tower, the
projector and a Qwen2 LM) at tiny sizes, random weights from ``seed``, a byte-level BPE tokenizer trained
in code on the synthetic data's vocabulary (any text still tokenizes, via the byte alphabet), and a
``LlavaOnevisionProcessor`` whose image/video processors resize to the tower's input size, so the
processor expands ``<video>`` to exactly the number of features the model produces.

CLI: ``dna-vlm tiny-model OUT_DIR [--family F] [--seed S] [--size small|medium]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dna_vlm.files import atomic_write_bytes

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_FAMILY",
    "SIZES",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "build_tokenizer",
    "chat_template",
    "tiny_families",
]

DEFAULT_FAMILY = "llava_onevision"

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
IMAGE, VIDEO = "<image>", "<video>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END, IMAGE, VIDEO]


def chat_template(video: str = "<video>\n", image: str = "<image>\n") -> str:
    """A Qwen2-style (ChatML) chat template; a video / image item renders as ``video`` / ``image`` before the
    text (LLaVA-OneVision's own template writes "<video>\n"; Qwen-VL's "<|vision_start|><|video_pad|>...")."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        f"{{% if item['type'] == 'video' %}}{{{{ {video!r} }}}}"
        f"{{% elif item['type'] == 'image' %}}{{{{ {image!r} }}}}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template()

HEAD_SCALE = 12.0  # lm_head std 0.02 -> 0.24: logits a frozen random LM can move far enough to answer

SIZES = {
    # vision: hidden, layers, heads, image px, patch; text: hidden, layers, heads, kv heads
    "small": dict(
        v_hidden=64, v_layers=4, v_heads=4, image=32, patch=8, t_hidden=64, t_layers=2, t_heads=4, t_kv=2
    ),
    "medium": dict(
        v_hidden=96, v_layers=6, v_heads=6, image=48, patch=8, t_hidden=128, t_layers=2, t_heads=4, t_kv=2
    ),
}

# The words the synthetic data and prompts use (a generous list; unseen words fall back to bytes).
_WORDS = """
a an the of in on at to from with and or is are was were be been which what where when who how many much
does do did there this that these those it its one two three four five six seven eight nine ten zero
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
A B C D E F G H A. B. C. D. E. F. yes no true false none all some
red green blue yellow orange purple pink brown black white gray grey cyan magenta
circle circles square squares triangle triangles star stars disk disks ball balls box boxes shape shapes
diamond diamonds ring rings cross crosses dot dots object objects target targets distractor distractors
left right up down top bottom middle center centre still static moving moves moved move stays
direction color colour count number size big small large tiny bigger smaller larger first last
frame frames video clip scene appears appear visible shown show shows time times before after
question answer option options choice choices letter given directly Answer Answer with the
option's letter from the given choices directly
outline outlined colour colors colours In Which What How Is Are Does white object's
horizontal vertical diagonal clockwise counterclockwise faster slower fast slow same different
most least more less than only each every other
"""


def _corpus() -> list[str]:
    words = sorted(set(_WORDS.split()))
    lines = [" ".join(words)]
    for w in words:
        lines += [w, f" {w}", f"{w}?", f"{w}.", w.capitalize(), f" {w.capitalize()}"]
    lines += [
        "What color is the moving object?",
        "How many circles are in the video?",
        "Which direction does the red square move?",
        "Answer with the option's letter from the given choices directly.",
        "A. red\nB. green\nC. blue\nD. yellow",
    ]
    return lines


def build_tokenizer(
    vocab_size: int = 1024,
    special: tuple[str, ...] = (IMAGE, VIDEO),
    attrs: dict | None = None,
    template: str = CHAT_TEMPLATE,
):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Qwen2-style special tokens and chat template.

    ``special``: the family's media tokens (besides PAD / IM_START / IM_END); ``attrs``: named special tokens
    the family's processor reads from the tokenizer (InternVL's ``start_image_token`` ...)."""
    special_tokens = [PAD, IM_START, IM_END, *[t for t in special if t not in (PAD, IM_START, IM_END)]]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, *special_tokens[3:]],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        **({"extra_special_tokens": attrs} if attrs else {}),
    )
    fast.chat_template = template
    return fast


def tiny_families() -> list[str]:
    """The ``model_type`` values :func:`build_tiny_model` builds (``family=``)."""
    from dna_vlm.tiny.families import FAMILIES

    return [DEFAULT_FAMILY, *(t for t, fam in FAMILIES.items() if fam.kit)]


def build_tiny_model(
    out_dir: str | os.PathLike,
    seed: int = 0,
    size: str = "small",
    pretrain_steps: int = 0,
    family: str = DEFAULT_FAMILY,
) -> Path:
    """Write a tiny LLaVA-OneVision (model + tokenizer + processor) to ``out_dir``; returns the path.

    Loads offline with ``AutoProcessor.from_pretrained(out_dir)`` and
    ``LlavaOnevisionForConditionalGeneration.from_pretrained(out_dir)``. ``family``: another HF
    ``model_type`` of :func:`tiny_families` (llava, llava_next_video, video_llava, qwen2_vl, qwen2_5_vl,
    qwen3_vl, video_llama_3, internvl) builds that family's tiny model instead, with its own processor
    (``size`` applies to the default family only; the others have one fixed tiny size).

    Weights are random, except that the output head is scaled up (std ~0.25) so a frozen LM can still express
    confident answers. ``pretrain_steps > 0`` first teaches the LM (alone) the answer *format* on text-only
    questions with noise videos: an option letter (uniform) then end-of-turn, or a word of the asked kind.
    Such an LM is at chance on video questions, so anything a tuned vision path gains shows in the loss.
    """
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}")
    if family not in tiny_families():
        raise ValueError(f"family={family!r}: expected one of {tiny_families()}")
    s = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if family == DEFAULT_FAMILY:
        tokenizer = build_tokenizer()
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(_tiny_config(s, tokenizer)).eval()
        processor = _tiny_processor(s, tokenizer)
    else:
        model, processor = _build_family(family, seed)
        tokenizer, s = processor.tokenizer, {}
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        None,
    )
    gen.do_sample = False
    stats = pretrain_text(model, processor, pretrain_steps, seed) if pretrain_steps else None
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    meta = {"family": family, "seed": seed, "size": size if family == DEFAULT_FAMILY else "tiny",
            "pretrain_steps": pretrain_steps, "pretrain": stats, **s}  # fmt: skip
    atomic_write_bytes(out / "dna_vlm_tiny.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out


def _build_family(family: str, seed: int):
    """(model in eval mode, processor) of a :mod:`dna_vlm.tiny.kits` family; output head scaled as above."""
    import torch

    from dna_vlm.tiny.families import FAMILIES

    fam = FAMILIES[family].kit
    template = chat_template(fam.video_placeholder, fam.image_placeholder)
    tokenizer = build_tokenizer(special=fam.special, attrs=fam.token_attrs or None, template=template)
    torch.manual_seed(seed)
    model, processor = fam.build(tokenizer)
    processor.chat_template = template
    return model.eval(), processor


def _pinpoints(px: int) -> list[list[int]]:
    return [[px, px], [px, 2 * px], [2 * px, px], [2 * px, 2 * px]]


def _tiny_config(s: dict, tokenizer):
    """The LlavaOnevisionConfig of size ``s`` (a SIZES entry) for ``tokenizer``'s vocabulary."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    image_id, video_id = tokenizer.convert_tokens_to_ids(IMAGE), tokenizer.convert_tokens_to_ids(VIDEO)
    px, patch = s["image"], s["patch"]
    vision = SiglipVisionConfig(
        hidden_size=s["v_hidden"],
        intermediate_size=2 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=s["v_heads"],
        image_size=px,
        patch_size=patch,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=s["t_hidden"],
        intermediate_size=2 * s["t_hidden"],
        num_hidden_layers=s["t_layers"],
        num_attention_heads=s["t_heads"],
        num_key_value_heads=s["t_kv"],
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_id,
        video_token_index=video_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=_pinpoints(px),
        tie_word_embeddings=False,
    )


def _tiny_processor(s: dict, tokenizer):
    """A LlavaOnevisionProcessor whose image/video processors resize to the tower's input size."""
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    px, patch = s["image"], s["patch"]
    common = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True)
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": px, "width": px}, image_grid_pinpoints=_pinpoints(px), **common
    )
    video_processor = LlavaOnevisionVideoProcessor(size={"height": px, "width": px}, **common)
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=(px // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


_KINDS = {
    "colour": (
        "What colour is the object?",
        ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown"],
    ),
    "shape": (
        "What shape is the object?",
        ["circle", "square", "triangle", "cross", "star", "diamond", "ring", "disk"],
    ),
    "direction": ("In which direction does the object move?", ["left", "right", "up", "down"]),
    "count": ("How many objects are there?", ["one", "two", "three", "four", "five", "six"]),
}


def _text_example(rng) -> tuple[str, str]:
    from dna_vlm.data.prompting import format_question

    kind = list(_KINDS)[int(rng.integers(len(_KINDS)))]
    question, values = _KINDS[kind]
    if rng.random() < 0.75:  # MCQ: 2-4 distinct options, the answer letter uniform
        k = int(rng.integers(2, min(4, len(values)) + 1))
        opts = [values[i] for i in rng.choice(len(values), size=k, replace=False)]
        return format_question(question, opts), "ABCD"[int(rng.integers(k))]
    return question, values[int(rng.integers(len(values)))]


def pretrain_text(
    model, processor, steps: int, seed: int = 0, batch_size: int = 16, lr: float = 3e-3
) -> dict:
    """Teach the LM (embeddings, layers, head; not the vision path) the answer format, in place."""
    import numpy as np
    import torch

    from dna_vlm.data.prompting import build_inputs

    rng = np.random.default_rng(seed)
    side = getattr(model.config.vision_config, "image_size", 32)
    side = side[0] if isinstance(side, (list, tuple)) else side
    lm = [p for n, p in model.named_parameters() if "language_model" in n or n.startswith("lm_head")]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lm:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lm, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        pairs = [_text_example(rng) for _ in range(batch_size)]
        videos = [rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8) for _ in pairs]
        batch = build_inputs(processor, videos, [q for q, _ in pairs], [a for _, a in pairs])
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, 0.5 * (1 + np.cos(np.pi * step / steps)) + 0.05)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    tail = losses[-max(1, steps // 10) :]
    return {"steps": steps, "first_loss": losses[0], "final_loss": sum(tail) / len(tail)}


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tiny-model",
        help="write the embedded tiny LLaVA-OneVision (or --family) video LLM (no download)",
        description="Build a tiny LLaVA-OneVision (SigLIP tower + projector + Qwen2 LM, random weights), or "
        "with --family a tiny model of another supported family, "
        "with a locally built tokenizer and processor, and save it to OUT_DIR.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the model, tokenizer and processor to")
    p.add_argument(
        "--family",
        choices=tiny_families(),
        default=DEFAULT_FAMILY,
        help="which video-LLM family to build (HF model_type; processor, tokenizer and chat template "
        "included, offline)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.add_argument(
        "--size", choices=sorted(SIZES), default="small", help="tower / LM widths and depths (default: small)"
    )
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="teach the LM the answer format first (text-only, noise videos; ~300 steps take seconds on CPU)",
    )
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.pretrain_steps < 0:
        print("dna-vlm tiny-model: error: --pretrain-steps must be >= 0", file=sys.stderr)
        return 2
    path = build_tiny_model(
        args.out_dir, seed=args.seed, size=args.size, pretrain_steps=args.pretrain_steps, family=args.family
    )
    print(f"tiny {args.family} model ({args.size}, seed {args.seed}) written to {path}")
    return 0
