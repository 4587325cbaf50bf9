"""patch / unpatch / dna_parameters: swap a video LLM's vision attention for DnA and back.

Flow: find the adapter whose tower holds a known attention class -> pick layers -> replace each attention
module by the adapter's :class:`DnALayer` (which adopts the original's weights) -> record what was done on
the model (``model._dna_vlm``) so unpatch / save_dna / load_dna can find it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import AlreadyPatchedError, NotPatchedError, UnsupportedModelError
from .module import DnAOptions

__all__ = [
    "PatchReport",
    "dna_layers",
    "dna_parameters",
    "find_adapter",
    "is_patched",
    "mark_dna_trainable",
    "patch",
    "supported_model_types",
    "unpatch",
]

STATE_ATTR = "_dna_vlm"


def _registry():
    from dna_vlm.adapters import ADAPTERS  # lazy: adapters import this package's kernel/module

    return ADAPTERS


def supported_model_types() -> list[str]:
    """HF ``config.model_type`` values known to work (any model on a supported tower works too)."""
    return sorted({t for a in _registry() for t in a.model_types})


def supported_attention_classes() -> dict[str, list[str]]:
    return {a.name: list(a.attention_classes) for a in _registry()}


def unwrap(model: nn.Module) -> nn.Module:
    """The model under PEFT / accelerate / DDP wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
    return model


def find_adapter(model: nn.Module):
    """(adapter, [(tower_path, tower), ...]) for ``model``; raises UnsupportedModelError naming what was found."""
    model = unwrap(model)
    state = getattr(model, STATE_ATTR, None)
    if state is not None:  # patched: its attention classes changed, the recorded family tells
        adapter = next(a for a in _registry() if a.name == state["family"])
        return adapter, adapter.find_towers(model)
    for adapter in _registry():
        towers = adapter.find_towers(model)
        if towers and any(adapter.attention_modules(t) for _, t in towers):
            return adapter, towers
    raise UnsupportedModelError(
        _model_type(model), _guess_attention_class(model), supported_attention_classes()
    )


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _guess_attention_class(model: nn.Module) -> str | None:
    """The first attention-looking class inside something that looks like a vision tower, for the error."""
    for name, m in model.named_modules():
        if type(m).__name__.endswith("Attention") and any(
            k in name for k in ("vision", "visual", "image", "video")
        ):
            return type(m).__name__
    return None


def _parse_layers(layers, n: int) -> list[int]:
    """None = all; "last:k"; or a list of (possibly negative) indices into the tower's n attention layers."""
    if layers is None or layers == "all":
        return list(range(n))
    if isinstance(layers, str):
        if layers.startswith("last:") and layers[5:].isdigit() and 0 < int(layers[5:]) <= n:
            return list(range(n - int(layers[5:]), n))
        raise ValueError(
            f"layers={layers!r}: use None (all), 'last:k' with 1 <= k <= {n}, or a list of indices"
        )
    out = []
    for i in layers:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"layers: index {i!r} is out of range for a tower with {n} attention layers")
        out.append(i % n)
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"layers={list(layers)!r} is empty or repeats a layer")
    return sorted(out)


