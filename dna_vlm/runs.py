"""Load a base video LLM, optionally with a training run applied (project contracts 5 and 6), and find
its parts (vision towers, projector, language model) whatever wraps it.

A run dir (the output of ``dna-vlm train``) holds ``run_config.json``, whose schema is
:class:`dna_vlm.rundir.RunConfig`. :func:`load_model` rebuilds the tuned model from it in one call: base
model -> DnA (``load_dna``) -> PEFT adapter (merged) -> projector weights. :func:`build_inputs` (from
:mod:`dna_vlm.prompting`) builds batches.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .prompting import build_inputs, format_question
from .rundir import RUN_CONFIG, RUN_FORMAT, RunConfig, RunError

__all__ = [
    "RUN_CONFIG",
    "RUN_FORMAT",
    "RunConfig",
    "RunError",
    "build_inputs",
    "find_language_model",
    "find_projector",
    "find_towers",
    "format_question",
    "load_base_model",
    "load_model",
    "quantization_config",
    "read_run_config",
    "resolve_device",
    "resolve_dtype",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("fp32", "bf16", "fp16"):
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    if dtype not in DTYPES:
        raise RunError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device={device!r}: CUDA is not available here; use device='cpu' or 'auto'")
    return dev


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """``run_dir/run_config.json`` validated by :meth:`RunConfig.read`, as a dict of every schema field
    (fields a hand-made file leaves out read as their defaults). Raises :class:`RunError` naming the file."""
    return RunConfig.read(run_dir).to_dict()


def _model_class(config, trust_remote_code: bool):
    from transformers import AutoModelForImageTextToText

    model_type = getattr(config, "model_type", None)
    if model_type == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration
    return AutoModelForImageTextToText


def _skeleton(config, trust_remote_code: bool) -> nn.Module:
    """The model on the meta device (no memory), to read its module names."""
    cls = _model_class(config, trust_remote_code)
    with torch.device("meta"):
        if hasattr(cls, "from_config"):
            return cls.from_config(config, trust_remote_code=trust_remote_code)
        return cls._from_config(config)


def _adapter(model: nn.Module):
    """The DnA adapter (tower family) of a model, patched or not (then its recorded family), plus the
    unwrapped model."""
    from .patching import find_adapter, unwrap

    base = unwrap(model)
    return find_adapter(base)[0], base


def find_towers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """[(path, vision tower)] of a (possibly patched / PEFT-wrapped) model, via the DnA adapter registry."""
    adapter, base = _adapter(model)
    return adapter.find_towers(base)


def find_projector(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(path, projector module) or None."""
    adapter, base = _adapter(model)
    proj = adapter.find_projector(base)
    if proj is None:
        return None
    for name, m in base.named_modules():
        if m is proj:
            return name, m
    return None


def find_language_model(model: nn.Module) -> nn.Module | None:
    """The LLM (decoder stack) of a video LLM under PEFT / accelerate / DDP wrappers, or None if not found.

    Layouts: ``model.model.language_model`` (transformers >= 4.52 ``*ForConditionalGeneration``) and
    ``model.language_model`` (older releases and some remote-code models)."""
    from .patching import unwrap

    base = unwrap(model)
    for owner in (getattr(base, "model", None), base):
        lm = getattr(owner, "language_model", None)
        if isinstance(lm, nn.Module):
            return lm
    return None


def quantization_config(model_config, compute_dtype: torch.dtype = torch.bfloat16, trust_remote_code=False):
    """A 4-bit ``BitsAndBytesConfig`` quantizing the LLM only: the vision tower(s), the projector and the
    output head are listed in ``llm_int8_skip_modules`` (full module paths) and stay in full precision."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise RunError(
            "load_in_4bit needs bitsandbytes: pip install 'dna-vlm[train]' (or pip install bitsandbytes)"
        ) from e
    skeleton = _skeleton(model_config, trust_remote_code)
    skip = [path for path, _ in find_towers(skeleton)]
    proj = find_projector(skeleton)
    if proj is not None:
        skip.append(proj[0])
    skip.append("lm_head")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_base_model(
    pretrained: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """(model, processor) of a HF video LLM from a local path or hub id, on ``device``, in eval mode."""
    from transformers import AutoConfig, AutoProcessor

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    pretrained = str(pretrained)
    try:
        config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RunError(
            f"cannot load a model config from {pretrained!r} (a local model directory or a hub id): {e}"
        ) from e
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        compute = torch_dtype if torch_dtype != torch.float32 or dev.type == "cpu" else torch.bfloat16
        kwargs["quantization_config"] = quantization_config(config, compute, trust_remote_code)
        kwargs["device_map"] = {"": dev.index if dev.type == "cuda" and dev.index is not None else str(dev)}
    model = _model_class(config, trust_remote_code).from_pretrained(pretrained, **kwargs)
    if not load_in_4bit:
        model.to(dev)
    model.eval()
    processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
    return model, processor


def _resolve_base(run_dir: Path, base: str) -> str:
    """base_model as written (hub id or absolute path), or relative to the run dir when that exists."""
    if os.path.isabs(base) or Path(base).exists():
        return base
    cand = run_dir / base
    return str(cand) if cand.exists() else base


def load_model(
    pretrained: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    attention: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """(model, processor), in eval mode.

    - ``pretrained``: local path or hub id; defaults to the run's ``base_model``.
    - ``run_dir``: a ``dna-vlm train`` output; applies its DnA weights (``load_dna``), its PEFT adapter
      (merged into the weights) and its projector weights.
    - ``attention``: None = the run's arm (or stock softmax without a run); ``"dna"`` without a run patches
      the base model (function-preserving); ``"softmax"`` with a DnA run is an error (its weights need DnA).
    """
    if attention not in (None, "dna", "softmax"):
        raise RunError(f"attention={attention!r}: expected 'dna', 'softmax' or None")
    run = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run = RunConfig.read(run_dir)
        if pretrained is None:
            pretrained = _resolve_base(run_dir, run.base_model)
        if attention is None:
            attention = run.attention
        if attention == "softmax" and run.dna_dir:
            raise RunError(
                f"{run_dir}: this run was trained with DnA attention; load it with attention='dna' (or None)"
            )
    if pretrained is None:
        raise RunError("load_model: pass pretrained (a model path or hub id) and/or run_dir")
    model, processor = load_base_model(
        pretrained, device, dtype, attn_implementation, load_in_4bit, trust_remote_code
    )
    if run is not None:
        model = _apply_run(model, run_dir, run)
    elif attention == "dna":
        from .patching import patch

        patch(model)
    model.eval()
    return model, processor


def _apply_run(model: nn.Module, run_dir: Path, run: RunConfig) -> nn.Module:
    """The run's DnA weights (``load_dna``), PEFT adapter (merged) and projector weights, applied in place."""
    if run.dna_dir:
        from .checkpoint import load_dna

        load_dna(model, run_dir / run.dna_dir)
    if run.adapter_dir:
        from peft import PeftModel

        adapter_path = run_dir / run.adapter_dir
        if not adapter_path.is_dir():
            raise RunError(f"{adapter_path}: the run's PEFT adapter dir is missing")
        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    if run.projector:
        from safetensors.torch import load_file

        found = find_projector(model)
        if found is None:
            raise RunError(f"{run_dir}: the run has projector weights but the model has no known projector")
        state = load_file(str(run_dir / run.projector))
        missing, unexpected = found[1].load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RunError(
                f"{run_dir / run.projector}: does not match the model's projector "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return model
