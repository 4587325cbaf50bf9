"""Every family end to end, on the tiny models of ``dna-vlm tiny-model --family F`` (issue 12).

- fast: ``projector=full|lora|frozen`` trains exactly the projector parameters it says, on every family
  (the trainable names are listed per family below; Qwen-VL's merger sits inside the tower's module path);
  the DnA arm's own parameters are fp32 master weights; the control arm installs the same layers;
- slow: each family trains 3 steps on 4 rows, saves its run dir, loads it back with identical logits and is
  evaluated through the real lmms-eval CLI (generation + loglikelihood tasks in one invocation per family).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import lmms_env, make_dataset

from dna_vlm.tiny.default import build_tiny_model, tiny_families

FAMILIES = tiny_families()
#: every family, LLaVA-1.5 included (its image-only processor gets each sampled frame as one image)
VIDEO_FAMILIES = list(FAMILIES)

#: family -> (projector module path, its parameters under projector="full", its linears under "lora")
PROJECTORS = {
    "llava_onevision": ("model.multi_modal_projector", ["linear_1.bias", "linear_1.weight", "linear_2.bias",
                        "linear_2.weight"], ["linear_1", "linear_2"]),
    "llava": ("model.multi_modal_projector", ["linear_1.bias", "linear_1.weight", "linear_2.bias",
              "linear_2.weight"], ["linear_1", "linear_2"]),
    "llava_next_video": ("model.multi_modal_projector", ["linear_1.bias", "linear_1.weight", "linear_2.bias",
                         "linear_2.weight"], ["linear_1", "linear_2"]),
    "video_llava": ("model.multi_modal_projector", ["linear_1.bias", "linear_1.weight", "linear_2.bias",
                    "linear_2.weight"], ["linear_1", "linear_2"]),
    "qwen2_vl": ("model.visual.merger", ["ln_q.bias", "ln_q.weight", "mlp.0.bias", "mlp.0.weight", "mlp.2.bias",
                 "mlp.2.weight"], ["mlp.0", "mlp.2"]),
    "qwen2_5_vl": ("model.visual.merger", ["ln_q.weight", "mlp.0.bias", "mlp.0.weight", "mlp.2.bias",
                   "mlp.2.weight"], ["mlp.0", "mlp.2"]),
    "qwen3_vl": ("model.visual.merger", ["linear_fc1.bias", "linear_fc1.weight", "linear_fc2.bias",
                 "linear_fc2.weight", "norm.bias", "norm.weight"], ["linear_fc1", "linear_fc2"]),
    "video_llama_3": ("model.projector", ["readout.0.bias", "readout.0.weight", "readout.2.bias",
                      "readout.2.weight"], ["readout.0", "readout.2"]),
    "internvl": ("model.multi_modal_projector", ["layer_norm.bias", "layer_norm.weight", "linear_1.bias",
                 "linear_1.weight", "linear_2.bias", "linear_2.weight"], ["linear_1", "linear_2"]),
}  # fmt: skip
#: the tower's LoRA'd linears (leaf names); Qwen3-VL's deepstack mergers are tower layers (not the projector)
TOWER_LINEARS = {
    "siglip": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    "qwen": {"qkv", "proj", "fc1", "fc2"},
    "qwen2": {"qkv", "proj", "gate_proj", "up_proj", "down_proj"},
    "qwen3": {"qkv", "proj", "linear_fc1", "linear_fc2"},
    "internvl": {"q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"},
}
TOWER_OF = {"qwen2_vl": "qwen", "qwen2_5_vl": "qwen2", "qwen3_vl": "qwen3", "internvl": "internvl"}
PEFT = "base_model.model."


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    models = {f: build_tiny_model(root / f, family=f) for f in FAMILIES}
    return {"root": root, "models": models, "data": make_dataset(root, n=4)}


def _cfg(dirs, family: str, out: Path, **kw):
    from dna_vlm.train import TrainConfig

    base = dict(num_frames=4, batch_size=2, max_steps=3, lr=1e-3, progress=False)
    return TrainConfig(
        model=str(dirs["models"][family]), data=str(dirs["data"]), output=str(out), **{**base, **kw}
    )


# ----------------------------------------------------------------------------------- projector modes
@pytest.mark.parametrize("mode", ["full", "lora", "frozen"])
@pytest.mark.parametrize("family", FAMILIES)
def test_projector_mode_trains_exactly_the_projector(dirs, family, mode):
    from dna_vlm.train.model import build_model

    model, _, groups, report, proj_path = build_model(_cfg(dirs, family, dirs["root"] / "x", projector=mode),
                                                      torch.device("cpu"))  # fmt: skip
    path, full_params, lora_linears = PROJECTORS[family]
    assert proj_path == path
    trainable = {n.removeprefix(PEFT) for n, p in model.named_parameters() if p.requires_grad}
    in_proj = {n[len(path) + 1 :] for n in trainable if n.startswith(path + ".")}
    want = {
        "full": set(full_params),
        "lora": {f"{lin}.lora_{ab}.default.weight" for lin in lora_linears for ab in "AB"},
        "frozen": set(),
    }[mode]
    assert in_proj == want, sorted(in_proj)
    assert {n.removeprefix(PEFT) for n, _ in groups["projector"]} == (
        {f"{path}.{n}" for n in full_params} if mode == "full" else set()
    )
    # outside the projector: the tower's LoRA (never on DnA's neg.*) and DnA's own parameters, nothing else
    rest = trainable - {f"{path}.{n}" for n in in_proj}
    dna = {n for n in rest if ".neg." in n}
    lora = rest - dna
    assert all(".lora_A." in n or ".lora_B." in n for n in lora), sorted(lora)
    leaves = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora}
    assert leaves == TOWER_LINEARS[TOWER_OF.get(family, "siglip")], sorted(leaves)
    assert len(dna) == len(report.modules) * 5  # q_neg (w, b), v_neg (w, b), lambda per layer
    assert {p.dtype for n, p in model.named_parameters() if ".neg." in n} == {torch.float32}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_softmax_control_installs_the_same_layers(dirs, family):
    from dna_vlm.patching import attention_kernel, dna_layers, patch_state
    from dna_vlm.train.model import build_model

    model, _, groups, report, _ = build_model(_cfg(dirs, family, dirs["root"] / "y", attention="softmax"),
                                              torch.device("cpu"))  # fmt: skip
    assert patch_state(model).options.attention == "softmax" and report.params_added == 0
    assert all(layer.neg is None for _, layer in dna_layers(model)) and not groups["dna"]
    assert attention_kernel(model) == "dna_vlm-sdpa"


# ----------------------------------------------------------------------------- end to end (slow)
#: projector mode per family, so that every mode (and the PEFT-wrapped Qwen3-VL merger in "full") round-trips
MODES = {"qwen2_vl": "lora", "qwen3_vl": "full", "video_llama_3": "frozen", "internvl": "lora",
         "video_llava": "frozen"}  # fmt: skip


def _batch(processor, data: Path):
    from dna_vlm.data.prompting import build_inputs, format_question
    from dna_vlm.video.decode import sample_frames

    rows = [json.loads(x) for x in data.read_text().splitlines()[:2]]
    frames = [sample_frames(data.parent / r["video"], num_frames=4) for r in rows]
    qs = [format_question(r["question"], r["options"]) for r in rows]
    return build_inputs(processor, frames, qs, [r["answer"] for r in rows])


@pytest.mark.slow
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_family_trains_saves_loads_and_evaluates(dirs, tmp_path, family):
    from dna_vlm.eval.lmms.run import run_lmms
    from safetensors.torch import load_file

    from dna_vlm.runs.loading import load_model
    from dna_vlm.train.trainer import Trainer

    mode = MODES.get(family, "full")
    trainer = Trainer(_cfg(dirs, family, tmp_path / "run", projector=mode))
    out = trainer.run()
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["attention"] == "dna" and rc["projector_mode"] == mode and rc["dna_dir"] == "dna"
    if mode == "full":
        keys = set(load_file(str(out / "projector.safetensors")))
        assert keys == set(PROJECTORS[family][1]), sorted(keys)  # plain keys: no base_layer / lora_ ones
    # train -> save -> load -> the same logits
    trained = trainer.acc.unwrap_model(trainer.model).eval()
    model, processor = load_model(run_dir=out)
    batch = _batch(processor, Path(dirs["data"]))
    with torch.no_grad():
        want, got = trained(**batch).logits, model(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # lmms-eval: generation and loglikelihood in one invocation
    tasks = ["dna_vlm_synth", "dna_vlm_synth_mcppl"]
    res = run_lmms({"dna": out, "max_frames": 4}, tasks, tmp_path / "eval", batch_size=2,
                   env=lmms_env(tmp_path, inherit=False, DNA_VLM_SYNTH_JSONL=str(dirs["data"])), timeout=600).results["results"]  # fmt: skip
    for t in tasks:
        assert res[t]["failed,none"] == 0 and 0.0 <= res[t]["acc,none"] <= 1.0, res[t]
        assert res[t]["dna_vlm,none"] == 4
