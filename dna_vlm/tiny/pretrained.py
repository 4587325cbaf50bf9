"""The embedded default's *pretrained* baseline: tiny LLaVA-OneVision weights trained once, offline, and shipped.

Why an asset: the demo stands in for "take a pretrained video LLM, patch its tower, tune the arms". A tiny
2-layer LM trained on the three-way question mix learns only colour in the minutes a demo has (measured in
docs/measurements/instrument-diagnosis-2026-12-05); with a curriculum (:class:`Recipe`, 4 frames; stage 1 on
plainly drawn clips: colour, shape, motion, the mix, the mix with the shape rows twice; stage 2 on the same
scenes drawn as the demo's are: shape, the mix, the mix with shape twice) it also reads motion and shape, which
the instrument's checks need - but that takes ~21 minutes of 2-core CPU, more than the demo's whole budget. So it is trained once by ``scripts/pretrain_default.py``
(:func:`build_asset`), and the demo loads it (:func:`pretrained_baseline`) as a user loads a hub checkpoint.

The asset is two files in ``dna_vlm/tiny/assets/``: ``<name>.safetensors`` (the weights) and
``<name>.json`` (the record: recipe, data, versions, per-phase loss and the weights' sha256). Loading
verifies the digest and that every tensor name and shape matches the tiny model built from config now, and
says what to do when not (rebuild the asset, or ``dna-vlm demo --baseline train``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dna_vlm.files import atomic_write_bytes

__all__ = [
    "ASSET_DIR",
    "ASSET_NAME",
    "DENSE_RENDER",
    "PLAIN_RENDER",
    "AssetError",
    "Recipe",
    "Stage",
    "asset_record",
    "build_asset",
    "pretrained_baseline",
]

ASSET_DIR = Path(__file__).parent / "assets"
ASSET_NAME = "llava_onevision-small-dense"
RECORD_FORMAT = "dna-vlm-pretrained/1"
WEIGHTS = "model.safetensors"


class AssetError(RuntimeError):
    """The shipped weights are missing, corrupt or do not fit the model built from config."""


#: how the first asset's clips were drawn (2026-12-06 morning): objects 0.16 frame wide, a white outline on
#: the target, distractors evenly *around* it and the target drawn on top. Explicit, so the recipe means the
#: same clips whatever the synthetic set's defaults are now.
PLAIN_RENDER = {
    "object_radius": 0.16, "travel": 0.5, "gap": [0.6, 0.15], "outline": [255, 255, 255], "outline_above_bg": None,
    "distractor_outline": None, "layout": "ring", "target_depth": "top", "cue": "white outline",
}  # fmt: skip
#: how the synthetic set draws its clips since 2026-12-06 (its defaults; the demo's clips)
DENSE_RENDER = {
    "object_radius": 0.2, "travel": 0.45, "gap": [0.6, 0.15], "outline": [150, 150, 150], "outline_above_bg": None,
    "distractor_outline": None, "layout": "polygon", "target_depth": "random", "cue": "grey outline",
}  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """Curriculum phases trained on one synthetic set: ``render`` holds the ``dna_vlm.data.synth.rendering``
    settings its clips are drawn with (the same seeds and scenes in every stage, drawn differently);
    ``phases``: (category, "all" or "+"-joined terms, steps)."""

    render: dict
    phases: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Recipe:
    """How the asset is trained: stages of curriculum phases, full tuning from the tiny model's seed."""

    # stage 1, the first asset's curriculum on plainly drawn clips: colour first (the LM learns to read the visual
    # tokens at all; without it the motion phase stalled at chance on this data seed), then shape, motion alone,
    # the mix, the mix with the shape rows twice (docs/measurements/pretrained-baseline-2026-12-06).
    # Stage 2, the same scenes drawn as the synthetic set draws them now (bigger objects, a grey outline, no
    # object in the middle, the target at a random depth): shape alone, the mix, the mix with the shape rows
    # twice (docs/measurements/headroom-2026-12-06, run bD). Trained from scratch on a precursor of these clips
    # (polygon layout, grey outline, the old size) the curriculum did not learn motion (run sD there).
    stages: tuple[Stage, ...] = (
        Stage(
            PLAIN_RENDER, (("color", 300), ("shape", 600), ("motion", 800), ("all", 800), ("all+shape", 600))
        ),
        Stage(DENSE_RENDER, (("shape", 400), ("all", 800), ("all+shape", 400))),
    )
    data_seed: int = 1000  # not the demo's seed (0): the demo's test clips are never trained on
    n_train: int = 3000
    model_seed: int = 0
    train_seed: int = 0  # every phase's data order
    size: str = "small"
    num_frames: int = 4  # motion is learned at 4 sampled frames, not at 8 (diagnosis: M1 vs M2)
    lr: float = 1e-3
    batch_size: int = 32

    @property
    def phases(self) -> list[tuple[int, str, int]]:
        """Every phase in training order: (stage index, category, steps)."""
        return [(i, c, n) for i, st in enumerate(self.stages) for c, n in st.phases]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def asset_record(asset_dir: str | os.PathLike = ASSET_DIR, name: str = ASSET_NAME) -> dict:
    """The asset's JSON record (raises :class:`AssetError` naming the file when it is missing)."""
    path = Path(asset_dir) / f"{name}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AssetError(f"pretrained asset record {path} unreadable ({e}); rebuild it with "
                         "`python scripts/pretrain_default.py` or run `dna-vlm demo --baseline train`") from e  # fmt: skip
    if rec.get("format") != RECORD_FORMAT:
        raise AssetError(f"{path}: format {rec.get('format')!r}, expected {RECORD_FORMAT!r}")
    return rec


