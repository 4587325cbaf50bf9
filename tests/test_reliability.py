"""Nothing mixed, nothing lost (issue 13): one writer per output dir, run dirs committed whole (a real
subprocess SIGKILLed at chosen points of the final write), resume without a pointer, changed data / another
base model refused, no writes through symlinks, and a clear one-line error for each bad input or interrupt.

Each test names the case it reproduces; the README's reliability count is the number of ``CASE`` markers."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import FAULT_ENV
from faults import command as fault_command
from train_helpers import make_dataset, tiny_model

from dna_vlm.files import SafetensorsFileError, atomic_save_safetensors, load_safetensors
from dna_vlm.runs.config import RunError
from dna_vlm.runs.loading import load_model, verify_run_dir
from dna_vlm.runs.lock import LOCK_FILE, LockedError, OutputLock
from dna_vlm.train import TrainConfig, TrainError, TrainInterrupted, train

FAST = dict(num_frames=4, batch_size=4, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    model = tiny_model(root)
    data = make_dataset(root, n=8)
    return {"root": root, "model": str(model), "data": str(data)}


@pytest.fixture(scope="module")
def finished(env):
    """A finished 4-step DnA run (periodic checkpoints every 2 steps), never modified by the tests."""
    return train(_cfg(env, env["root"] / "finished", max_steps=4, save_every=2))


def _cfg(env, out, **kw):
    return TrainConfig(model=kw.pop("model", env["model"]), data=kw.pop("data", env["data"]), output=str(out),
                       **{**FAST, **kw})  # fmt: skip


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / LOCK_FILE).unlink(missing_ok=True)
    return dst


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def _cli(env, out, *extra, kill_at: str | None = None, timeout=300) -> subprocess.CompletedProcess:
    """``dna-vlm train`` in a real subprocess (optionally killed / signalled at a fault point)."""
    args = [*fault_command("train"), "--model", env["model"], "--data", env["data"],
            "--output", str(out), "--num-frames", "4", "--batch-size", "4", "--lr", "3e-3", "--no-progress",
            *extra]  # fmt: skip
    penv = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    penv.pop(FAULT_ENV, None)
    if kill_at:
        penv[FAULT_ENV] = kill_at
    # SIGINT at its default in the child even when pytest runs in the background (a shell starts background
    # jobs with SIGINT ignored, children inherit that, and Python then installs no KeyboardInterrupt handler)
    return subprocess.run(
        args, capture_output=True, text=True, env=penv, timeout=timeout, preexec_fn=_default_sigint
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _holder(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s lock until killed (prints 'locked' once it holds it)."""
    code = (
        f"from dna_vlm.runs.lock import OutputLock; import time; lock = OutputLock({str(path)!r}, 'test').acquire()\n"
        "print('locked', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


# ----------------------------------------------------------------------------------- one writer per dir


def test_second_writer_fails_at_once_naming_the_holder_then_stale_lock_is_taken_over(env, tmp_path):
    """CASE concurrent train writers; CASE stale lock of a killed process."""
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        with pytest.raises(
            TrainError, match=rf"in use by pid {holder.pid} on host .*one writer per output dir"
        ):
            train(_cfg(env, out, max_steps=1))
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    lock = OutputLock(out, "test").acquire()  # the holder died without releasing: taken over
    try:
        assert lock.took_over and f"pid {holder.pid}" in lock.took_over and "gone" in lock.took_over
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            OutputLock(out, "second").acquire()  # a second open in the same process is another writer
    finally:
        lock.release()
    assert OutputLock(out, "third").acquire().took_over is None  # released cleanly: nothing stale


def test_demo_refuses_an_output_dir_in_use(tmp_path, capsys):
    """CASE two `dna-vlm demo --out SAME`."""
    from dna_vlm.eval.demo.pipeline import main

    holder = _holder(tmp_path / "demo")
    try:
        args = argparse.Namespace(
            out=str(tmp_path / "demo"), size="ci", seeds=1, device="cpu", force=False, seed=0
        )
        assert main(args) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [LOCK_FILE]


# ------------------------------------------------------------------------------ a run dir committed whole


@pytest.mark.parametrize(
    "point", ["finalize:swapped:dna", pytest.param("finalize:staged", marks=pytest.mark.slow)]
)
def test_kill_while_extending_a_finished_run_never_leaves_a_mixture(env, finished, tmp_path, point):
    """CASE SIGKILL between two artefact swaps (mixed dir detected); CASE SIGKILL before any swap (old run
    intact). Extend a finished 4-step run to 6 with --resume; a real subprocess SIGKILLs itself at ``point``."""
    out = _copy_run(finished, tmp_path / "run")
    res = _cli(env, out, "--resume", "--max-steps", "6", kill_at=point)
    assert res.returncode == -9, res.stderr[-2000:]
    assert "gemm_4bit_forward" not in res.stderr  # CASE bitsandbytes' warning without 4-bit
    if point == "finalize:staged":  # nothing swapped yet: the old complete run, as it was
        assert verify_run_dir(out).steps == 4
        load_model(run_dir=out)
    else:  # dna/ is step 6, adapter/ and run_config.json step 4: every load refuses, naming the file
        with pytest.raises(RunError, match=r"dna_weights.safetensors: content differs.*mixed.*--resume"):
            verify_run_dir(out)
        with pytest.raises(RunError, match="mixed"):
            load_model(run_dir=out)
    # --resume does not say "already trained": it finalises again from the step-6 checkpoint
    train(_cfg(env, out, max_steps=6, save_every=2, resume=True))
    run = verify_run_dir(out)
    assert run.steps == 6 and json.loads((out / "summary.json").read_text())["steps"] == 6
    assert not list(out.glob(".final.tmp-*"))
    ckpt = load_safetensors(out / "checkpoints" / "step-000006" / "trainable.safetensors")
    dna = load_safetensors(out / "dna" / "dna_weights.safetensors")
    scales = [v for k, v in ckpt.items() if k.endswith("neg_scale")]
    assert scales and all(
        any(torch.equal(t, v) for v in scales) for k, t in dna.items() if k.endswith("neg_scale")
    )
    assert train(_cfg(env, out, max_steps=6, resume=True)) == out  # complete now: a no-op
    assert verify_run_dir(out).steps == 6


def test_run_dir_with_a_missing_or_changed_file_is_refused(finished, tmp_path):
    """CASE a file of the manifest missing; CASE a file replaced by another write."""
    out = _copy_run(finished, tmp_path / "run")
    verify_run_dir(out)
    (out / "projector.safetensors").unlink()
    with pytest.raises(RunError, match=r"projector.safetensors: missing.*incomplete"):
        load_model(run_dir=out)
    out = _copy_run(finished, tmp_path / "run2")
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "steps": 99}))
    with pytest.raises(RunError, match=r"summary.json: content differs"):
        verify_run_dir(out)


