"""`dna-vlm inspect`: what a DnA-patched (tuned) vision tower learned, from its weights and on given videos.

Python API: :func:`inspect_model` (writes ``inspect.json``, ``inspect.md`` and PNGs, returns the JSON dict);
helpers :func:`principal_angles_deg`, :func:`attention_entropy`, :func:`value_maps`. Attention maps are taken
with :func:`dna_vlm.eval.inspection.capture.capture_attention`; text and plots live in
:mod:`dna_vlm.eval.inspection.render`. Every quantity is defined in ``DEFINITIONS`` (also appended to this
docstring and to ``inspect.md``).
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
from dna_vlm.eval.inspection.capture import AttentionMaps, capture_attention
from dna_vlm.eval.inspection.render import (
    DEFINITIONS,
    fmt_num,
    nanmean,
    overlay_png,
    patch_grid,
    render_markdown,
    weight_pngs,
)
from dna_vlm.eval.report_files import json_safe, safe_name

from dna_vlm.data.prompting import batch_to_device
from dna_vlm.errors import NotPatchedError
from dna_vlm.files import atomic_write_bytes, atomic_write_json
from dna_vlm.patching import dna_layers, find_adapter, parse_layers, patch_state, unwrap

__all__ = [
    "DEFINITIONS",
    "attention_entropy",
    "inspect_model",
    "principal_angles_deg",
    "run_vision",
    "value_maps",
]

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


class EntropyRecorder:
    """Reduces each captured map of one layer at once (full maps never pile up): entropy sums per head, the
    key counts seen and, for the overlay layer, the query rows."""

    def __init__(self, keep_maps: bool, query):
        self.keep_maps, self.query = keep_maps, query
        self.sums = {"positive": None, "negative": None}
        self.count = 0
        self.nk: set[int] = set()
        self.maps: list[dict] = []

    def add(self, m: AttentionMaps) -> None:
        for name, p in (("positive", m.p_pos), ("negative", m.p_neg)):
            s = attention_entropy(p).sum(dim=(0, 2)).double()  # (B, H, Nq) -> (H,)
            self.sums[name] = s if self.sums[name] is None else self.sums[name] + s
        self.count += m.p_pos.shape[0] * m.p_pos.shape[2]
        if m.cu_seqlens is None:
            self.nk.add(int(m.p_pos.shape[-1]))
        else:
            self.nk.update(int(x) for x in (m.cu_seqlens[1:] - m.cu_seqlens[:-1]).tolist())
        if self.keep_maps:
            packed = m.cu_seqlens is not None
            pos, neg = _query_rows(m.p_pos, self.query), _query_rows(m.p_neg, self.query)
            self.maps.append({"pos": pos, "neg": neg, "packed": packed})

    def entropy(self) -> dict:
        return {k: (v / max(self.count, 1)).tolist() for k, v in self.sums.items() if v is not None}


def _query_rows(p: torch.Tensor, query) -> torch.Tensor:
    """(B, H, Nq, Nk) -> (B, H, Nk): the mean attention row, or the row of one query patch."""
    if query == "mean":
        return p.float().mean(dim=2)
    nq = p.shape[2]
    if query == "center":
        g = patch_grid(nq)
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
        from dna_vlm.video.decode import sample_frames

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


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.device.type != "meta" and p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def run_vision(model, processor, frames: np.ndarray) -> None:
    """Run ``model``'s vision tower on one video's frames (the model's own video path when it has one)."""
    base = unwrap(model)
    device, dtype = _model_device_dtype(base)
    vp = getattr(processor, "video_processor", None)
    if vp is None and "Video" in type(processor).__name__:
        vp = processor
    fn = getattr(base, "get_video_features", None)
    if vp is not None and callable(fn):
        batch = batch_to_device(dict(vp(videos=[frames], return_tensors="pt")), device, dtype)
        params = _pyinspect.signature(fn).parameters
        fn(**{k: v for k, v in batch.items() if k in params})
        return
    ip = getattr(processor, "image_processor", None) or processor
    batch = batch_to_device(dict(ip(images=list(frames), return_tensors="pt")), device, dtype)
    _, towers = find_adapter(base)
    towers[0][1](pixel_values=batch["pixel_values"])


# ----------------------------------------------------------------------------------------------------------
# main entry


def _select(layers, n: int) -> list[int]:
    if isinstance(layers, str) and layers not in ("all",) and not layers.startswith("last:"):
        layers = [int(x) for x in layers.split(",") if x.strip()]
    return parse_layers(layers, n)


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
        model: a DnA-patched model (e.g. from ``dna_vlm.runs.loading.load_model(run_dir=...)``).
        processor: its processor (``.video_processor`` or ``.image_processor`` is used), or a video processor.
        videos: paths, ``dna_vlm.video.decode.Frames`` or uint8 (T, H, W, 3) arrays.
        out_dir: where to write ``inspect.json``, ``inspect.md`` and PNGs (nothing written if None).
        num_frames: frames sampled per video path (uniformly).
        layers: which DnA layers to inspect: None (all), ``"last:k"``, indices or ``"0,3"`` (positions among
            the patched layers).
        overlay_layer: position (among the inspected layers) of the layer drawn in the overlays.
        query: ``"mean"``, ``"center"`` or a query token index for the overlays.
    Returns the ``inspect.json`` dict. See ``DEFINITIONS``.
    """
    state = patch_state(model)
    all_layers = list(dna_layers(model))
    if state is not None and state.options.attention == "softmax":
        raise NotPatchedError(
            "inspect needs DnA layers, but this model carries the softmax control arm (attention=softmax: "
            "no negative branch); inspect a DnA run (--run RUN_DIR of a --attention dna training)"
        )
    if state is None or not all_layers:
        raise NotPatchedError(
            "inspect needs a DnA-patched model: load a DnA training run (--run RUN_DIR) or patch the model "
            "(dna_vlm.patch / --attention dna)"
        )
    chosen = [all_layers[i] for i in _select(layers, len(all_layers))]
    report: dict = {
        "format": "dna-vlm-inspect/1",
        "model_type": getattr(getattr(unwrap(model), "config", None), "model_type", None),
        "family": state.family,
        "options": state.options.to_dict(),
        "layers": [_weights_entry(key, layer, seed + pos) for pos, (key, layer) in enumerate(chosen)],
        "videos": [],
    }
    overlay_pos = overlay_layer % len(chosen)
    report["overlay_layer"] = report["layers"][overlay_pos]["key"] if videos else None
    out = Path(out_dir) if out_dir is not None else None
    settings = {"num_frames": num_frames, "query": query, "max_overlay_frames": max_overlay_frames}
    overlay_dir = out if plots else None
    pngs = _run_videos(model, processor, videos, chosen, overlay_pos, overlay_dir, report, settings)
    report["summary"] = _summary(report)
    report["definitions"] = DEFINITIONS
    if out is not None:
        _write(report, out, [*weight_pngs(report, out), *pngs] if plots else [])
    return report


def _weights_entry(key: str, layer, seed: int) -> dict:
    """The weight-only part of one layer's entry: heads, lambdas, V+/V- principal angles."""
    H = int(layer.num_heads)
    return {
        "key": key,
        "index": int(layer.layer_index),
        "num_heads": H,
        "head_dim": int(layer.positive_qv()[1].weight.shape[0] // H),
        "lambda": [float(x) for x in layer.neg.neg_scale.detach().float().cpu()],
        "angles": _layer_angles(layer, H, seed),
    }


def _run_videos(model, processor, videos, chosen, overlay_pos, out, report, settings) -> list[Path]:
    """Capture every chosen layer's attention on each video; fills ``report`` (videos, layer entropies).

    Returns the overlay PNGs written to ``out`` (none when ``out`` is None)."""
    per_video, pngs, nks = [], [], [set() for _ in chosen]
    for vi, video in enumerate(videos):
        frames, name, stamps = _load_frames(video, settings["num_frames"])
        recs = _capture_video(model, processor, frames, [layer for _, layer in chosen], overlay_pos, settings)
        per_video.append([r.entropy() for r in recs])
        for nk, rec in zip(nks, recs, strict=True):
            nk.update(rec.nk)
        vinfo = {"name": name, "frames": int(frames.shape[0]), "timestamps": stamps}
        if isinstance(video, (str, Path)):
            vinfo["path"] = str(video)
        if out is not None:
            png = overlay_png(
                frames, recs[overlay_pos].maps, out / f"overlay_{vi:02d}_{safe_name(name, 'video')}.png",
                settings["max_overlay_frames"], name, report["overlay_layer"], settings["query"],
            )  # fmt: skip
            vinfo["overlay"] = png.name if png else None
            pngs += [png] if png else []
        report["videos"].append(vinfo)
    if per_video:
        for pos, entry in enumerate(report["layers"]):
            entry["entropy"] = _entropy_entry([v[pos] for v in per_video], sorted(nks[pos]))
    return pngs


def _capture_video(model, processor, frames, layers, overlay_pos: int, settings) -> list[EntropyRecorder]:
    """One recorder per layer, filled by running the tower on ``frames`` under capture."""
    recs = [EntropyRecorder(pos == overlay_pos, settings["query"]) for pos in range(len(layers))]
    with capture_attention(layers, lambda m: recs[m.position].add(m)):
        run_vision(model, processor, frames)
    if not recs[0].count:
        raise RuntimeError(
            "the vision tower ran but no DnA layer recorded attention maps; does this model's video path "
            "go through its patched tower?"
        )
    return recs


def _entropy_entry(per_video: list[dict], nk: list[int]) -> dict:
    """One layer's ``entropy`` entry from its per-video means and the key counts seen."""
    pos_e = np.mean([v["positive"] for v in per_video], axis=0)
    neg_e = np.mean([v["negative"] for v in per_video], axis=0)
    mx = math.log(nk[0]) if len(nk) == 1 else None
    return {
        "positive": pos_e.tolist(),
        "negative": neg_e.tolist(),
        "max": mx,
        "keys": nk,
        "normalised": {
            "positive": (pos_e / mx).tolist() if mx else None,
            "negative": (neg_e / mx).tolist() if mx else None,
        },
        "per_video": [{"positive": v["positive"], "negative": v["negative"]} for v in per_video],
    }


def _write(report: dict, out: Path, pngs: list[Path]) -> None:
    report["plots"] = [p.name for p in pngs]
    atomic_write_json(out / "inspect.json", json_safe(report))
    atomic_write_bytes(out / "inspect.md", render_markdown(report).encode())


def _summary(r: dict) -> dict:
    L = r["layers"]
    heads = [h for e in L for h in e["angles"]["per_head"]]
    s = {
        "layers": len(L),
        "mean_angle_deg": nanmean(h["mean_deg"] for h in heads),
        "mean_min_angle_deg": nanmean(h["min_deg"] for h in heads),
        "random_mean_angle_deg": nanmean(e["angles"]["random_mean_deg"] for e in L),
        "mean_lambda": nanmean(x for e in L for x in e["lambda"]),
        "angle_status": sorted({e["angles"]["status"] for e in L}),
    }
    if L and "entropy" in L[0]:
        s["mean_entropy_positive"] = nanmean(x for e in L for x in e["entropy"]["positive"])
        s["mean_entropy_negative"] = nanmean(x for e in L for x in e["entropy"]["negative"])
    return s


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
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled per video (default: 8)")
    p.add_argument("--layers", default=None, help="DnA layers to inspect: all (default), last:k, or 0,3,...")
    p.add_argument(
        "--overlay-layer", type=int, default=-1, help="position among the inspected layers (default last)"
    )
    p.add_argument("--query", default="mean", help="overlay query: mean, center or a token index")
    p.add_argument(
        "--device", default="cpu", help="torch device for the model, e.g. cpu, cuda (default: cpu)"
    )
    p.add_argument(
        "--dtype", default="float32", help="model dtype: float32, bfloat16 or float16 (default: float32)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the principal angles' random draws (default: 0)"
    )
    p.add_argument("--out", required=True, help="output folder (inspect.json, inspect.md, *.png)")
    p.set_defaults(func=_main)
    return p


def _main(args) -> int:
    if not args.model and not args.run:
        print("dna-vlm inspect: error: pass --model PATH and/or --run RUN_DIR", file=sys.stderr)
        return 2
    from dna_vlm.runs.loading import load_model

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
        f"{s['layers']} DnA layers: mean V+/V- angle {fmt_num(s['mean_angle_deg'])} deg "
        f"(random ref {fmt_num(s['random_mean_angle_deg'])}), mean lambda {fmt_num(s['mean_lambda'], '{:.4f}')}"
        + (
            f", entropy +{fmt_num(s['mean_entropy_positive'], '{:.3f}')} / -{fmt_num(s['mean_entropy_negative'], '{:.3f}')}"
            if "mean_entropy_positive" in s
            else ""
        )
    )
    print(f"report: {Path(args.out) / 'inspect.md'}")
    return 0
