"""`dna-vlm inspect`: what a DnA-patched tower learned (weights, angles, entropies, attention overlays)."""
