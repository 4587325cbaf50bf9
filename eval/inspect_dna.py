"""`dna-vlm inspect`: what a DnA-patched (tuned) vision tower learned, from its weights and on given videos.

Python API: :func:`inspect_model` (writes ``inspect.json``, ``inspect.md`` and PNGs, returns the JSON dict);
helpers :func:`principal_angles_deg`, :func:`attention_entropy`, :func:`value_maps`.
Every quantity is defined in ``DEFINITIONS`` below (also appended to this docstring and to ``inspect.md``).
"""

from __future__ import annotations

import argparse
import inspect as _pyinspect
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._report_io import json_safe, pyplot, safe_name, save_png

__all__ = [
    "DEFINITIONS",
    "attention_entropy",
    "inspect_model",
    "principal_angles_deg",
    "value_maps",
]

DEFINITIONS = """\
## Definitions

For DnA layer l and head h (head width d, model width C), W_v+^(h) and W_v-^(h) are the (d, C) rows of the
positive and negative value maps that produce head h's values (biases ignored). For the low-rank negative
branch W_v- = B_v A_v (the effective map); with shared values W_v- = W_v+.

- **principal angles** (`angles.per_head[h].angles_deg`, ascending): 0 <= theta_1 <= ... <= theta_k <= 90
  degrees between the row spaces of W_v+^(h) and W_v-^(h) (`scipy.linalg.subspace_angles` on the
  transposes; k = the smaller of the two ranks). cos(theta_i) are the singular values of Q+^T Q-, with Q+ and
  Q- orthonormal bases of the two row spaces. 90 degrees = orthogonal value subspaces (the separation DnA aims
  for), 0 = a shared direction. `min_deg` / `mean_deg` / `max_deg` summarise one head. Shared values: all 0
  by construction. A zero W_v- (the function-preserving init before any training) has no row space: the
  angles are null with status `zero_v_neg`.
- **random reference** (`angles.random_mean_deg`): the mean principal angle between W_v+^(h) and a random
  Gaussian matrix of W_v-^(h)'s shape and rank, averaged over heads (seeded). In high dimension random
  subspaces are already far apart, so compare learned angles with this, not with 90.
- **lambda** (`lambda`): the learned per-head weight of the negative branch (out = P+ V+ - lambda P- V-).
- **attention entropy** (`entropy.positive` / `entropy.negative`, nats, per head): for each query i of a
  frame, H_i = -sum_j p_ij log p_ij over the keys j (0 log 0 = 0), where p = softmax(s Q+ K^T) for the
  positive and softmax(-s Q- K^T) for the negative branch; averaged over all queries of all sampled frames of
  all videos (`per_video` keeps each video's mean). Uniform attention over N keys gives log N
  (`entropy.max`); lower = more focused. `normalised` = entropy / log N.
- **overlays** (`overlay_*.png`): for the overlay layer (default: the last DnA layer) and each sampled frame,
  the attention from the query (`mean` = the average of the attention rows of all queries, i.e. how much
  each patch is attended on average; or one patch index) to every patch, averaged over heads, reshaped to
  the patch grid, upsampled bilinearly and drawn over the frame (resized to the tower's input size by the
  processor: the overlay is on the original frame's full extent).
"""

if __doc__ is not None:
    __doc__ += "\n" + DEFINITIONS


# ----------------------------------------------------------------------------------------------------------
# weights: value subspaces


def principal_angles_deg(a, b) -> np.ndarray | None:
    """Principal angles (degrees, ascending) between the row spaces of ``a`` (d1, C) and ``b`` (d2, C).

    None when either matrix is zero (no row space)."""
    from scipy.linalg import subspace_angles

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not np.any(a) or not np.any(b):
        return None
    ang = subspace_angles(a.T, b.T)
    if ang.size == 0:
        return None
    return np.sort(np.degrees(ang))


