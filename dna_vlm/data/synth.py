"""A procedurally generated video QA set of "semantically dense" scenes (the embedded default data set).

Each clip (default 8 frames, 64x64, 8 fps) shows one *target* - the object with a grey outline - plus
``density`` (0..K) *distractors*: objects without the outline that are closely associated with the target.
Every question is about the target, and names it by its outline (``CUE``):

- ``color``:  "What colour is the object with the grey outline?"   (red / green / blue / yellow)
- ``shape``:  "What shape is the object with the grey outline?"    (circle / square / triangle / cross)
- ``motion``: "In which direction does the object with the grey outline move?"  (left / right / up / down)

The asked attribute of each distractor takes one of the *other* option values (all distinct), so with K=3 and
density 3 every option is on screen and only the outline tells which one is right. The distractors share the
target's *other* attributes (same shape, same colour, moving together) with a probability that grows with the
density, and they start closer to the target as the density grows (outline gaps from 0.6 to 0.15 object
radii). Nothing but the outline marks the target: target and distractors are the vertices of one regular
polygon (no object is the group's centre) and the target is drawn at a random depth among them, so where
crowded objects overlap (at an edge of the canvas, or crossing paths) it may be partly covered.

The module-level settings (``SETTINGS``: size, travel, gaps, outline, layout, depth, wording) decide the
pixels and words; meta.json records them and :func:`rendering` sets them for a block, so a recorded data set
(a pretrained asset's first stage, the pre-2026-12-06 default) is generated again under today's defaults.

Answer priors are balanced per split: categories, densities, answer letters and each category's answer
values are each (near-)uniform, so a blind model is at chance. Everything is deterministic for a seed.

``dna-vlm synth-data OUT_DIR`` / :func:`generate_dataset` write ``OUT_DIR/{train,val,test}.jsonl`` (rows in
the project's dataset format plus ``category``, ``density``, ``answer_value``, the label fields
``target_color`` / ``target_shape`` / ``target_motion`` (the target's value of each attribute, whatever is asked:
what ``dna-vlm probe --label`` predicts), ``target`` (its attributes, start and end centre in pixels),
``distractors`` and ``background`` - enough to re-render the clip with :func:`render_clip`),
``OUT_DIR/videos/*.mp4`` and ``OUT_DIR/meta.json``.

The *oracle input*: ``OUT_DIR/test_oracle.jsonl`` holds every test question again - same id, question,
options, answer and target - re-rendered without its distractors (``density`` 0, ``distractors`` [],
``source_density`` the test row's density) into ``OUT_DIR/videos/oracle/*.mp4``. A model's accuracy on it is
what a perfect removal of the distractors would give (the upper reference for "denoising" the input).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dna_vlm.data.dataset import LETTERS, write_jsonl
from dna_vlm.files import atomic_write_json
from dna_vlm.video.write import write_video

__all__ = [
    "CATEGORIES",
    "COLORS",
    "DIRECTIONS",
    "FORMAT",
    "LABEL_FIELDS",
    "ORACLE_FILE",
    "QUESTIONS",
    "SETTINGS",
    "SHAPES",
    "add_parser",
    "generate_dataset",
    "make_example",
    "questions",
    "render_clip",
    "rendering",
    "shape_mask",
]

# /2: label fields (target_color/shape/motion) on every row and the oracle test split (test_oracle.jsonl)
FORMAT = "dna-vlm-synth/2"
#: the label fields every row carries: the target's value of each attribute
LABEL_FIELDS = {c: f"target_{c}" for c in ("color", "shape", "motion")}
ORACLE_FILE = "test_oracle.jsonl"
ORACLE_VIDEOS = "videos/oracle"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 245),
    "yellow": (240, 220, 40),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# The target's outline: a light grey (before 2026-12-06 white, which this model finds at every density, so the
# distractors cost it nothing: docs/measurements/headroom-2026-12-06)
OUTLINE = (150, 150, 150)
# The target's outline as a grey this many levels above the clip's background (None: OUTLINE as given): one
# contrast on every background (an experiment's knob; the default uses OUTLINE)
OUTLINE_ABOVE_BG: int | None = None
# Geometry, as fractions of the frame size: objects 0.4 of the frame across (26 px at 64 px, 13 px when a model
# resizes to 32 px: shape is read at this size, not at 0.16 - headroom-2026-12-06), moving 0.45 of the frame
OBJECT_RADIUS = 0.2  # object "radius"
# distance each object moves over the clip: so 4 sampled frames show the direction plainly (0.5 before
# 2026-12-06; at radius 0.2 a path of 0.5 would not fit the canvas)
TRAVEL = 0.45
# Gap between the target's and a distractor's outline, in object radii, at density 1 and at the highest density;
# distances in between are interpolated. (0.9, -0.5) before 2026-12-06 (docs/measurements/instrument-diagnosis-
# 2026-12-05, E2). Objects near an edge are clamped to the canvas, so crowded scenes still overlap.
GAP = (0.6, 0.15)
# Distractors' own outline colour (None: no outline, only the target has one).
DISTRACTOR_OUTLINE: tuple[int, int, int] | None = None
# Where the distractors stand: "ring" (before 2026-12-06) spaces them evenly *around* the target, so from two
# distractors on the target is the group's centre and "the middle object" finds it without the outline;
# "polygon" makes target and distractors the vertices of one regular polygon, where no vertex is special.
LAYOUT = "polygon"
# "top": the target is drawn last, over any distractor it overlaps (before 2026-12-06: "the whole object on top"
# then finds it without the outline); "random": each scene draws it at a random depth among its objects.
TARGET_DEPTH = "random"

CATEGORIES = ("color", "shape", "motion")
VALUES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "motion": tuple(DIRECTIONS),
}
# How the questions name the target (the words must describe the outline drawn: see ``rendering``)
CUE = "grey outline"
QUESTION_TEMPLATES = {
    "color": "What colour is the object with the {cue}?",
    "shape": "What shape is the object with the {cue}?",
    "motion": "In which direction does the object with the {cue} move?",
}
# the module's settings that decide a data set's pixels and words (all recorded in meta.json's render block)
SETTINGS = (
    "OBJECT_RADIUS",
    "TRAVEL",
    "GAP",
    "OUTLINE",
    "OUTLINE_ABOVE_BG",
    "DISTRACTOR_OUTLINE",
    "LAYOUT",
    "TARGET_DEPTH",
    "CUE",
)


def questions() -> dict[str, str]:
    """Each category's question for the current ``CUE``."""
    return {c: t.format(cue=CUE) for c, t in QUESTION_TEMPLATES.items()}


