"""`dna-vlm export` (issue 22, part 2): a run dir as one self-contained model folder, loaded bit-identically by
dna_vlm.load_model and the plugin's pretrained=OUT, and every foreign loader of what the project writes either
reproduces the model or fails naming dna-vlm (plain transformers on an export, PEFT on a run's adapter)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import make_dataset, tiny_model

import dna_vlm
from dna_vlm.runs.config import RunConfig, RunError
from dna_vlm.runs.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"dna": "full", "softmax": "lora"}  # attention -> projector mode: both projector routes exported


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny base model, a DnA run (projector trained in full) and a softmax-control run (projector LoRA),
    2 steps each, and their exports."""
    from dna_vlm.train import train

    root = tmp_path_factory.mktemp("export")
    model = str(tiny_model(root))
    data = make_dataset(root / "data", n=4)
    common = dict(
        model=model, data=str(data), num_frames=4, batch_size=4, max_steps=2, lr=3e-3, progress=False
    )
    runs = {arm: Path(train(dict(common, output=str(root / arm), attention=arm, projector=proj)))
            for arm, proj in ARMS.items()}  # fmt: skip
    exports = {arm: dna_vlm.export_run(run, root / f"export-{arm}") for arm, run in runs.items()}
    return {"root": root, "model": model, "data": data, "runs": runs, "exports": exports}


def _batch(env, processor) -> dict:
    from dna_vlm.data.prompting import build_inputs, format_question
    from dna_vlm.video.decode import sample_frames

    ex = json.loads(env["data"].read_text().splitlines()[0])
    frames = sample_frames(env["data"].parent / ex["video"], num_frames=4)
    q = format_question(ex["question"], ex["options"])
    return build_inputs(processor, [frames], [q], [ex["answer"]])


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def run_logits(env):
    """{arm: (logits of the run dir loaded by load_model, the batch)} and the base model's logits."""
    out = {}
    for arm, run in env["runs"].items():
        model, processor = load_model(run_dir=run)
        batch = _batch(env, processor)
        out[arm] = (_logits(model, batch), batch)
    base, _ = load_model(env["model"])
    out["base"] = (_logits(base, out["dna"][1]), out["dna"][1])
    return out


# --------------------------------------------------------------------------- the export reproduces the run


@pytest.mark.parametrize("arm", list(ARMS))
def test_export_loads_bit_identical_to_the_run(env, run_logits, arm):
    """load_model(OUT) computes exactly what load_model(run_dir=RUN) computes (the merged weights are saved,
    not re-merged: torch.equal, max diff 0), and the run is not the base model (the check has teeth)."""
    out = env["exports"][arm]
    want, batch = run_logits[arm]
    assert not torch.equal(want, run_logits["base"][0])  # training moved the model
    model, processor = dna_vlm.load_model(out)
    batch_here = _batch(env, processor)  # the exported processor builds the same batch
    assert batch_here.keys() == batch.keys()
    assert all(torch.equal(batch_here[k], batch[k]) for k in batch if torch.is_tensor(batch[k]))
    got = _logits(model, batch)
    assert torch.equal(got, want), (got - want).abs().max()
    assert dna_vlm.is_patched(model)  # the DnA layers, or the control layers the softmax arm trained through

    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "dna/dna_config.json", "dna_vlm_export.json"} <= names
    assert "tokenizer.json" in names and "processor_config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    record = json.loads((out / "dna_vlm_export.json").read_text())
    assert record["format"] == "dna-vlm-export/1" and record["attention"] == arm
    assert sorted(record["files"]) == sorted(names - {"dna_vlm_export.json"})
    assert RunConfig.from_dict(record["run"]).steps == 2
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp folder left beside it

    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:  # stock names only; the DnA part is dna/
        assert not [k for k in f.keys() if ".neg." in k or "lora_" in k]  # noqa: SIM118 (not a dict)


def test_load_model_takes_a_run_dir_as_its_one_argument(env, run_logits):
    model, _ = dna_vlm.load_model(env["runs"]["dna"])
    assert torch.equal(_logits(model, run_logits["dna"][1]), run_logits["dna"][0])


def test_export_with_the_wrong_arm_or_a_run_dir_is_refused(env):
    with pytest.raises(RunError, match="exported from a dna run; load it with attention='dna'"):
        load_model(env["exports"]["dna"], attention="softmax")
    with pytest.raises(RunError, match="is a dna-vlm export, which holds its run already"):
        load_model(env["exports"]["dna"], run_dir=env["runs"]["dna"])


