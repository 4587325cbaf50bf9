"""lmms-eval sample logs: the per-sample record and failure marker, reading logs, per-task correctness readers."""