QUESTIONS = questions()  # the default wording (kept for importers; rows use :func:`questions`)


@contextmanager
def rendering(**settings: Any) -> Iterator[None]:
    """Set render settings for the block (lowercase names of :data:`SETTINGS`, e.g. ``layout="ring"``,
    ``outline_above_bg=None``; JSON lists are taken as tuples) and restore them after: how a recorded data set
    (a pretrained asset's, meta.json's ``render`` block) is generated again under other defaults."""
    names = {k: k.upper() for k in settings}
    unknown = sorted(k for k, n in names.items() if n not in SETTINGS)
    if unknown:
        raise ValueError(f"unknown render setting(s) {unknown}; known: {[n.lower() for n in SETTINGS]}")
    g = globals()
    before = {n: g[n] for n in names.values()}
    g.update({names[k]: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    try:
        yield
    finally:
        g.update(before)


SPLITS = ("train", "val", "test")
OPTION_ORDERS = ("canonical", "shuffled")

DEFAULTS = {
    "n_train": 600,
    "n_val": 96,
    "n_test": 192,
    "seed": 0,
    "max_density": 3,
    "frames": 8,
    "size": 64,
    "fps": 8.0,
}


# ----------------------------------------------------------------------------------------------------------
# rendering


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels of ``shape`` of "radius" r, given offsets (dx, dy) from its centre."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = 0.82 * r
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":  # apex up, base down; contains its centre
        top, bottom = -r, 0.8 * r
        t = (dy - top) / (bottom - top)  # 0 at apex, 1 at base
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= t * 1.05 * r)
    if shape == "cross":
        a = 0.36 * r
        return ((np.abs(dx) <= a) & (np.abs(dy) <= r)) | ((np.abs(dy) <= a) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _draw(
    canvas: np.ndarray, obj: dict, cx: float, cy: float, r: float, outline: int, color: tuple = OUTLINE
) -> None:
    h, w, _ = canvas.shape
    pad = int(np.ceil(r + outline + 2))
    x0, x1 = max(0, int(cx) - pad), min(w, int(cx) + pad + 1)
    y0, y1 = max(0, int(cy) - pad), min(h, int(cy) + pad + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    inner = shape_mask(obj["shape"], dx, dy, r)
    region = canvas[y0:y1, x0:x1]
    if outline:
        outer = shape_mask(obj["shape"], dx, dy, r + outline)
        region[outer & ~inner] = color
    region[inner] = COLORS[obj["color"]]


def _geometry(size: int, frames: int) -> tuple[float, float, float]:
    """(object radius, total displacement over the clip, margin) in pixels for a canvas of ``size``."""
    r = OBJECT_RADIUS * size
    travel = TRAVEL * size if frames > 1 else 0.0
    margin = r + 0.04 * size
    return r, travel, margin


def _positions(obj: dict, frames: int, travel: float, size: int, margin: float) -> np.ndarray:
    """Centre (x, y) per frame: linear motion from ``start``, clamped to the canvas."""
    ux, uy = DIRECTIONS[obj["motion"]]
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    x = np.clip(obj["start"][0] + ux * travel * t, margin, size - margin)
    y = np.clip(obj["start"][1] + uy * travel * t, margin, size - margin)
    return np.stack([x, y], axis=1)


def render_clip(scene: dict, frames: int, size: int) -> np.ndarray:
    """Render a scene (``target``, ``distractors``, ``background``) to uint8 ``(frames, size, size, 3)``."""
    r, travel, margin = _geometry(size, frames)
    outline = max(1, round(size / 32))
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = np.asarray(scene["background"], np.uint8)
    d_ol = outline if DISTRACTOR_OUTLINE is not None else 0
    paths = [
        (_positions(d, frames, travel, size, margin), d, d_ol, DISTRACTOR_OUTLINE)
        for d in scene["distractors"]
    ]
    cue = (
        OUTLINE
        if OUTLINE_ABOVE_BG is None
        else tuple(min(255, c + OUTLINE_ABOVE_BG) for c in scene["background"])
    )
    target = (_positions(scene["target"], frames, travel, size, margin), scene["target"], outline, cue)
    paths.insert(scene.get("target_depth", len(paths)), target)
    for f in range(frames):
        for pos, obj, ol, color in paths:  # in depth order (the target last unless the scene says otherwise)
            _draw(video[f], obj, pos[f, 0], pos[f, 1], r, ol, color)
    return video


# ----------------------------------------------------------------------------------------------------------
# scene sampling


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n values in range(k), each used floor(n/k) or ceil(n/k) times, in random order."""
    reps = np.tile(np.arange(k), -(-n // k))[:n] if n else np.zeros(0, np.int64)
    # which values get the extra copies is itself random
    perm = rng.permutation(k)
    return rng.permutation(perm[reps])


def _start_for(motion: str, rng: np.random.Generator, size: int, travel: float, margin: float) -> list[float]:
    """A start point whose whole path stays on the canvas."""
    ux, uy = DIRECTIONS[motion]
    lo, hi = margin, size - margin
    xs = (lo - min(0, ux) * travel, hi - max(0, ux) * travel)
    ys = (lo - min(0, uy) * travel, hi - max(0, uy) * travel)
    return [float(rng.uniform(*xs)), float(rng.uniform(*ys))]


def make_example(
    rng: np.random.Generator,
    category: str,
    answer_value: str,
    letter: int,
    density: int,
    max_density: int,
    frames: int,
    size: int,
    option_order: str = "canonical",
) -> tuple[dict, dict]:
    """Sample one scene and its question. Returns ``(scene, row_fields)``.

    ``answer_value`` is the target's value for ``category``; ``letter`` (0..3) the position of the answer
    among the options when ``option_order="shuffled"``. With ``"canonical"`` the options are the category's
    values in their fixed order, so the letter follows from the (balanced) answer value.
    """
    r, travel, margin = _geometry(size, frames)
    values = VALUES[category]
    target = {a: str(rng.choice(VALUES[a])) for a in CATEGORIES}
    target[category] = answer_value
    target["start"] = _start_for(target["motion"], rng, size, travel, margin)

    others = [v for v in values if v != answer_value]
    rng.shuffle(others)
    distractors = _distractors(rng, target, category, others, density, max_density, (r, margin, size))
    bg = int(rng.integers(10, 60))
    scene = {"target": target, "distractors": distractors, "background": [bg, bg, bg]}
    if TARGET_DEPTH == "random":  # where the target is drawn among the objects (0: first, under the rest)
        scene["target_depth"] = int(rng.integers(0, density + 1))

    if option_order == "canonical":
        opts, letter = list(values), values.index(answer_value)
    else:
        opts = list(others)  # the 3 other values in random order, the answer inserted at `letter`
        opts.insert(letter, answer_value)
    fields = {
        "question": questions()[category],
        "options": opts,
        "answer": LETTERS[letter],
        "category": category,
        "density": int(density),
        "answer_value": answer_value,
        **{field: target[a] for a, field in LABEL_FIELDS.items()},
    }
    return scene, fields


def _distractors(rng, target: dict, category: str, others: list[str], density: int, max_density: int, geom):
    """``density`` distractors around ``target``: the asked attribute takes the distinct wrong values
    ``others``; the other attributes are the target's with a probability rising with the density."""
    r, margin, size = geom
    p_share = 0.25 + 0.75 * density / max(1, max_density)
    # closer with density: gap between outlines from GAP[0] r (density 1) down to GAP[1] r (density K)
    frac = (density - 1) / max(1, max_density - 1) if density > 0 else 0.0
    dist = 2 * r + r * (GAP[0] + (GAP[1] - GAP[0]) * frac)
    base_angle = rng.uniform(0, 2 * np.pi)
    distractors = []
    for i in range(density):
        d = {}
        for a in CATEGORIES:
            if a == category:
                d[a] = others[i % len(others)]
            elif rng.random() < p_share:
                d[a] = target[a]
            else:
                d[a] = str(rng.choice([v for v in VALUES[a] if v != target[a]]))
        sx, sy = _offset(target["start"], dist, base_angle, i, density, rng.uniform(-0.3, 0.3))
        d["start"] = [float(np.clip(sx, margin, size - margin)), float(np.clip(sy, margin, size - margin))]
        distractors.append(d)
    return distractors


def _offset(
    start: list[float], dist: float, base: float, i: int, density: int, jitter: float
) -> tuple[float, float]:
    """Start of distractor ``i`` of ``density``, ``dist`` from its neighbour (see ``LAYOUT``)."""
    if LAYOUT == "ring":
        ang = base + 2 * np.pi * i / max(1, density) + jitter
        return start[0] + dist * np.cos(ang), start[1] + dist * np.sin(ang)
    if LAYOUT != "polygon":
        raise ValueError(f"synth.LAYOUT must be 'ring' or 'polygon', not {LAYOUT!r}")
    # n = density + 1 vertices of side `dist`, the target at vertex 0, circumradius dist / (2 sin(pi/n))
    n = density + 1
    rad = dist / (2 * np.sin(np.pi / n))
    cx, cy = start[0] - rad * np.cos(base), start[1] - rad * np.sin(base)
    ang = base + 2 * np.pi * (i + 1) / n + jitter / n
    return cx + rad * np.cos(ang), cy + rad * np.sin(ang)


def _end_position(obj: dict, frames: int, size: int) -> list[float]:
    _r, travel, margin = _geometry(size, frames)
    return [round(float(v), 2) for v in _positions(obj, frames, travel, size, margin)[-1]]


def _generate_split(
    split: str,
    n: int,
    out_dir: Path,
    seed: int,
    max_density: int,
    frames: int,
    size: int,
    fps: float,
    option_order: str = "canonical",
) -> tuple[list[dict], dict]:
    ss = np.random.SeedSequence([seed, SPLITS.index(split)])
    plan_rng = np.random.default_rng(ss.spawn(1)[0])
    cats = _balanced(plan_rng, n, len(CATEGORIES))
    dens = _balanced(plan_rng, n, max_density + 1)
    letters = _balanced(plan_rng, n, 4)
    answer_vals = np.zeros(n, np.int64)
    for c in range(len(CATEGORIES)):
        where = np.flatnonzero(cats == c)
        answer_vals[where] = _balanced(plan_rng, len(where), len(VALUES[CATEGORIES[c]]))
    clip_seeds = ss.spawn(n)

    rows = []
    for i in range(n):
        category = CATEGORIES[cats[i]]
        rng = np.random.default_rng(clip_seeds[i])
        scene, fields = make_example(
            rng,
            category,
            VALUES[category][answer_vals[i]],
            int(letters[i]),
            int(dens[i]),
            max_density,
            frames,
            size,
            option_order,
        )
        rid = f"{split}-{i:05d}"
        rel = f"videos/{rid}.mp4"
        write_video(out_dir / rel, render_clip(scene, frames, size), fps=fps)
        target = {**scene["target"], "end": _end_position(scene["target"], frames, size)}
        rows.append(
            {
                "id": rid,
                "video": rel,
                **fields,
                "target": target,
                "distractors": scene["distractors"],
                "background": scene["background"],
                **({"target_depth": scene["target_depth"]} if "target_depth" in scene else {}),
            }
        )
    return rows, _histogram(rows)


def _oracle_rows(test_rows: list[dict], out_dir: Path, frames: int, size: int, fps: float) -> list[dict]:
    """Every test row again (same id, question, options, answer, target), its clip re-rendered without the
    distractors into :data:`ORACLE_VIDEOS` - deterministic: the scene is the row's, nothing is sampled."""
    rows = []
    for row in test_rows:
        scene = {"target": row["target"], "distractors": [], "background": row["background"]}
        rel = f"{ORACLE_VIDEOS}/{row['id']}.mp4"
        write_video(out_dir / rel, render_clip(scene, frames, size), fps=fps)
        oracle = {**row, "video": rel, "density": 0, "distractors": [], "source_density": row["density"]}
        rows.append(oracle)
    return rows


def _histogram(rows: list[dict]) -> dict:
    """How balanced a split came out: counts of answers, categories, densities and answer values."""
    return {
        "n": len(rows),
        "answers": dict(sorted(Counter(r["answer"] for r in rows).items())),
        "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
        "densities": {str(k): v for k, v in sorted(Counter(r["density"] for r in rows).items())},
        "answer_values": {
            c: dict(sorted(Counter(r["answer_value"] for r in rows if r["category"] == c).items()))
            for c in CATEGORIES
        },
    }


def _render_params() -> dict[str, Any]:
    """What else decides the pixels: a data set generated with other values is regenerated, not reused."""
    return {
        "object_radius": OBJECT_RADIUS,
        "travel": TRAVEL,
        "colors": {k: list(v) for k, v in COLORS.items()},
        "outline": list(OUTLINE),
        "outline_above_bg": OUTLINE_ABOVE_BG,
        "gap": list(GAP),
        "distractor_outline": None if DISTRACTOR_OUTLINE is None else list(DISTRACTOR_OUTLINE),
        "layout": LAYOUT,
        "target_depth": TARGET_DEPTH,
        "cue": CUE,
    }


def generate_dataset(
    out_dir: str | Path,
    n_train: int = DEFAULTS["n_train"],
    n_val: int = DEFAULTS["n_val"],
    n_test: int = DEFAULTS["n_test"],
    seed: int = 0,
    max_density: int = DEFAULTS["max_density"],
    frames: int = DEFAULTS["frames"],
    size: int = DEFAULTS["size"],
    fps: float = DEFAULTS["fps"],
    option_order: str = "canonical",
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Write the synthetic set to ``out_dir``; returns ``{"out_dir", "train", "val", "test", "meta"}``.

    ``option_order``: ``"canonical"`` (default) lists each category's four values in a fixed order, so the
    answer letter names the value; ``"shuffled"`` shuffles them per question. Both keep the answer letters
    and values balanced (a blind model is at chance). Canonical is the default because a tiny LLM trained
    from scratch does not learn to match a shuffled option list within a CPU-minutes budget (measured:
    chance after 900 steps, against ~40% validation accuracy with canonical order after 600).

    Idempotent: when ``out_dir/meta.json`` records the same arguments and every file is present, nothing is
    regenerated (``force=True`` regenerates). Deterministic for a seed.
    """
    out_dir = Path(out_dir)
    args = {
        "n_train": int(n_train),
        "n_val": int(n_val),
        "n_test": int(n_test),
        "seed": int(seed),
        "max_density": int(max_density),
        "frames": int(frames),
        "size": int(size),
        "fps": float(fps),
        "option_order": str(option_order),
    }
    _check_args(args)
    paths = {s: out_dir / f"{s}.jsonl" for s in SPLITS}
    paths["test_oracle"] = out_dir / ORACLE_FILE
    meta_path = out_dir / "meta.json"
    old = None if force else _up_to_date_meta(out_dir, args, paths)
    if old is not None:
        if verbose:
            print(f"synth-data: {out_dir} already holds this data set (meta.json matches); skipping")
        return {"out_dir": str(out_dir), **{s: str(p) for s, p in paths.items()}, "meta": old}

    t0 = time.perf_counter()
    meta = _write_splits(out_dir, args, paths, verbose)
    atomic_write_json(meta_path, meta)  # last: its presence marks a complete data set
    if verbose:
        print(f"synth-data: wrote {out_dir} in {time.perf_counter() - t0:.1f}s")
    return {"out_dir": str(out_dir), **{s: str(p) for s, p in paths.items()}, "meta": meta}


def _write_splits(
    out_dir: Path, args: dict[str, Any], paths: dict[str, Path], verbose: bool
) -> dict[str, Any]:
    """Render and write every split (and the test split's oracle twin); returns meta.json's content."""
    (out_dir / ORACLE_VIDEOS).mkdir(parents=True, exist_ok=True)
    meta = _new_meta(args)
    for split in SPLITS:
        n = args[f"n_{split}"]
        split_args = [args[k] for k in ("seed", "max_density", "frames", "size", "fps", "option_order")]
        rows, hist = _generate_split(split, n, out_dir, *split_args)
        write_jsonl(paths[split], rows)
        meta["splits"][split] = hist
        meta["videos"].extend(r["video"] for r in rows)
        if verbose:
            print(f"synth-data: {split}: {n} clips")
        if split == "test":
            oracle = _oracle_rows(rows, out_dir, args["frames"], args["size"], args["fps"])
            write_jsonl(paths["test_oracle"], oracle)
            meta["oracle"] = {"file": ORACLE_FILE, "n": len(oracle), "of": "test", "density": 0}
            meta["videos"].extend(r["video"] for r in oracle)
            if verbose:
                print(f"synth-data: {ORACLE_FILE}: {len(oracle)} clips without distractors (oracle input)")
    return meta


def _new_meta(args: dict[str, Any]) -> dict[str, Any]:
    """meta.json before the splits are filled in: what was asked and what decides the pixels."""
    return {
        "format": FORMAT,
        "args": args,
        "render": _render_params(),
        "categories": {c: list(VALUES[c]) for c in CATEGORIES},
        "questions": questions(),
        "target_cue": CUE,
        "label_fields": dict(LABEL_FIELDS),
        "splits": {},
        "videos": [],
    }


def _check_args(args: dict[str, Any]) -> None:
    """Refuse arguments that cannot make a balanced data set, naming the argument."""
    option_order, max_density = args["option_order"], args["max_density"]
    frames, size, fps = args["frames"], args["size"], args["fps"]
    if option_order not in OPTION_ORDERS:
        raise ValueError(f"option_order={option_order!r}: choose one of {OPTION_ORDERS}")
    for k in ("n_train", "n_val", "n_test"):
        if args[k] < 0:
            raise ValueError(f"{k} must be >= 0, got {args[k]}")
    if args["n_train"] + args["n_val"] + args["n_test"] == 0:
        raise ValueError("all split sizes are 0: nothing to generate")
    if not 0 <= args["max_density"] <= 3:
        raise ValueError(
            f"max_density must be in 0..3 (the asked attribute has 4 values, so at most 3 distractors "
            f"can each show a different wrong option), got {max_density}"
        )
    if args["frames"] < 2:
        raise ValueError(f"frames must be >= 2 (motion questions need movement), got {frames}")
    if args["size"] < 16 or args["size"] % 2:
        raise ValueError(f"size must be an even number of pixels >= 16, got {size}")
    if not args["fps"] > 0:
        raise ValueError(f"fps must be positive, got {fps}")


def _up_to_date_meta(out_dir: Path, args: dict[str, Any], paths: dict[str, Path]) -> dict | None:
    """The existing meta.json when ``out_dir`` already holds this exact data set (every file present)."""
    try:
        old = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if (
        isinstance(old, dict)
        and old.get("format") == FORMAT
        and old.get("args") == args
        and old.get("render") == _render_params()
        and all(p.is_file() for p in paths.values())
        and all((out_dir / v).is_file() for v in old.get("videos", []))
    ):
        return old
    return None


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth-data",
        help="generate the synthetic dense-scene video QA set",
        description=(
            "Generate the procedurally generated 'semantically dense' video QA set: OUT_DIR/{train,val,test}.jsonl, "
            "OUT_DIR/test_oracle.jsonl (the test questions re-rendered without distractors: the oracle input), "
            "OUT_DIR/videos/*.mp4, OUT_DIR/meta.json. Deterministic for a seed; skipped if OUT_DIR already "
            "holds the same set."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for {train,val,test}.jsonl and the clips")
    p.add_argument(
        "--n-train", type=int, default=DEFAULTS["n_train"], help="training rows (default: %(default)s)"
    )
    p.add_argument(
        "--n-val", type=int, default=DEFAULTS["n_val"], help="validation rows (default: %(default)s)"
    )
    p.add_argument("--n-test", type=int, default=DEFAULTS["n_test"], help="test rows (default: %(default)s)")
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS["seed"],
        help="seed of scenes and questions (default: %(default)s)",
    )
    p.add_argument("--max-density", type=int, default=DEFAULTS["max_density"], help="most distractors (0..3)")
    p.add_argument("--frames", type=int, default=DEFAULTS["frames"], help="frames per clip")
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="clip width = height in pixels (even)")
    p.add_argument("--fps", type=float, default=DEFAULTS["fps"], help="clip frame rate")
    p.add_argument(
        "--option-order",
        choices=OPTION_ORDERS,
        default="canonical",
        help="canonical: each category's values in a fixed order (learnable by the tiny model); shuffled: per question",
    )
    p.add_argument("--force", action="store_true", help="regenerate even if OUT_DIR matches")
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    try:
        res = generate_dataset(
            args.out_dir,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            seed=args.seed,
            max_density=args.max_density,
            frames=args.frames,
            size=args.size,
            fps=args.fps,
            option_order=args.option_order,
            force=args.force,
            verbose=True,
        )
    except ValueError as e:
        print(f"dna-vlm synth-data: error: {e}", file=sys.stderr)
        return 2
    for split in (*SPLITS, "test_oracle"):
        print(f"{split}: {res[split]}")
    print(f"meta: {Path(res['out_dir']) / 'meta.json'}")
    return 0