# ------------------------------------------------------------------------------------------ resume


def test_kill_between_checkpoint_rename_and_pointer_resumes_from_the_step_dir(env, tmp_path):
    """CASE SIGKILL after a step dir's rename, before latest.json: the intact step dir is used, nothing is
    truncated or pruned; CASE the pointer deleted ("remove it to start over"); CASE the pointer unreadable."""
    out = tmp_path / "run"
    res = _cli(env, out, "--max-steps", "4", "--save-every", "2", kill_at="checkpoint:renamed")
    assert res.returncode == -9, res.stderr[-2000:]
    ck = out / "checkpoints"
    assert (ck / "step-000002" / "state.json").is_file() and not (ck / "latest.json").exists()
    assert len(_losses(out)) == 2
    # the killed writer's temp files are removed on the next start (CASE stale temp files)
    (out / ".metrics.jsonl.abc123.tmp").write_text("partial")
    (ck / ".step-000004.tmp-99999").mkdir()
    with pytest.raises(TrainInterrupted):
        train(_cfg(env, out, max_steps=4, save_every=2, resume=True, stop_after=1))
    assert not (out / ".metrics.jsonl.abc123.tmp").exists() and not (ck / ".step-000004.tmp-99999").exists()
    assert len(_losses(out)) == 3 and (ck / "step-000003").is_dir() and not (ck / "step-000002").exists()
    (ck / "latest.json").write_text("{not json")  # resumes from the newest step dir, step 3
    train(_cfg(env, out, max_steps=4, save_every=2, resume=True))
    assert len(_losses(out)) == 4 and json.loads((ck / "latest.json").read_text())["step"] == 4
    (ck / "latest.json").unlink()
    assert train(_cfg(env, out, max_steps=4, save_every=2, resume=True)) == out  # finished: found, no-op
    assert verify_run_dir(out).steps == 4 and len(_losses(out)) == 4


