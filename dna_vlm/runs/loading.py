"""Load a base video LLM, optionally with a training run applied (a run dir, read back exactly as it was
trained), and find its parts (vision towers, projector, language model) whatever wraps it.

A run dir (the output of ``dna-vlm train``) holds ``run_config.json``, whose schema is
:class:`dna_vlm.runs.config.RunConfig`. :func:`load_model` rebuilds the tuned model from it in one call: base
model -> the attention layers it trained through (DnA: ``load_dna``; the softmax control: dna-vlm's control
layers) -> PEFT adapter (merged) -> projector weights. It also loads a ``dna-vlm export`` folder
(:mod:`dna_vlm.runs.export`: the same model in one folder). :func:`build_inputs` (from
:mod:`dna_vlm.data.prompting`) builds batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from dna_vlm.data.prompting import build_inputs, format_question
from dna_vlm.files import SafetensorsFileError, check_safetensors, load_safetensors, sampled_digest
from dna_vlm.runs.config import ATTENTIONS, RUN_CONFIG, RUN_FORMAT, RunConfig, RunError
from dna_vlm.runs.formats import (
    EXPORT_MANIFEST,
    export_model_config,
    is_export,
    read_adapter_config,
    verify_export,
)

__all__ = [
    "ALLOW_BASE_ENV",
    "ARTEFACTS",
    "RUN_CONFIG",
    "RUN_FORMAT",
    "RunConfig",
    "RunError",
    "base_identity",
    "build_inputs",
    "check_base",
    "find_language_model",
    "find_projector",
    "find_towers",
    "format_question",
    "identity_differences",
    "load_base_model",
    "load_model",
    "manifest",
    "model_dir",
    "quantization_config",
    "quiet_bitsandbytes",
    "read_run_config",
    "resolve_device",
    "resolve_dtype",
    "run_path",
    "trained_on_control_layers",
    "verify_run_dir",
]

#: set to 1 to load a run onto a base model other than the one it was trained on (you know why)
ALLOW_BASE_ENV = "DNA_VLM_ALLOW_BASE_MISMATCH"
#: what a finished run dir holds besides run_config.json (the manifest covers the ones present)
ARTEFACTS = ("dna", "adapter", "model", "projector.safetensors", "summary.json")
#: config.json keys that say where/how a model was saved, not what it is
_VOLATILE_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"}

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


def quiet_bitsandbytes() -> None:
    """Drop bitsandbytes' "Failed to load CPU gemm_4bit_forward" warning, which PEFT's import triggers on
    every CPU run; call it before importing PEFT when 4-bit is not asked for (4-bit runs keep it)."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "gemm_4bit_forward" not in str(record.msg)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(type(f).__name__ == "_Drop" for f in logger.filters):
        logger.addFilter(_Drop())


# ------------------------------------------------------------------------ run dir integrity and identity


def run_path(run_dir: str | os.PathLike, rel: str, field: str) -> Path:
    """``run_dir/rel`` for a path recorded in run_config.json: relative, no ``..``, and (symlinks resolved)
    inside the run dir; :class:`RunError` names the field otherwise."""
    run_dir = Path(run_dir)
    where = f"{run_dir / RUN_CONFIG}: field {field!r}"
    if os.path.isabs(rel) or ".." in Path(rel).parts or not rel:
        raise RunError(f"{where} must be a path inside the run dir (relative, no '..'), got {rel!r}")
    path = run_dir / rel
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise RunError(f"{where}: {rel!r} leads outside the run dir through a symlink ({path.resolve()})")
    return path


def manifest(run_dir: str | os.PathLike, names=ARTEFACTS) -> dict[str, str]:
    """{path relative to run_dir: digest} of every file under ``names`` (those present); symlinks refused."""
    run_dir = Path(run_dir)
    out: dict[str, str] = {}
    for name in names:
        top = run_dir / name
        files = [top] if top.is_file() or top.is_symlink() else sorted(top.rglob("*")) if top.is_dir() else []
        for f in files:
            if f.is_symlink():
                raise RunError(f"{f}: a symlink in the run dir; run dirs hold plain files only")
            if f.is_file():
                out[f.relative_to(run_dir).as_posix()] = sampled_digest(f)
    return out


