"""The ``dna_vlm`` model for lmms-eval 0.7.3 (a "simple" model, registered through an entry point).

Usage, with the stock CLI::

    lmms-eval --model dna_vlm \\
        --model_args pretrained=PATH_OR_HUB_ID,dna=RUN_DIR,max_frames=16 \\
        --tasks videomme --batch_size 1 --output_path results/ --log_samples

Discovery: ``pyproject.toml`` declares the entry point ``dna_vlm = "dna_vlm.eval.lmms_plugin:manifests"`` in
the group ``lmms_eval.models``; ``lmms_eval/models/__init__.py`` loads that group while it is imported
(``ModelRegistryV2.load_entrypoint_manifests``) and the returned ``ModelManifest`` maps the model id
``dna_vlm`` to :class:`DnaVLM`. Importing this module applies :mod:`dna_vlm.eval.lmms_compat` (workarounds
for lmms-eval 0.7.3 bugs); that import happens before the evaluator needs them.

``model_args`` (``key=value`` comma list):

- ``pretrained``: base model path or hub id (default: the run's ``base_model`` when ``dna`` is a run dir).
- ``dna``: a training run dir (``run_config.json``, loaded with :func:`dna_vlm.runs.load_model`) or a
  :func:`dna_vlm.save_dna` dir (``dna_config.json``, applied with :func:`dna_vlm.load_dna`); absent = stock.
- ``attention``: ``dna`` | ``softmax`` (default: the run's; ``dna`` without a run patches the stock model).
- ``max_frames`` (default: the run's ``num_frames``, else 8) and ``fps`` (sample at ``fps``, capped by
  ``max_frames``; default: ``max_frames`` uniform frames), both via :func:`dna_vlm.video.sample_frames`.
- ``dtype`` (``float32`` | ``bfloat16`` | ``float16``; default bfloat16 on CUDA, float32 on CPU), ``device``
  (default: accelerate's device for this process), ``attn_implementation``, ``load_in_4bit``,
  ``trust_remote_code`` (only when you ask), ``batch_size``, ``max_new_tokens`` (default when a task sets none: 32).

Failed samples: a visual that cannot be loaded (missing or corrupt video, a task's ``doc_to_visual`` that
raises or calls ``sys.exit``) never stops the run. ``generate_until`` answers ``"[dna_vlm:failed] <reason>"``
(:data:`FAILED_PREFIX`) and ``loglikelihood`` returns ``(FAILED_LOSS, False)`` for that doc (the reason is
kept in :data:`FAILURES`, keyed by the doc's ``id``); the project's tasks (``eval/tasks/utils.py``) turn both
into ``{"failed": true, "reason": ...}`` records in the sample log. Stock lmms-eval tasks see the sentinel
text (generate_until: no valid answer, so scored wrong) or equal huge losses for every option
(multiple_choice: argmin picks the first option); each failure is also logged as a warning.

Data parallel: ``accelerate launch -m lmms_eval --model dna_vlm ...``; the evaluator shards docs by
:attr:`rank` / :attr:`world_size`, which come from accelerate (like lmms-eval's own ``llava_onevision``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import lmms_compat

lmms_compat.apply()

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402

__all__ = [
    "FAILED_LOSS",
    "FAILED_PREFIX",
    "FAILURES",
    "MODEL_ID",
    "DnaVLM",
    "failure_reason",
    "manifests",
]

log = logging.getLogger(__name__)

MODEL_ID = "dna_vlm"
FAILED_PREFIX = "[dna_vlm:failed]"
FAILED_LOSS = 1.0e9
#: doc id (str) -> reason, for docs whose visual could not be loaded in this process
FAILURES: dict[str, str] = {}
_TRUE = ("1", "true", "yes", "on")


def manifests() -> list:
    """Entry-point payload for the ``lmms_eval.models`` group.

    ``ModelManifest`` is imported here, not at module level: importing ``lmms_eval.models`` runs the registry,
    which loads this entry point, which would find this module only half initialised."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.DnaVLM")]


