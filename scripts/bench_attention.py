#!/usr/bin/env python
"""DnA vs stock attention benchmark; same as `dna-vlm bench` (see `--help`)."""

import sys

from dna_vlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