def _check_fits(weights: Path, model_dir: Path) -> None:
    """Every tensor of the freshly built model exists in ``weights`` with the same shape, and nothing else."""
    from safetensors import safe_open

    def shapes(p: Path) -> dict[str, tuple]:
        with safe_open(str(p), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)

    have, want = shapes(weights), shapes(model_dir / WEIGHTS)
    if have != want:
        diff = sorted(set(have) ^ set(want)) or sorted(k for k in want if have[k] != want[k])
        raise AssetError(f"{weights} does not fit the tiny model this transformers builds (first differences: "
                         f"{diff[:4]}); rebuild it with `python scripts/pretrain_default.py` or run "
                         "`dna-vlm demo --baseline train`")  # fmt: skip


def pretrained_baseline(
    out_dir: str | os.PathLike, asset_dir: str | os.PathLike = ASSET_DIR, name: str = ASSET_NAME
) -> dict:
    """Write the pretrained tiny model to ``out_dir`` (config, tokenizer and processor built from config, weights
    from the asset after checking its sha256 and tensor shapes). Returns ``{"path", "record"}``."""
    from dna_vlm.tiny.default import build_tiny_model

    rec = asset_record(asset_dir, name)
    weights = Path(asset_dir) / f"{name}.safetensors"
    if not weights.is_file():
        raise AssetError(
            f"pretrained weights {weights} missing; rebuild with `python scripts/pretrain_default.py`"
        )
    digest = _sha256(weights)
    if digest != rec["sha256"]:
        raise AssetError(f"{weights}: sha256 {digest[:12]}... differs from its record's {rec['sha256'][:12]}... "
                         "(corrupt or replaced); rebuild with `python scripts/pretrain_default.py`")  # fmt: skip
    r = rec["recipe"]
    out = build_tiny_model(Path(out_dir), seed=r["model_seed"], size=r["size"])
    _check_fits(weights, out)
    tmp = out / (WEIGHTS + ".tmp")
    shutil.copyfile(weights, tmp)
    os.replace(tmp, out / WEIGHTS)
    atomic_write_bytes(out / "dna_vlm_pretrained.json", (json.dumps(rec, indent=2) + "\n").encode())
    return {"path": str(out), "record": rec}


def _phase_data(train_jsonl: str, spec: str) -> str:
    """The training rows of one curriculum phase: ``spec`` is a category, "all" (every row), or terms joined by
    "+" whose rows are concatenated ("all+shape": every row, and the shape rows once more; repeated rows get
    their term's index appended to their id, which must stay unique)."""
    if spec == "all":
        return train_jsonl
    rows = [json.loads(ln) for ln in Path(train_jsonl).read_text().splitlines()]
    picked = []
    for k, term in enumerate(spec.split("+")):
        got = [r for r in rows if term == "all" or r["category"] == term]
        if not got:
            raise ValueError(f"curriculum phase {spec!r}: no training row has the category {term!r}")
        picked += [{**r, "id": f"{r['id']}-{k}"} if k else r for r in got]
    dest = Path(train_jsonl).with_name(f"train_{spec}.jsonl")
    atomic_write_bytes(dest, "".join(json.dumps(r) + "\n" for r in picked).encode())
    return str(dest)