def failure_reason(response: Any) -> str | None:
    """The reason carried by a failed ``generate_until`` response, else None."""
    if isinstance(response, (list, tuple)) and response:
        response = response[0]
    if isinstance(response, str) and response.strip().startswith(FAILED_PREFIX):
        return response.strip()[len(FAILED_PREFIX) :].strip() or "unknown"
    return None


def _as_bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in _TRUE


def _opt_int(v, name: str) -> int | None:
    if v is None or v == "" or str(v).lower() == "none":
        return None
    try:
        out = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"dna_vlm: {name} must be an integer, got {v!r}") from None
    if out < 1:
        raise ValueError(f"dna_vlm: {name} must be >= 1, got {v!r}")
    return out


def _doc_key(doc: Any, doc_id: Any) -> str:
    if isinstance(doc, dict) and doc.get("id") is not None:
        return str(doc["id"])
    return str(doc_id)


def _resolve_dna_arg(dna: str | None, attention: str | None) -> tuple[dict, Path | None, Path | None]:
    """Classify ``dna=``: ``(run_config, run_dir, dna_dir)``; at most one of the two dirs is set."""
    if dna in (None, ""):
        return {}, None, None
    p = Path(dna).expanduser()
    if (p / "run_config.json").is_file():
        return json.loads((p / "run_config.json").read_text()), p, None
    if (p / "dna_config.json").is_file():
        if attention == "softmax":
            raise ValueError(f"dna_vlm: dna={dna} holds DnA weights but attention=softmax was asked")
        return {}, None, p
    raise ValueError(
        f"dna_vlm: dna={dna} is neither a training run dir (run_config.json) nor a save_dna dir "
        "(dna_config.json)"
    )


class _VisualFailure(Exception):
    pass