def test_pruning_never_deletes_a_newer_checkpoint(env, tmp_path):
    """CASE a checkpoint newer than the one being written survives pruning."""
    from dna_vlm.train.state import Checkpoints, RunRecord

    cfg = _cfg(env, tmp_path, keep_checkpoints=1)
    ckpts = Checkpoints(tmp_path, cfg, 1, 8, 4)
    opt = {"state": {}, "param_groups": []}
    for step in (10, 2, 4):
        ckpts.save(step, "test", {"w": torch.ones(2)}, opt, {}, None, RunRecord())
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000004", "step-000010"]


def test_resume_refuses_changed_data_and_another_base_but_accepts_other_spellings(env, tmp_path):
    """CASE data changed under the same path; CASE another base model under the same path; CASE `./path`
    spellings and a moved run dir resume."""
    root = tmp_path
    data = make_dataset(root / "d", n=8)
    model = Path(shutil.copytree(env["model"], root / "m"))
    out = root / "run"
    with pytest.raises(TrainInterrupted):
        train(_cfg(env, out, model=str(model), data=str(data), max_steps=4, stop_after=2))
    moved = root / "moved"
    out.rename(moved)
    rel = lambda p: os.path.relpath(p)  # noqa: E731 (the same files, spelled relative to the cwd)
    with pytest.raises(TrainInterrupted):
        train(_cfg(env, moved, model=rel(model), data=rel(data), max_steps=4, stop_after=1, resume=True))
    assert len(_losses(moved)) == 3

    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer, same path
    with pytest.raises(
        TrainError, match=r"training data .* changed since the checkpoint \(8 rows then, 7 now"
    ):
        train(_cfg(env, moved, model=str(model), data=str(data), max_steps=4, resume=True))
    data.write_text("\n".join(rows) + "\n")

    from dna_vlm.tiny.default import build_tiny_model

    shutil.rmtree(model)
    build_tiny_model(model, seed=1)  # same architecture, other weights, same path
    with pytest.raises(TrainError, match=r"base model .* changed since the checkpoint \(weights differ"):
        train(_cfg(env, moved, model=str(model), data=str(data), max_steps=4, resume=True))


def test_truncated_checkpoint_on_resume_names_the_file(env, tmp_path):
    """CASE truncated checkpoint on resume."""
    out = tmp_path / "run"
    with pytest.raises(TrainInterrupted):
        train(_cfg(env, out, max_steps=4, stop_after=1))
    f = out / "checkpoints" / "step-000001" / "trainable.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(TrainError, match=rf"{f}: not a readable safetensors file.*Delete .*step-000001"):
        train(_cfg(env, out, max_steps=4, resume=True))


# ------------------------------------------------------------------------------------ base model identity


