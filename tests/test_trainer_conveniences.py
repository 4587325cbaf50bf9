"""`dna-vlm train` conveniences: --epochs, validation accuracy, the best checkpoint (--best-metric, kept by
--keep-checkpoints, carried over --resume, exported as OUT/best/), and --report-to trackers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import string
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_dataset, tiny_model

from dna_vlm.train import TrainConfig
from dna_vlm.train.config import DEFAULT_STEPS, add_arguments, total_steps
from dna_vlm.train.evaluate import EvalResult, improves
from dna_vlm.train.trainer import Trainer

FAST = dict(num_frames=4, batch_size=4, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("conveniences")
    model = tiny_model(root)
    data = make_dataset(root, n=8)
    val = make_dataset(root, n=4, name="val.jsonl", seed=1)
    return {"root": root, "model": str(model), "data": str(data), "val": str(val)}


def _cfg(env, out, **kw) -> TrainConfig:
    return TrainConfig(model=env["model"], data=env["data"], output=str(out), **{**FAST, **kw})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


# ------------------------------------------------------------------------------------ epochs / steps


@pytest.mark.parametrize(
    "rows,batch,procs,accum,epochs,steps",
    [
        (8, 4, 1, 1, 3, 6),  # 2 micro-batches a pass
        (9, 4, 1, 1, 1, 3),  # the last micro-batch of a pass is partial (wraps): still one
        (8, 2, 2, 1, 2, 4),  # 2 processes: global batch 4
        (8, 4, 1, 3, 2, 2),  # 4 micro-batches, 3 a step: ceil(4/3)
        (8, 4, 1, 1, 0.5, 1),  # half a pass
        (8, 4, 1, 1, 0.3, 1),  # at least one step
        (100, 1, 1, 1, 0.3, 30),  # 0.3 * 100 is 30.000000000000004 in floats: not 31
    ],
)
def test_epochs_to_steps(env, tmp_path, rows, batch, procs, accum, epochs, steps):
    cfg = _cfg(env, tmp_path, epochs=epochs, batch_size=batch, grad_accum=accum)
    assert total_steps(cfg, rows, procs) == steps
    assert total_steps(_cfg(env, tmp_path, max_steps=7), rows, procs) == 7
    assert total_steps(_cfg(env, tmp_path), rows, procs) == DEFAULT_STEPS


def test_steps_and_epochs_exclude_each_other(env, tmp_path):
    with pytest.raises(ValueError, match=r"max_steps \(5\) and epochs \(2\) both set"):
        _cfg(env, tmp_path, max_steps=5, epochs=2)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--model", "m", "--data", "d", "--output", "o", "--max-steps", "5", "--epochs", "2"]
    )
    with pytest.raises(ValueError, match="give one of them"):
        TrainConfig.from_args(args)
    with pytest.raises(ValueError, match="needs eval_data"):
        _cfg(env, tmp_path, best_metric="accuracy")


def test_improves_ties_keep_the_earlier_step():
    best = {"metric": "accuracy", "value": 0.5, "step": 2}
    assert improves("accuracy", 0.75, best) and not improves("accuracy", 0.5, best)
    assert improves("loss", 0.4, {**best, "metric": "loss"}) and not improves(
        "loss", 0.6, {**best, "value": 0.5}
    )
    assert improves("accuracy", 0.0, None) and not improves("accuracy", None, None)
    assert not improves("loss", float("nan"), None)


# ------------------------------------------------------------------------- accuracy on planted answers


def _predictions(env, tmp_path) -> tuple[Trainer, list[str]]:
    """A trainer over the val rows and the letter its model picks for each (by the full, untrimmed logits)."""
    from dna_vlm.data.dataset import load_dataset
    from dna_vlm.data.prompting import batch_to_device, build_inputs, format_question
    from dna_vlm.video.decode import sample_frames

    trainer = Trainer(_cfg(env, tmp_path / "run", max_steps=1, eval_data=env["val"]))
    model = trainer.model.eval()
    picks = []
    for ex in load_dataset(env["val"]):
        frames = sample_frames(ex.video, num_frames=4, strategy="uniform")
        letters = list(string.ascii_uppercase[: len(ex.options)])
        prompt = format_question(ex.question, ex.options)
        batch = batch_to_device(build_inputs(trainer.processor, [frames] * len(letters), [prompt] * len(letters),
                                             letters), "cpu")  # fmt: skip
        with torch.no_grad():
            logp = torch.log_softmax(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, -1)
        scores = []
        for row in range(len(letters)):  # the first labelled token is the letter (then the end of turn)
            pos = int((batch["labels"][row] != -100).nonzero()[0])
            scores.append(float(logp[row, pos - 1, batch["labels"][row, pos]]))
        picks.append(letters[max(range(len(letters)), key=scores.__getitem__)])
    return trainer, picks


def test_accuracy_counts_the_planted_answers(env, tmp_path):
    """Answers planted to be the model's own picks score 1.0; the picks shifted by one letter score 0.0; half
    of each scores 0.5 (the model's choice is the option letter with the highest likelihood)."""
    from dna_vlm.data.dataset import load_dataset
    from dna_vlm.train.evaluate import answer_accuracy

    trainer, picks = _predictions(env, tmp_path)
    rows = load_dataset(env["val"])

    def accuracy(answers):
        planted = [dataclasses.replace(ex, answer=a) for ex, a in zip(rows, answers, strict=True)]
        return answer_accuracy(trainer.model, trainer.processor, planted, trainer.cfg, trainer.acc,
                               torch.float32, trim=trainer.trim_logits)  # fmt: skip

    wrong = ["ABCD"[("ABCD".index(p) + 1) % 4] for p in picks]
    assert accuracy(picks) == (1.0, 4, 0)
    assert accuracy(wrong) == (0.0, 4, 0)
    assert accuracy(picks[:2] + wrong[2:]) == (0.5, 4, 0)
    trainer.setup.release()


# ------------------------------------------------------------------------------- the best checkpoint


class PlantedEval(Trainer):
    """A trainer whose evaluations score as planted ({step: accuracy}), to know which step is best."""

    plan: ClassVar[dict[int, float]] = {}

    def evaluate(self):
        step = len(self.record.losses)
        return EvalResult(loss=1.0 - self.plan[step], accuracy=self.plan[step], rows=4, skipped=0)


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "trainable.safetensors"))


