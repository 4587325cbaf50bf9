"""Measuring DnA: the lmms-eval plugin and task YAMLs, paired attribution (``attribute``) and encoder diagnostics
(``inspect_dna``). Nothing heavy is imported here; import the submodules you need."""
