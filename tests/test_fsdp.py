"""Sharded training (FSDP2) on 2 CPU processes, real `accelerate launch` subprocesses (gloo): the same losses
as DDP, kill + resume, checkpoints in the one format (an FSDP run resumes under DDP and back), and the run dir
loads with the normal loader and computes what the trained weights compute.

On the CPU accelerate never selects FSDP itself; dna_vlm.train.distributed shards with torch's fully_shard
and accelerate's wrap policy there. On GPUs accelerate's FSDP2 does it (scripts/gpu_check_fsdp.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import make_dataset, tiny_model

from dna_vlm.files import load_safetensors
from dna_vlm.train import TrainConfig
from dna_vlm.train.model import build_model
from dna_vlm.train.state import load_trainable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
LAUNCH = {
    "ddp": ["--multi_gpu"],
    "fsdp": ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    return {"root": root, "model": str(tiny_model(root)), "data": str(make_dataset(root, n=8))}


def launch(env, kind: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH[kind], "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "dna_vlm.cli", "train", "--model", env["model"], "--data", env["data"], "--output", str(out),
           "--max-steps", str(STEPS), "--num-frames", "4", "--batch-size", "2", "--lr", "3e-3", "--no-progress",
           "--device", "cpu", *extra]  # fmt: skip
    drop = ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_CPU", "MASTER_PORT", "MASTER_ADDR")
    child = {k: v for k, v in os.environ.items() if k not in drop} | {
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=child, cwd=ROOT)


def ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr[-3000:]


def stopped(res: subprocess.CompletedProcess) -> None:
    """--stop-after: each rank exits 3 after the checkpoint; torchrun reports the first child's exit as 1."""
    assert res.returncode != 0 and "stopped after 2 steps" in res.stderr, res.stderr[-3000:]


def losses(run: Path) -> list[float]:
    return [
        m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m
    ]


def sharding(run: Path) -> list[str]:
    return [
        json.loads(p.read_text())["sharding"] for p in sorted((run / "checkpoints").glob("step-*/state.json"))
    ]


@pytest.fixture(scope="module")
def ddp_run(env):
    out = env["root"] / "ddp"
    ok(launch(env, "ddp", out))
    return out


def test_fsdp_trains_like_ddp_resumes_and_its_run_dir_loads(env, ddp_run, tmp_path):
    from dna_vlm.data.prompting import build_inputs, format_question
    from dna_vlm.runs.loading import load_model
    from dna_vlm.video.decode import sample_frames

    out = tmp_path / "fsdp"
    stopped(launch(env, "fsdp", out, "--stop-after", "2"))  # as asked, with a checkpoint
    assert sharding(out) == ["fsdp2"]
    ok(launch(env, "fsdp", out, "--resume"))
    # gradients averaged over the same 2 x 2 rows: FSDP's reduce-scatter gives DDP's all-reduce losses
    assert losses(out) == pytest.approx(losses(ddp_run), rel=1e-4, abs=1e-4)
    assert len(losses(out)) == STEPS and losses(out)[-1] < losses(out)[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == STEPS

    # the run dir (written from whole tensors) computes what the final checkpoint's weights compute
    cfg = TrainConfig(model=env["model"], data=env["data"], output=str(tmp_path / "x"), num_frames=4)
    ref = build_model(cfg, torch.device("cpu")).model
    params = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    final = out / "checkpoints" / f"step-{STEPS:06d}"
    load_trainable(params, load_safetensors(final / "trainable.safetensors"), final)
    model, processor = load_model(run_dir=out)
    ex = json.loads(Path(env["data"]).read_text().splitlines()[0])
    frames = sample_frames(Path(env["data"]).parent / ex["video"], num_frames=4)
    batch = build_inputs(
        processor, [frames], [format_question(ex["question"], ex["options"])], [ex["answer"]]
    )
    ref.eval()
    with torch.no_grad():
        want, got = ref(**batch).logits, model(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and the run dir differs from the untrained model: the weights really were written
    untrained = build_model(cfg, torch.device("cpu")).model.eval()
    with torch.no_grad():
        assert not torch.allclose(untrained(**batch).logits, want, atol=1e-3)


@pytest.mark.parametrize("first,then", [("fsdp", "ddp"), ("ddp", "fsdp")])
def test_checkpoint_resumes_across_shardings(env, ddp_run, tmp_path, first, then):
    """Checkpoints hold whole tensors (weights and optimiser state) under either sharding: a run stopped
    under one resumes under the other and lands on the uninterrupted DDP run's losses."""
    out = tmp_path / f"{first}-{then}"
    stopped(launch(env, first, out, "--stop-after", "2"))
    ok(launch(env, then, out, "--resume"))
    assert sharding(out) == ["fsdp2" if then == "fsdp" else "ddp"]  # the final checkpoint's
    assert losses(out) == pytest.approx(losses(ddp_run), rel=1e-4, abs=1e-4)
