"""The exceptions training raises for the user to act on."""

from __future__ import annotations

__all__ = ["TrainError", "TrainInterrupted"]


class TrainError(RuntimeError):
    """Training stopped for a reason the user must act on (the message says what and where)."""


class TrainInterrupted(TrainError):
    """Stopped by a signal (SIGINT/SIGTERM) or ``stop_after``; a checkpoint was saved: rerun with resume."""
