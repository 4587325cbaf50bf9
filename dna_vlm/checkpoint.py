"""save_dna / load_dna: only what DnA added (and tuned), as safetensors + a small JSON."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dna_vlm.errors import AlreadyPatchedError, CheckpointMismatchError, NotPatchedError
from dna_vlm.files import atomic_save_safetensors, atomic_write_json, load_safetensors, read_json
from dna_vlm.options import DnAOptions
from dna_vlm.patching import (
    dna_layers,
    find_adapter,
    is_patched,
    join_name,
    model_type_of,
    patch,
    patch_state,
    patched_layers,
    tensor_digest,
    unpatch,
    unwrap,
)
from dna_vlm.version import __version__

__all__ = ["load_dna", "read_dna_config", "save_dna"]

FORMAT = "dna-vlm/1"
WEIGHTS, CONFIG = "dna_weights.safetensors", "dna_config.json"


def _state_tensors(model: nn.Module, positive: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The negative branches (none in the softmax control arm), plus (``positive``) every positive-branch
    tensor whose bytes changed since patch()."""
    tensors, changed = {}, []
    for rec, layer in patched_layers(model):
        for pname, p in layer.neg.named_parameters() if layer.neg is not None else ():
            tensors[f"{rec.key}.neg.{pname}"] = p
        for pname, digest in rec.fingerprint.items() if positive else ():
            p = layer.get_parameter(_base_param_name(layer, pname))
            if tensor_digest(p) != digest:
                tensors[f"{rec.key}.{pname}"] = p
                changed.append(f"{rec.key}.{pname}")
    return tensors, changed


def _base_param_name(layer: nn.Module, pname: str) -> str:
    """'q_proj.weight' or, under a PEFT LoRA wrapper, 'q_proj.base_layer.weight'."""
    mod_name, _, leaf = pname.rpartition(".")
    mod = layer.get_submodule(mod_name)
    return f"{mod_name}.base_layer.{leaf}" if hasattr(mod, "base_layer") else pname


def save_dna(model: nn.Module, out_dir: str | os.PathLike, *, positive: bool = True) -> Path:
    """Write ``dna_weights.safetensors`` + ``dna_config.json`` to ``out_dir`` (atomically); returns the dir.

    ``positive=False`` leaves out the tuned positive-branch weights: for a folder whose model weights carry
    them already (``dna-vlm export``), so that only what DnA added is saved here."""
    base = unwrap(model)
    state = patch_state(base)
    if state is None:
        raise NotPatchedError("save_dna: the model is not DnA-patched; call dna_vlm.patch(model) first")
    tensors, changed = _state_tensors(base, positive)
    config = {  # the dna_config.json schema (format dna-vlm/1): keep it stable, run dirs depend on it
        "format": FORMAT,
        "dna_vlm_version": __version__,
        "model_type": model_type_of(base),
        "family": state.family,
        "attention_class": state.attention_class,
        "options": state.options.to_dict(),
        "layers": [{"tower": r.tower, "name": r.name, "index": r.index} for r in state.layers],
        "tuned_positive": changed,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
    }
    out = Path(out_dir)
    atomic_save_safetensors(tensors, out / WEIGHTS, metadata={"format": FORMAT})
    atomic_write_json(out / CONFIG, config)
    return out


def read_dna_config(dna_dir: str | os.PathLike) -> dict:
    path = Path(dna_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a save_dna directory (expected {CONFIG} and {WEIGHTS})"
        )
    config = read_json(
        path, CheckpointMismatchError, missing="", damaged="re-save the DnA weights with save_dna"
    )
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointMismatchError(f"{path}: format {got!r}, expected {FORMAT!r}")
    return config


def load_dna(model: nn.Module, dna_dir: str | os.PathLike) -> nn.Module:
    """Patch an unpatched ``model`` as recorded in ``dna_dir``, then load the saved weights (strictly).

    A checkpoint made for another architecture (family, model type, layer count or tensor shapes) is refused
    with :class:`CheckpointMismatchError`, and the model is left as it was (unpatched).
    """
    config = read_dna_config(dna_dir)
    base = unwrap(model)
    if is_patched(base):
        raise AlreadyPatchedError(
            f"load_dna: this model already has DnA layers; load {dna_dir} into a freshly loaded model "
            "(or call dna_vlm.unpatch(model) first)"
        )
    adapter, towers = find_adapter(base)
    where = Path(dna_dir) / CONFIG
    if adapter.name != config["family"] or model_type_of(base) != config["model_type"]:
        raise CheckpointMismatchError(
            f"{where} was saved from a {config['model_type']} model ({config['family']} tower); "
            f"this model is {model_type_of(base)} ({adapter.name} tower)"
        )
    saved_towers = sorted({r["tower"] for r in config["layers"]})
    here = {path: len(adapter.attention_modules(t)) for path, t in towers}
    indices = sorted({r["index"] for r in config["layers"]})
    if saved_towers != sorted(here) or any(i >= n for n in here.values() for i in indices):
        raise CheckpointMismatchError(
            f"{where} patches layers {indices} of towers {saved_towers}; this model's towers have "
            f"{here} attention layers: it was saved from a different architecture"
        )
    weights = Path(dna_dir) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the save_dna directory is incomplete")
    tensors = load_safetensors(weights)
    patch(base, DnAOptions.from_dict(config["options"]), layers=indices)
    try:
        _load_into(base, tensors, where)
    except BaseException:
        unpatch(base)  # leave the model as we found it
        raise
    return model


def _load_into(base: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Check every name and shape first, then copy: a mismatch never leaves half-loaded weights."""
    params = {}
    for key, layer in dna_layers(base):
        for pname, p in layer.named_parameters():
            params[join_name(key, pname)] = p
    missing = [k for k, _ in params.items() if ".neg." in k and k not in tensors]
    unknown = [k for k in tensors if k not in params]
    if missing or unknown:
        raise CheckpointMismatchError(
            f"{where}: checkpoint does not match this model's DnA layers "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unknown[:3]}"
            f"{'...' if len(unknown) > 3 else ''}); was it saved from a different architecture?"
        )
    bad = [
        f"{k}: checkpoint {tuple(t.shape)}, model {tuple(params[k].shape)}"
        for k, t in tensors.items()
        if params[k].shape != t.shape
    ]
    if bad:
        raise CheckpointMismatchError(
            f"{where}: tensor shapes differ from this model's ({'; '.join(bad[:3])}"
            f"{'...' if len(bad) > 3 else ''}); it was saved from a model of a different size"
        )
    with torch.no_grad():
        for k, t in tensors.items():
            params[k].copy_(t.to(params[k]))
