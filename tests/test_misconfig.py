"""No silent misconfiguration in `dna-vlm train`: each launch that cannot do what it says stops with the fix
(--device cuda without CUDA, fp16 autocast on the CPU, FSDP1 / 4-bit / tune=full under FSDP, `accelerate
launch --cpu --num_processes 2` starting one process), and a normal run prints no warning of ours to fix
(transformers' FutureWarning via PEFT, DDP's find_unused_parameters on every rank)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_helpers import make_dataset, tiny_model

from dna_vlm.train import TrainConfig, TrainError, train
from dna_vlm.train.batches import MicroBatches, load_examples
from dna_vlm.train.distributed import check_launch, unused_parameters
from dna_vlm.train.model import build_model

FAST = dict(num_frames=4, batch_size=2, lr=3e-3, progress=False)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("misconfig")
    return {"root": root, "model": str(tiny_model(root)), "data": str(make_dataset(root, n=8))}


def _cfg(env, out, **kw) -> TrainConfig:
    return TrainConfig(model=env["model"], data=env["data"], output=str(out), **{**FAST, **kw})


def _child_env(**extra) -> dict:
    drop = ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_CPU", "MASTER_PORT", "MASTER_ADDR")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return {**base, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default", **extra}


@NO_CUDA
def test_device_cuda_without_cuda_is_an_error_naming_the_fix(env, tmp_path):
    with pytest.raises(TrainError, match=r"--device cuda, but CUDA is not available.*use --device cpu"):
        train(_cfg(env, tmp_path / "run", device="cuda"))
    assert not (tmp_path / "run").exists()  # refused before OUT was touched


@NO_CUDA
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_fp16_on_cpu_is_refused(env, tmp_path, device, monkeypatch):
    with pytest.raises(TrainError, match=r"fp16 on the CPU: .*fp32 under an fp16 label.*bf16"):
        train(_cfg(env, tmp_path / "run", device=device, mixed_precision="fp16"))
    # from `accelerate launch --mixed_precision fp16`: the message says where the setting came from
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(TrainError, match=r"ACCELERATE_MIXED_PRECISION"):
        check_launch(_cfg(env, tmp_path / "run", device=device, mixed_precision="fp16"))
    assert check_launch(_cfg(env, tmp_path / "run", device=device, mixed_precision="bf16")) is True


@pytest.mark.parametrize(
    "version,kw,message",
    [
        ("1", {}, r"FSDP version 1: .*FSDP2 only.*--fsdp_version 2.*configs/accelerate/fsdp\.yaml"),
        ("2", {"load_in_4bit": True}, r"--load-in-4bit under FSDP"),
        ("2", {"tune": "full", "attention": "softmax"}, r"--tune full under FSDP"),
    ],
)
def test_fsdp_settings_it_cannot_honour_are_refused(env, tmp_path, monkeypatch, version, kw, message):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    monkeypatch.setenv("FSDP_VERSION", version)
    with pytest.raises(TrainError, match=message):
        check_launch(_cfg(env, tmp_path / "run", device="cpu", **kw))


@pytest.mark.slow
def test_accelerate_cpu_launch_of_two_processes_is_refused_with_the_working_command(env, tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs the script once (its simple launcher needs
    --mpirun_hostfile for more); dna-vlm train says so instead of training one process."""
    out = tmp_path / "run"
    cmd = [*LAUNCH, "--cpu", "--num_processes", "2", "-m", "dna_vlm.cli", "train", "--model", env["model"],
           "--data", env["data"], "--output", str(out), "--max-steps", "2", "--num-frames", "4", "--no-progress"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_child_env())
    assert res.returncode != 0
    assert "starts ONE process unless given --mpirun_hostfile" in res.stderr, res.stderr[-2000:]
    assert "--multi_gpu --num_processes N" in res.stderr and "ddp-cpu.yaml" in res.stderr
    assert not (out / "summary.json").exists()


def test_a_normal_run_raises_no_future_warning(env, tmp_path):
    """PEFT reads transformers' deprecated `is_gradient_checkpointing`: silenced at that call only; any
    other FutureWarning of a run fails here."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(_cfg(env, tmp_path / "run", max_steps=2))
    future = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
    assert future == []


def test_unused_parameter_probe(env, tmp_path):
    """DDP's find_unused_parameters comes from one probe: none unused in the tiny model; with the projector
    reading the tower's second-to-last layer, exactly the last layer's trainable tensors are unused."""
    acc = SimpleNamespace(device=torch.device("cpu"))
    cfg = _cfg(env, tmp_path / "x")
    built = build_model(cfg, acc.device)
    ds = MicroBatches(load_examples(cfg)[0], built.processor, cfg, 0, 1)
    assert unused_parameters(built.model, ds, acc) == []
    assert all(p.grad is None for p in built.model.parameters())  # the probe leaves no gradient behind

    shifted = Path(tmp_path / "shifted")
    shifted.mkdir()
    for f in Path(env["model"]).iterdir():
        (shifted / f.name).symlink_to(f)
    config = json.loads((Path(env["model"]) / "config.json").read_text())
    (shifted / "config.json").unlink()
    (shifted / "config.json").write_text(json.dumps({**config, "vision_feature_layer": -2}))
    cfg2 = TrainConfig(model=str(shifted), data=env["data"], output=str(tmp_path / "y"), **FAST)
    model2 = build_model(cfg2, acc.device).model
    unused = unused_parameters(model2, ds, acc)
    last = config["vision_config"]["num_hidden_layers"] - 1
    assert unused and all(f"layers.{last}." in n for n in unused), unused
    assert not any(f"layers.{last - 1}." in n for n in unused)


@pytest.mark.slow
def test_ddp_run_prints_no_find_unused_parameters_warning(env, tmp_path):
    """2 CPU processes under DDP: the probe found every trainable parameter used, so DDP runs without
    find_unused_parameters (whose warning every rank used to print), and training is unchanged."""
    out = tmp_path / "ddp"
    cmd = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--main_process_port", "0", "-m", "dna_vlm.cli",
           "train", "--model", env["model"], "--data", env["data"], "--output", str(out), "--max-steps", "2",
           "--num-frames", "4", "--batch-size", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_child_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "find_unused_parameters" not in res.stderr
    assert "FutureWarning" not in res.stderr
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2
