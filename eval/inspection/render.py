"""The text and pictures of ``dna-vlm inspect``: the definitions, ``inspect.md`` and the PNGs.

Pure functions of the ``inspect.json`` dict (and, for overlays, the frames and reduced attention rows); the
numbers come from :mod:`dna_vlm.eval.inspection.run`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from dna_vlm.eval.report_files import pyplot, save_png

__all__ = ["DEFINITIONS", "fmt_num", "nanmean", "overlay_png", "patch_grid", "render_markdown", "weight_pngs"]

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


def patch_grid(n: int) -> tuple[int, int, int] | None:
    """(prefix tokens, rows, cols) for n tokens: a square patch grid, possibly after one CLS token."""
    for prefix in (0, 1):
        g = math.isqrt(n - prefix)
        if g > 0 and g * g == n - prefix:
            return prefix, g, g
    return None


def nanmean(xs) -> float | None:
    """Mean of the finite, non-None values; None when there are none."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def fmt_num(x, fmt="{:.2f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def render_markdown(r: dict) -> str:
    s = r["summary"]
    L = [
        "# dna-vlm inspect",
        "",
        f"Model type `{r['model_type']}`, tower family `{r['family']}`, DnA options `{r['options']}`.",
        "",
        f"- layers inspected: {s['layers']}; mean principal angle between V+ and V- {fmt_num(s['mean_angle_deg'])} deg "
        f"(mean smallest angle {fmt_num(s['mean_min_angle_deg'])} deg; random-subspace reference "
        f"{fmt_num(s['random_mean_angle_deg'])} deg); angle status: {', '.join(s['angle_status'])}",
        f"- mean lambda: {fmt_num(s['mean_lambda'], '{:.4f}')}",
    ]
    if "mean_entropy_positive" in s:
        L.append(
            f"- mean attention entropy (nats): positive {fmt_num(s['mean_entropy_positive'], '{:.3f}')}, negative "
            f"{fmt_num(s['mean_entropy_negative'], '{:.3f}')} over {len(r['videos'])} video(s)"
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
            f"{fmt_num(nanmean(h['mean_deg'] for h in hs))} | {fmt_num(min(mins) if mins else None)} | "
            f"{fmt_num(e['angles']['random_mean_deg'])} | {fmt_num(nanmean(ent.get('positive', [])), '{:.3f}')} | "
            f"{fmt_num(nanmean(ent.get('negative', [])), '{:.3f}')} | {fmt_num(ent.get('max'), '{:.3f}')} |"
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


def weight_pngs(r: dict, out: Path) -> list[Path]:
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


def overlay_png(frames, maps, path: Path, max_frames: int, name: str, layer_key, query) -> Path | None:
    """A grid per video: one row per frame: the frame, the P+ map over it, the P- map over it."""
    if not maps or maps[0]["packed"]:
        return None  # packed (varlen) towers: token order is not a plain patch grid
    pos = torch.cat([m["pos"] for m in maps]).mean(1).numpy()  # (B, Nk), head-averaged
    neg = torch.cat([m["neg"] for m in maps]).mean(1).numpy()
    g = patch_grid(pos.shape[-1])
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