def test_changed_export_is_refused(env, tmp_path):
    out = tmp_path / "changed"
    shutil.copytree(env["exports"]["dna"], out)
    weights = out / "dna" / "dna_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"dna_weights.safetensors: content differs from dna_vlm_export.json"):
        load_model(out)
    weights.unlink()
    with pytest.raises(RunError, match=r"dna_weights.safetensors: missing; the export is incomplete"):
        load_model(out)


# ----------------------------------------------------------------------------- the plugin's pretrained=OUT


def test_plugin_loads_an_export_as_pretrained(env, run_logits):
    pytest.importorskip("lmms_eval")
    from dna_vlm.eval.lmms.plugin import DnaVLM

    lm = DnaVLM(pretrained=str(env["exports"]["dna"]), device="cpu", dtype="float32")
    assert torch.equal(_logits(lm.model, run_logits["dna"][1]), run_logits["dna"][0])
    assert lm.max_frames == 4  # the run's num_frames, read from the export's manifest
    assert lm.info["attention"] == "dna"


def test_plugin_refuses_an_export_with_dna_or_as_dna(env):
    from dna_vlm.eval.lmms.loading import resolve_dna_arg

    out, run = str(env["exports"]["dna"]), str(env["runs"]["dna"])
    with pytest.raises(
        ValueError, match="is a dna-vlm export, which holds its DnA weights already; drop dna="
    ):
        resolve_dna_arg(run, None, out)
    with pytest.raises(ValueError, match=f"pass it as pretrained={out}"):
        resolve_dna_arg(out, None, None)


# ------------------------------------------------------------------- foreign loaders: loud or identical


