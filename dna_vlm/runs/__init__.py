"""Run dirs: their config schema, loading a base model with a run applied, and the one-writer lock."""
