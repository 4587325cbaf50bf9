"""How a training run is spread over processes: launch checks, DDP's settings, sharding (FSDP2), and the
whole tensors that checkpoints and the run dir need from a sharded model.

- :func:`check_launch` / :func:`check_processes`: a launch that cannot do what it says stops with the fix
  (``--device cuda`` without CUDA; fp16 autocast on the CPU, which accelerate runs in fp32; FSDP1, 4-bit or
  ``tune="full"`` under FSDP; ``accelerate launch --cpu --num_processes N``, which starts ONE process).
- :func:`prepare_model`: one process -> as built; DDP -> ``find_unused_parameters`` set from one probe
  forward/backward (True only when some trainable parameter gets no gradient); FSDP -> the model sharded
  with FSDP2 (``torch.distributed.fsdp.fully_shard``): by accelerate on GPUs (``accelerate launch --use_fsdp
  --fsdp_version 2``, configs/accelerate/fsdp.yaml), and here on the CPU, where accelerate never selects
  FSDP (its MULTI_CPU state ignores ``ACCELERATE_USE_FSDP``), with accelerate's own wrap policy
  (``fsdp2_prepare_auto_wrap_policy``: the model's ``_no_split_modules`` blocks, then the root) and rank 0's
  weights broadcast (``fsdp2_load_full_state_dict``).
- :func:`full_tensors` / :func:`full_optimizer_state` (collectives) gather sharded DTensors into whole
  tensors, so a sharded run writes checkpoints and run dirs in the same format as a DDP one (and resumes
  into one, and back: :func:`shard_like`); :func:`whole_parameters` lends the main process whole copies of
  what the run dir's writers read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from dna_vlm.train.config import TrainConfig
from dna_vlm.train.errors import TrainError

__all__ = [
    "SHARDINGS",
    "any_process",
    "check_launch",
    "check_processes",
    "fsdp_requested",
    "full_optimizer_state",
    "full_tensors",
    "gather_for_export",
    "prepare_model",
    "shard_like",
    "shard_optimizer_state",
    "sharding_of",
    "unused_parameters",
    "whole_parameters",
]

#: what state.json's ``sharding`` records: one process, DDP (every process a full copy), FSDP2 (sharded)
SHARDINGS = ("none", "ddp", "fsdp2")
CONFIGS = "configs/accelerate/"  # the example launch configs in the repository


def _env_true(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """True under ``accelerate launch --use_fsdp`` (or a config with ``distributed_type: FSDP``)."""
    return _env_true("ACCELERATE_USE_FSDP")


def check_launch(cfg: TrainConfig) -> bool:
    """Refuse settings the launch cannot honour (:class:`TrainError` naming the fix); returns whether the run
    uses the CPU (``device="cpu"``, or ``"auto"`` without CUDA)."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise TrainError(
            f"--device cuda, but CUDA is not available here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}, {torch.cuda.device_count()} GPUs visible): use --device cpu "
            "(or auto), or run on a machine with a GPU and a CUDA build of torch"
        )
    use_cpu = cfg.device == "cpu" or not cuda
    if use_cpu and cfg.mixed_precision == "fp16":
        source = (
            " (it came from ACCELERATE_MIXED_PRECISION, i.e. `accelerate launch --mixed_precision fp16` or "
            "its config)"
            if os.environ.get("ACCELERATE_MIXED_PRECISION") == "fp16"
            else ""
        )
        raise TrainError(
            f"--mixed-precision fp16 on the CPU{source}: accelerate has no fp16 autocast on the CPU and would "
            "train in fp32 under an fp16 label. Use --mixed-precision bf16 (CPU autocast) or no, or train on a GPU"
        )
    if fsdp_requested():
        _check_fsdp(cfg)
    return use_cpu


def _check_fsdp(cfg: TrainConfig) -> None:
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise TrainError(
            f"FSDP version {version}: dna-vlm train shards with FSDP2 only (a frozen LLM beside trainable LoRA / "
            "DnA parameters in one unit; FSDP1's sync_module_states is refused on the CPU). Launch with "
            f"`accelerate launch --use_fsdp --fsdp_version 2 ...` or `--config_file {CONFIGS}fsdp.yaml`"
        )
    if cfg.load_in_4bit:
        raise TrainError(
            "--load-in-4bit under FSDP: a 4-bit LLM cannot be sharded here (bitsandbytes' uint8 storage does "
            "not survive FSDP2's DTensors). Use one or the other: FSDP with a bf16 LLM, or 4-bit with DDP"
        )
    if cfg.tune == "full":
        raise TrainError(
            "--tune full under FSDP: tune='full' writes the demo's stand-in checkpoint; run it with DDP or "
            "one process (FSDP here shards a frozen LLM around LoRA / DnA / projector training)"
        )


