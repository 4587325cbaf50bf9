"""Builders for the training tests: a tiny model dir and a tiny video QA set (clips via dna_vlm.video.decode)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230), "yellow": (230, 220, 40)}


def make_clip(path: Path, colour: str, n_frames: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A square of ``colour`` moving left to right over a grey background."""
    from dna_vlm.video.write import write_video

    rng = np.random.default_rng(seed)
    rgb = np.array(COLOURS[colour], dtype=np.uint8)
    frames = np.full((n_frames, size, size, 3), 110, dtype=np.uint8)
    frames += rng.integers(0, 12, size=frames.shape, dtype=np.uint8)
    side = size // 3
    y = int(rng.integers(0, size - side))
    for t in range(n_frames):
        x = int(t * (size - side) / max(n_frames - 1, 1))
        frames[t, y : y + side, x : x + side] = rgb
    write_video(path, frames, fps=8)
    return path


def make_dataset(folder: Path, n: int = 8, name: str = "train.jsonl", bad: int = 0, seed: int = 0) -> Path:
    """``n`` MCQ rows ("What color is the moving square?") over clips in ``folder/videos``; the last
    ``bad`` rows point to corrupt files (garbage bytes named .mp4)."""
    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        colour = names[(i + seed) % len(names)]
        video = folder / "videos" / f"{Path(name).stem}_{i}.mp4"
        if i >= n - bad:
            video.write_bytes(b"\x00not a video\x00" * 64)
        elif not video.exists():
            make_clip(video, colour, seed=seed * 1000 + i)
        options = names
        rows.append(
            {
                "id": f"{Path(name).stem}-{i}",
                "video": f"videos/{video.name}",
                "question": "What color is the moving square?",
                "options": options,
                "answer": "ABCD"[options.index(colour)],
                "category": "colour",
                "density": 1,
            }
        )
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_model(folder: Path) -> Path:
    from dna_vlm.tiny.default import build_tiny_model

    return build_tiny_model(Path(folder) / "tiny", seed=0)


def write_dna_run(model, run_dir: Path, base_model: Path, num_frames: int = 4) -> Path:
    """A minimal DnA run dir, laid out as `dna-vlm train` writes one: save_dna + run_config.json."""
    import dna_vlm
    from dna_vlm.runs.config import RunConfig

    dna_vlm.save_dna(model, run_dir / "dna")
    config = RunConfig(base_model=str(base_model), attention="dna", num_frames=num_frames, dna_dir="dna")
    config.write(run_dir)
    return run_dir


def lmms_env(root: Path, inherit: bool = True, **extra: str) -> dict[str, str]:
    """The offline environment every lmms-eval subprocess in the tests runs with: no hub, caches under
    ``root``, one thread, no wandb, and the plugin's lmms-eval workarounds on (``DNA_VLM_LMMS_COMPAT`` unset).
    ``inherit``: start from ``os.environ``; ``extra`` is added last."""
    import os

    env = dict(os.environ) if inherit else {}
    env.pop("DNA_VLM_LMMS_COMPAT", None)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(root / "hf"),
        HF_DATASETS_CACHE=str(root / "hf" / "datasets"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
    )
    env.update(extra)
    return env