def test_loading_onto_another_base_is_refused_unless_asked(env, finished, tmp_path):
    """CASE a DnA run onto another checkpoint of the same shapes; CASE a softmax run onto a model of another
    size (with the override, the adapter's size mismatch is a clear error too)."""
    from dna_vlm.tiny.default import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(RunError, match=r"another model: weights differ.*allow_base_mismatch"):
        load_model(pretrained=str(other), run_dir=finished)
    load_model(pretrained=str(other), run_dir=finished, allow_base_mismatch=True)  # the user knows why
    load_model(
        pretrained=os.path.relpath(env["model"]), run_dir=finished
    )  # the same model, spelled otherwise

    soft = train(_cfg(env, tmp_path / "soft", attention="softmax", projector="lora", max_steps=1))
    medium = build_tiny_model(tmp_path / "medium", size="medium")
    with pytest.raises(RunError, match=r"config\.json differs"):
        load_model(pretrained=str(medium), run_dir=soft)
    with pytest.raises(RunError, match=r"adapter: the adapter does not fit this base model.*size mismatch"):
        load_model(pretrained=str(medium), run_dir=soft, allow_base_mismatch=True)


# ---------------------------------------------------------------------------------------------- symlinks


def test_metrics_symlink_is_replaced_not_written_through(env, tmp_path):
    """CASE metrics.jsonl is a symlink to a file elsewhere."""
    out = tmp_path / "run"
    with pytest.raises(TrainInterrupted):
        train(_cfg(env, out, max_steps=3, stop_after=1))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(victim)
    train(_cfg(env, out, max_steps=3, resume=True))
    assert victim.read_text() == "precious\n"
    assert not (out / "metrics.jsonl").is_symlink() and len(_losses(out)) == 2  # steps 2-3 of this invocation


def test_run_config_paths_must_stay_inside_the_run_dir(finished, tmp_path):
    """CASE absolute path; CASE ../ escape; CASE a symlinked artefact dir leading outside."""
    for value, match in (("/etc", "inside the run dir"), ("../x/dna", "inside the run dir")):
        out = _copy_run(finished, tmp_path / f"r{len(value)}")
        rc = json.loads((out / "run_config.json").read_text())
        (out / "run_config.json").write_text(json.dumps({**rc, "dna_dir": value}))
        with pytest.raises(RunError, match=rf"field 'dna_dir' must be a path {match}"):
            load_model(run_dir=out)
    out = _copy_run(finished, tmp_path / "link")
    shutil.move(out / "dna", tmp_path / "elsewhere")
    (out / "dna").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunError, match="leads outside the run dir through a symlink"):
        load_model(run_dir=out)


# ------------------------------------------------------------------------------------ clear errors, no traces


def test_invalid_json_in_run_files_names_the_file(finished, tmp_path):
    """CASE invalid JSON in run_config.json; CASE invalid JSON in dna_config.json (manifest off, as in a
    hand-made run dir, so the JSON check itself is what answers)."""
    out = _copy_run(finished, tmp_path / "a")
    (out / "run_config.json").write_text("{oops")
    with pytest.raises(RunError, match=r"run_config.json: not valid JSON"):
        load_model(run_dir=out)
    out = _copy_run(finished, tmp_path / "b")
    rc = json.loads((out / "run_config.json").read_text())
    (out / "run_config.json").write_text(json.dumps({**rc, "files": None}))
    (out / "dna" / "dna_config.json").write_text("{oops")
    with pytest.raises(RunError, match=r"dna_config.json: not valid JSON"):
        load_model(run_dir=out)


