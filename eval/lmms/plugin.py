"""The ``dna_vlm`` model for lmms-eval 0.7.3 (a "simple" model, registered through an entry point).

Usage, with the stock CLI behind the wrapper that fails when lmms-eval failed (it exits 0 otherwise)::

    python -m dna_vlm.eval.lmms.run \\
        --model_args pretrained=PATH_OR_HUB_ID,dna=RUN_DIR,max_frames=16 \\
        --tasks videomme --output_path results/

Discovery: ``pyproject.toml`` declares the entry point ``dna_vlm = "dna_vlm.eval.lmms.plugin:manifests"`` in
the group ``lmms_eval.models``; ``lmms_eval/models/__init__.py`` loads that group while it is imported
(``ModelRegistryV2.load_entrypoint_manifests``) and the returned ``ModelManifest`` maps the model id
``dna_vlm`` to :class:`DnaVLM`. Importing this module applies :mod:`dna_vlm.eval.lmms.compat` (workarounds
for lmms-eval 0.7.3 bugs); that import happens before the evaluator needs them.

``model_args`` (``key=value`` comma list; an unknown key is refused, naming the known ones):

- ``pretrained``: base model path or hub id (default: the run's ``base_model`` when ``dna`` is a run dir), or a
  ``dna-vlm export`` folder (the whole tuned model, DnA part included; no ``dna`` with it).
- ``dna``: a training run dir (``run_config.json``, loaded with :func:`dna_vlm.runs.loading.load_model`) or a
  :func:`dna_vlm.save_dna` dir (``dna_config.json``, applied with :func:`dna_vlm.load_dna`); absent = stock.
- ``attention``: ``dna`` | ``softmax`` (default: the run's; ``dna`` without a run patches the stock model).
- ``max_frames`` (default: the run's ``num_frames``, else 8) and ``fps`` (sample at ``fps``, capped by
  ``max_frames``; default: ``max_frames`` uniform frames), both via :func:`dna_vlm.video.decode.sample_frames`.
- ``dtype`` (``float32`` | ``bfloat16`` | ``float16``; default bfloat16 on CUDA, float32 on CPU), ``device``
  (default: accelerate's device for this process), ``attn_implementation``, ``load_in_4bit``,
  ``trust_remote_code`` (only when you ask), ``allow_base_mismatch`` (load a run onto a base model other
  than the one it was trained on; refused by default), ``batch_size``, ``max_new_tokens`` (default when a task sets none: 32).
- ``bad_video``: ``fail`` (default) | ``skip`` (below).
- ``video``: ``full`` (default) | ``none`` | ``shuffled`` | ``single``; ``encoder_noise``: sigma >= 0 (default 0);
  ``encoder_mask``: a fraction of the visual tokens zeroed (default 0); ``encoder_scramble``: a fraction of them
  rotated (default 0); ``control_seed`` (default 0): the input controls (below).
- ``frame_cache``: a folder for decoded frames shared across runs; ``seek``: ``exact`` (default) | ``keyframe``;
  ``prefetch``: decode this many upcoming videos in a background thread (default 0).

Bad videos (``bad_video``, the words of ``dna-vlm train --bad-video``):

- ``fail`` (default): before the first forward pass of each request type the plugin resolves every
  request's visual and opens every video's container (:func:`dna_vlm.eval.lmms.visuals.check_video`), then
  stops with ONE :class:`~dna_vlm.eval.lmms.requests.BadVideoError` listing every unreadable one (task, doc
  id, path, reason); a video that fails to decode later stops the run too. lmms-eval 0.7.3 then writes no
  results (and exits 0: ``python -m dna_vlm.eval.lmms.run`` turns that into a non-zero exit).
- ``skip``: the run goes on; each failed sample carries the failure encoding of
  :mod:`dna_vlm.eval.logs.records` (``generate_until``: the failure text with a wrong "decoy" letter;
  ``multiple_choice``: sentinel losses where the gold option loses), so the stock metric never scores it
  right and :func:`dna_vlm.eval.logs.records.row_failure` recognises it from the sample log alone. The failures
  are logged, counted at the end of each request type and listed in the provenance. The gold comes from the
  task's ``doc_to_target``: an option's text, an index (int or digit string) or an option letter; a failed
  doc whose gold is none of these cannot be made to lose: it is logged, counted and listed in the
  provenance's ``gold_unknown``. Each stock score of a task with failures is also recomputed without them
  (the provenance's ``stock_scores``; ``python -m dna_vlm.eval.lmms.run`` prints both numbers).

Input controls (``video=full|none|shuffled|single``, ``encoder_noise=SIGMA``, ``encoder_mask=P``,
``encoder_scramble=P``, ``control_seed=N``): see
:mod:`dna_vlm.eval.lmms.controls`. Frames: ``max_frames``, ``fps``, ``frame_cache=DIR`` (on-disk
:class:`dna_vlm.video.cache.FrameCache`), ``seek=exact|keyframe``; see :mod:`dna_vlm.eval.lmms.visuals`.
Provenance (base model, run dir + weight digest, DnA options, kernel, sampling, controls, bad_video,
failures): :mod:`dna_vlm.eval.lmms.provenance`, read back with :func:`dna_vlm.eval.logs.records.read_provenance`.

Prompts, with or without video (the blind task, ``video=none``), come from
:func:`dna_vlm.data.prompting.build_inputs`; a task's own ``<image>`` placeholders are removed (the images are fed
as one video). ``until`` stops generation (``stop_strings``) and the text is cut at it as well.

Data parallel: ``accelerate launch -m lmms_eval --model dna_vlm ...``; the evaluator shards docs by
:attr:`rank` / :attr:`world_size`, which come from accelerate (like lmms-eval's own ``llava_onevision``).
"""