def verify_run_dir(run_dir: str | os.PathLike) -> RunConfig:
    """The run's :class:`RunConfig` after checking its paths stay inside the run dir and every file its
    manifest lists is there with the recorded digest (a run dir is either one complete write or an error)."""
    run_dir = Path(run_dir)
    run = RunConfig.read(run_dir)
    for field in ("dna_dir", "adapter_dir", "projector"):
        rel = getattr(run, field)
        if rel is not None:
            run_path(run_dir, rel, field)
    if not run.files:
        return run  # a hand-made run dir (no manifest): nothing more to check
    how = (
        f"the run dir is {{}}: run_config.json (step {run.steps}) does not match the files beside it, e.g. "
        "after a kill while the run was being finalised; rerun the same `dna-vlm train ... --resume` to "
        "complete it, or retrain"
    )
    for rel, digest in sorted(run.files.items()):
        path = run_path(run_dir, rel, f"files[{rel!r}]")
        if not path.is_file():
            raise RunError(f"{path}: missing; " + how.format("incomplete"))
        if sampled_digest(path) != digest:
            raise RunError(f"{path}: content differs from the manifest; " + how.format("mixed"))
    return run


def model_dir(pretrained: str | os.PathLike) -> Path | None:
    """The local folder of a model: the path itself, or a hub id's cached snapshot (no download); None if
    there is none here."""
    p = Path(pretrained).expanduser()
    if p.is_dir():
        return p.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(pretrained), local_files_only=True))
    except Exception:  # not a hub id, or not cached: identity unknown
        return None


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _VOLATILE_KEYS}
    return [_strip(v) for v in obj] if isinstance(obj, list) else obj


def base_identity(pretrained: str | os.PathLike) -> dict | None:
    """{"config_digest", "weights": {file name: digest}} of a local model (None when it is not local).

    The config digest ignores where/how the config was saved (:data:`_VOLATILE_KEYS`); weight files are
    ``*.safetensors`` / ``*.bin`` (large ones by :func:`dna_vlm.files.sampled_digest`)."""
    d = model_dir(pretrained)
    if d is None or not (d / "config.json").is_file():
        return None
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{d / 'config.json'}: not valid JSON ({e})") from None
    text = json.dumps(_strip(config), sort_keys=True)
    weights = {f.name: sampled_digest(f) for f in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))}
    return {"config_digest": hashlib.sha256(text.encode()).hexdigest(), "weights": weights}


def identity_differences(recorded: dict | None, actual: dict | None) -> list[str]:
    """What differs between two :func:`base_identity` results ([] when equal or either is unknown)."""
    if not recorded or not actual:
        return []
    diffs = []
    if recorded.get("config_digest") != actual.get("config_digest"):
        diffs.append("config.json differs (another architecture or size)")
    old, new = recorded.get("weights") or {}, actual.get("weights") or {}
    if sorted(old) != sorted(new):
        diffs.append(f"weight files differ ({sorted(old)[:3]} recorded, {sorted(new)[:3]} here)")
    else:
        changed = [k for k in old if old[k] != new[k]]
        if changed:
            diffs.append(f"weights differ ({', '.join(changed[:3])})")
    return diffs