def test_safetensors_errors_name_the_file_and_files_get_the_umask_mode(tmp_path):
    """CASE safetensors error names the file; CASE safetensors files get the umask's mode."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(SafetensorsFileError, match=rf"{bad}: not a readable safetensors file"):
        load_safetensors(bad)
    old = os.umask(0o027)
    try:
        atomic_save_safetensors({"a": torch.zeros(2)}, tmp_path / "x.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == 0o640
    atomic_save_safetensors({"a": torch.zeros(2)}, tmp_path / "y.safetensors")
    assert (tmp_path / "y.safetensors").stat().st_mode & 0o777 == 0o666 & ~old


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_are_refused(env, tmp_path, value, capsys):
    """CASE --max-grad-norm nan; CASE --lr inf."""
    from dna_vlm.cli import main

    with pytest.raises(ValueError, match="max_grad_norm must be >= 0"):
        _cfg(env, tmp_path, max_grad_norm=float(value))
    args = ["train", "--model", env["model"], "--data", env["data"], "--output", str(tmp_path / "o")]
    assert main([*args, "--lr", value]) == 2
    assert "TrainConfig.lr must be > 0" in capsys.readouterr().err
    assert not math.isfinite(float(value))


@pytest.mark.parametrize(
    "point,code,words",
    [
        # CASE Ctrl-C during model load
        pytest.param("train:model_load=SIGINT", 130, "interrupted; stopped at once", marks=pytest.mark.slow),
        ("train:step:2=SIGINT*2", 130, "interrupted; stopped at once"),  # CASE a second Ctrl-C
        # CASE SIGTERM during training
        pytest.param("train:step:2=SIGTERM", 3, "interrupted (SIGTERM) after step 2", marks=pytest.mark.slow),
    ],
)
def test_interrupts_end_with_one_line_and_no_traceback(env, tmp_path, point, code, words):
    out = tmp_path / "run"
    res = _cli(env, out, "--max-steps", "4", kill_at=point)
    assert res.returncode == code, res.stderr[-3000:]
    assert words in res.stderr and "Traceback" not in res.stderr
    assert not list(out.glob(".*.tmp*")) or code == 130  # a stop at once may leave temps: cleaned next start
    if code == 3:
        assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2


@pytest.mark.slow
def test_sigterm_on_demo_exits_cleanly(tmp_path):
    """CASE SIGTERM on `dna-vlm demo` (at the first model load of its first training stage)."""
    penv = {
        **os.environ,
        "OMP_NUM_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        FAULT_ENV: "train:model_load=SIGTERM",
    }
    res = subprocess.run([*fault_command("demo"), "--size", "ci", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, env=penv, timeout=600)  # fmt: skip
    assert res.returncode == 130, res.stderr[-3000:]
    assert "dna-vlm demo: interrupted" in res.stderr and "Traceback" not in res.stderr
    assert OutputLock(tmp_path / "d", "after").acquire().took_over is None  # released on the way out


@pytest.mark.slow
def test_plugin_gets_the_same_checks(env, finished, tmp_path):
    """CASE invalid run_config.json through lmms-eval (run_lmms fails, naming the file); CASE the plugin's
    `pretrained=OTHER,dna=RUN` onto another base (refused; the environment override lets it load)."""
    from dna_vlm.eval.lmms.plugin import DnaVLM
    from dna_vlm.eval.lmms.run import LmmsEvalError, run_lmms

    from dna_vlm.tiny.default import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(RunError, match="another model: weights differ"):
        DnaVLM(pretrained=str(other), dna=str(finished))
    os.environ["DNA_VLM_ALLOW_BASE_MISMATCH"] = "1"
    try:
        DnaVLM(pretrained=str(other), dna=str(finished))
    finally:
        del os.environ["DNA_VLM_ALLOW_BASE_MISMATCH"]

    out = _copy_run(finished, tmp_path / "broken")
    (out / "run_config.json").write_text("{oops")
    penv = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "OMP_NUM_THREADS": "2", "WANDB_MODE": "disabled", "DNA_VLM_SYNTH_JSONL": env["data"]}  # fmt: skip
    with pytest.raises(LmmsEvalError, match=r"run_config\.json: not valid JSON"):
        run_lmms({"dna": str(out), "max_frames": 2}, ["dna_vlm_synth"], tmp_path / "res", limit=1, env=penv,
                 timeout=600)  # fmt: skip
