"""`dna-vlm` command line: a thin layer over the Python API.

Each subcommand lives in the module that implements it and exposes ``add_parser(subparsers)``, which
registers the parser (arguments, ``description``) and sets ``func`` (a callable taking the parsed args and
returning an exit code). The one-line help of every subcommand lives here, in :data:`SUBCOMMANDS`: it is what
``dna-vlm --help`` lists. Modules are imported lazily, so optional extras are only needed by the subcommands
that use them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dna_vlm.version import __version__

# subcommand -> (module holding its add_parser(), one-line help shown by `dna-vlm --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "attribute": (
        "dna_vlm.eval.attribute.compare",
        "paired comparison of two lmms-eval sample logs (accuracy CIs, McNemar, flips, groups, blind)",
    ),
    "inspect": (
        "dna_vlm.eval.inspection.run",
        "DnA diagnostics: V+/V- principal angles, lambdas, attention entropies and overlays",
    ),
    "probe": (
        "dna_vlm.eval.probe.run",
        "encoder-level accuracy: linear probe on the visual tokens the LLM gets",
    ),
    "bench": (
        "dna_vlm.bench.attention",
        "benchmark DnA against stock attention (ratios measured in one run)",
    ),
    "demo": (
        "dna_vlm.eval.demo.pipeline",
        "the whole mission end to end on the embedded default (no downloads)",
    ),
    "tiny-model": ("dna_vlm.tiny.default", "write the embedded tiny LLaVA-OneVision video LLM (no download)"),
    "train": ("dna_vlm.train", "LoRA-tune the vision tower -> projector path (DnA or softmax control arm)"),
    "export": ("dna_vlm.runs.export", "write a run dir as one model folder (LoRA merged, DnA part beside)"),
    "synth-data": ("dna_vlm.data.synth", "generate the synthetic dense-scene video QA set"),
    "check-data": (
        "dna_vlm.data.validate",
        "validate training data (project JSONL, LLaVA, sharegpt; JSON/JSONL/parquet/datasets) and summarise it",
    ),
}


class _OneSubcommand:
    """What a module's ``add_parser`` receives: argparse's subparsers action, restricted to the subcommand
    ``name`` and with its one-line help from :data:`SUBCOMMANDS` (the table wins over a module's own ``help``;
    a module without a ``description`` gets the help line as one)."""

    def __init__(self, subparsers, name: str, help_line: str):
        self._subparsers, self._name, self._help = subparsers, name, help_line

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name != self._name:
            raise ValueError(
                f"dna_vlm.cli: SUBCOMMANDS lists {self._name!r} but its module registers {name!r}"
            )
        kwargs["help"] = self._help
        kwargs.setdefault("description", self._help[0].upper() + self._help[1:] + ".")
        return self._subparsers.add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-vlm",
        description="Denoising Attention (DnA) for the vision towers of Hugging Face video LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"dna-vlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_line) in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(_OneSubcommand(sub, name, help_line))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # e.g. while the subcommand modules are still importing: no traceback
        print("dna-vlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
