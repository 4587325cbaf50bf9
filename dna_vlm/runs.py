"""Load a base video LLM, optionally with a training run applied (project contracts 5 and 6).

A run dir (the output of ``dna-vlm train``) holds ``run_config.json``::

    {"format": "dna-vlm-run/1", "base_model": str, "attention": "dna"|"softmax", "dna_dir": "dna"|null,
     "adapter_dir": "adapter"|null, "projector": "projector.safetensors"|null, "num_frames": int, ...}

:func:`load_model` rebuilds the tuned model from it in one call: base model -> DnA (``load_dna``) -> PEFT
adapter (merged) -> projector weights. :func:`build_inputs` (from :mod:`dna_vlm.prompting`) builds batches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .prompting import build_inputs, format_question

__all__ = [
    "RUN_FORMAT",
    "RunError",
    "build_inputs",
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

RUN_FORMAT = "dna-vlm-run/1"
RUN_CONFIG = "run_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RunError(ValueError):
    """A run dir or a model-loading option is invalid; the message names the file/option."""


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
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise RunError(
            f"{path} not found: {run_dir} is not a dna-vlm run dir (the output of `dna-vlm train`)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e})") from e
    if config.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: format {config.get('format')!r}, expected {RUN_FORMAT!r}")
    for key in ("base_model", "attention", "num_frames"):
        if key not in config:
            raise RunError(f"{path}: missing field {key!r}")
    return config


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
    """The DnA adapter (tower family) of a model, patched or not, plus the unwrapped model."""
    from .patching import STATE_ATTR, _registry, find_adapter, unwrap

    base = unwrap(model)
    state = getattr(base, STATE_ATTR, None)
    if state is not None:  # patched: the attention classes changed, use the recorded family
        return next(a for a in _registry() if a.name == state["family"]), base
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
        run = read_run_config(run_dir)
        if pretrained is None:
            pretrained = _resolve_base(run_dir, run["base_model"])
        if attention is None:
            attention = run["attention"]
        if attention == "softmax" and run.get("dna_dir"):
            raise RunError(
                f"{run_dir}: this run was trained with DnA attention; load it with attention='dna' (or None)"
            )
    if pretrained is None:
        raise RunError("load_model: pass pretrained (a model path or hub id) and/or run_dir")
    model, processor = load_base_model(
        pretrained, device, dtype, attn_implementation, load_in_4bit, trust_remote_code
    )
    if run is not None and run.get("dna_dir"):
        from .checkpoint import load_dna

        load_dna(model, run_dir / run["dna_dir"])
    elif attention == "dna" and run is None:
        from .patching import patch

        patch(model)
    if run is not None and run.get("adapter_dir"):
        from peft import PeftModel

        adapter_path = run_dir / run["adapter_dir"]
        if not adapter_path.is_dir():
            raise RunError(f"{adapter_path}: the run's PEFT adapter dir is missing")
        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    if run is not None and run.get("projector"):
        from safetensors.torch import load_file

        found = find_projector(model)
        if found is None:
            raise RunError(f"{run_dir}: the run has projector weights but the model has no known projector")
        state = load_file(str(run_dir / run["projector"]))
        missing, unexpected = found[1].load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RunError(
                f"{run_dir / run['projector']}: does not match the model's projector "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    model.eval()
    return model, processor