from __future__ import annotations

import logging

from dna_vlm.eval.lmms import compat as lmms_compat

lmms_compat.apply()

from dna_vlm.eval.lmms.controls import BAD_VIDEO, Controls, ProjectorNoise  # noqa: E402
from dna_vlm.eval.lmms.inference import (  # noqa: E402
    chunks_by_kwargs,
    continuation_nll,
    decode_answers,
    decoy_letter,
    generate_kwargs,
    gold_indices,
    target_text,
)
from dna_vlm.eval.lmms.loading import EvalOptions, accelerate_setup, load_eval_model, opt_int, resolve_dna_arg  # noqa: E402
from dna_vlm.eval.lmms.provenance import add_gold_unknown, build_provenance  # noqa: E402
from dna_vlm.eval.lmms.requests import BadVideoError, Loaded, RequestVisuals  # noqa: E402
from dna_vlm.eval.lmms.visuals import FrameLoader  # noqa: E402
from dna_vlm.eval.logs.records import FAILED_LOGLIKELIHOOD, failed_losses, failed_response  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402

__all__ = ["MODEL_ID", "BadVideoError", "DnaVLM", "known_model_args", "manifests"]

log = logging.getLogger(__name__)

MODEL_ID = "dna_vlm"
#: stop a multi-round conversation that never ends after this many rounds
MAX_ROUNDS = 64
SEEK_MODES = ("exact", "keyframe")