def _asked_several() -> bool:
    """Whether accelerate's one-process launcher was asked for several processes: `accelerate launch --cpu`
    (or a MULTI_CPU / ``use_cpu`` config) runs the script ONCE unless given ``--mpirun_hostfile``, but it sets
    MASTER_ADDR / MASTER_PORT only when ``--num_processes`` > 1 (accelerate/utils/launch.py,
    ``prepare_simple_launcher_cmd_env``). ACCELERATE_USE_CPU is set by that launcher alone; WORLD_SIZE /
    PMI_SIZE / OMPI_COMM_WORLD_SIZE would mean torchrun or mpirun did start several."""
    world = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return (
        "ACCELERATE_USE_CPU" in os.environ
        and "MASTER_PORT" in os.environ
        and not any(int(os.environ.get(k, "1") or 1) > 1 for k in world)
    )


def check_processes(acc) -> None:
    """A launch that asked for more processes than run stops here, naming the command that works."""
    if acc.num_processes == 1 and _asked_several():
        raise TrainError(
            "accelerate launch was asked for several processes (--num_processes > 1 with --cpu, or a "
            "MULTI_CPU / use_cpu config: it set MASTER_PORT), but its --cpu launcher starts ONE process unless "
            "given --mpirun_hostfile. For N CPU processes use torchrun's launcher and the CPU device: "
            "`accelerate launch --multi_gpu --num_processes N -m dna_vlm train ... --device cpu` (or "
            f"--config_file {CONFIGS}ddp-cpu.yaml / fsdp-cpu.yaml). If you meant one process, unset MASTER_PORT"
        )


def sharding_of(model: nn.Module, acc) -> str:
    """One of :data:`SHARDINGS` for a prepared ``model``."""
    if any(_is_dtensor(p) for p in model.parameters()):
        return "fsdp2"
    return "ddp" if acc.num_processes > 1 else "none"


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


# ------------------------------------------------------------------------------------------ preparing


def prepare_model(acc, built, cfg: TrainConfig, ds) -> tuple[nn.Module, object, object]:
    """(model, optimizer, scheduler), prepared by accelerate for this launch (see the module's docstring).

    ``built``: :func:`dna_vlm.train.model.build_model`'s result; ``ds``: the run's
    :class:`~dna_vlm.train.batches.MicroBatches` (DDP's probe runs its first micro-batch)."""
    from accelerate.utils import DistributedType

    from dna_vlm.train.model import make_optimizer

    model, groups = built.model, built.groups
    if fsdp_requested() and acc.distributed_type == DistributedType.MULTI_CPU:
        model = _shard_on_cpu(acc, model)
        named = dict(model.named_parameters())  # fully_shard swapped every parameter for a DTensor one
        groups = {g: [(n, named[n]) for n, _ in ps] for g, ps in groups.items()}
        optimizer, scheduler = make_optimizer(groups, cfg)
        return model, acc.prepare(optimizer), scheduler
    if acc.num_processes > 1 and acc.distributed_type != DistributedType.FSDP and acc.ddp_handler is not None:
        if not cfg.load_in_4bit:  # a 4-bit model was loaded on its device; prepare would move the others
            model.to(acc.device)
        unused = unused_parameters(model, ds, acc)
        acc.ddp_handler.find_unused_parameters = any_process(acc, bool(unused))
    optimizer, scheduler = make_optimizer(groups, cfg)
    model, optimizer = acc.prepare(model, optimizer)
    return model, optimizer, scheduler


