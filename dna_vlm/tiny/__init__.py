"""Tiny models built from configs (real HF classes, no downloads): the embedded default and one registry of every family."""
