"""`dna-vlm` command line: a thin layer over the Python API.

Each subcommand lives in the module that implements it and exposes ``add_parser(subparsers)``, which
registers the parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
Modules are imported lazily, so ``dna-vlm --help`` stays fast and optional extras are only needed by the
subcommands that use them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# subcommand -> module holding its add_parser(); one line per subcommand.
SUBCOMMANDS: dict[str, str] = {
    "attribute": "dna_vlm.eval.attribute",
    "inspect": "dna_vlm.eval.inspect_dna",
    "bench": "dna_vlm.bench",
    "demo": "dna_vlm.demo",
    "tiny-model": "dna_vlm.tiny",
    "train": "dna_vlm.train",
    "synth-data": "dna_vlm.synth",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-vlm",
        description="Denoising Attention (DnA) for the vision towers of Hugging Face video LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"dna-vlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