def check_base(run_dir: Path, run: RunConfig, pretrained: str, allow: bool = False) -> None:
    """Refuse to load ``run_dir`` onto a base model other than the one it was trained on (its recorded
    :func:`base_identity`), unless ``allow`` or the environment variable :data:`ALLOW_BASE_ENV` is 1."""
    if allow or os.environ.get(ALLOW_BASE_ENV, "") in ("1", "true", "yes"):
        return
    diffs = identity_differences(run.base_identity, base_identity(pretrained))
    if diffs:
        raise RunError(
            f"{run_dir}: trained on {run.base_model}, but the base model {pretrained} is another model: "
            f"{'; '.join(diffs)}. Load it onto the model it was trained on, or pass allow_base_mismatch=True "
            f"(plugin / shell: {ALLOW_BASE_ENV}=1) if you know why"
        )


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
    from dna_vlm.patching import find_adapter, unwrap

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
    from dna_vlm.patching import unwrap

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
    config=None,
):
    """(model, processor) of a HF video LLM from a local path or hub id, on ``device``, in eval mode.
    ``config``: the model's transformers config when ``pretrained/config.json`` is not read as is (an
    export's, :func:`dna_vlm.runs.formats.export_model_config`)."""
    from transformers import AutoConfig

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    pretrained = str(pretrained)
    if config is not None:
        kwargs: dict = {"config": config}
    else:
        kwargs = {}
        try:
            config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise RunError(
                f"cannot load a model config from {pretrained!r} (a local model directory or a hub id): {e}"
            ) from e
    kwargs |= {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
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
    return model, _processor(pretrained, config if "config" in kwargs else None, trust_remote_code)


def _processor(pretrained: str, config, trust_remote_code: bool):
    """The model's processor; with ``config`` given, its tokenizer is built from that config, not from
    config.json (an export's, which transformers would read as a generic config and warn about)."""
    from transformers import AutoProcessor, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if config is not None:
        kwargs["tokenizer"] = AutoTokenizer.from_pretrained(pretrained, config=config, **kwargs)
    return AutoProcessor.from_pretrained(pretrained, **kwargs)


def _resolve_base(run_dir: Path, run: RunConfig) -> str:
    """base_model as written (hub id or absolute path), or relative to the run dir when that exists; a
    tune="full" run's own ``model/`` when the run dir was moved since (its recorded absolute path is gone)."""
    base = run.base_model
    if Path(base).exists():
        return base
    if run.tune == "full" and (run_dir / "model").is_dir():
        return str(run_dir / "model")
    cand = run_dir / base
    return str(cand) if not os.path.isabs(base) and cand.exists() else base


def load_model(
    pretrained: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    attention: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    allow_base_mismatch: bool = False,
):
    """(model, processor), in eval mode: ``load_model(PATH)`` takes a model, a run dir or an export.

    - ``pretrained``: local path or hub id; defaults to the run's ``base_model``. A ``dna-vlm export`` folder
      is loaded whole (manifest checked, config restored, its ``dna/`` part applied; no ``run_dir`` with it);
      a run dir given here (no ``run_dir``) is read as ``run_dir``.
    - ``run_dir``: a ``dna-vlm train`` output; applies its DnA weights (``load_dna``), its PEFT adapter
      (merged into the weights) and its projector weights.
    - ``attention``: None = the run's arm (or stock softmax without a run); ``"dna"`` without a run patches
      the base model (function-preserving); ``"softmax"`` with a DnA run is an error (its weights need DnA).
    - The run dir is checked first (:func:`verify_run_dir`: complete, one write, paths inside it) and so is
      the base model (:func:`check_base`: the one the run was trained on, unless ``allow_base_mismatch``).
    - A run's vision attention is computed as in training: a softmax run trained through dna-vlm's control
      layers (``attention_kernel`` ``dna_vlm-*``, every LoRA softmax arm) gets them again, so that it and the
      DnA arm share one attention path whatever ``attn_implementation`` the LLM is loaded with.
    """
    if attention not in (None, "dna", "softmax"):
        raise RunError(f"attention={attention!r}: expected 'dna', 'softmax' or None")
    if pretrained is not None and run_dir is None and (Path(pretrained) / RUN_CONFIG).is_file():
        pretrained, run_dir = None, pretrained  # load_model(RUN_DIR): the run dir as the one argument
    if pretrained is not None and is_export(pretrained):
        if run_dir is not None:
            raise RunError(f"{pretrained} is a dna-vlm export, which holds its run already: drop run_dir")
        kwargs = dict(device=device, dtype=dtype, attn_implementation=attn_implementation,
                      load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code)  # fmt: skip
        return _load_export(Path(pretrained), attention, **kwargs)
    run = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run = verify_run_dir(run_dir)
        if pretrained is None:
            pretrained = _resolve_base(run_dir, run)
        check_base(run_dir, run, str(pretrained), allow_base_mismatch)
        if attention is None:
            attention = run.attention
        if attention == "softmax" and run.dna_dir:
            raise RunError(
                f"{run_dir}: this run was trained with DnA attention; load it with attention='dna' (or None)"
            )
    if pretrained is None:
        raise RunError("load_model: pass pretrained (a model path or hub id) and/or run_dir")
    if not load_in_4bit:
        quiet_bitsandbytes()
    model, processor = load_base_model(
        pretrained, device, dtype, attn_implementation, load_in_4bit, trust_remote_code
    )
    if run is not None:
        model = _apply_run(model, run_dir, run)
    elif attention == "dna":
        from dna_vlm.patching import patch

        patch(model)
    model.eval()
    return model, processor


def _load_export(path: Path, attention: str | None, **load_kwargs):
    """(model, processor) of a ``dna-vlm export`` folder: its manifest checked, its weights loaded with its
    real config, then its ``dna/`` part (``load_dna``: the DnA or control layers it was exported with)."""
    record = verify_export(path)
    arm, dna = record.get("attention"), record.get("dna_dir")
    if arm not in ATTENTIONS or dna not in (None, "dna"):
        raise RunError(
            f"{path / EXPORT_MANIFEST}: 'attention' {arm!r} / 'dna_dir' {dna!r}; re-export the run"
        )
    if attention not in (None, arm):
        raise RunError(f"{path}: exported from a {arm} run; load it with attention={arm!r} or None")
    model, processor = load_base_model(path, config=export_model_config(path), **load_kwargs)
    if dna:
        _load_run_dna(model, path / dna)
    model.eval()
    return model, processor


def trained_on_control_layers(run: RunConfig) -> bool:
    """Whether a softmax run trained through dna-vlm's control layers (``patch(model, attention="softmax")``:
    DnA's layer and SDPA call without the negative branch) rather than the model's own attention: its recorded
    ``attention_kernel`` says ``dna_vlm-*`` (None: a run from before it was recorded, trained on the model's
    own attention)."""
    return run.attention == "softmax" and str(run.attention_kernel or "").startswith("dna_vlm-")


def _apply_run(model: nn.Module, run_dir: Path, run: RunConfig) -> nn.Module:
    """The run's DnA weights (``load_dna``), PEFT adapter (merged) and projector weights, applied in place;
    every error names the run dir's file and what is wrong."""
    if run.dna_dir:
        _load_run_dna(model, run_path(run_dir, run.dna_dir, "dna_dir"))
    elif trained_on_control_layers(run):
        from dna_vlm.patching import patch

        patch(model, attention="softmax")  # before the adapter: it was trained on these layers
    if run.adapter_dir:
        model = _load_run_adapter(model, run_path(run_dir, run.adapter_dir, "adapter_dir"), run)
    if run.projector:
        found = find_projector(model)
        if found is None:
            raise RunError(f"{run_dir}: the run has projector weights but the model has no known projector")
        path = run_path(run_dir, run.projector, "projector")
        try:
            state = load_safetensors(path)
        except SafetensorsFileError as e:
            raise RunError(str(e)) from None
        try:
            missing, unexpected = found[1].load_state_dict(state, strict=False)
        except RuntimeError as e:  # size mismatch
            raise RunError(f"{path}: does not fit this model's projector ({_first_line(e)})") from None
        if missing or unexpected:
            raise RunError(
                f"{path}: does not match the model's projector "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return model


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return " ".join(lines[:2])[:300]


def _load_run_dna(model: nn.Module, dna_dir: Path) -> None:
    """``load_dna`` with its config JSON and weights file checked first (errors name the file)."""
    from dna_vlm.checkpoint import CONFIG, WEIGHTS, load_dna

    config = dna_dir / CONFIG
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        raise RunError(f"{config} not found: the run's DnA dir is incomplete") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{config}: not valid JSON ({e}); the run dir is damaged: retrain") from None
    if not isinstance(data, dict):
        raise RunError(f"{config}: expected a JSON object, got {type(data).__name__}")
    try:
        check_safetensors(dna_dir / WEIGHTS)  # safetensors' own errors never name the file
    except SafetensorsFileError as e:
        raise RunError(str(e)) from None
    try:
        load_dna(model, dna_dir)
    except KeyError as e:
        raise RunError(f"{config}: missing field {e} (written by another dna-vlm version?)") from None


def _load_run_adapter(model: nn.Module, adapter_path: Path, run: RunConfig) -> nn.Module:
    """The run's PEFT adapter merged into ``model``; a base of another size is a clear error."""
    from peft import PeftModel

    if not adapter_path.is_dir():
        raise RunError(f"{adapter_path}: the run's PEFT adapter dir is missing")
    config = read_adapter_config(adapter_path)  # guarded (PEFT alone refuses it) or an older run's plain one
    try:
        return PeftModel.from_pretrained(model, str(adapter_path), config=config).merge_and_unload()
    except RuntimeError as e:  # "size mismatch for ..." from load_state_dict
        raise RunError(
            f"{adapter_path}: the adapter does not fit this base model ({_first_line(e)}); it was trained on "
            f"{run.base_model}: load it onto that model"
        ) from None
    except ValueError as e:  # unreadable adapter_config.json / weights
        raise RunError(f"{adapter_path}: unreadable PEFT adapter ({_first_line(e)})") from None
