"""`dna-vlm attribute`: paired comparison of sample logs, the Encoder section, and their report files."""
