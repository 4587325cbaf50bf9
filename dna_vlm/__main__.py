import sys

from dna_vlm.cli import main

sys.exit(main())
