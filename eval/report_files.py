"""Helpers shared by the report writers (attribute, inspect): JSON-safe values, file names, PNGs."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np

from dna_vlm.files import atomic_write_bytes


def json_safe(obj):
    """NaN/inf -> None, numpy scalars -> Python, tuples/sets -> lists (report.json must be strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def safe_name(name: str, default: str = "item") -> str:
    """A file-name-safe version of ``name`` (at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or default


def pyplot():
    """matplotlib.pyplot on the Agg backend (headless), imported lazily."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path