def manifests() -> list:
    """Entry-point payload for the ``lmms_eval.models`` group.

    ``ModelManifest`` is imported here, not at module level: importing ``lmms_eval.models`` runs the registry,
    which loads this entry point, which would find this module only half initialised."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.DnaVLM")]


def _choice(value, allowed: tuple[str, ...], name: str, default: str | None) -> str | None:
    v = default if value in (None, "") else str(value).strip().lower()
    if v is not None and v not in allowed:
        raise ValueError(f"dna_vlm: model_args {name} must be one of {'|'.join(allowed)}, got {value!r}")
    return v


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
        allow_base_mismatch: bool | str = False,
        bad_video: str = "fail",
        video: str = "full",
        encoder_noise: float | str = 0.0,
        encoder_mask: float | str = 0.0,
        encoder_scramble: float | str = 0.0,
        control_seed: int | str = 0,
        frame_cache: str | None = None,
        seek: str | None = None,
        prefetch: int | str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        attention = _check_model_args(attention, kwargs)
        self.bad_video = _choice(bad_video, BAD_VIDEO, "bad_video", "fail")
        self.controls = Controls.parse(video, encoder_noise, control_seed, encoder_mask, encoder_scramble)
        seek = _choice(seek, SEEK_MODES, "seek", "exact")
        self.prefetch = opt_int(prefetch, "prefetch") or 0
        self.accelerator, self._device, dtype = accelerate_setup(device, dtype)
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        run_config, run_dir, dna_dir = resolve_dna_arg(dna, attention, pretrained)
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
            trust_remote_code=trust_remote_code, allow_base_mismatch=allow_base_mismatch,
        )  # fmt: skip
        self._set_tokens()
        self.info = _eval_info(
            pretrained, dna, dna_dir, attention, run_config, self.max_frames, self.fps, dtype
        )
        loader = FrameLoader(
            self.max_frames, self.fps, seek=seek, cache_dir=frame_cache, prefetch=self.prefetch
        )
        c = self.controls
        self.noise = ProjectorNoise(self._model, c.encoder_noise, c.encoder_mask, c.encoder_scramble)
        sampling = {**loader.sampling(), "frame_cache": frame_cache, "prefetch": self.prefetch}
        self.provenance = build_provenance(
            self._model, self.info, run_dir, dna_dir, sampling, self.controls.as_dict(), self.bad_video,
            trained_kernel=run_config.get("attention_kernel"),
        )  # fmt: skip
        self.visuals = RequestVisuals(
            loader, self.controls, self.bad_video, self.processor, self.accelerator, self.provenance
        )
        self._gold_unknown: dict[tuple, str] = {}  # (task, doc_id, kind) -> target, this call's
        if self._world_size > 1 and self.rank == 0:
            log.warning("dna_vlm: %d processes, data parallel", self._world_size)

    def _set_tokens(self) -> None:
        """The tokenizer, end-of-answer ids (EOS and the chat end-of-turn), the padding id, the float dtype."""
        import torch

        from dna_vlm.data.prompting import end_of_turn_ids

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

    def _prepare(self, requests: list[Instance]) -> None:
        """The pre-flight (``bad_video``) before any forward pass of this request type."""
        self.visuals.prepare(requests, self._doc)

    def _inputs(self, loaded: list[Loaded] | None, prompts: list[str], answers=None) -> dict:
        """The model's batch for ``prompts`` (with the loaded videos, or text-only when ``loaded`` is None), on
        device; the noise hook learns the batch's visual seeds."""
        from dna_vlm.data.prompting import batch_to_device, build_inputs

        videos = None if loaded is None else [x.frames for x in loaded]
        self.noise.set_batch([] if loaded is None else [x.seed for x in loaded])
        batch = build_inputs(self.processor, videos, list(prompts), answers)
        return batch_to_device(batch, self._device, self.model_dtype)

    # ------------------------------------------------------------------------------------------ generate

    def _generate(self, loaded: list[Loaded] | None, prompts: list[str], gen_kwargs: dict, until: list[str]):
        import torch

        inputs = self._inputs(loaded, prompts)
        kw = dict(gen_kwargs, pad_token_id=self._pad_id, eos_token_id=sorted(self._eos_ids) or None)
        stop = {"stop_strings": list(until), "tokenizer": self._tokenizer} if until else {}
        with torch.inference_mode():
            try:  # a real stopping criterion; decode_answers still cuts at the stop string
                out = self._model.generate(**inputs, **kw, **stop)
            except (TypeError, ValueError) as e:
                if not stop or ("stop_string" not in str(e) and "tokenizer" not in str(e)):
                    raise
                log.warning("dna_vlm: this model's generate() refuses stop_strings (%s); cutting after", e)
                out = self._model.generate(**inputs, **kw)
        return decode_answers(self._tokenizer, inputs["input_ids"], out, until)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm import tqdm

        self._prepare(requests)
        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="dna_vlm generate")
        for chunk in chunks_by_kwargs(requests, self.batch_size):
            self._generate_chunk(requests, chunk, results)
            pbar.update(len(chunk))
        pbar.close()
        self._report("generate_until")
        return [r if r is not None else "" for r in results]

    def _failed_text(self, args: tuple, reason: str) -> str:
        doc = self._doc(args[-2], args[-1], args[-3])
        decoy = decoy_letter(args[2], doc, context=args[0])
        if decoy is None:
            self._note_gold_unknown("generate_until", args[-2], args[-3], target_text(args[2], doc))
        return failed_response(reason, decoy)

    # ------------------------------------------------------------------------------------------ unknown golds

    def _note_gold_unknown(self, kind: str, task: str, doc_id, target: str) -> None:
        """A failed doc whose gold option is unknown: it cannot be made to lose, so a stock metric may count
        it right. Said once per doc, counted at the end of the request type and listed in the provenance."""
        if (task, doc_id, kind) in self._gold_unknown:
            return
        self._gold_unknown[(task, doc_id, kind)] = target
        log.warning(
            "dna_vlm: task %s doc %s failed and its gold option is unknown (doc_to_target gives %s, which is no "
            "option text, index or letter): the failure %s, so the stock metric MAY COUNT IT RIGHT; compare "
            "with the stock score without failed docs, or exclude failed docs (dna-vlm attribute does)",
            task,
            doc_id,
            target,
            "gets no wrong option letter" if kind == "generate_until" else "ties every option",
        )

    def _report(self, kind: str) -> None:
        """End of a request type: the visuals' report and the unknown golds of every process into the
        provenance (rank 0 writes it)."""
        self.visuals.report(kind)
        new = [(*key, target) for key, target in self._gold_unknown.items()]
        if self._world_size > 1:
            from accelerate.utils import gather_object

            new = [g for part in gather_object([new]) for g in part]
        for task, doc_id, kind_, target in new:
            add_gold_unknown(self.provenance, task, doc_id, kind_, target)
        if new and self.rank == 0:
            log.warning(
                "dna_vlm: %d failed %s sample(s) with an unknown gold option (listed in the provenance's "
                "gold_unknown): the stock metric may count them right",
                len(new),
                kind,
            )
        self._gold_unknown.clear()

    def _generate_chunk(self, requests, idxs: list[int], results: list) -> None:
        """Answer the requests ``idxs`` (same generation kwargs): video ones in one batch, text-only in another."""
        gen_kwargs, until = generate_kwargs(requests[idxs[0]].args[1], self.options.max_new_tokens)
        with_video: list[tuple[int, Loaded]] = []
        text_only: list[tuple[int, Loaded]] = []
        for i in idxs:
            args = requests[i].args
            x = self.visuals.load(args, self._doc(args[-2], args[-1], args[-3]))
            if x.failed is not None:
                results[i] = self._failed_text(args, x.failed)
            else:
                (text_only if x.frames is None else with_video).append((i, x))
        for group, has_video in ((with_video, True), (text_only, False)):
            if group:
                loaded = [x for _, x in group] if has_video else None
                outs = self._generate(loaded, [x.context for _, x in group], gen_kwargs, until)
                for (i, _), o in zip(group, outs, strict=True):
                    results[i] = o

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds follow lmms-eval's protocol: after round 0, ``doc_to_text(doc, previous_output=...,
        round_idx=..., previous_round_info=...)`` returns ``(visuals, context, terminal, round_res, info)``."""
        from tqdm import tqdm

        self._prepare(requests)
        res: list[list[str]] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="dna_vlm multi-round"):
            _ctx, gen_kwargs, _dtv, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            x = self.visuals.load(req.args, doc)
            if x.failed is not None:
                res.append([self._failed_text(req.args, x.failed)])
            else:
                gk = generate_kwargs(gen_kwargs, self.options.max_new_tokens)
                res.append(_conversation(self, req.args, doc, x, doc_to_text, gk))
        self._report("generate_until_multi_round")
        return res

    # ------------------------------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(mean NLL of the continuation tokens, continuation is the greedy decode)`` per request.

        lmms-eval's ``multiple_choice`` takes the argmin of the first value. Requests of one doc and context
        (the choices of a question) are scored in one batch, sharing the decoded frames. A failed doc's
        options get :func:`~dna_vlm.eval.logs.records.failed_losses` (its gold option loses).
        """
        from tqdm import tqdm

        self._prepare(requests)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, _cont, dtv, doc_id, task, split = req.args
            groups.setdefault((task, split, doc_id, dtv, context), []).append(i)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="dna_vlm loglikelihood")
        for (task, split, doc_id, dtv, _context), idxs in groups.items():
            doc = self._doc(task, split, doc_id)
            x = self.visuals.load(requests[idxs[0]].args, doc)
            conts = [requests[i].args[1] for i in idxs]
            conts = [str(c(doc) if callable(c) else c) for c in conts]
            if x.failed is not None:
                gold = gold_indices(dtv, doc, conts)
                if gold is None:
                    self._note_gold_unknown("loglikelihood", task, doc_id, target_text(dtv, doc))
                scores = failed_losses(len(conts), gold or [])
            else:
                scores = []
                for start in range(0, len(idxs), self.batch_size):
                    scores += self._score(x, conts[start : start + self.batch_size])
            for i, s in zip(idxs, scores, strict=True):
                results[i] = s
            pbar.update(len(idxs))
        pbar.close()
        self._report("loglikelihood")
        return [r if r is not None else FAILED_LOGLIKELIHOOD for r in results]

    def _score(self, x: Loaded, conts: list[str]) -> list[tuple[float, bool]]:
        n = len(conts)
        inputs = self._inputs(None if x.frames is None else [x] * n, [x.context] * n, answers=conts)
        labels = inputs.pop("labels")
        return continuation_nll(self._model, inputs, labels, self._eos_ids)