def _phase_key(recipe: Recipe, k: int) -> str:
    """What phase ``k``'s result depends on (the recipe's settings, and its stages' renders and phases up to
    ``k``), hashed into its folder name: a changed recipe retrains from the first phase it changes instead of
    reusing a stale run."""
    upto, left = [], k + 1
    for st in recipe.stages:
        upto.append({"render": st.render, "phases": [list(p) for p in st.phases[:left]]})
        left -= len(st.phases)
        if left <= 0:
            break
    what = {**asdict(recipe), "stages": upto}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]


def build_asset(
    work: str | os.PathLike, recipe: Recipe = Recipe(), asset_dir: str | os.PathLike = ASSET_DIR,
    name: str = ASSET_NAME, device: str = "cpu",
) -> dict:  # fmt: skip
    """Train the asset by ``recipe`` in ``work`` (resumable: finished phases are kept) and write
    ``<asset_dir>/<name>.{safetensors,json}``. Returns the record."""
    import torch
    import transformers

    from dna_vlm.data.synth import generate_dataset, rendering
    from dna_vlm.tiny.default import build_tiny_model
    from dna_vlm.train import TrainConfig, train

    work = Path(work)
    t0 = time.perf_counter()
    data = []
    # the same scenes in every stage, drawn with the stage's render settings
    for i, st in enumerate(recipe.stages):
        with rendering(**st.render):
            key = hashlib.sha256(json.dumps(st.render, sort_keys=True).encode()).hexdigest()[:8]
            data.append(generate_dataset(work / f"data{i}-{key}", n_train=recipe.n_train, n_val=0, n_test=8,
                                         seed=recipe.data_seed))  # fmt: skip
    model = str(build_tiny_model(work / "model0", seed=recipe.model_seed, size=recipe.size))
    phases = []
    for k, (stage, category, steps) in enumerate(recipe.phases):
        out = work / f"phase{k}-{category}-{_phase_key(recipe, k)}"
        if not (out / "summary.json").is_file():
            train(TrainConfig(
                data=_phase_data(data[stage]["train"], category), model=model, attention="softmax", tune="full",
                max_steps=steps, lr=recipe.lr, batch_size=recipe.batch_size, num_frames=recipe.num_frames, seed=recipe.train_seed,
                device=device, dtype="float32", save_every=200, warmup_steps=min(20, steps // 10),
                lr_schedule="cosine", output=str(out), overwrite=out.exists(),
            ))  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        phases.append(
            {"stage": stage, "category": category, "steps": steps, "final_loss": summary["final_loss"]}
        )
        model = str(out / "model")
    asset_dir = Path(asset_dir)
    asset_dir.mkdir(parents=True, exist_ok=True)
    weights = asset_dir / f"{name}.safetensors"
    shutil.copyfile(Path(model) / WEIGHTS, weights.with_suffix(".tmp"))
    os.replace(weights.with_suffix(".tmp"), weights)
    rec = {
        "format": RECORD_FORMAT, "name": name, "family": "llava_onevision", "recipe": asdict(recipe),
        # "render": the last stage's, the clips the weights are tuned for (the demo refuses other clips)
        "data": {"generator": "dna_vlm.data.synth", "args": data[-1]["meta"]["args"],
                 "render": data[-1]["meta"]["render"], "stages": [d["meta"]["render"] for d in data]},
        "phases": phases, "sha256": _sha256(weights), "bytes": weights.stat().st_size,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "seconds_this_invocation": round(time.perf_counter() - t0, 1), "rebuild": "python scripts/pretrain_default.py",
    }  # fmt: skip
    atomic_write_bytes(asset_dir / f"{name}.json", (json.dumps(rec, indent=2) + "\n").encode())
    return asset_record(asset_dir, name)