@dataclass
class PatchReport:
    """What :func:`patch` replaced. ``str(report)`` is a readable table."""

    family: str
    model_type: str | None
    attention_class: str
    options: dict
    modules: list[str] = field(default_factory=list)  # qualified names of replaced modules
    params_added: int = 0
    trainable: list[str] = field(default_factory=list)  # names of the DnA-added parameters
    towers: list[str] = field(default_factory=list)
    params_per_module: list[int] = field(default_factory=list)  # DnA parameters added by each module

    def __str__(self) -> str:
        o = self.options
        neg = o["neg_branch"] + (f"(r={o['neg_rank']})" if o["neg_branch"] == "lowrank" else "")
        head = [
            f"dna-vlm patch: family={self.family} model_type={self.model_type} attention={self.attention_class}",
            f"  init={o['init']} neg_branch={neg} shared_values={o['shared_values']} "
            f"neg_scale_init={o['neg_scale_init']} towers={', '.join(self.towers)}",
            f"  {'#':>3}  {'module':<60} {'DnA params':>12}",
        ]
        per = self.params_per_module or [self.params_added // max(len(self.modules), 1)] * len(self.modules)
        rows = [f"  {i:>3}  {m:<60} {n:>12,}" for i, (m, n) in enumerate(zip(self.modules, per, strict=True))]
        foot = f"  {len(self.modules)} modules replaced, {self.params_added:,} parameters added ({len(self.trainable)} tensors)"
        return "\n".join(head + rows + [foot])


def is_patched(model: nn.Module) -> bool:
    return any(isinstance(m, _layer_base()) for m in unwrap(model).modules())


def _layer_base():
    from dna_vlm.adapters.base import DnALayer

    return DnALayer


def patch(
    model: nn.Module,
    layers: Sequence[int] | str | None = None,
    init: str = "preserve",
    neg_branch: str = "full",
    neg_rank: int | None = None,
    shared_values: bool = False,
    neg_scale_init: float = 0.5,
    **option_kwargs,
) -> PatchReport:
    """Replace the vision tower's attention modules with DnA, in place, warm-started from their weights.

    With the default ``init="preserve"`` the model computes exactly what it did before (Q- = Q+, V- = 0).
    Patch *before* wrapping with PEFT (see README). Returns a :class:`PatchReport`.
    """
    opts = DnAOptions(init, neg_branch, neg_rank, shared_values, neg_scale_init, **option_kwargs)
    base = unwrap(model)
    if is_patched(base):
        raise AlreadyPatchedError(
            "this model already has DnA layers; call dna_vlm.unpatch(model) first, or load_dna into a fresh model"
        )
    adapter, towers = find_adapter(base)
    records, names, per_module, done = [], [], [], []
    plan = [(path, tower, adapter.attention_modules(tower)) for path, tower in towers]
    plan = [(path, tower, mods, _parse_layers(layers, len(mods))) for path, tower, mods in plan]
    try:
        for tower_path, tower, mods, indices in plan:
            for idx in indices:
                name, attn = mods[idx]
                layer = adapter.make_layer(attn, opts, idx)
                _set_submodule(tower, name, layer)
                done.append((tower, name, attn))
                records.append(
                    {"tower": tower_path, "name": name, "index": idx, "fingerprint": _fingerprint(layer)}
                )
                names.append(_join(tower_path, name))
                per_module.append(sum(p.numel() for p in layer.neg.parameters()))
    except BaseException:
        for tower, name, attn in done:  # never leave a half-patched model behind
            _set_submodule(tower, name, attn)
        raise
    state = {
        "family": adapter.name,
        "attention_class": type(done[0][2]).__name__,  # the first replaced original module
        "options": opts.to_dict(),
        "layers": records,
    }
    object.__setattr__(base, STATE_ATTR, state)
    trainable = [n for n, _ in dna_named_parameters(base)]
    return PatchReport(
        adapter.name,
        _model_type(base),
        state["attention_class"],
        opts.to_dict(),
        names,
        sum(per_module),
        trainable,
        [p or "<model>" for p, _ in towers],
        per_module,
    )


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _fingerprint(layer) -> dict[str, str]:
    """blake2b of each positive-branch tensor, so save_dna can tell which ones training changed."""
    out = {}
    for mod_name in layer.positive_modules:
        mod = getattr(layer, mod_name, None)
        for pname, p in mod.named_parameters() if mod is not None else []:
            out[f"{mod_name}.{pname}"] = tensor_digest(p)
    return out


def tensor_digest(t: torch.Tensor) -> str:
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # bytes: works for bf16 too
    return hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()


def dna_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(tower-relative key, DnALayer) for each patched layer, in the order patch() made them."""
    base = unwrap(model)
    state = getattr(base, STATE_ATTR, None)
    if state is None:
        return
    adapter = next(a for a in _registry() if a.name == state["family"])
    towers = dict(adapter.find_towers(base))
    for rec in state["layers"]:
        yield _join(rec["tower"], rec["name"]), _get_submodule(towers[rec["tower"]], rec["name"])


def dna_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for key, layer in dna_layers(model):
        for pname, p in layer.neg.named_parameters():
            yield f"{key}.neg.{pname}", p


def dna_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters DnA added (negative queries/values, lambdas), e.g. for an optimizer group."""
    for _, p in dna_named_parameters(model):
        yield p


def mark_dna_trainable(model: nn.Module, trainable: bool = True) -> int:
    """Set ``requires_grad`` on every DnA-added parameter; returns how many tensors were marked.

    The intended PEFT flow: ``patch(model)`` -> ``get_peft_model(model, cfg)`` (which freezes everything but
    its adapters) -> ``mark_dna_trainable(peft_model)``. Works on the PEFT-wrapped or the bare model.
    """
    n = 0
    for p in dna_parameters(model):
        p.requires_grad_(trainable)
        n += 1
    if n == 0:
        raise NotPatchedError(
            "mark_dna_trainable: the model has no DnA layers; call dna_vlm.patch(model) first"
        )
    return n


def unpatch(model: nn.Module) -> nn.Module:
    """Put the original attention modules back (the same objects, so their weights are bit-identical)."""
    base = unwrap(model)
    if getattr(base, STATE_ATTR, None) is None:
        raise NotPatchedError("unpatch: this model has no DnA layers (was it patched, or already unpatched?)")
    state = getattr(base, STATE_ATTR)
    adapter = next(a for a in _registry() if a.name == state["family"])
    towers = dict(adapter.find_towers(base))
    for rec in state["layers"]:
        layer = _get_submodule(towers[rec["tower"]], rec["name"])
        for child_name, child in layer.original.named_children():
            if getattr(layer, child_name) is not child:
                raise NotPatchedError(
                    f"unpatch: {rec['name']}.{child_name} was replaced after patching (PEFT?); "
                    "unload or merge the PEFT adapter first (peft_model.unload()), then unpatch"
                )
        _set_submodule(towers[rec["tower"]], rec["name"], layer.original)
    object.__delattr__(base, STATE_ATTR)
    return model


def _get_submodule(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name) if name else root


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(_get_submodule(root, parent_name), child, new)