def _conversation(lm: DnaVLM, args, doc, x: Loaded, doc_to_text, gk: tuple[dict, list[str]]) -> list[str]:
    """One multi-round conversation of ``lm``; a visual that fails mid-way ends it with the failure answer."""
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
                x = lm.visuals.load((context, *args[1:]), doc, visuals_override=visuals)
                if x.failed is not None:
                    return [*rounds, lm._failed_text(args, x.failed)]
            else:
                x = Loaded(x.frames, context, x.seed)
        rounds.append(lm._generate(None if x.frames is None else [x], [x.context], *gk)[0])
    log.warning("dna_vlm: doc %s: stopping multi-round after %d rounds", args[-3], MAX_ROUNDS)
    return rounds


def known_model_args() -> list[str]:
    """The ``model_args`` keys :class:`DnaVLM` takes, sorted."""
    import inspect

    params = inspect.signature(DnaVLM.__init__).parameters
    return sorted(k for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


def _check_model_args(attention, unknown: dict) -> str | None:
    """Refuse unknown ``model_args`` (a misspelt key would silently leave its default in force), naming the
    closest known key; validate ``attention`` (None, "dna" or "softmax")."""
    import difflib

    unknown.pop("max_batch_size", None)  # lmms-eval's own, passed to every model
    if unknown:
        known = known_model_args()
        named = []
        for key in sorted(unknown):
            close = difflib.get_close_matches(key, known, n=1)
            named.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ValueError(
            f"dna_vlm: unknown model_args {', '.join(named)}; the known keys are {', '.join(known)} "
            "(see dna_vlm.eval.lmms.plugin)"
        )
    if attention not in (None, "", "dna", "softmax"):
        raise ValueError(f"dna_vlm: model_args attention must be 'dna' or 'softmax', got {attention!r}")
    return attention or None


def _eval_info(pretrained, dna, dna_dir, attention, run_config: dict, max_frames, fps, dtype) -> dict:
    """What is evaluated, in short (the provenance's ``model`` part and lmms-eval's model info)."""
    return {
        "pretrained": pretrained or run_config.get("base_model"),
        "dna": str(dna) if dna else None,
        "attention": attention or run_config.get("attention") or ("dna" if dna_dir else "softmax"),
        "max_frames": max_frames,
        "fps": fps,
        "dtype": dtype,
    }
