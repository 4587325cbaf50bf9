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
raises or calls ``sys.exit``) never stops the run. The failure is encoded as
:mod:`dna_vlm.eval.records` defines (``generate_until`` answers ``"[dna_vlm:failed] <reason>"``,
``loglikelihood`` returns the sentinel loss for every option of the doc and notes the reason); the project's
tasks (``eval/tasks/utils.py``) turn both into ``failed`` records in the sample log. Stock lmms-eval tasks see
the sentinel text (generate_until: no valid answer, so scored wrong) or equal huge losses for every option
(multiple_choice: argmin picks the first option); each failure is also logged as a warning.

Prompts, with or without video (the blind task), come from :func:`dna_vlm.prompting.build_inputs`.

Data parallel: ``accelerate launch -m lmms_eval --model dna_vlm ...``; the evaluator shards docs by
:attr:`rank` / :attr:`world_size`, which come from accelerate (like lmms-eval's own ``llava_onevision``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from . import lmms_compat

lmms_compat.apply()

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402

from .lmms_inference import (  # noqa: E402
    VisualFailure,
    chunks_by_kwargs,
    continuation_nll,
    decode_answers,
    generate_kwargs,
    load_visual,
)
from .lmms_loading import EvalOptions, accelerate_setup, load_eval_model, resolve_dna_arg  # noqa: E402
from .records import FAILED_LOGLIKELIHOOD, doc_key, failed_response, note_failure  # noqa: E402

__all__ = ["MODEL_ID", "DnaVLM", "manifests"]

log = logging.getLogger(__name__)

MODEL_ID = "dna_vlm"
#: stop a multi-round conversation that never ends after this many rounds
MAX_ROUNDS = 64


def manifests() -> list:
    """Entry-point payload for the ``lmms_eval.models`` group.

    ``ModelManifest`` is imported here, not at module level: importing ``lmms_eval.models`` runs the registry,
    which loads this entry point, which would find this module only half initialised."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.DnaVLM")]


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
            raise ValueError(f"dna_vlm: model_args attention must be 'dna' or 'softmax', got {attention!r}")
        attention = attention or None
        self.accelerator, self._device, dtype = accelerate_setup(device, dtype)
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        run_config, run_dir, dna_dir = resolve_dna_arg(dna, attention)
        # validated before the (slow) model load; defaults come from the run
        self.options = EvalOptions.parse(max_frames, fps, batch_size, max_new_tokens, run_config)
        self.batch_size_per_gpu = self.options.batch_size  # lmms-eval's name; tests change it
        if pretrained in (None, "") and run_dir is None:
            raise ValueError(
                "dna_vlm: model_args need pretrained=PATH (or dna=RUN_DIR naming its base_model)"
            )
        self._model, self.processor = load_eval_model(
            pretrained, run_dir, dna_dir, attention, self._device, dtype,
            attn_implementation=attn_implementation, load_in_4bit=load_in_4bit,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        self._set_tokens()
        self.info = {
            "pretrained": pretrained or run_config.get("base_model"),
            "dna": str(dna) if dna else None,
            "attention": attention or run_config.get("attention") or ("dna" if dna_dir else "softmax"),
            "max_frames": self.max_frames,
            "fps": self.fps,
            "dtype": dtype,
        }
        if self._world_size > 1 and self.rank == 0:
            log.warning("dna_vlm: %d processes, data parallel", self._world_size)

    def _set_tokens(self) -> None:
        """The tokenizer, end-of-answer ids (EOS and the chat end-of-turn), the padding id, the float dtype."""
        import torch

        from dna_vlm.prompting import end_of_turn_ids

        tok = self._tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self._eos_ids = end_of_turn_ids(tok)
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        params = self._model.parameters()
        self.model_dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)

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

    @property
    def max_frames(self) -> int:
        return self.options.max_frames

    @property
    def fps(self) -> float | None:
        return self.options.fps

    # ------------------------------------------------------------------------------------------ inputs

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def _visual_or_failure(self, doc_to_visual, doc, doc_id, cache: dict | None = None):
        """``("ok", frames or None)`` or ``("failed", reason)``; a failure is noted and logged."""
        key = doc_key(doc, doc_id)
        if cache is not None and key in cache:
            return cache[key]
        try:
            out = ("ok", load_visual(doc_to_visual, doc, doc_id, self.max_frames, self.fps))
        except VisualFailure as e:
            reason = str(e)
            note_failure(key, reason)
            log.warning("dna_vlm: doc %s failed: %s", key, reason)
            out = ("failed", reason)
        if cache is not None:
            cache[key] = out
        return out

    def _inputs(self, videos: Sequence[Any] | None, prompts: Sequence[str], answers=None) -> dict:
        """The model's batch for ``prompts`` (with videos, or text-only when ``videos`` is None), on device."""
        from dna_vlm._io import batch_to_device
        from dna_vlm.prompting import build_inputs

        batch = build_inputs(self.processor, None if videos is None else list(videos), list(prompts), answers)
        return batch_to_device(batch, self._device, self.model_dtype)

    # ------------------------------------------------------------------------------------------ generate

    def _generate(self, videos, prompts: list[str], gen_kwargs: dict, until: list[str]) -> list[str]:
        import torch

        inputs = self._inputs(videos, prompts)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs, pad_token_id=self._pad_id, eos_token_id=sorted(self._eos_ids) or None, **gen_kwargs
            )
        return decode_answers(self._tokenizer, inputs["input_ids"], out, until)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm import tqdm

        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="dna_vlm generate")
        for chunk in chunks_by_kwargs(requests, self.batch_size):
            self._generate_chunk(requests, chunk, results)
            pbar.update(len(chunk))
        pbar.close()
        return [r if r is not None else "" for r in results]

    def _generate_chunk(self, requests, idxs: list[int], results: list) -> None:
        """Answer the requests ``idxs`` (same generation kwargs): video ones in one batch, text-only in another."""
        gen_kwargs, until = generate_kwargs(requests[idxs[0]].args[1], self.options.max_new_tokens)
        with_video: list[tuple[int, Any, str]] = []
        text_only: list[tuple[int, Any, str]] = []
        for i in idxs:
            context, _gk, doc_to_visual, doc_id, task, split = requests[i].args
            status, value = self._visual_or_failure(doc_to_visual, self._doc(task, split, doc_id), doc_id)
            if status == "failed":
                results[i] = failed_response(value)
            else:
                (text_only if value is None else with_video).append((i, value, context))
        for group, videos in ((with_video, [v for _, v, _ in with_video]), (text_only, None)):
            if group:
                outs = self._generate(videos, [c for _, _, c in group], gen_kwargs, until)
                for (i, _, _), o in zip(group, outs, strict=True):
                    results[i] = o

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds follow lmms-eval's protocol: after round 0, ``doc_to_text(doc, previous_output=...,
        round_idx=..., previous_round_info=...)`` returns ``(visuals, context, terminal, round_res, info)``."""
        from tqdm import tqdm

        res: list[list[str]] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="dna_vlm multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            status, value = self._visual_or_failure(doc_to_visual, doc, doc_id)
            if status == "failed":
                res.append([failed_response(value)])
            else:
                gk = generate_kwargs(gen_kwargs, self.options.max_new_tokens)
                res.append(self._rounds(doc, doc_id, value, context, doc_to_text, gk))
        return res

    def _rounds(self, doc, doc_id, video, context: str, doc_to_text, gk: tuple[dict, list[str]]) -> list[str]:
        """One multi-round conversation; a visual that fails mid-way ends it with the failure answer."""
        rounds: list[str] = []
        info = None
        for round_idx in range(MAX_ROUNDS + 1):
            if round_idx > 0:
                visuals, context, terminal, _round_res, info = doc_to_text(
                    doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info
                )
                if terminal:
                    return rounds
                if visuals:
                    status, value = self._visual_or_failure(lambda _d, v=visuals: v, doc, doc_id)
                    if status == "failed":
                        return [*rounds, failed_response(value)]
                    video = value
            rounds.append(self._generate(None if video is None else [video], [context], *gk)[0])
        log.warning("dna_vlm: doc %s: stopping multi-round after %d rounds", doc_id, MAX_ROUNDS)
        return rounds

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
            status, video = self._visual_or_failure(requests[idxs[0]].args[2], doc, doc_id, cache)
            conts = [requests[i].args[1] for i in idxs]
            conts = [str(c(doc) if callable(c) else c) for c in conts]
            for start in range(0, len(idxs), self.batch_size):
                sub = slice(start, start + self.batch_size)
                scores = (
                    [FAILED_LOGLIKELIHOOD] * len(conts[sub])
                    if status == "failed"
                    else self._score(video, context, conts[sub])
                )
                for i, s in zip(idxs[sub], scores, strict=True):
                    results[i] = s
            pbar.update(len(idxs))
        pbar.close()
        return [r if r is not None else FAILED_LOGLIKELIHOOD for r in results]

    def _score(self, video, context: str, conts: list[str]) -> list[tuple[float, bool]]:
        n = len(conts)
        inputs = self._inputs(None if video is None else [video] * n, [context] * n, answers=conts)
        labels = inputs.pop("labels")
        return continuation_nll(self._model, inputs, labels, self._eos_ids)