def value_maps(layer) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(W_v+ (C_out, C_in), effective W_v- or None when it is W_v+, kind) of one DnA layer, in float64
    (so B_v A_v keeps its exact rank)."""
    _, v = layer.positive_qv()
    w_pos = v.weight.detach().cpu().double()
    neg, opts = layer.neg, layer.opts
    if opts.shared_values:
        return w_pos, None, "shared"
    if opts.neg_branch == "lowrank":
        w_neg = neg.v_neg_b.weight.detach().cpu().double() @ neg.v_neg_a.weight.detach().cpu().double()
        return w_pos, w_neg, "lowrank"
    return w_pos, neg.v_neg.weight.detach().cpu().double(), "full"


def _layer_angles(layer, num_heads: int, seed: int) -> dict:
    w_pos, w_neg, kind = value_maps(layer)
    d = w_pos.shape[0] // num_heads
    heads, rand = [], []
    rng = np.random.default_rng(seed)
    if kind == "shared":
        heads = [
            {"min_deg": 0.0, "mean_deg": 0.0, "max_deg": 0.0, "angles_deg": [0.0] * d}
            for _ in range(num_heads)
        ]
        return {"status": "shared_values", "kind": kind, "per_head": heads, "random_mean_deg": None}
    status = "ok"
    for h in range(num_heads):
        a = w_pos[h * d : (h + 1) * d].numpy()
        b = w_neg[h * d : (h + 1) * d].numpy()
        ang = principal_angles_deg(a, b)
        if ang is None:
            status = "zero_v_neg"
            heads.append({"min_deg": None, "mean_deg": None, "max_deg": None, "angles_deg": None})
            continue
        heads.append(
            {
                "min_deg": float(ang[0]),
                "mean_deg": float(ang.mean()),
                "max_deg": float(ang[-1]),
                "angles_deg": [round(float(x), 4) for x in ang],
            }
        )
        r = max(1, min(int(np.linalg.matrix_rank(b)), b.shape[0]))
        ref = principal_angles_deg(a, rng.standard_normal((r, b.shape[1])))
        rand.append(float(ref.mean()) if ref is not None else math.nan)
    return {
        "status": status,
        "kind": kind,
        "per_head": heads,
        "random_mean_deg": float(np.mean(rand)) if rand else None,
    }


# ----------------------------------------------------------------------------------------------------------
# attention maps


def attention_entropy(p: torch.Tensor) -> torch.Tensor:
    """Softmax entropy (nats) per query: p (..., Nq, Nk) probabilities -> (..., Nq); 0 log 0 = 0."""
    p = p.float()
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))).sum(-1)


class _Recorder(list):
    """A ``DnALayer.capture`` list that reduces each recorded map at once (full maps never pile up)."""

    def __init__(self, keep_maps: bool, query):
        super().__init__()
        self.keep_maps, self.query = keep_maps, query
        self.sums = {"positive": None, "negative": None}
        self.count = 0
        self.nk: set[int] = set()
        self.maps: list[dict] = []

    def append(self, item) -> None:  # called by DnALayer._record
        p_pos, p_neg, cu = item["p_pos"], item["p_neg"], item.get("cu_seqlens")
        for name, p in (("positive", p_pos), ("negative", p_neg)):
            e = attention_entropy(p)  # (B, H, Nq)
            s = e.sum(dim=(0, 2)).double()
            self.sums[name] = s if self.sums[name] is None else self.sums[name] + s
        self.count += p_pos.shape[0] * p_pos.shape[2]
        if cu is None:
            self.nk.add(int(p_pos.shape[-1]))
        else:
            self.nk.update(int(x) for x in (cu[1:] - cu[:-1]).tolist())
        if self.keep_maps:
            self.maps.append(
                {
                    "pos": _query_rows(p_pos, self.query),
                    "neg": _query_rows(p_neg, self.query),
                    "packed": cu is not None,
                }
            )

    def entropy(self) -> dict:
        return {k: (v / max(self.count, 1)).tolist() for k, v in self.sums.items() if v is not None}


def _grid(n: int) -> tuple[int, int, int] | None:
    """(prefix tokens, rows, cols) for n tokens: a square patch grid, possibly after one CLS token."""
    for prefix in (0, 1):
        g = math.isqrt(n - prefix)
        if g > 0 and g * g == n - prefix:
            return prefix, g, g
    return None


def _query_rows(p: torch.Tensor, query) -> torch.Tensor:
    """(B, H, Nq, Nk) -> (B, H, Nk): the mean attention row, or the row of one query patch."""
    if query == "mean":
        return p.float().mean(dim=2)
    nq = p.shape[2]
    if query == "center":
        g = _grid(nq)
        idx = nq // 2 if g is None else g[0] + (g[1] // 2) * g[2] + g[2] // 2
    else:
        idx = int(query)
        if not -nq <= idx < nq:
            raise ValueError(f"query={query!r}: the layer has {nq} query tokens")
    return p[:, :, idx, :].float()


# ----------------------------------------------------------------------------------------------------------
# running the tower


def _load_frames(video, num_frames: int):
    """(frames uint8 (T, H, W, 3), name, timestamps or None) from a path, a Frames object or an array."""
    if isinstance(video, (str, Path)):
        from dna_vlm.video import sample_frames

        fr = sample_frames(video, num_frames=num_frames)
        return fr.frames, Path(video).name, [round(float(t), 3) for t in fr.timestamps]
    if hasattr(video, "frames") and hasattr(video, "timestamps"):
        name = Path(getattr(video, "path", "video") or "video").name
        return np.asarray(video.frames), name, [round(float(t), 3) for t in video.timestamps]
    arr = np.asarray(video)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"a video must be a path, a Frames object or uint8 (T, H, W, 3); got {arr.dtype} {arr.shape}"
        )
    return arr, "array", None


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.device.type != "meta" and p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _to(batch: dict, device, dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        out[k] = v
    return out


@torch.no_grad()
def run_vision(model, processor, frames: np.ndarray) -> None:
    """Run ``model``'s vision tower on one video's frames (the model's own video path when it has one)."""
    from dna_vlm.patching import find_adapter, unwrap

    base = unwrap(model)
    device, dtype = _model_device_dtype(base)
    vp = getattr(processor, "video_processor", None)
    if vp is None and "Video" in type(processor).__name__:
        vp = processor
    fn = getattr(base, "get_video_features", None)
    if vp is not None and callable(fn):
        batch = _to(dict(vp(videos=[frames], return_tensors="pt")), device, dtype)
        params = _pyinspect.signature(fn).parameters
        fn(**{k: v for k, v in batch.items() if k in params})
        return
    ip = getattr(processor, "image_processor", None) or processor
    batch = _to(dict(ip(images=list(frames), return_tensors="pt")), device, dtype)
    _, towers = find_adapter(base)
    towers[0][1](pixel_values=batch["pixel_values"])


# ----------------------------------------------------------------------------------------------------------
# main entry


def _select(layers, n: int) -> list[int]:
    from dna_vlm.patching import _parse_layers

    if isinstance(layers, str) and layers not in ("all",) and not layers.startswith("last:"):
        layers = [int(x) for x in layers.split(",") if x.strip()]
    return _parse_layers(layers, n)


def inspect_model(
    model,
    processor,
    videos: Sequence = (),
    out_dir: str | Path | None = None,
    num_frames: int = 8,
    layers=None,
    overlay_layer: int = -1,
    query: str | int = "mean",
    max_overlay_frames: int = 8,
    seed: int = 0,
    plots: bool = True,
) -> dict:
    """Principal angles, lambdas and (with ``videos``) attention entropies and overlays of a DnA model.

    Args:
        model: a DnA-patched model (e.g. from ``dna_vlm.runs.load_model(run_dir=...)``).
        processor: its processor (``.video_processor`` or ``.image_processor`` is used), or a video processor.
        videos: paths, ``dna_vlm.video.Frames`` or uint8 (T, H, W, 3) arrays.
        out_dir: where to write ``inspect.json``, ``inspect.md`` and PNGs (nothing written if None).
        num_frames: frames sampled per video path (uniformly).
        layers: which DnA layers to inspect: None (all), ``"last:k"``, indices or ``"0,3"`` (positions among
            the patched layers).
        overlay_layer: position (among the inspected layers) of the layer drawn in the overlays.
        query: ``"mean"``, ``"center"`` or a query token index for the overlays.
    Returns the ``inspect.json`` dict. See ``DEFINITIONS``.
    """
    from dna_vlm.errors import NotPatchedError
    from dna_vlm.patching import STATE_ATTR, dna_layers, unwrap

    all_layers = list(dna_layers(model))
    if not all_layers:
        raise NotPatchedError(
            "inspect needs a DnA-patched model: load a DnA training run (--run RUN_DIR) or patch the model "
            "(dna_vlm.patch / --attention dna)"
        )
    chosen = [all_layers[i] for i in _select(layers, len(all_layers))]
    state = getattr(unwrap(model), STATE_ATTR, {})
    report: dict = {
        "format": "dna-vlm-inspect/1",
        "model_type": getattr(getattr(unwrap(model), "config", None), "model_type", None),
        "family": state.get("family"),
        "options": state.get("options"),
        "layers": [],
        "videos": [],
    }
    overlay_pos = overlay_layer % len(chosen)
    for pos, (key, layer) in enumerate(chosen):
        H = int(layer.num_heads)
        entry = {
            "key": key,
            "index": int(layer.layer_index),
            "num_heads": H,
            "head_dim": int(layer.positive_qv()[1].weight.shape[0] // H),
            "lambda": [float(x) for x in layer.neg.neg_scale.detach().float().cpu()],
            "angles": _layer_angles(layer, H, seed + pos),
        }
        report["layers"].append(entry)
    report["overlay_layer"] = report["layers"][overlay_pos]["key"] if videos else None

    # attention on the videos
    per_video = []
    out = Path(out_dir) if out_dir is not None else None
    pngs: list[Path] = []
    for vi, video in enumerate(videos):
        frames, name, stamps = _load_frames(video, num_frames)
        recs = [_Recorder(keep_maps=(pos == overlay_pos), query=query) for pos in range(len(chosen))]
        try:
            for (_, layer), rec in zip(chosen, recs, strict=True):
                layer.capture = rec
            run_vision(model, processor, frames)
        finally:
            for _, layer in chosen:
                layer.capture = None
        if not recs[0].count:
            raise RuntimeError(
                "the vision tower ran but no DnA layer recorded attention maps; does this model's video path "
                "go through its patched tower?"
            )
        per_video.append([r.entropy() for r in recs])
        vinfo = {"name": name, "frames": int(frames.shape[0]), "timestamps": stamps}
        if isinstance(video, (str, Path)):
            vinfo["path"] = str(video)
        if out is not None and plots:
            png = _overlay_png(
                frames,
                recs[overlay_pos].maps,
                out / f"overlay_{vi:02d}_{safe_name(name, 'video')}.png",
                max_overlay_frames,
                name,
                report["overlay_layer"],
                query,
            )
            vinfo["overlay"] = png.name if png else None
            if png:
                pngs.append(png)
        report["videos"].append(vinfo)
        for pos, rec in enumerate(recs):
            report["layers"][pos].setdefault("_nk", set()).update(rec.nk)

    for pos, entry in enumerate(report["layers"]):
        nk = sorted(entry.pop("_nk", set()))
        if not per_video:
            continue
        pos_e = np.mean([v[pos]["positive"] for v in per_video], axis=0)
        neg_e = np.mean([v[pos]["negative"] for v in per_video], axis=0)
        mx = math.log(nk[0]) if len(nk) == 1 else None
        entry["entropy"] = {
            "positive": pos_e.tolist(),
            "negative": neg_e.tolist(),
            "max": mx,
            "keys": nk,
            "normalised": {
                "positive": (pos_e / mx).tolist() if mx else None,
                "negative": (neg_e / mx).tolist() if mx else None,
            },
            "per_video": [
                {"positive": v[pos]["positive"], "negative": v[pos]["negative"]} for v in per_video
            ],
        }
    report["summary"] = _summary(report)
    report["definitions"] = DEFINITIONS
    if out is not None:
        from dna_vlm._io import atomic_write_bytes, atomic_write_json

        if plots:
            pngs = [*_weight_pngs(report, out), *pngs]
        report["plots"] = [p.name for p in pngs]
        atomic_write_json(out / "inspect.json", json_safe(report))
        atomic_write_bytes(out / "inspect.md", render_markdown(report).encode())
    return report


def _nanmean(xs) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def _summary(r: dict) -> dict:
    L = r["layers"]
    heads = [h for e in L for h in e["angles"]["per_head"]]
    s = {
        "layers": len(L),
        "mean_angle_deg": _nanmean(h["mean_deg"] for h in heads),
        "mean_min_angle_deg": _nanmean(h["min_deg"] for h in heads),
        "random_mean_angle_deg": _nanmean(e["angles"]["random_mean_deg"] for e in L),
        "mean_lambda": _nanmean(x for e in L for x in e["lambda"]),
        "angle_status": sorted({e["angles"]["status"] for e in L}),
    }
    if L and "entropy" in L[0]:
        s["mean_entropy_positive"] = _nanmean(x for e in L for x in e["entropy"]["positive"])
        s["mean_entropy_negative"] = _nanmean(x for e in L for x in e["entropy"]["negative"])
    return s


# ----------------------------------------------------------------------------------------------------------
# text and plots


def _f(x, fmt="{:.2f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def render_markdown(r: dict) -> str:
    s = r["summary"]
    L = [
        "# dna-vlm inspect",
        "",
        f"Model type `{r['model_type']}`, tower family `{r['family']}`, DnA options `{r['options']}`.",
        "",
        f"- layers inspected: {s['layers']}; mean principal angle between V+ and V- {_f(s['mean_angle_deg'])} deg "
        f"(mean smallest angle {_f(s['mean_min_angle_deg'])} deg; random-subspace reference "
        f"{_f(s['random_mean_angle_deg'])} deg); angle status: {', '.join(s['angle_status'])}",
        f"- mean lambda: {_f(s['mean_lambda'], '{:.4f}')}",
    ]
    if "mean_entropy_positive" in s:
        L.append(
            f"- mean attention entropy (nats): positive {_f(s['mean_entropy_positive'], '{:.3f}')}, negative "
            f"{_f(s['mean_entropy_negative'], '{:.3f}')} over {len(r['videos'])} video(s)"
        )
    if "zero_v_neg" in s["angle_status"]:
        L.append(
            "- some layers have V- = 0 (the function-preserving init, untrained): their angles are undefined"
        )
    L += [
        "",
        "| layer | key | lambda mean [min, max] | angle mean deg | smallest angle deg | random ref deg | entropy + | entropy - | log N |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in r["layers"]:
        lam = e["lambda"]
        hs = e["angles"]["per_head"]
        ent = e.get("entropy", {})
        mins = [h["min_deg"] for h in hs if h["min_deg"] is not None]
        L.append(
            f"| {e['index']} | `{e['key']}` | {np.mean(lam):.4f} [{min(lam):.4f}, {max(lam):.4f}] | "
            f"{_f(_nanmean(h['mean_deg'] for h in hs))} | {_f(min(mins) if mins else None)} | "
            f"{_f(e['angles']['random_mean_deg'])} | {_f(_nanmean(ent.get('positive', [])), '{:.3f}')} | "
            f"{_f(_nanmean(ent.get('negative', [])), '{:.3f}')} | {_f(ent.get('max'), '{:.3f}')} |"
        )
    if r["videos"]:
        L += ["", f"Overlays (layer `{r['overlay_layer']}`):", ""]
        for v in r["videos"]:
            L.append(
                f"- {v['name']}: {v['frames']} frames"
                + (f" -> ![{v['overlay']}]({v['overlay']})" if v.get("overlay") else "")
            )
    if r.get("plots"):
        L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r["plots"] if not p.startswith("overlay_")]
    L += ["", DEFINITIONS]
    return "\n".join(L)


def _weight_pngs(r: dict, out: Path) -> list[Path]:
    plt = pyplot()
    paths = []
    L = r["layers"]
    H = max(e["num_heads"] for e in L)
    ang = np.full((len(L), H), np.nan)
    lam = np.full((len(L), H), np.nan)
    for i, e in enumerate(L):
        for h, hd in enumerate(e["angles"]["per_head"]):
            ang[i, h] = np.nan if hd["mean_deg"] is None else hd["mean_deg"]
        lam[i, : len(e["lambda"])] = e["lambda"]
    fig, axes = plt.subplots(1, 2, figsize=(9, max(2.5, 0.35 * len(L) + 1.5)))
    for ax, data, title, kw in (
        (axes[0], ang, "mean principal angle V+ vs V- (deg)", {"vmin": 0, "vmax": 90}),
        (axes[1], lam, "lambda", {}),
    ):
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis", **kw)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(L)), [str(e["index"]) for e in L])
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax)
    paths.append(save_png(fig, out / "weights.png", dpi=100))
    plt.close(fig)
    if "entropy" in L[0]:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        idx = [e["index"] for e in L]
        ax.plot(idx, [np.mean(e["entropy"]["positive"]) for e in L], "o-", label="positive branch")
        ax.plot(idx, [np.mean(e["entropy"]["negative"]) for e in L], "s-", label="negative branch")
        if L[0]["entropy"]["max"]:
            ax.axhline(L[0]["entropy"]["max"], color="k", ls=":", lw=1, label="uniform (log N)")
        ax.set_xlabel("layer")
        ax.set_ylabel("mean entropy (nats)")
        ax.legend(fontsize=8)
        paths.append(save_png(fig, out / "entropy.png", dpi=100))
        plt.close(fig)
    return paths


def _overlay_png(frames, maps, path: Path, max_frames: int, name: str, layer_key, query) -> Path | None:
    """A grid per video: one row per frame: the frame, the P+ map over it, the P- map over it."""
    if not maps or maps[0]["packed"]:
        return None  # packed (varlen) towers: token order is not a plain patch grid
    pos = torch.cat([m["pos"] for m in maps]).mean(1).numpy()  # (B, Nk), head-averaged
    neg = torch.cat([m["neg"] for m in maps]).mean(1).numpy()
    g = _grid(pos.shape[-1])
    if g is None:
        return None
    prefix, rows, cols = g
    B = min(len(frames), pos.shape[0], max_frames)
    plt = pyplot()
    fig, axes = plt.subplots(B, 3, figsize=(7.5, 2.4 * B + 0.4), squeeze=False)
    for t in range(B):
        fr = frames[t]
        h, w = fr.shape[:2]
        for j, (title, m) in enumerate(
            (("frame", None), ("P+ (positive)", pos[t]), ("P- (negative)", neg[t]))
        ):
            ax = axes[t, j]
            ax.imshow(fr, extent=(0, w, h, 0))
            if m is not None:
                grid = m[prefix:].reshape(rows, cols)
                ax.imshow(grid, extent=(0, w, h, 0), alpha=0.55, cmap="inferno", interpolation="bilinear")
            ax.set_axis_off()
            if t == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle(f"{name}: layer {layer_key}, query={query}", fontsize=9)
    p = save_png(fig, path, dpi=100)
    plt.close(fig)
    return p


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect",
        help="DnA diagnostics: V+/V- principal angles, lambdas, attention entropies and overlays",
        description="Inspect a DnA-patched (tuned) model: principal angles between each head's V+ and V- value "
        "subspaces, lambda per head, attention entropy of both branches on given videos, and overlays of the "
        "positive/negative attention maps on frames. Writes inspect.json, inspect.md and PNGs.",
    )
    p.add_argument("--model", help="base model path or hub id (default: the run's base_model)")
    p.add_argument("--run", help="a `dna-vlm train` run dir (applies its DnA weights, adapter, projector)")
    p.add_argument(
        "--attention", choices=("dna",), help="patch an untuned model (function-preserving) to inspect it"
    )
    p.add_argument("--videos", nargs="*", default=[], help="video files to run the tower on")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--layers", default=None, help="DnA layers to inspect: all (default), last:k, or 0,3,...")
    p.add_argument(
        "--overlay-layer", type=int, default=-1, help="position among the inspected layers (default last)"
    )
    p.add_argument("--query", default="mean", help="overlay query: mean, center or a token index")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (inspect.json, inspect.md, *.png)")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    if not args.model and not args.run:
        print("dna-vlm inspect: error: pass --model PATH and/or --run RUN_DIR", file=sys.stderr)
        return 2
    from dna_vlm.runs import load_model

    query = args.query
    if query not in ("mean", "center"):
        try:
            query = int(query)
        except ValueError:
            print(
                f"dna-vlm inspect: error: --query {query!r}: use mean, center or a token index",
                file=sys.stderr,
            )
            return 2
    try:
        model, processor = load_model(
            pretrained=args.model,
            run_dir=args.run,
            attention=args.attention,
            device=args.device,
            dtype=args.dtype,
        )
        report = inspect_model(
            model,
            processor,
            args.videos,
            args.out,
            num_frames=args.num_frames,
            layers=args.layers,
            overlay_layer=args.overlay_layer,
            query=query,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as e:  # VideoError, NotPatchedError, RunError are ValueErrors
        print(f"dna-vlm inspect: error: {e}", file=sys.stderr)
        return 2
    s = report["summary"]
    print(
        f"{s['layers']} DnA layers: mean V+/V- angle {_f(s['mean_angle_deg'])} deg "
        f"(random ref {_f(s['random_mean_angle_deg'])}), mean lambda {_f(s['mean_lambda'], '{:.4f}')}"
        + (
            f", entropy +{_f(s['mean_entropy_positive'], '{:.3f}')} / -{_f(s['mean_entropy_negative'], '{:.3f}')}"
            if "mean_entropy_positive" in s
            else ""
        )
    )
    print(f"report: {Path(args.out) / 'inspect.md'}")
    return 0
