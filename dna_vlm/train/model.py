"""The model side of training: load the base model frozen, DnA-patch it, wrap it with PEFT LoRA, decide
what trains, and the optimiser (groups, learning rates, schedule) over it.

What trains: LoRA on the vision tower's linear layers (q/k/v/out/fc1/fc2; never DnA's ``neg.*`` and never
the projector's, even where the projector sits inside the tower's module path as Qwen-VL's ``visual.merger``
does; Qwen3-VL's ``deepstack_merger_list`` counts as tower layers, LoRA'd like them), the DnA negative
branches fully (fp32 master weights by default, whatever the model's dtype), and the
projector as ``projector`` says: ``full`` (its own weights, no LoRA), ``lora`` (LoRA on its linears only) or
``frozen`` (nothing). The LLM stays frozen (optionally 4-bit). ``tune="full"`` instead trains every weight of
a stock model (one group, ``"full"``).

Both arms of a LoRA run go through dna-vlm's adapter layers: ``attention="dna"`` patches DnA, and
``attention="softmax"`` installs the fair control (``patch(model, attention="softmax")``: the same layers and
the same SDPA call as DnA's positive branch), so at init the arms are bit-identical.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import NamedTuple

import torch
from torch import nn

from dna_vlm.runs.loading import find_projector, find_towers, load_base_model
from dna_vlm.train.config import TrainConfig
from dna_vlm.train.errors import TrainError

__all__ = [
    "TOWER_LINEARS",
    "BuiltModel",
    "attention_kernel_of",
    "build_model",
    "describe_patch",
    "format_summary",
    "lambda_mean",
    "lora_target_modules",
    "lr_factor",
    "make_optimizer",
    "optimizer_groups",
    "param_summary",
]

#: leaf names of the vision tower's linear layers LoRA adapts (attention q/k/v/out + MLP), across families
TOWER_LINEARS = (
    "q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "qkv", "proj", "projection_layer", "fc1", "fc2",
    "linear_fc1", "linear_fc2", "up_proj", "down_proj", "gate_proj",
)  # fmt: skip
#: optimiser groups in the order their parameter groups are built
GROUP_NAMES = ("lora", "dna", "projector", "full")


class BuiltModel(NamedTuple):
    """What :func:`build_model` returns (a tuple: ``model, processor, groups, report, proj_path = ...``)."""

    model: nn.Module  # PEFT-wrapped (tune="lora") or the plain model (tune="full")
    processor: object
    groups: dict[str, list[tuple[str, nn.Parameter]]]  # optimiser group -> [(name, parameter)]
    report: object | None  # dna_vlm.PatchReport (attention="dna") or None
    proj_path: str | None  # module path of the projector, None if the model has none


def _tower_paths(model: nn.Module) -> tuple[list[str], str | None]:
    towers = [p for p, _ in find_towers(model)]
    proj = find_projector(model)
    return towers, (proj[0] if proj else None)


def lora_target_modules(model: nn.Module, projector: str = "full") -> str:
    """A PEFT ``target_modules`` regex naming exactly the vision tower's linear layers (q/k/v/out/fc1/fc2 and
    the like; never DnA's ``neg.*``), plus the projector's linears when ``projector == "lora"``.

    The projector is excluded from the tower's share even when it lives inside the tower's module path
    (Qwen2/2.5/3-VL's ``visual.merger``), so ``projector`` alone decides what of it trains."""
    towers, proj_path = _tower_paths(model)
    names = []
    for full_name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = full_name.split(".")
        in_proj = proj_path is not None and (proj_path == "" or full_name.startswith(proj_path + "."))
        tower = next((t for t in towers if t == "" or full_name.startswith(t + ".")), None)
        if in_proj:
            if projector == "lora":
                names.append(full_name)
        elif tower is not None:
            rel = full_name[len(tower) + 1 :] if tower else full_name
            if parts[-1] in TOWER_LINEARS and "neg" not in rel.split(".") and not rel.startswith("head."):
                names.append(full_name)
    if not names:
        raise TrainError(f"found no linear layers to LoRA-adapt in the vision tower(s) {towers}")
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _enable_checkpointing(base: nn.Module, towers: list[str], cfg: TrainConfig) -> None:
    """Gradient checkpointing on the vision tower(s) only (the frozen LLM stores no activations anyway)."""
    if not cfg.gradient_checkpointing:
        return
    for path in towers:
        tower = base.get_submodule(path)
        kwargs = {"use_reentrant": False}
        if hasattr(tower, "activation_checkpointing_enable"):  # transformers >= 5.x name
            tower.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(tower, "gradient_checkpointing_enable"):
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            raise TrainError(
                f"the vision tower {path} ({type(tower).__name__}) has no gradient checkpointing"
            )


def _load_frozen(cfg: TrainConfig, device: torch.device):
    """(model, processor, patch report or None): the base model with every weight frozen, then DnA-patched
    when ``attention="dna"``; :func:`build_model` decides what trains."""
    from dna_vlm.patching import patch

    model, processor = load_base_model(
        cfg.model,
        device=device if cfg.load_in_4bit else "cpu",
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        load_in_4bit=cfg.load_in_4bit,
        trust_remote_code=cfg.trust_remote_code,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    report = None
    if cfg.attention == "dna":
        dna_dtype = torch.float32 if cfg.dna_dtype == "float32" else None  # None: the model's dtype
        report = patch(model, cfg.dna_options(), dna_dtype=dna_dtype)
    elif cfg.tune == "lora":  # the fair control: DnA's layers and SDPA call, no negative branch
        report = patch(model, cfg.dna_options())
    return model, processor, report


def attention_kernel_of(model: nn.Module) -> str:
    """What computed the vision attention (run_config.json's ``attention_kernel``): see
    :func:`dna_vlm.patching.attention_kernel`."""
    from dna_vlm.patching import attention_kernel

    return attention_kernel(model)


def _unfreeze_dna_and_projector(
    base: nn.Module, cfg: TrainConfig, proj_path: str | None
) -> tuple[set[int], set[int]]:
    """Unfreeze DnA's negative branches and (``projector="full"``) the projector; returns the ids of the
    DnA parameters and of the projector's trainable ones (including its LoRA under ``projector="lora"``)."""
    from dna_vlm.patching import dna_parameters

    dna_ids = set()
    if cfg.attention == "dna":
        for p in dna_parameters(base):
            p.requires_grad_(True)
            dna_ids.add(id(p))
    proj_ids = set()
    if proj_path is not None:
        for p in base.get_submodule(proj_path).parameters():
            if cfg.projector == "full":
                p.requires_grad_(True)
            if p.requires_grad:
                proj_ids.add(id(p))
    return dna_ids, proj_ids


def _group_trainable(model: nn.Module, dna_ids: set[int], proj_ids: set[int]) -> dict:
    """Trainable parameters by optimiser group ("lora", "dna", "projector"); anything else is a bug."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"lora": [], "dna": [], "projector": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in dna_ids:
            groups["dna"].append((n, p))
        elif id(p) in proj_ids and "lora_" not in n:  # the projector's own LoRA counts as "lora"
            groups["projector"].append((n, p))
        elif "lora_" in n:
            groups["lora"].append((n, p))
        else:
            raise TrainError(f"unexpected trainable parameter {n}")
    return groups


def build_model(cfg: TrainConfig, device: torch.device) -> BuiltModel:
    """The model to train and its trainable parameters by group.

    LoRA: a PEFT model with groups "lora", "dna", "projector". Full: the plain model, one group "full"."""
    from peft import LoraConfig, get_peft_model

    model, processor, report = _load_frozen(cfg, device)
    towers, proj_path = _tower_paths(model)
    if cfg.tune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        _enable_checkpointing(model, towers, cfg)
        return BuiltModel(model, processor, {"full": list(model.named_parameters())}, report, proj_path)
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(model, cfg.projector),
        bias="none",
    )
    with warnings.catch_warnings():
        # PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` property (a FutureWarning on
        # every run); upstream, not ours: silenced for this one message, in this one call
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(model, lora)
    base = model.get_base_model()
    dna_ids, proj_ids = _unfreeze_dna_and_projector(base, cfg, proj_path)
    _enable_checkpointing(base, towers, cfg)
    return BuiltModel(model, processor, _group_trainable(model, dna_ids, proj_ids), report, proj_path)


def param_summary(groups: dict, model: nn.Module) -> dict:
    """{group: {"tensors", "params"}, "trainable": int, "total": int} (summary.json's ``trainable``)."""
    total = sum(p.numel() for p in model.parameters())
    out = {g: {"tensors": len(v), "params": sum(p.numel() for _, p in v)} for g, v in groups.items()}
    out["trainable"] = sum(v["params"] for v in out.values())
    out["total"] = total
    return out


def format_summary(s: dict) -> str:
    rows = [
        f"  {g:<10} {s[g]['params']:>12,} params in {s[g]['tensors']:>4} tensors"
        for g in GROUP_NAMES
        if g in s
    ]
    pct = 100.0 * s["trainable"] / max(s["total"], 1)
    total = f"  {'total':<10} {s['trainable']:>12,} of {s['total']:,} ({pct:.3f}%)"
    return "\n".join(["trainable parameters:", *rows, total])


def describe_patch(report) -> str:
    """One line on what ``dna_vlm.patch`` did (its PatchReport)."""
    if report.options.get("attention") == "softmax":
        return (
            f"softmax control: {len(report.modules)} attention modules ({report.family}) run DnA's layer and "
            "SDPA call with the negative branch off (bit-identical to the DnA arm at init)"
        )
    return (
        f"DnA: {len(report.modules)} attention modules patched ({report.family}), "
        f"{report.params_added:,} parameters added"
    )


def optimizer_groups(groups: dict, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: one learning rate per trainable group, and no weight decay on DnA's
    ``neg_scale`` (the lambdas) nor on biases / norms (``ndim <= 1``)."""
    lrs = {
        "lora": cfg.lr,
        "dna": cfg.dna_lr or cfg.lr,
        "projector": cfg.projector_lr or cfg.lr,
        "full": cfg.lr,
    }
    param_groups = []
    for g in GROUP_NAMES:
        if not groups.get(g):
            continue
        decay = [p for n, p in groups[g] if not n.endswith("neg_scale") and p.ndim > 1]
        no_decay = [p for n, p in groups[g] if n.endswith("neg_scale") or p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr": lrs[g], "weight_decay": wd, "name": g})
    if not param_groups:
        raise TrainError("nothing to train: no LoRA, DnA or projector parameters are trainable")
    return param_groups


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up, then constant / linear / cosine decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return 1.0 - frac if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def make_optimizer(groups: dict, cfg: TrainConfig):
    """(AdamW over :func:`optimizer_groups`, its LambdaLR schedule :func:`lr_factor`)."""
    optimizer = torch.optim.AdamW(optimizer_groups(groups, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # a plain function (not a callable object): LambdaLR's state_dict then records it as None, as always
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    return optimizer, scheduler


def lambda_mean(model: nn.Module) -> float | None:
    """Mean |lambda| over every DnA layer's heads, None for a model without DnA."""
    from dna_vlm.patching import dna_layers

    layers = [layer for _, layer in dna_layers(model) if layer.neg is not None]
    scales = [layer.neg.neg_scale.detach() for layer in layers]
    # FSDP shards lambda: gathered whole (every process computes this metric, so the collective is safe)
    scales = [s.full_tensor() if hasattr(s, "full_tensor") else s for s in scales]
    vals = [s.float().abs().mean() for s in scales]
    return float(torch.stack(vals).mean()) if vals else None
