"""patch / unpatch / dna_parameters: swap a video LLM's vision attention for DnA and back.

Flow: find the adapter whose tower holds a known attention class -> pick layers -> replace each attention
module by the adapter's ``DnALayer`` (which adopts the original's weights) -> record what was done on the
model as a :class:`PatchState` so unpatch / save_dna / load_dna / inspect can find it again
(:func:`patch_state`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dna_vlm.errors import AlreadyPatchedError, NotPatchedError, UnsupportedModelError
from dna_vlm.options import DnAOptions

__all__ = [
    "PatchReport",
    "PatchState",
    "PatchedLayer",
    "adapter_named",
    "attention_kernel",
    "dna_layers",
    "dna_named_parameters",
    "dna_parameters",
    "find_adapter",
    "is_patched",
    "join_name",
    "mark_dna_trainable",
    "model_type_of",
    "parse_layers",
    "patch",
    "patch_state",
    "patched_layers",
    "registry",
    "set_dna_dtype",
    "supported_attention_classes",
    "supported_model_types",
    "tensor_digest",
    "unpatch",
    "unwrap",
]

#: the (unwrapped) model attribute holding its :class:`PatchState`; read it through :func:`patch_state`
STATE_ATTR = "_dna_vlm"


def registry() -> tuple[type, ...]:
    """The adapter classes (``dna_vlm.adapters.ADAPTERS``), in the order patch() tries them."""
    from dna_vlm.adapters import ADAPTERS  # lazy: adapters import this package's kernel/module

    return ADAPTERS


def adapter_named(name: str):
    """The adapter class of the tower family ``name`` (as recorded in a PatchState or dna_config.json)."""
    for adapter in registry():
        if adapter.name == name:
            return adapter
    known = ", ".join(a.name for a in registry())
    raise ValueError(
        f"unknown tower family {name!r}: this dna-vlm knows {known}; a checkpoint or patch state naming "
        "another family was made by a dna-vlm with more adapters (upgrade), or is corrupt"
    )


def supported_model_types() -> list[str]:
    """HF ``config.model_type`` values known to work (any model on a supported tower works too)."""
    return sorted({t for a in registry() for t in a.model_types})


def supported_attention_classes() -> dict[str, list[str]]:
    return {a.name: list(a.attention_classes) for a in registry()}


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


def join_name(*parts: str) -> str:
    """Dotted module name from parts, skipping empty ones (a bare tower's path is "")."""
    return ".".join(p for p in parts if p)


def model_type_of(model: nn.Module) -> str | None:
    """``model.config.model_type`` (None for a module without an HF config)."""
    return getattr(getattr(model, "config", None), "model_type", None)


@dataclass(frozen=True)
class PatchedLayer:
    """One attention module patch() replaced."""

    tower: str  # the tower's attribute path in the model ("" when the model is the tower)
    name: str  # qualified name of the module inside the tower
    index: int  # its position among the tower's attention modules
    fingerprint: Mapping[str, str]  # positive-branch tensor name -> tensor_digest at patch time

    @property
    def key(self) -> str:
        """The layer's qualified name in the model (the prefix of its parameter names)."""
        return join_name(self.tower, self.name)


@dataclass(frozen=True)
class PatchState:
    """What patch() did to a model, kept on it until unpatch(); read it with :func:`patch_state`."""

    family: str  # the adapter's name
    attention_class: str  # class name of the first replaced original module
    options: DnAOptions
    layers: tuple[PatchedLayer, ...]

    @property
    def adapter(self):
        return adapter_named(self.family)


def patch_state(model: nn.Module) -> PatchState | None:
    """The :class:`PatchState` of a (possibly PEFT / accelerate-wrapped) model; None when it is not patched."""
    return getattr(unwrap(model), STATE_ATTR, None)


def find_adapter(model: nn.Module):
    """(adapter, [(tower_path, tower), ...]) for ``model``; raises UnsupportedModelError naming what was found."""
    model = unwrap(model)
    state = patch_state(model)
    if state is not None:  # patched: its attention classes changed, the recorded family tells
        return state.adapter, state.adapter.find_towers(model)
    for adapter in registry():
        towers = adapter.find_towers(model)
        if towers and any(adapter.attention_modules(t) for _, t in towers):
            return adapter, towers
    raise UnsupportedModelError(
        model_type_of(model), _guess_attention_class(model), supported_attention_classes()
    )


def _guess_attention_class(model: nn.Module) -> str | None:
    """The first attention-looking class inside something that looks like a vision tower, for the error."""
    for name, m in model.named_modules():
        if type(m).__name__.endswith("Attention") and any(
            k in name for k in ("vision", "visual", "image", "video")
        ):
            return type(m).__name__
    return None


def parse_layers(layers, n: int) -> list[int]:
    """Sorted indices into n layers from None / "all" (all), "last:k", or (possibly negative) indices."""
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
        arm = (
            f"  init={o['init']} neg_branch={neg} shared_values={o['shared_values']} "
            f"neg_scale_init={o['neg_scale_init']} towers={', '.join(self.towers)}"
            if o.get("attention", "dna") == "dna"
            else f"  softmax control arm (DnA's layer and SDPA call, no negative branch) towers={', '.join(self.towers)}"
        )
        head = [
            f"dna-vlm patch: family={self.family} model_type={self.model_type} attention={self.attention_class}",
            arm,
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
    options: DnAOptions | None = None,
    *,
    layers: Sequence[int] | str | None = None,
    dna_dtype: torch.dtype | None = None,
    **option_kwargs,
) -> PatchReport:
    """Replace the vision tower's attention modules with DnA, in place, warm-started from their weights.

    ``options``: a :class:`~dna_vlm.options.DnAOptions` (what each DnA layer computes and how it starts), or
    its fields as keywords (``patch(model, init="scaled")``), not both. With the default ``init="preserve"``
    the model computes exactly what it did before (Q- = Q+, V- = 0). ``attention="softmax"`` installs the fair
    control arm instead: the same layers and SDPA call as DnA's positive branch, no negative branch, so both
    arms start bit-identical. ``layers``: which attention layers of each tower (None / "all", "last:k", or
    indices). ``dna_dtype``: the dtype of DnA's own parameters (default: the tower's); pass ``torch.float32``
    to train a bf16 / fp16 model with fp32 master weights (lambda would not move in bf16). Patch *before*
    wrapping with PEFT (see README). Returns a :class:`PatchReport`.
    """
    if options is not None and option_kwargs:
        raise TypeError(f"patch(): pass options= or keyword options {sorted(option_kwargs)}, not both")
    opts = options if options is not None else DnAOptions(**option_kwargs)
    base = unwrap(model)
    if is_patched(base):
        raise AlreadyPatchedError(
            "this model already has DnA layers; call dna_vlm.unpatch(model) first, or load_dna into a fresh model"
        )
    adapter, towers = find_adapter(base)
    plan = [(path, tower, adapter.attention_modules(tower)) for path, tower in towers]
    plan = [(path, tower, mods, parse_layers(layers, len(mods))) for path, tower, mods in plan]
    records, originals, per_module = _replace_layers(adapter, plan, opts)
    state = PatchState(adapter.name, type(originals[0]).__name__, opts, tuple(records))
    object.__setattr__(base, STATE_ATTR, state)
    if dna_dtype is not None:
        set_dna_dtype(base, dna_dtype)
    return PatchReport(
        adapter.name,
        model_type_of(base),
        state.attention_class,
        opts.to_dict(),
        [r.key for r in records],
        sum(per_module),
        [n for n, _ in dna_named_parameters(base)],
        [p or "<model>" for p, _ in towers],
        per_module,
    )


def _replace_layers(adapter, plan, opts: DnAOptions):
    """Swap in a DnA layer for each planned module; all or nothing (a failure restores the originals).

    Returns ([PatchedLayer], [replaced original modules], [DnA parameters added per layer]).
    """
    records, done, per_module = [], [], []
    try:
        for tower_path, tower, mods, indices in plan:
            for idx in indices:
                name, attn = mods[idx]
                layer = adapter.make_layer(attn, opts, idx)
                _set_submodule(tower, name, layer)
                done.append((tower, name, attn))
                records.append(PatchedLayer(tower_path, name, idx, _fingerprint(layer)))
                per_module.append(0 if layer.neg is None else sum(p.numel() for p in layer.neg.parameters()))
    except BaseException:
        for tower, name, attn in done:  # never leave a half-patched model behind
            _set_submodule(tower, name, attn)
        raise
    return records, [attn for _, _, attn in done], per_module


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


def patched_layers(model: nn.Module) -> Iterator[tuple[PatchedLayer, nn.Module]]:
    """(record, DnALayer) for each patched layer, in the order patch() made them; nothing if unpatched."""
    base = unwrap(model)
    state = patch_state(base)
    if state is None:
        return
    towers = dict(state.adapter.find_towers(base))
    for rec in state.layers:
        yield rec, _get_submodule(towers[rec.tower], rec.name)


def dna_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, DnALayer) for each patched layer, in the order patch() made them."""
    for rec, layer in patched_layers(model):
        yield rec.key, layer


def dna_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything DnA added; none in the softmax control arm."""
    for key, layer in dna_layers(model):
        for pname, p in layer.neg.named_parameters() if layer.neg is not None else ():
            yield f"{key}.neg.{pname}", p