class DnaVLM(lmms):
    """lmms-eval model: any family the dna_vlm adapters support, stock or with DnA / a tuned run."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        dna: str | None = None,
        attention: str | None = None,
        max_frames: int | str | None = None,
        fps: float | str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int | str = 32,
        load_in_4bit: bool | str = False,
        trust_remote_code: bool | str = False,
        **kwargs,
    ) -> None:
        super().__init__()
        kwargs.pop("max_batch_size", None)
        if kwargs:
            log.warning("dna_vlm: ignoring unknown model_args %s", sorted(kwargs))
        if attention not in (None, "", "dna", "softmax"):
            raise ValueError(f"dna_vlm: attention must be 'dna' or 'softmax', got {attention!r}")
        attention = attention or None

        dtype = self._setup_device(device, dtype)
        run_config, run_dir, dna_dir = _resolve_dna_arg(dna, attention)
        if pretrained in (None, "") and run_dir is None:
            raise ValueError(
                "dna_vlm: model_args need pretrained=PATH (or dna=RUN_DIR naming its base_model)"
            )
        self._load_model(
            pretrained,
            run_dir,
            dna_dir,
            attention,
            dtype,
            attn_implementation=attn_implementation,
            load_in_4bit=load_in_4bit,
            trust_remote_code=trust_remote_code,
        )
        self._set_options(max_frames, fps, batch_size, max_new_tokens, run_config)
        self.info = {
            "pretrained": pretrained or run_config.get("base_model"),
            "dna": str(dna) if dna else None,
            "attention": attention or run_config.get("attention") or ("dna" if dna_dir else "softmax"),
            "max_frames": self.max_frames,
            "fps": self.fps,
            "dtype": dtype,
        }
        self._set_special_tokens()
        if self._world_size > 1 and self.rank == 0:
            log.warning("dna_vlm: %d processes, data parallel", self._world_size)

    def _setup_device(self, device: str | None, dtype: str | None) -> str:
        """Take rank, world size and device from accelerate; returns ``dtype`` with its default filled in."""
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator()
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        if device in (None, "", "auto"):
            device = str(accelerator.device)
        elif self._world_size > 1 and str(device).startswith("cuda"):
            # data parallel: an explicit cuda device means "this process's GPU", not one GPU for all
            device = f"cuda:{accelerator.local_process_index}"
        self._device = torch.device(device)
        if dtype in (None, "", "auto"):
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        return dtype

    def _load_model(
        self,
        pretrained: str | None,
        run_dir: Path | None,
        dna_dir: Path | None,
        attention: str | None,
        dtype: str,
        attn_implementation: str | None,
        load_in_4bit: bool | str,
        trust_remote_code: bool | str,
    ) -> None:
        """Load the base model (or a training run), then apply a ``save_dna`` dir's weights if given."""
        import torch

        from dna_vlm import runs

        model, processor = runs.load_model(
            pretrained=pretrained or None,
            run_dir=str(run_dir) if run_dir is not None else None,
            # a save_dna dir patches the model itself below; loading it patched here would do it twice
            attention=None if dna_dir is not None else attention,
            device=str(self._device),
            dtype=dtype,
            attn_implementation=attn_implementation or None,
            load_in_4bit=_as_bool(load_in_4bit),
            trust_remote_code=_as_bool(trust_remote_code),
        )
        if dna_dir is not None:
            model = self._apply_saved_dna(model, dna_dir, dtype)
        model.eval()
        self._model = model
        self.processor = processor
        self._tokenizer = getattr(processor, "tokenizer", processor)
        self.model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    def _apply_saved_dna(self, model, dna_dir: Path, dtype: str):
        """Patch ``model`` with the DnA weights in ``dna_dir`` and move them next to the model's weights."""
        from dna_vlm import load_dna
        from dna_vlm.patching import dna_parameters
        from dna_vlm.runs import resolve_dtype

        model = load_dna(model, dna_dir) or model
        dev = next((p.device for p in model.parameters() if p.device.type != "meta"), self._device)
        for prm in dna_parameters(model):  # DnA's new parameters are created in float32 on CPU
            prm.data = prm.data.to(device=dev, dtype=resolve_dtype(dtype))
        return model

    def _set_options(self, max_frames, fps, batch_size, max_new_tokens, run_config: dict) -> None:
        """Validate the frame-sampling and batching model_args; defaults come from the run when there is one."""
        self.max_frames = _opt_int(max_frames, "max_frames") or int(run_config.get("num_frames") or 8)
        self.fps = None if fps in (None, "", "none") else float(fps)
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"dna_vlm: fps must be positive, got {fps!r}")
        bs = 1 if str(batch_size).startswith("auto") else _opt_int(batch_size, "batch_size")
        self.batch_size_per_gpu = bs or 1
        self.max_new_tokens = _opt_int(max_new_tokens, "max_new_tokens") or 32

    def _set_special_tokens(self) -> None:
        """End-of-answer ids (the tokenizer's EOS and the chat end-of-turn) and the padding id."""
        tok = self._tokenizer
        self._eos_ids = {
            i
            for i in (getattr(tok, "eos_token_id", None), _token_id(tok, "<|im_end|>"))
            if isinstance(i, int) and i >= 0
        }
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # ------------------------------------------------------------------------------------------ properties

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def eot_token_id(self):
        return self._tokenizer.eos_token_id

    # ------------------------------------------------------------------------------------------ visuals

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def _load_visual(self, doc_to_visual, doc, doc_id):
        """-> uint8 (T, H, W, 3) frames, or None for a text-only doc. Raises _VisualFailure with a reason."""
        import numpy as np

        from dna_vlm.video import sample_frames

        try:
            visuals = doc_to_visual(doc) if doc_to_visual is not None else None
        except (Exception, SystemExit) as e:  # some lmms-eval tasks sys.exit() on a missing video
            raise _VisualFailure(f"doc_to_visual failed: {type(e).__name__}: {e}") from None
        if visuals is None:
            return None
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        visuals = [v for v in visuals if v is not None]
        if not visuals:
            return None
        first = visuals[0]
        if isinstance(first, (str, Path)):
            if len(visuals) > 1:
                log.warning("dna_vlm: doc %s has %d videos; using the first", doc_id, len(visuals))
            try:
                if self.fps is not None:
                    fr = sample_frames(str(first), strategy="fps", fps=self.fps, max_frames=self.max_frames)
                else:
                    fr = sample_frames(str(first), num_frames=self.max_frames)
            except Exception as e:
                raise _VisualFailure(f"{type(e).__name__}: {e}") from None
            return fr.frames
        if isinstance(first, dict) and "path" in first:
            return self._load_visual(lambda _d: [v["path"] for v in visuals], doc, doc_id)
        # images (PIL or arrays): a clip of still frames, resized to the first one's size
        try:
            from PIL import Image

            pil = [v if isinstance(v, Image.Image) else Image.fromarray(np.asarray(v)) for v in visuals]
            pil = [im.convert("RGB") for im in pil][: self.max_frames]
            size = pil[0].size
            return np.stack([np.asarray(im.resize(size) if im.size != size else im) for im in pil])
        except Exception as e:
            raise _VisualFailure(f"cannot use visual of type {type(first).__name__}: {e}") from None

    def _visual_or_failure(self, doc_to_visual, doc, doc_id, cache: dict | None = None):
        key = _doc_key(doc, doc_id)
        if cache is not None and key in cache:
            return cache[key]
        try:
            out = ("ok", self._load_visual(doc_to_visual, doc, doc_id))
        except _VisualFailure as e:
            reason = str(e)
            FAILURES[key] = reason
            log.warning("dna_vlm: doc %s failed: %s", key, reason)
            out = ("failed", reason)
        if cache is not None:
            cache[key] = out
        return out

    # ------------------------------------------------------------------------------------------ inputs

    def _text_only_prompt(self, prompt: str, answer: str | None) -> str:
        proc = self.processor
        owner = proc if getattr(proc, "chat_template", None) else self._tokenizer
        if getattr(owner, "chat_template", None):
            msgs: list[dict] = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
            if answer is not None:
                msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            return owner.apply_chat_template(msgs, add_generation_prompt=answer is None, tokenize=False)
        eos = self._tokenizer.eos_token or ""
        text = f"USER: {prompt} ASSISTANT:"
        return text if answer is None else f"{text} {answer}{eos}"

    def _inputs(self, videos: Sequence[Any] | None, prompts: Sequence[str], answers=None):
        """Processor batch for ``prompts`` (with videos, or text-only when ``videos`` is None)."""
        import torch

        if videos is not None:
            from dna_vlm.prompting import build_inputs

            batch = build_inputs(self.processor, list(videos), list(prompts), answers=answers)
        else:
            tok = self._tokenizer
            prefixes = [self._text_only_prompt(p, None) for p in prompts]
            texts = (
                prefixes
                if answers is None
                else [self._text_only_prompt(p, a) for p, a in zip(prompts, answers, strict=True)]
            )
            old = tok.padding_side
            tok.padding_side = "left" if answers is None else "right"
            try:
                batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
            finally:
                tok.padding_side = old
            if answers is not None:
                ids = batch["input_ids"]
                labels = torch.full_like(ids, -100)
                for row, prefix in enumerate(prefixes):
                    p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
                    r_ids = ids[row][batch["attention_mask"][row].bool()].tolist()
                    start = 0
                    while start < min(len(p_ids), len(r_ids)) and p_ids[start] == r_ids[start]:
                        start += 1
                    end = len(r_ids)
                    for j in range(start, len(r_ids)):
                        if r_ids[j] in self._eos_ids:
                            end = j + 1
                            break
                    labels[row, start:end] = ids[row, start:end]
                batch["labels"] = labels
        out = {}
        for k, v in dict(batch).items():
            if isinstance(v, torch.Tensor):
                v = v.to(self._device)
                if v.is_floating_point():
                    v = v.to(self.model_dtype)
            out[k] = v
        return out

    # ------------------------------------------------------------------------------------------ generate

    def _gen_kwargs(self, gen_kwargs: dict | None) -> tuple[dict, list[str]]:
        gk = dict(gen_kwargs or {})
        until = gk.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        out: dict[str, Any] = {"max_new_tokens": int(gk.get("max_new_tokens") or self.max_new_tokens)}
        do_sample = bool(gk.get("do_sample", False))
        temperature = gk.get("temperature")
        if temperature is not None and float(temperature) > 0 and do_sample:
            out["temperature"] = float(temperature)
            if gk.get("top_p") is not None:
                out["top_p"] = float(gk["top_p"])
        out["do_sample"] = do_sample
        if gk.get("num_beams") is not None:
            out["num_beams"] = int(gk["num_beams"])
        return out, [u for u in until if isinstance(u, str) and u]

    def _generate(self, videos, prompts: list[str], gen_kwargs: dict, until: list[str]) -> list[str]:
        import torch

        inputs = self._inputs(videos, prompts)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs,
                pad_token_id=self._pad_id,
                eos_token_id=sorted(self._eos_ids) or None,
                **gen_kwargs,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self._tokenizer.batch_decode(new, skip_special_tokens=True)
        res = []
        for t in texts:
            for u in until:
                if u in t:
                    t = t.split(u)[0]
            res.append(t.strip())
        return res

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm import tqdm

        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="dna_vlm generate")
        # contiguous chunks with identical generation kwargs
        chunk: list[int] = []
        chunk_key = None
        order = list(range(len(requests)))
        for i in [*order, None]:
            key = None
            if i is not None:
                key = json.dumps(requests[i].args[1], sort_keys=True, default=str)
            if chunk and (i is None or key != chunk_key or len(chunk) >= self.batch_size):
                self._generate_chunk(requests, chunk, results)
                pbar.update(len(chunk))
                chunk = []
            if i is not None:
                chunk.append(i)
                chunk_key = key
        pbar.close()
        return [r if r is not None else "" for r in results]

    def _generate_chunk(self, requests, idxs: list[int], results: list) -> None:
        gen_kwargs, until = self._gen_kwargs(requests[idxs[0]].args[1])
        with_video: list[tuple[int, Any, str]] = []
        text_only: list[tuple[int, str]] = []
        for i in idxs:
            context, _gk, doc_to_visual, doc_id, task, split = requests[i].args
            doc = self._doc(task, split, doc_id)
            status, value = self._visual_or_failure(doc_to_visual, doc, doc_id)
            if status == "failed":
                results[i] = f"{FAILED_PREFIX} {value}"
            elif value is None:
                text_only.append((i, context))
            else:
                with_video.append((i, value, context))
        if with_video:
            outs = self._generate(
                [v for _, v, _ in with_video], [c for _, _, c in with_video], gen_kwargs, until
            )
            for (i, _, _), o in zip(with_video, outs, strict=True):
                results[i] = o
        if text_only:
            outs = self._generate(None, [c for _, c in text_only], gen_kwargs, until)
            for (i, _), o in zip(text_only, outs, strict=True):
                results[i] = o

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds follow lmms-eval's protocol: after round 0, ``doc_to_text(doc, previous_output=...,
        round_idx=..., previous_round_info=...)`` returns ``(visuals, context, terminal, round_res, info)``."""
        from tqdm import tqdm

        res: list[list[str]] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="dna_vlm multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            gk, until = self._gen_kwargs(gen_kwargs)
            status, value = self._visual_or_failure(doc_to_visual, doc, doc_id)
            if status == "failed":
                res.append([f"{FAILED_PREFIX} {value}"])
                continue
            video = value
            rounds: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx > 0:
                    visuals, context, terminal, _round_res, info = doc_to_text(
                        doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info
                    )
                    if terminal:
                        break
                    if visuals:
                        status, value = self._visual_or_failure(lambda _d, v=visuals: v, doc, doc_id)
                        if status == "failed":
                            rounds.append(f"{FAILED_PREFIX} {value}")
                            break
                        video = value
                out = self._generate(None if video is None else [video], [context], gk, until)[0]
                rounds.append(out)
                round_idx += 1
                if round_idx > 64:
                    log.warning("dna_vlm: doc %s: stopping multi-round after 64 rounds", doc_id)
                    break
            res.append(rounds)
        return res

    # ------------------------------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(mean NLL of the continuation tokens, continuation is the greedy decode)`` per request.

        lmms-eval's ``multiple_choice`` takes the argmin of the first value. Requests of one doc and context
        (the choices of a question) are scored in one batch, sharing the decoded frames.
        """
        from tqdm import tqdm

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, _cont, _dtv, doc_id, task, split = req.args
            groups.setdefault((task, split, doc_id, context), []).append(i)
        cache: dict = {}
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="dna_vlm loglikelihood")
        for (task, split, doc_id, context), idxs in groups.items():
            doc = self._doc(task, split, doc_id)
            doc_to_visual = requests[idxs[0]].args[2]
            status, video = self._visual_or_failure(doc_to_visual, doc, doc_id, cache)
            conts = []
            for i in idxs:
                cont = requests[i].args[1]
                conts.append(cont(doc) if callable(cont) else cont)
            if status == "failed":
                for i in idxs:
                    results[i] = (FAILED_LOSS, False)
            else:
                for start in range(0, len(idxs), self.batch_size):
                    sub = slice(start, start + self.batch_size)
                    scores = self._score(video, context, [str(c) for c in conts[sub]])
                    for i, s in zip(idxs[sub], scores, strict=True):
                        results[i] = s
            pbar.update(len(idxs))
        pbar.close()
        return [r if r is not None else (FAILED_LOSS, False) for r in results]

    def _score(self, video, context: str, conts: list[str]) -> list[tuple[float, bool]]:
        import inspect

        import torch
        import torch.nn.functional as F

        n = len(conts)
        inputs = self._inputs(None if video is None else [video] * n, [context] * n, answers=conts)
        labels = inputs.pop("labels")
        # labelled positions, without the end-of-turn token(s) closing the answer
        mask = labels != -100
        for row in range(n):
            pos = mask[row].nonzero().flatten().tolist()
            while len(pos) > 1 and int(labels[row, pos[-1]]) in self._eos_ids:
                mask[row, pos.pop()] = False
        L = labels.shape[1]
        first = int(mask.float().argmax(dim=1).min()) if mask.any() else L - 1
        keep = L - max(first - 1, 0)
        kwargs = {}
        if "logits_to_keep" in inspect.signature(self._model.forward).parameters:
            kwargs["logits_to_keep"] = keep
        with torch.inference_mode():
            logits = self._model(**inputs, **kwargs).logits.float()
        logits = logits[:, -keep:]  # (n, keep, V) predicting positions L-keep+1 .. L (shifted below)
        tgt = labels[:, L - keep + 1 :]
        m = mask[:, L - keep + 1 :]
        lg = logits[:, :-1]
        out = []
        for row in range(n):
            sel = m[row]
            if not bool(sel.any()):
                out.append((FAILED_LOSS, False))
                continue
            lrow, trow = lg[row][sel], tgt[row][sel]
            nll = F.cross_entropy(lrow, trow, reduction="mean").item()
            greedy = bool((lrow.argmax(-1) == trow).all())
            out.append((float(nll) if math.isfinite(nll) else FAILED_LOSS, greedy))
        return out


def _token_id(tok, token: str) -> int | None:
    try:
        i = tok.convert_tokens_to_ids(token)
    except Exception:
        return None
    unk = getattr(tok, "unk_token_id", None)
    return i if isinstance(i, int) and i != unk else None
