"""``dna-vlm train``: LoRA-tune the encoder -> projector path of a video LLM, with DnA or stock attention.

Flow: JSONL rows (:func:`dna_vlm.data.dataset.load_dataset`) -> frames (:func:`dna_vlm.video.decode.sample_frames`,
``"segments"``) -> the model's own processor (:func:`dna_vlm.data.prompting.build_inputs`) -> an accelerate loop
over a DnA-patched (or stock, ``attention="softmax"``, the control arm with the same LoRA budget),
PEFT-wrapped model -> checkpoints -> the run dir (:mod:`dna_vlm.runs.config`)::

    OUT/run_config.json          what evaluation needs (dna_vlm.runs.config.RunConfig); written last
    OUT/dna/ OUT/adapter/ OUT/projector.safetensors   the trained weights (see .finalize)
    OUT/summary.json             trainable parameters by group, steps, losses, skipped videos, time
    OUT/metrics.jsonl            one JSON line per step (loss, lr, grad_norm, lambda, skipped, time) + eval
    OUT/train_config.json        the TrainConfig of the latest invocation
    OUT/checkpoints/             step-NNNNNN/ (safetensors + state.json, no pickle) and latest.json

Modules: ``config`` (TrainConfig and the CLI options generated from it), ``model`` (load, freeze, patch,
LoRA, optimiser), ``data`` (micro-batches, loader), ``state`` (checkpoints, resume), ``metrics``,
``finalize`` (the run dir), ``trainer`` (the loop), ``cli``.
"""

from __future__ import annotations

from dna_vlm.train.cli import add_parser
from dna_vlm.train.config import TrainConfig
from dna_vlm.train.errors import TrainError, TrainInterrupted
from dna_vlm.train.model import lora_target_modules
from dna_vlm.train.trainer import train

__all__ = ["TrainConfig", "TrainError", "TrainInterrupted", "add_parser", "lora_target_modules", "train"]