def test_plain_transformers_refuses_an_export_naming_dna_vlm(env):
    """Every Auto class fails on model_type "dna_vlm"; the model class itself fails on the guarded
    vision_config, whose text says how to load it. The processor still loads (the tokenizer is stock)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaOnevisionForConditionalGeneration,
    )

    out = env["exports"]["dna"]
    config = json.loads((out / "config.json").read_text())
    # a model class meeting another model_type would take a nested dict with its own as the whole config
    assert not [
        k for k, v in config.items() if isinstance(v, dict) and v.get("model_type") == "llava_onevision"
    ]
    for cls in (AutoConfig, AutoModel, AutoModelForImageTextToText):
        with pytest.raises(ValueError, match="model type `dna_vlm`"):
            cls.from_pretrained(out)
    with pytest.raises(Exception, match=r"dna-vlm export with DnA layers: load it with dna_vlm.load_model"):
        LlavaOnevisionForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    _, run_processor = load_model(env["runs"]["dna"])
    text = "a red square"
    assert processor.tokenizer(text).input_ids == run_processor.tokenizer(text).input_ids


def test_registered_auto_classes_reproduce_the_export(env, run_logits, tmp_path):
    """After dna_vlm.register_auto_classes() (a process-wide registration: in a child process here),
    AutoModelForImageTextToText.from_pretrained(OUT) is the exported model, same logits."""
    from safetensors.torch import load_file, save_file

    save_file(dict(run_logits["dna"][1]), tmp_path / "batch.safetensors")
    code = (
        "import sys, torch, dna_vlm\n"
        "from safetensors.torch import load_file, save_file\n"
        "from transformers import AutoModelForImageTextToText\n"
        "dna_vlm.register_auto_classes()\n"
        "m = AutoModelForImageTextToText.from_pretrained(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    out = m(**load_file(sys.argv[2])).logits\n"
        "save_file({'logits': out, 'patched': torch.tensor(dna_vlm.is_patched(m))}, sys.argv[3])\n"
    )
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [
        str(env["exports"]["dna"]),
        str(tmp_path / "batch.safetensors"),
        str(tmp_path / "out.safetensors"),
    ]
    res = subprocess.run([sys.executable, "-c", code, *args], env=env_vars, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = load_file(tmp_path / "out.safetensors")
    assert bool(got["patched"]) and torch.equal(got["logits"], run_logits["dna"][0])


def test_peft_refuses_a_run_adapter_naming_dna_vlm(env):
    """The run dir's adapter alone would be applied without the DnA layers and the projector: PEFT's loaders
    (and transformers' load_adapter) fail on its guarded peft_type, whose text says what to do."""
    from peft import LoraConfig, PeftConfig, PeftModel
    from transformers import LlavaOnevisionForConditionalGeneration

    for run in env["runs"].values():
        base = LlavaOnevisionForConditionalGeneration.from_pretrained(env["model"])
        adapter = run / "adapter"
        match = r"dna-vlm run part: .* load the run dir with dna_vlm.load_model\(RUN_DIR\)"
        with pytest.raises(KeyError, match=match):
            PeftModel.from_pretrained(base, str(adapter))
        for loader in (PeftConfig.from_pretrained, LoraConfig.from_pretrained, base.load_adapter):
            with pytest.raises(KeyError, match=match):
                loader(str(adapter))


def test_run_dir_with_a_plain_adapter_config_still_loads(env, run_logits, tmp_path):
    """A run dir written before the guard (PEFT's own adapter_config.json) loads as before, same logits."""
    from dna_vlm.runs.loading import manifest

    old = tmp_path / "old"
    shutil.copytree(env["runs"]["softmax"], old)
    path = old / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["peft_type"] = config.pop("dna_vlm")["peft_type"]
    path.write_text(json.dumps(config))
    run = RunConfig.read(old)
    RunConfig.from_dict({**run.to_dict(), "files": manifest(old)}).write(old)  # as that older writer did
    model, _ = load_model(run_dir=old)
    assert torch.equal(_logits(model, run_logits["softmax"][1]), run_logits["softmax"][0])


def test_export_without_dna_layers_is_a_plain_checkpoint(env, tmp_path):
    """A softmax run on the model's own attention (recorded before attention_kernel existed) exports to a
    stock checkpoint: no dna/, config.json untouched, and plain transformers builds the same model."""
    from transformers import LlavaOnevisionForConditionalGeneration

    old = tmp_path / "stock-run"
    shutil.copytree(env["runs"]["softmax"], old)
    run = RunConfig.read(old)
    RunConfig.from_dict({**run.to_dict(), "attention_kernel": None}).write(old)
    out = dna_vlm.export_run(old, tmp_path / "out")
    assert not (out / "dna").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_onevision"
    want, processor = load_model(run_dir=old)
    batch = _batch(env, processor)
    plain = LlavaOnevisionForConditionalGeneration.from_pretrained(out).eval()
    ours, _ = dna_vlm.load_model(out)
    assert not dna_vlm.is_patched(ours)
    assert torch.equal(_logits(plain, batch), _logits(want, batch))
    assert torch.equal(_logits(ours, batch), _logits(want, batch))


# ------------------------------------------------------------------------- refusals: mixed run, overwrite


@pytest.mark.parametrize("damage", ["mixed", "incomplete"])
def test_export_refuses_a_mixed_or_incomplete_run(env, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(env["runs"]["dna"], run)
    weights = run / "projector.safetensors"
    if damage == "mixed":  # another write's file beside this run_config.json
        shutil.copy(env["runs"]["dna"] / "dna" / "dna_weights.safetensors", weights)
    else:
        weights.unlink()
    out = tmp_path / "out"
    with pytest.raises(RunError, match=f"projector.safetensors: .*the run dir is {damage}"):
        dna_vlm.export_run(run, out)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_export_refuses_to_overwrite_unless_asked(env, tmp_path):
    out = tmp_path / "out"
    dna_vlm.export_run(env["runs"]["dna"], out)
    with pytest.raises(RunError, match="exists; pass --overwrite"):
        dna_vlm.export_run(env["runs"]["softmax"], out)
    assert json.loads((out / "dna_vlm_export.json").read_text())["attention"] == "dna"
    dna_vlm.export_run(env["runs"]["softmax"], out, overwrite=True)
    assert json.loads((out / "dna_vlm_export.json").read_text())["attention"] == "softmax"
    assert not list(tmp_path.glob(".out.*"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a dna-vlm export: --overwrite only replaces an earlier export"):
        dna_vlm.export_run(env["runs"]["dna"], other, overwrite=True)
    with pytest.raises(RunError, match="is a run dir: --overwrite only replaces an earlier export"):
        dna_vlm.export_run(env["runs"]["dna"], env["runs"]["softmax"], overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_cli_export(env, tmp_path):
    out = tmp_path / "cli-out"
    cmd = [sys.executable, "-m", "dna_vlm", "export", str(env["runs"]["dna"]), str(out)]
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"load it with dna_vlm.load_model('{out}')" in res.stdout
    ref = json.loads((env["exports"]["dna"] / "dna_vlm_export.json").read_text())["files"]
    assert json.loads((out / "dna_vlm_export.json").read_text())["files"] == ref  # the same bytes
    res = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "exists; pass --overwrite" in res.stderr