def any_process(acc, flag: bool) -> bool:
    """True when ``flag`` is true on any process (a collective: every process must call it)."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=acc.device)
    return bool(acc.reduce(t, "sum") > 0)


def unused_parameters(model: nn.Module, ds, acc) -> list[str]:
    """Names of the trainable parameters that get no gradient from one forward/backward of ``ds``'s first
    micro-batch with a video (e.g. LoRA on a tower layer after the feature layer the projector reads).

    DDP needs ``find_unused_parameters=True`` exactly when this is not empty (else it hangs or fails); set
    without need it costs a graph traversal a step and a warning on every rank. Gradients are cleared after."""
    from dna_vlm.data.prompting import batch_to_device
    from dna_vlm.train.loss import lm_loss

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    batch = next((b for b in (ds[g]["batch"] for g in range(8)) if b is not None), None)
    if batch is None:  # no readable video in the first micro-batches: assume some may be unused
        return [n for n, _ in trainable]
    batch = batch_to_device(batch, acc.device, trainable[0][1].dtype)
    lm_loss(model, batch).backward()
    unused = [n for n, p in trainable if p.grad is None]
    for _, p in trainable:
        p.grad = None
    return unused


def _shard_on_cpu(acc, model: nn.Module) -> nn.Module:
    """FSDP2 on CPU processes (gloo): ``fully_shard`` each block accelerate's wrap policy picks, then the
    root; then every process takes rank 0's weights (under ``fsdp_cpu_ram_efficient_loading`` transformers
    loaded the other ranks' weights empty)."""
    from accelerate.utils import FullyShardedDataParallelPlugin, fsdp2_load_full_state_dict
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, get_module_children_bottom_up
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = FullyShardedDataParallelPlugin()  # read from the launch's FSDP_* environment
    mesh = init_device_mesh("cpu", (acc.num_processes,))
    dtype = {"bf16": torch.bfloat16}.get(acc.mixed_precision)  # fp16: refused on the CPU (check_launch)
    kwargs = {"mesh": mesh, "reshard_after_forward": plugin.reshard_after_forward,
              "mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)}  # fmt: skip
    full_sd = model.state_dict() if acc.is_main_process else {}
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    if policy is not None:
        for module in get_module_children_bottom_up(model)[:-1]:
            if policy(module):
                fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    fsdp2_load_full_state_dict(acc, model, full_sd)
    return model


# ------------------------------------------------------------------------------ whole tensors, sharded


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with each DTensor gathered whole (a collective: every process calls it, same order)."""
    return {k: (v.full_tensor() if _is_dtensor(v) else v) for k, v in tensors.items()}


def full_optimizer_state(sd: dict) -> dict:
    """An optimiser ``state_dict`` whose sharded states (exp_avg, ...) are gathered whole (collective)."""
    state = {i: full_tensors(s) for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``param``: this process's shard of it when ``param`` is a DTensor (every
    process holds ``full``: no communication), else ``full`` as it is."""
    if not _is_dtensor(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    full = full.to(device=param.device_mesh.device_type)
    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


def shard_optimizer_state(optimizer, sd: dict) -> dict:
    """A checkpoint's whole optimiser state laid out like ``optimizer``'s (sharded) parameters, so that
    ``optimizer.load_state_dict`` works under FSDP as under DDP."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        state[i] = {
            k: shard_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()
        }
    return {"state": state, "param_groups": sd["param_groups"]}


def gather_for_export(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole copies of what the run dir's writers read, on every process (collective; {} when nothing is
    sharded): the trainable parameters and every parameter of the patched attention layers (``save_dna``
    compares the positive branch with its fingerprint)."""
    from dna_vlm.patching import dna_layers

    named = dict(model.named_parameters())
    if not any(_is_dtensor(p) for p in named.values()):
        return {}
    layer_params = {id(p) for _, layer in dna_layers(model) for p in layer.parameters()}
    wanted = {n: p for n, p in named.items() if p.requires_grad or id(p) in layer_params}
    return full_tensors({n: p.detach() for n, p in wanted.items()})


@contextlib.contextmanager
def whole_parameters(model: nn.Module, whole: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Within: ``model``'s parameters named in ``whole`` (:func:`gather_for_export`) are whole tensors on
    THIS process only (the main one, to write the run dir); the sharded ones are put back after."""
    from torch.distributed.fsdp import FSDPModule

    if not whole:
        yield model
        return
    for m in model.modules():  # every FSDP unit sharded: its state_dict hook then swaps nothing back
        if isinstance(m, FSDPModule):
            m.reshard()
    swapped = []
    for name, t in whole.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(t, requires_grad=old.requires_grad)
        swapped.append((owner, leaf, old))
    try:
        yield model
    finally:
        for owner, leaf, old in swapped:
            owner._parameters[leaf] = old