def set_dna_dtype(model: nn.Module, dtype: torch.dtype) -> int:
    """Keep DnA's own parameters (lambda, Q-, V-, low-rank factors) in ``dtype``, whatever the model's dtype;
    returns how many tensors changed. The layers cast them to the activations' dtype on the fly, so
    ``torch.float32`` gives fp32 master weights in a bf16 / fp16 model (AdamW steps of ~lr then register:
    in bf16 lambda = 0.5 has a spacing of 2**-8 and a 1e-4 step rounds away). Call before building the
    optimiser (the parameter objects stay the same; only their data changes)."""
    n = 0
    for p in dna_parameters(model):
        if p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += 1
    return n


def attention_kernel(model: nn.Module) -> str:
    """What computes the vision attention of ``model``, as recorded in a run dir's ``run_config.json``:
    ``"dna_vlm-sdpa"`` (dna-vlm's adapter layers on torch SDPA: the DnA arm and the fair softmax control) or
    ``"dna_vlm-reference"`` under ``use_impl("reference")``; an unpatched model's
    ``"hf-<attn_implementation>"`` (its own attention: not comparable bit for bit with a DnA arm). Recorded at
    training time (with gradients: SDPA); a low-rank arm evaluated on CPU without gradients runs the score-reuse
    kernel (``NegativeBranch.scores_applicable``), equal to the SDPA path to float rounding."""
    from dna_vlm.kernel import current_impl

    if patch_state(model) is not None:
        return "dna_vlm-" + ("reference" if current_impl() == "reference" else "sdpa")
    base = unwrap(model)
    impls = []
    for _, tower in find_adapter(base)[1]:
        cfg = getattr(tower, "config", None) or getattr(base, "config", None)
        impls.append(str(getattr(cfg, "_attn_implementation", None) or "eager"))
    return "hf-" + "+".join(sorted(set(impls)))


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
    state = patch_state(base)
    if state is None:
        raise NotPatchedError("unpatch: this model has no DnA layers (was it patched, or already unpatched?)")
    layers = list(patched_layers(base))
    for rec, layer in layers:  # check every layer before restoring any: all or nothing
        for child_name, child in layer.original.named_children():
            if getattr(layer, child_name) is not child:
                raise NotPatchedError(
                    f"unpatch: {rec.name}.{child_name} was replaced after patching (PEFT?); "
                    "unload or merge the PEFT adapter first (peft_model.unload()), then unpatch"
                )
    towers = dict(state.adapter.find_towers(base))
    for rec, layer in layers:
        _set_submodule(towers[rec.tower], rec.name, layer.original)
    object.__delattr__(base, STATE_ATTR)
    return model


def _get_submodule(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name) if name else root


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(_get_submodule(root, parent_name), child, new)
