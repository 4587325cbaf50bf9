"""Issue 25 item 5: the softmax control arm is evaluated through the kernel it trained with.

``dna-vlm train --attention softmax`` (LoRA) trains through dna-vlm's control layers (DnA's layer and SDPA call,
no negative branch) and records ``attention_kernel: dna_vlm-sdpa``; loading that run must put the same layers
back before merging its adapter. Before the fix the control arm was merged into the model's own attention, so
with ``attn_implementation=eager`` in bf16 it answered every doc of a small MC task differently from a DnA arm
it is identical to (1 step at lr 1e-30: both arms are the stock model to the last bit).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

from dna_vlm.eval.lmms.run import TASKS_DIR  # noqa: E402
from train_helpers import make_dataset, tiny_model  # noqa: E402

ARMS = ("softmax", "dna")


def _task_utils():
    spec = importlib.util.spec_from_file_location("dna_vlm_task_utils", TASKS_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    """Both LoRA arms after one optimiser step at lr 1e-30, and a 4-question MC set."""
    from dna_vlm.train import train

    root = tmp_path_factory.mktemp("control_kernel")
    model = str(tiny_model(root))
    data = make_dataset(root / "data", n=4, name="test.jsonl")
    common = dict(
        model=model, data=str(data), num_frames=2, batch_size=2, max_steps=1, lr=1e-30, progress=False
    )
    runs = {arm: train(dict(common, output=str(root / arm), attention=arm)) for arm in ARMS}
    docs = []
    for line in data.read_text().splitlines():
        doc = json.loads(line)
        docs.append({**doc, "video_path": str(data.parent / doc["video"])})
    return {"runs": runs, "docs": docs}


def _losses(run_dir: Path, docs: list[dict], **model_args) -> tuple[list[tuple[float, bool]], dict, object]:
    """Every option's (mean NLL, greedy) of every doc, the provenance and the model of ``run_dir`` loaded by the
    plugin."""
    from dna_vlm.eval.lmms.plugin import DnaVLM
    from lmms_eval.api.instance import Instance

    u = _task_utils()
    lm = DnaVLM(dna=str(run_dir), max_frames=2, **model_args)
    lm.task_dict = {"t": {"test": docs}}
    args = [
        (u.doc_to_text(doc), letter, u.doc_to_visual, i, "t", "test")
        for i, doc in enumerate(docs)
        for letter in u.doc_to_choice(doc)
    ]
    reqs = [Instance("loglikelihood", a, 0, {"task": "t", "doc_id": a[3], "repeats": 1}) for a in args]
    return lm.loglikelihood(reqs), lm.provenance, lm.model


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_control_and_dna_arms_answer_alike_under_eager(arms, dtype):
    """Item 5: loaded with ``attn_implementation=eager``, both arms give the same log-likelihoods on every
    option of every doc (they are the same function), and the provenance names the kernel that ran."""
    from dna_vlm.patching import patch_state
    from dna_vlm.runs.config import RunConfig

    out, provs, states = {}, {}, {}
    for arm in ARMS:
        run = RunConfig.read(arms["runs"][arm])
        assert run.attention == arm and run.attention_kernel == "dna_vlm-sdpa"
        out[arm], provs[arm], model = _losses(
            arms["runs"][arm], arms["docs"], attn_implementation="eager", dtype=dtype
        )
        states[arm] = patch_state(model)
    assert len(out["softmax"]) == 16 and all(loss < 1e8 for loss, _ in out["softmax"])
    diffs = [abs(a[0] - b[0]) for a, b in zip(out["softmax"], out["dna"], strict=True)]
    assert out["softmax"] == out["dna"], f"largest NLL difference {max(diffs):.3g}"
    for arm in ARMS:
        assert states[arm] is not None and states[arm].options.attention == arm  # the layers it trained on
        kernel = provs[arm]["kernel"]
        assert kernel["vision_attention"] == kernel["trained_with"] == "dna_vlm-sdpa"
        assert kernel["attn_implementation"] == "eager"  # the LLM's, the same in both arms


def test_a_run_without_a_recorded_kernel_loads_on_the_models_own_attention(arms, tmp_path):
    """A softmax run that predates ``attention_kernel`` (trained on the model's own attention) is loaded as it
    trained, and the provenance says so."""
    import shutil

    from dna_vlm.patching import patch_state

    old = tmp_path / "old"
    shutil.copytree(arms["runs"]["softmax"], old)
    cfg = json.loads((old / "run_config.json").read_text())
    cfg.pop("attention_kernel")
    cfg.pop("files", None)  # a hand-edited run config: no manifest
    (old / "run_config.json").write_text(json.dumps(cfg))
    _, prov, model = _losses(old, arms["docs"][:1])
    assert patch_state(model) is None
    assert prov["kernel"]["trained_with"] is None and prov["kernel"]["vision_attention"].startswith("hf-")
