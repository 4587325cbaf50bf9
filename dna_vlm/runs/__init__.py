"""Run dirs: their config schema, loading a base model with a run applied, the one-writer lock, and exports
(a run as one model folder) with the guarded formats other loaders refuse instead of misreading."""
