"""`dna-vlm demo`: the whole mission end to end on the embedded default, with its report."""
