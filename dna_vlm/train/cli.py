"""``dna-vlm train``: its parser (generated from :class:`TrainConfig`) and entry point."""

from __future__ import annotations

import argparse
import sys

from dna_vlm.runs.config import RunError
from dna_vlm.train.config import TrainConfig, add_arguments
from dna_vlm.train.errors import TrainError, TrainInterrupted

__all__ = ["add_parser", "main"]

DESCRIPTION = (
    "Patch a video LLM's vision tower with DnA (or keep softmax: the control arm with the same LoRA budget), "
    "LoRA-tune the tower, train DnA's negative branch and the projector, LLM frozen. Works under "
    "`accelerate launch` for multi-GPU. Writes a run dir that dna_vlm.runs.loading.load_model(run_dir=...) and the "
    "lmms-eval plugin (`lmms-eval --model dna_vlm --model_args dna=RUN_DIR`) load."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", description=DESCRIPTION)  # its one-line help: dna_vlm.cli
    add_arguments(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Exit codes: 0 done (prints the run dir), 2 an error to fix, 3 interrupted with a checkpoint saved,
    130 stopped at once by a second Ctrl-C / SIGTERM (or one before training started): no new checkpoint."""
    from dna_vlm.data.dataset import DatasetError
    from dna_vlm.files import SafetensorsFileError
    from dna_vlm.video.decode import VideoError

    try:
        cfg = TrainConfig.from_args(args)
        if cfg.check_data:  # validation only: no model loads, OUT is not touched
            from dna_vlm.data.validate import check_files

            return check_files([p for p in (cfg.data, cfg.eval_data) if p], cfg.data_format, cfg.video_root)
        from dna_vlm.train.trainer import train

        out = train(cfg)
    except TrainInterrupted as e:
        print(f"dna-vlm train: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(
            f"dna-vlm train: interrupted; stopped at once without writing a new checkpoint. What is on disk "
            f"in {args.output} is intact (the newest checkpoint, or the finished run): rerun with --resume "
            "to continue",
            file=sys.stderr,
        )
        return 130
    except (TrainError, RunError, DatasetError, VideoError, SafetensorsFileError, ValueError, OSError) as e:
        print(f"dna-vlm train: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
