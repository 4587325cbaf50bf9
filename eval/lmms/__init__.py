"""The ``dna_vlm`` lmms-eval plugin model, its task YAMLs, and the wrapper that runs the stock lmms-eval CLI."""
