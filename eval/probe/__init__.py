"""`dna-vlm probe`: encoder-level accuracy from a linear probe on the visual tokens the LLM receives."""