def _best_matches(run: Path, step: int) -> None:
    """OUT/best/ holds the weights of checkpoint ``step`` (the DnA branch and projector compared)."""
    ckpt = _trainable(run / "checkpoints" / f"step-{step:06d}")
    proj = load_file(str(run / "best" / "projector.safetensors"))
    final = load_file(str(run / "projector.safetensors"))
    named = {
        n.split("multi_modal_projector.", 1)[1]: t for n, t in ckpt.items() if "multi_modal_projector." in n
    }
    assert named and set(named) == set(proj)
    for name, t in named.items():
        assert torch.equal(proj[name], t), name
    assert any(not torch.equal(final[n], proj[n]) for n in proj)  # the final step's weights differ
    config = json.loads((run / "best" / "run_config.json").read_text())
    assert config["steps"] == step


def test_best_checkpoint_kept_exported_and_resumed(env, tmp_path):
    """Planted accuracies peak at step 2; checkpoints every step with --keep-checkpoints 1 never delete
    step 2; a run stopped at step 3 and resumed keeps step 2 as best; OUT/best/ holds step 2's weights."""
    from dna_vlm.runs.loading import verify_run_dir
    from dna_vlm.train.errors import TrainInterrupted

    PlantedEval.plan = {2: 0.75, 4: 0.25, 6: 0.75}  # a later tie is no improvement
    out = tmp_path / "run"
    kw = dict(max_steps=6, eval_data=env["val"], eval_every=2, save_every=1, best_metric="accuracy")
    with pytest.raises(TrainInterrupted):
        PlantedEval(_cfg(env, out, stop_after=3, **kw)).run()
    assert _checkpoints(out) == ["step-000002", "step-000003"]
    state = json.loads((out / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["best"]["step"] == 2 and state["best"]["value"] == 0.75

    PlantedEval(_cfg(env, out, resume=True, **kw)).run()
    assert _checkpoints(out) == ["step-000002", "step-000006"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == {"metric": "accuracy", "value": 0.75, "step": 2, "eval_loss": 0.25,
                               "eval_accuracy": 0.75, "dir": "best"}  # fmt: skip
    assert summary["eval_accuracy"] == 0.75 and summary["steps"] == 6
    _best_matches(out, 2)
    assert verify_run_dir(out / "best").steps == 2 and verify_run_dir(out).steps == 6
    best_summary = json.loads((out / "best" / "summary.json").read_text())
    assert best_summary["steps"] == 2 and best_summary["eval_accuracy"] == 0.75
    evals = [m for m in _metrics(out) if "eval_accuracy" in m]
    assert [(m["step"], m["eval_accuracy"]) for m in evals] == [(2, 0.75), (4, 0.25), (6, 0.75)]
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()  # --report-to none


def test_best_by_loss_and_missing_best_checkpoint(env, tmp_path):
    """--best-metric loss keeps the lowest eval loss; a resume whose best checkpoint was deleted stops
    naming it."""
    from dna_vlm.files import remove_path
    from dna_vlm.train.errors import TrainError, TrainInterrupted

    PlantedEval.plan = {1: 0.2, 2: 0.9, 3: 0.5}  # loss = 1 - accuracy: lowest at step 2
    out = tmp_path / "run"
    kw = dict(max_steps=4, eval_data=env["val"], eval_every=1, best_metric="loss")
    with pytest.raises(TrainInterrupted):
        PlantedEval(_cfg(env, out, stop_after=3, **kw)).run()
    assert _checkpoints(out) == ["step-000002", "step-000003"]  # no --save-every: the best, the stop
    remove_path(out / "checkpoints" / "step-000002")
    with pytest.raises(TrainError, match=r"best checkpoint it names \(step 2, loss 0.1000\) is missing"):
        PlantedEval(_cfg(env, out, resume=True, **kw))


# ------------------------------------------------------------------------- a real run, with trackers


def test_epochs_real_accuracy_and_tensorboard(env, tmp_path):
    """--epochs 2 over 8 rows in batches of 4: 4 steps; evaluations (loss and real accuracy) every 2 steps;
    the best is the first highest accuracy; TensorBoard events carry the same numbers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = _cfg(env, out, epochs=2, eval_data=env["val"], eval_every=2, best_metric="accuracy",
               report_to="tensorboard")  # fmt: skip
    Trainer(cfg).run()
    metrics = _metrics(out)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    for m in evals:
        assert m["eval_rows"] == 4 and m["eval_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    top = max(m["eval_accuracy"] for m in evals)
    best = json.loads((out / "summary.json").read_text())["best"]
    assert best["step"] == next(m["step"] for m in evals if m["eval_accuracy"] == top)
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 2
    assert (out / "best" / "run_config.json").is_file()

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0])).Reload()
    assert {"train/loss", "train/lr", "eval/loss", "eval/accuracy"} <= set(acc.Tags()["scalars"])
    tb = [(e.step, e.value) for e in acc.Scalars("eval/accuracy")]
    assert tb == [(m["step"], pytest.approx(m["eval_accuracy"])) for m in evals]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def test_wandb_offline_run(env, tmp_path, monkeypatch):
    """--report-to wandb with WANDB_MODE=offline: a local wandb run under OUT/wandb with the metrics."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    out = tmp_path / "run"
    Trainer(_cfg(env, out, max_steps=2, report_to="wandb")).run()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    files = list(runs[0].glob("*.wandb"))
    assert files and files[0].stat().st_size > 0
    assert not (out / "tensorboard").exists()


def test_missing_tracker_package_is_named(monkeypatch):
    import importlib.util

    from dna_vlm.train.errors import TrainError
    from dna_vlm.train.metrics import check_tracker

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(TrainError, match="needs the wandb package: pip install wandb"):
        check_tracker("wandb")
    check_tracker("none")


@pytest.mark.slow
def test_two_processes_score_the_same_accuracy(env, tmp_path):
    """2 CPU processes (gloo, `accelerate launch`) with 3 eval rows and 1 row per micro-batch: process 1 has
    one row to process 0's two (it runs an uncounted pass to keep the collectives matched); the accuracy and
    loss equal a 1-process run's with the same global batch."""
    import os
    import subprocess
    import sys

    val3 = make_dataset(env["root"], n=3, name="val3.jsonl", seed=2)
    out = tmp_path / "ddp"
    common = ["--model", env["model"], "--data", env["data"], "--max-steps", "2", "--num-frames", "4",
              "--lr", "3e-3", "--no-progress", "--device", "cpu", "--eval-data", str(val3), "--eval-every", "1"]  # fmt: skip
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "dna_vlm.cli", "train", *common, "--batch-size", "1", "--output", str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    single = Trainer(
        _cfg(env, tmp_path / "single", max_steps=2, batch_size=2, eval_data=str(val3), eval_every=1)
    )
    single.run()
    two = [m for m in _metrics(out) if "eval_loss" in m]
    one = [m for m in _metrics(tmp_path / "single") if "eval_loss" in m]
    assert [m["eval_rows"] for m in two] == [3, 3]
    assert [m["eval_accuracy"] for m in two] == [m["eval_accuracy"] for m in one]
    assert [m["eval_loss"] for m in two] == pytest.approx([m["eval_loss"] for m in one], rel=1e-4, abs=1e-4)


def test_a_checkpoint_from_before_these_settings_resumes(env, tmp_path):
    """A checkpoint written before --epochs / --best-metric / --report-to existed (no such keys in its
    state.json) resumes: a missing setting ran with its default."""
    from dna_vlm.train.errors import TrainError, TrainInterrupted

    out = tmp_path / "run"
    with pytest.raises(TrainInterrupted):
        Trainer(_cfg(env, out, max_steps=2, stop_after=1)).run()
    state_path = out / "checkpoints" / "step-000001" / "state.json"
    state = json.loads(state_path.read_text())
    for key in ("epochs", "best_metric", "report_to"):
        del state["config"][key]
    state_path.write_text(json.dumps(state))
    Trainer(_cfg(env, out, max_steps=2, resume=True)).run()
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    with pytest.raises(TrainError, match=r"best_metric: 'none' -> 'loss'"):  # a changed one is still refused
        Trainer(
            _cfg(env, tmp_path / "run", max_steps=3, resume=True, eval_data=env["val"], best_metric="loss")
        )


def test_open_answers_are_greedy_correct_exactly_when_generate_writes_them(env, tmp_path):
    """An open-ended answer counts as correct when greedy decoding writes it and stops there: the tokens HF
    ``generate`` writes (or their first n), planted as the labelled answer, score greedy; closed by an
    end-of-turn token they do exactly when generate wrote it there; one token changed, they do not."""
    from dna_vlm.data.dataset import load_dataset
    from dna_vlm.data.prompting import build_inputs, end_of_turn_ids
    from dna_vlm.train.evaluate import row_scores
    from dna_vlm.video.decode import sample_frames

    trainer = Trainer(_cfg(env, tmp_path / "run", max_steps=1))
    model, tok = trainer.acc.unwrap_model(trainer.model).eval(), trainer.processor.tokenizer
    eos = end_of_turn_ids(tok)
    ex = load_dataset(env["val"])[0]
    prompt = build_inputs(trainer.processor, [sample_frames(ex.video, num_frames=4)], [ex.question])
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    written = out[0, prompt["input_ids"].shape[1] :].tolist()  # stops after an end-of-turn token

    def greedy(answer: list[int]) -> bool:
        n = len(answer)
        batch = {**prompt, "input_ids": torch.cat([prompt["input_ids"], torch.tensor([answer])], 1),
                 "attention_mask": torch.cat([prompt["attention_mask"], torch.ones(1, n, dtype=torch.long)], 1)}  # fmt: skip
        batch["labels"] = torch.full_like(batch["input_ids"], -100)
        batch["labels"][0, -n:] = torch.tensor(answer)
        return bool(row_scores(model, batch, eos, trim=trainer.trim_logits)[1][0])

    eot, n = min(eos), min(len(written) - 1, 6)
    other = (written[0] + 1) % len(tok)
    assert greedy(written) and greedy(written[:n]) and not greedy([other, *written[1:n]])
    assert greedy([*written[:n], eot]) == (written[n] in eos)  # closed where generate closed it, or not
    trainer.setup.release()
