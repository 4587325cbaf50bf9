"""The training loop: an accelerate loop over a PEFT-wrapped, DnA-patched (or stock) model.

:func:`train` opens the run (:class:`RunSetup`: accelerator, rows, where to start) and hands it to a
:class:`Trainer`, which builds everything in its constructor and then only loops: steps, periodic eval and
checkpoints, signals, bad videos, and at the end the run dir (:mod:`dna_vlm.train.finalize`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dna_vlm.data.dataset import dataset_identity
from dna_vlm.data.prompting import batch_to_device
from dna_vlm.files import SafetensorsFileError, atomic_write_json, load_safetensors, remove_stale_temps
from dna_vlm.runs.loading import base_identity, find_language_model, quiet_bitsandbytes
from dna_vlm.runs.lock import LockedError, OutputLock
from dna_vlm.train.batches import MicroBatches, load_examples, make_loader, mix_seed
from dna_vlm.train.config import TrainConfig, total_steps
from dna_vlm.train.distributed import (
    any_process,
    check_launch,
    check_processes,
    full_optimizer_state,
    full_tensors,
    gather_for_export,
    prepare_model,
    shard_optimizer_state,
    sharding_of,
    whole_parameters,
)
from dna_vlm.train.errors import TrainError, TrainInterrupted
from dna_vlm.train.evaluate import EvalResult, answer_accuracy, improves
from dna_vlm.train.finalize import make_run_config, run_summary, save_weights, stage_dir, write_run_dir
from dna_vlm.train.loss import lm_loss, takes_logits_to_keep
from dna_vlm.train.metrics import MetricsLog, check_tracker
from dna_vlm.train.model import (
    attention_kernel_of,
    build_model,
    describe_patch,
    format_summary,
    lambda_mean,
    param_summary,
)
from dna_vlm.train.state import (
    BEST_DIR,
    CKPT_DIR,
    RUN_FILES,
    Checkpoints,
    RunRecord,
    Start,
    StartKind,
    load_trainable,
    prepare_output,
    seed_all,
)

__all__ = ["RunSetup", "StopSignals", "Trainer", "answer_loss", "train"]


def log_main(acc, msg: str) -> None:
    """Print ``msg`` to stderr on the main process only."""
    if acc.is_main_process:
        print(msg, file=sys.stderr, flush=True)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    use_cpu = check_launch(cfg)  # torchrun on CPU: gloo, MULTI_CPU; refuses what the launch cannot honour
    check_tracker(cfg.report_to)
    trackers = {} if cfg.report_to == "none" else {"log_with": cfg.report_to, "project_dir": cfg.output}
    acc = Accelerator(
        **trackers,
        cpu=use_cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs()],  # find_unused_parameters: set by prepare_model
    )
    check_processes(acc)
    return acc


@dataclass(frozen=True)
class RunSetup:
    """What a run starts from, before any model is built: the accelerator, the output dir's lock, the rows
    and where to start."""

    acc: object  # accelerate.Accelerator
    examples: list
    eval_examples: list
    start: Start
    t0: float  # when this invocation started (the run's time counts from here)
    lock: OutputLock | None = None  # held by the main process until the run ends
    cfg: TrainConfig | None = None  # the settings with --epochs resolved into max_steps (total_steps)

    @classmethod
    def open(cls, cfg: TrainConfig) -> RunSetup:
        """Read the data first (bad rows fail before OUT is touched), lock OUT, then look at / clear it."""
        t0 = time.time()
        acc = make_accelerator(cfg)
        examples, eval_examples = load_examples(cfg)
        steps = total_steps(cfg, len(examples), acc.num_processes)
        if cfg.epochs is not None:
            log_main(acc, f"--epochs {cfg.epochs} over {len(examples)} rows: {steps} steps")
        cfg = dataclasses.replace(cfg, max_steps=steps, epochs=None)
        out = Path(cfg.output)
        lock = lock_output(acc, out)
        try:
            if acc.is_main_process:
                clean_temps(acc, out)
            return cls(acc, examples, eval_examples, prepare_output(out, cfg, acc), t0, lock, cfg)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def lock_output(acc, out: Path) -> OutputLock | None:
    """The main process locks ``out`` (one writer per output dir); a failure stops every process."""
    lock, error = None, None
    if acc.is_main_process:
        try:
            lock = OutputLock(out, "dna-vlm train").acquire()
        except LockedError as e:
            error = str(e)
    if any_process(acc, error is not None):
        raise TrainError(error or f"{out} is locked by another writer (see the main process's message)")
    if lock is not None and lock.took_over:
        log_main(acc, f"note: {out}: {lock.took_over}")
    return lock


def clean_temps(acc, out: Path) -> None:
    """Remove the temp files of writes a killed run left in OUT (we hold its lock: none is live)."""
    folders = [out, out / CKPT_DIR, *(out / CKPT_DIR).glob("step-*"), *(out / n for n in RUN_FILES)]
    gone = [p for f in folders for p in remove_stale_temps(f)]
    if gone:
        log_main(
            acc,
            f"removed {len(gone)} temp file(s) of an interrupted write: {', '.join(p.name for p in gone[:3])}",
        )


@torch.no_grad()
def answer_loss(
    model, ds: MicroBatches, n_rows: int, acc, float_dtype: torch.dtype, trim: bool = False
) -> float:
    """Mean answer-token loss over the first ``n_rows`` rows of ``ds`` (every process's share, summed);
    ``trim``: the LM head only where a label is predicted (:func:`lm_loss`)."""
    total, count = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
    for g in range(math.ceil(n_rows / ds.global_bs)):
        batch = batch_to_device(ds[g]["batch"], acc.device, float_dtype)
        loss = lm_loss(model, batch, trim=trim)
        n = (batch["labels"][:, 1:] != -100).sum()
        total += loss.float() * n
        count += n
    total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
    return float(total / count.clamp(min=1))


class StopSignals:
    """While entered, SIGINT/SIGTERM set :attr:`received` (the step finishes, is checkpointed, the run stops);
    a second signal raises KeyboardInterrupt at once."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()


class Trainer:
    """Built whole in the constructor (model, optimiser, data, restored checkpoint, metrics); :meth:`run`
    trains to ``max_steps`` and writes the run dir."""

    def __init__(self, cfg: TrainConfig, setup: RunSetup | None = None):
        setup = setup or RunSetup.open(cfg)
        given, cfg = cfg, setup.cfg or cfg  # cfg: max_steps resolved (total_steps)
        self.cfg, self.out, self.acc = cfg, Path(cfg.output), setup.acc
        if setup.start.kind is StartKind.FINISHED:
            raise TrainError(f"{setup.start.note}: nothing to train (train() returns such a run as it is)")
        if setup.start.note:
            self.log(setup.start.note)
        self.setup = setup
        seed_all(cfg.seed)  # before building: DnA / LoRA initialisation draws from it
        if not cfg.load_in_4bit:
            quiet_bitsandbytes()
        built = build_model(cfg, self.acc.device)
        self.processor, self.proj_path = built.processor, built.proj_path
        self.summary = param_summary(built.groups, built.model)
        self.log(format_summary(self.summary))
        if built.report is not None:
            self.log(describe_patch(built.report))
        self.ds = MicroBatches(
            setup.examples, self.processor, cfg, self.acc.process_index, self.acc.num_processes
        )
        self.model, self.optimizer, self.scheduler = prepare_model(self.acc, built, cfg, self.ds)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trim_logits = takes_logits_to_keep(self.model)  # LM head only where a label is predicted
        self.float_dtype = next(p.dtype for p in self.trainable)
        self.eval_examples = setup.eval_examples
        identity = {"model": base_identity(cfg.model), "data": dataset_identity(cfg.data, setup.examples)}
        sharding = sharding_of(self.model, self.acc)
        self.checkpoints = Checkpoints(
            self.out, cfg, self.acc.num_processes, self.ds.per_epoch, self.ds.global_bs, identity, sharding
        )
        self.start_step, self.record = self._restore(setup.start, RunRecord(t0=setup.t0))
        config = cfg.to_dict() | {"epochs": given.epochs}  # the steps resolved, and the epochs asked for
        self.metrics = MetricsLog(self.out, self.start_step, self.acc.is_main_process, self.acc, cfg.report_to,
                                  config)  # fmt: skip
        if self.acc.is_main_process:
            atomic_write_json(self.out / "train_config.json", config)
        self.signals = StopSignals()

    def log(self, msg: str) -> None:
        log_main(self.acc, msg)

    def _restore(self, start: Start, record: RunRecord) -> tuple[int, RunRecord]:
        """(step, record) to continue from: the checkpoint's under RESUME (weights, optimiser, schedule and
        scaler restored into the prepared objects), else (0, ``record``)."""
        if start.kind is not StartKind.RESUME:
            return 0, record
        restored = self.checkpoints.load(start.checkpoint)
        m = self.acc.unwrap_model(self.model)
        params = {n: p for n, p in m.named_parameters() if p.requires_grad}
        load_trainable(params, restored.trainable, start.checkpoint)
        self.optimizer.load_state_dict(shard_optimizer_state(self.optimizer, restored.optimizer))
        self.scheduler.load_state_dict(restored.scheduler)
        if restored.scaler and getattr(self.acc, "scaler", None):
            self.acc.scaler.load_state_dict(restored.scaler)
        self.log(f"resuming from {start.checkpoint} (step {restored.step})")
        best = restored.record.best
        best_dir = None if best is None else self.checkpoints.root / f"step-{best['step']:06d}"
        if best_dir is not None and not (best_dir / "state.json").is_file():
            raise TrainError(
                f"{start.checkpoint}: the best checkpoint it names (step {best['step']}, {best['metric']} "
                f"{best['value']:.4f}) is missing from {self.checkpoints.root}: restore it, or start over "
                "with --overwrite"
            )
        return restored.step, dataclasses.replace(restored.record, t0=record.t0)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train from the start step to ``max_steps``, evaluate, checkpoint, write the run dir; returns it."""
        try:
            with self.signals:
                step = self.loop(self.start_step)
            ev = self.evaluate()
            if ev is not None:
                self.after_eval(step, ev)
                self.log(f"eval at step {step}: {self.describe(ev)}")
            if step > self.start_step:  # else it is on disk already (finalising again after a kill)
                self.save_checkpoint(step, "final")
            self.finalize(step, ev)
        finally:
            self.metrics.close()
            self.setup.release()
        return self.out

    def loop(self, step: int) -> int:
        """Train from ``step`` to ``max_steps`` (or ``stop_after`` steps); returns the step reached."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        start_step = step
        stop = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, step + cfg.stop_after)
        items = iter(make_loader(self.ds, step * cfg.grad_accum, stop * cfg.grad_accum, cfg.num_workers))
        bar = tqdm(total=cfg.max_steps, initial=step, disable=not (acc.is_main_process and cfg.progress),
                   desc="train", dynamic_ncols=True)  # fmt: skip
        self.train_mode()
        try:
            while step < stop:
                rec = self.train_step(items, step)
                step = rec["step"]
                self.write_metrics(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", skipped=self.record.skip_events)
                self.after_step(step)
        finally:
            bar.close()
        if step < cfg.max_steps:  # stop_after
            self.save_checkpoint(step, "stop_after")
            raise TrainInterrupted(
                f"stopped after {step - start_step} steps (step {step} of {cfg.max_steps}) as asked; "
                f"checkpoint saved in {self.out / CKPT_DIR}: rerun with --resume to continue"
            )
        return step

    def train_step(self, items, step: int) -> dict:
        """One optimiser step over ``grad_accum`` micro-batches; returns its metrics record."""
        cfg, acc = self.cfg, self.acc
        seed_all(mix_seed(cfg.seed, step, acc.process_index))  # per-step reseed: resumed runs match exactly
        t_step = time.time()
        micro_losses, skipped_now, grad_norm = [], 0, None
        for _ in range(cfg.grad_accum):
            item = next(items)
            skipped_now += self.handle_bad(item, step)
            batch = batch_to_device(item["batch"], acc.device, self.float_dtype)
            with acc.accumulate(self.model):
                loss = self.finite_loss(batch, item, step)
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = self.clip_gradients()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach().float())
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        step += 1
        mean_loss = float(acc.reduce(torch.stack(micro_losses).mean(), "mean"))
        self.record.losses.append(mean_loss)
        return {
            "step": step,
            "loss": mean_loss,
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "lambda_mean_abs": lambda_mean(self.model),
            "skipped": skipped_now,
            "skipped_total": self.record.skip_events,
            "epoch": (step * cfg.grad_accum - 1) // self.ds.per_epoch,
            "step_time_s": time.time() - t_step,
            "elapsed_s": self.record.elapsed(),
        }

    def finite_loss(self, batch: dict, item: dict, step: int) -> torch.Tensor:
        """The forward pass's loss; a non-finite one on any process saves a checkpoint and stops the run."""
        loss = lm_loss(self.model, batch, trim=self.trim_logits)
        if any_process(self.acc, not bool(torch.isfinite(loss))):
            self.save_checkpoint(step, "non-finite loss")
            raise TrainError(
                f"non-finite loss ({loss.item()}) at step {step + 1} (rows {item['rows']}); "
                f"checkpoint at step {step} saved. Lower --lr or use --mixed-precision no"
            )
        return loss

    def clip_gradients(self):
        """Clip to ``max_grad_norm`` (0: no clipping); returns the total gradient norm either way."""
        if self.cfg.max_grad_norm > 0:
            return self.acc.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        return torch.norm(torch.stack([p.grad.norm() for p in self.trainable if p.grad is not None]))

    def after_step(self, step: int) -> None:
        """Periodic eval and checkpoint; on a signal (seen by any process) checkpoint and stop."""
        cfg = self.cfg
        new_best = False
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            ev = self.evaluate()
            if ev is not None:
                new_best = self.after_eval(step, ev)
        periodic = cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps
        if new_best or periodic:  # a new best is checkpointed at once: OUT/best/ is exported from it
            self.save_checkpoint(step, "best" if new_best else "periodic")
        received = self.signals.received
        if any_process(self.acc, received is not None) and step < cfg.max_steps:
            self.save_checkpoint(step, f"signal {received}")
            raise TrainInterrupted(
                f"interrupted ({received}) after step {step}; checkpoint saved in "
                f"{self.out / CKPT_DIR}: rerun with --resume to continue"
            )

    def handle_bad(self, item: dict, step: int) -> int:
        """Record unreadable videos; under ``bad_video="fail"`` save a checkpoint and stop naming the file."""
        from accelerate.utils import gather_object

        failed = self.cfg.bad_video == "fail" and item["batch"] is None
        bad, faults = item["bad"], item.get("cache_faults", [])
        if self.acc.num_processes > 1:
            if any_process(self.acc, bool(faults)):
                faults = [f for sub in gather_object([faults]) for f in sub]
            any_bad = any_process(self.acc, bool(bad))
            bad = [b for sub in gather_object([bad]) for b in sub] if any_bad else []
            failed = any_process(self.acc, failed)
        if failed:
            self.save_checkpoint(step, "bad video")
            first = bad[0] if bad else {"video": "?", "source": "?", "error": "?"}
            raise TrainError(
                f"unreadable video {first['video']} (dataset row {first['source']}): {first['error']}. "
                f"Checkpoint at step {step} saved in {self.out / CKPT_DIR}; fix or drop the row and rerun "
                "with --resume, or use --bad-video skip"
            )
        self.record.add_cache_faults(faults)
        for b in self.record.add_skipped(bad, step):
            self.log(f"warning: skipping unreadable video {b['video']} ({b['source']}): {b['error']}")
        return len(bad)

    def train_mode(self) -> None:
        """Training mode, except the frozen LLM of a LoRA run (no dropout there)."""
        self.model.train()
        if self.cfg.tune == "full":
            return
        lm = find_language_model(self.model)
        if lm is not None:
            lm.eval()

    def evaluate(self) -> EvalResult | None:
        """Mean answer-token loss and accuracy (:mod:`dna_vlm.train.evaluate`) over the evaluation rows (all
        processes), None without them."""
        if not self.eval_examples:
            return None
        acc, cfg = self.acc, dataclasses.replace(self.cfg, bad_video="skip")
        ds = MicroBatches(
            self.eval_examples, self.processor, cfg, acc.process_index, acc.num_processes, "uniform"
        )
        self.model.eval()
        loss = answer_loss(self.model, ds, len(self.eval_examples), acc, self.float_dtype, self.trim_logits)
        accuracy, rows, skipped = answer_accuracy(self.model, self.processor, self.eval_examples, cfg, acc,
                                                  self.float_dtype, self.trim_logits)  # fmt: skip
        self.train_mode()
        return EvalResult(loss, accuracy, rows, skipped)

    def after_eval(self, step: int, ev: EvalResult) -> bool:
        """Log ``ev``; True when it is the best so far by ``--best-metric`` (then ``record.best`` names it)."""
        self.write_metrics(ev.record(step))
        metric = self.cfg.best_metric
        if metric == "none" or not improves(metric, ev.value(metric), self.record.best):
            return False
        self.record.best = {"metric": metric, "value": ev.value(metric), "step": step,
                            "eval_loss": ev.loss, "eval_accuracy": ev.accuracy}  # fmt: skip
        self.log(f"best {metric} so far at step {step}: {self.describe(ev)}")
        return True

    @staticmethod
    def describe(ev: EvalResult) -> str:
        acc = "n/a" if ev.accuracy is None else f"{ev.accuracy:.3f}"
        skipped = f", {ev.skipped} unreadable" if ev.skipped else ""
        return f"loss {ev.loss:.4f}, accuracy {acc} ({ev.rows} rows{skipped})"

    # -- output -------------------------------------------------------------------------------------
    def write_metrics(self, rec: dict) -> None:
        self.metrics.write(rec)

    def save_checkpoint(self, step: int, reason: str) -> None:
        """Every process's part of a checkpoint (collective); the main process writes it."""
        self.acc.wait_for_everyone()
        m = self.acc.unwrap_model(self.model)
        # whole tensors under FSDP (collectives): the same checkpoint format as DDP and one process
        trainable = full_tensors({n: p.detach() for n, p in m.named_parameters() if p.requires_grad})
        optimizer = full_optimizer_state(self.optimizer.state_dict())
        if self.acc.is_main_process:
            scaler = self.acc.scaler.state_dict() if getattr(self.acc, "scaler", None) else None
            self.checkpoints.save(step, reason, trainable, optimizer, self.scheduler.state_dict(), scaler,
                                  self.record)  # fmt: skip
        self.acc.wait_for_everyone()

    def finalize(self, step: int, ev: EvalResult | None) -> None:
        """Write the run dir's weights, summary.json and (last, marking it complete) run_config.json; with a
        best evaluation, OUT/best/ first (a kill before the run dir commits finalises both again)."""
        acc = self.acc
        acc.wait_for_everyone()
        whole = gather_for_export(acc.unwrap_model(self.model))  # FSDP: whole tensors (collective); else {}
        if acc.is_main_process:
            with whole_parameters(acc.unwrap_model(self.model), whole) as m:
                if self.record.best is not None:
                    self.export_best(m, self.record.best, step)
                summary = self.write_run(m, self.out, step, ev, self.record)
            self.log(
                f"done: {step} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
                f"{len(self.record.skipped)} unreadable videos skipped; run dir {self.out}{self.best_note()}"
            )
        acc.wait_for_everyone()

    def write_run(self, m, out: Path, step: int, ev: EvalResult | dict | None, record: RunRecord) -> dict:
        """Commit ``m``'s weights as the run dir ``out`` of ``step`` (``ev``: its evaluation, an
        :class:`EvalResult` or a ``record.best`` dict); returns its summary."""
        out.mkdir(exist_ok=True)  # OUT/best/ the first time
        stage = stage_dir(out)
        dirs = save_weights(m, stage, self.cfg, self.processor, self.proj_path)
        run_config = make_run_config(self.cfg, out, self.proj_path, step, dirs, attention_kernel_of(m))
        ev = ev.record(step) if isinstance(ev, EvalResult) else (ev or {})
        summary = run_summary(step, self.summary, record, ev.get("eval_loss"), lambda_mean(m),
                              self.acc.num_processes)  # fmt: skip
        summary |= {"eval_accuracy": ev.get("eval_accuracy"), "best": self.best_entry()}
        write_run_dir(out, stage, run_config, summary)
        return summary

    def best_note(self) -> str:
        best = self.record.best
        return "" if best is None else f", best (step {best['step']}) in {self.out / BEST_DIR}"

    def best_entry(self) -> dict | None:
        """summary.json's ``best``: the best evaluation's step, metric and value, and its run dir's name."""
        return None if self.record.best is None else {**self.record.best, "dir": BEST_DIR}

    def export_best(self, m, best: dict, step: int) -> None:
        """OUT/best/: the run dir of the best checkpoint's weights (OUT's layout), loaded into ``m`` for the
        write and put back after (``step``: the final step, whose weights ``m`` holds)."""
        record = dataclasses.replace(self.record, losses=self.record.losses[: best["step"]])
        if best["step"] == step:
            self.write_run(m, self.out / BEST_DIR, step, best, record)
            return
        path = self.checkpoints.root / f"step-{best['step']:06d}"
        params = {n: p for n, p in m.named_parameters() if p.requires_grad}
        final = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        try:
            tensors = load_safetensors(path / "trainable.safetensors")
        except SafetensorsFileError as e:
            raise TrainError(f"the best checkpoint: {e}; restore {path} and rerun with --resume") from None
        load_trainable(params, tensors, path)
        try:
            self.write_run(m, self.out / BEST_DIR, best["step"], best, record)
        finally:
            load_trainable(params, final, path)


def train(config: TrainConfig | dict) -> Path:
    """Train per ``config`` (a :class:`TrainConfig` or its fields as a dict); returns the run dir.

    Raises :class:`TrainInterrupted` (a checkpoint was saved) when stopped by a signal or ``stop_after``,
    :class:`TrainError` for unreadable videos under ``bad_video="fail"`` (after saving a checkpoint) and
    other problems the user must fix, and ``dna_vlm.data.dataset.DatasetError`` for malformed rows (file:line).
    A ``resume`` of a run that already reached ``max_steps`` returns its run dir untouched (or, when its
    finalisation was interrupted, finalises it again from the final checkpoint). The output dir is locked
    for the whole call (:class:`dna_vlm.runs.lock.OutputLock`): a second writer gets a :class:`TrainError`.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    if cfg.check_data:  # a command-line mode; never train when only a check was asked for
        raise TrainError(
            "check_data only validates the data: call dna_vlm.data.validate.check_data(path) instead"
        )
    setup = RunSetup.open(cfg)
    try:
        if setup.start.kind is StartKind.FINISHED:
            log_main(setup.acc, setup.start.note)
            return Path(cfg.output)
        return Trainer(cfg, setup).run()
    finally:
        setup.release()
