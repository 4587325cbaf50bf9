"""Stock lmms-eval 0.7.3 video tasks end to end: local data, the stock CLI with ``--model dna_vlm``, attribute.

For each task: a few rows in the task's own schema (parquet) and small mp4s where the stock ``utils.py`` looks
for them (under ``$HF_HOME``), and a YAML built from the stock YAML with every ``!function`` pointing at the
stock module (``lmms_eval.tasks.<task>.utils.<fn>``, unchanged) -- only the data location differs
(``dataset_path: parquet`` + ``data_files``) and the name (``<stock name>_local``: lmms-eval indexes its own
tasks first, so a YAML with the stock name would be shadowed). Two runs of ``python -m dna_vlm.eval.lmms.run``
(baseline: the stock tiny model; candidate: a DnA run dir, ``bad_video=skip``, one video deleted before it)
cover every task; ``attribute`` then reads every log and its numbers are checked against lmms-eval's own
aggregated results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

lmms_eval = pytest.importorskip("lmms_eval")

from dna_vlm.eval.attribute.compare import attribute  # noqa: E402
from dna_vlm.eval.logs.records import provenance_path  # noqa: E402
from dna_vlm.eval.logs.samples import AttributionError  # noqa: E402

STOCK = Path(lmms_eval.__file__).parent / "tasks"
SUBTASKS = ("action_count", "object_shuffle", "moving_count")  # of MVBench's 20 (3 video folders)
#: the video deleted before the candidate run (doc 2 of both egoschema tasks): (task with a reason, video id)
MISSING = ("egoschema_subset_local", "v2")


# ------------------------------------------------------------------------------------------------ YAMLs


class Fn(str):
    """A ``!function`` value kept as text while a stock YAML is rewritten."""


def _load_stock(path: Path) -> dict:
    """A stock task YAML with its ``include`` merged; ``!function utils.f`` -> ``Fn("lmms_eval.tasks.<dir>.utils.f")``
    (the module of the YAML that names it)."""
    module = ".".join(("lmms_eval", *path.parent.relative_to(STOCK.parent).parts))

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: Fn(f"{module}.{loader.construct_scalar(node)}"))
    cfg = yaml.load(path.read_text(), Loader=Loader) or {}
    inc = cfg.pop("include", None)
    return {**_load_stock((path.parent / inc).resolve()), **cfg} if inc else cfg


def local_yaml(stock_yaml: str, task: str, data: Path, split: str, **override) -> str:
    cfg = _load_stock(STOCK / stock_yaml)
    for key in ("dataset_name", "group", "tag", "dataset_kwargs"):
        cfg.pop(key, None)
    cfg.update(
        task=task, dataset_path="parquet", dataset_kwargs={"data_files": {split: str(data)}}, test_split=split
    )
    cfg.update(override)

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(Fn, lambda d, v: d.represent_scalar("!function", str(v)))
    return yaml.dump(cfg, Dumper=Dumper, sort_keys=False)


# ------------------------------------------------------------------------------------------------ data


def _video(path: Path, seed: int, frames: int = 16) -> None:
    from dna_vlm.video.write import write_video

    rng = np.random.default_rng(seed)
    clip = np.repeat(rng.integers(0, 255, (frames, 1, 1, 3), dtype=np.uint8), 32, axis=1).repeat(32, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, clip, fps=8.0)


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def _videomme(i):
    return {"video_id": f"{i:03d}", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
            "url": "", "videoID": f"vid{i}", "question_id": f"{i:03d}-1", "task_type": "Counting Problem",
            "question": f"How many shapes ({i})?", "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."],
            "answer": "ABCD"[i % 4]}  # fmt: skip


def _egoschema(i):
    return {"question_idx": f"q{i}", "question": f"What does c do ({i})?", "video_idx": f"v{i}",
            "option": ["A. cook", "B. clean", "C. paint", "D. read", "E. sleep"], "answer": str(i % 5)}  # fmt: skip


def _nextqa(i):
    return {"video": 1000 + i, "frame_count": 16, "width": 32, "height": 32, "question": f"why ({i})", "answer": i % 5,
            "qid": i, "type": "CW", **{f"a{j}": f"option {j}" for j in range(5)}}  # fmt: skip


def _perception(i):
    return {"video_name": f"video_{i}", "question": f"What is on the table ({i})?", "question_id": f"q{i}",
            "options": ["a cup", "a ball", "a pen"], "answer_id": i % 3, "area": "memory",
            "reasoning": "descriptive", "tag": ["objects"]}  # fmt: skip


def _lvb(i):
    return {"video_path": f"lvb{i}.mp4", "subtitle_path": f"lvb{i}_en.json", "duration": 2.0, "duration_group": 15,
            "starting_timestamp_for_subtitles": 0.0, "question": f"What color ({i})?", "question_category": "S2E",
            "option0": "red", "option1": "blue", "option2": "green", "option3": "N/A", "option4": "N/A",
            "correct_choice": i % 3, "id": f"lvb{i}_0", "video_id": f"lvb{i}"}  # fmt: skip


def _mlvu(i):
    return {"video_name": f"count_{i}.mp4", "duration": 2, "question": f"How many ({i})? (A) 1 (B) 2 (C) 3 (D) 4",
            "answer": "ABCD"[i % 4], "task_type": "count"}  # fmt: skip


def _videomme_v2(i):
    return {"video_id": f"v2_{i}", "question_id": f"v2_{i}-1", "question": f"How many cups ({i})?",
            "options": "A. 1.\nB. 2.\nC. 3.\nD. 4.", "answer": "ABCD"[i % 4], "group_type": "relevance",
            "group_structure": "", "level": 1, "second_head": "count", "third_head": "objects"}  # fmt: skip


def _timescope(i):
    return {"id": f"ts{i}", "video": f"ts{i}.mp4", "input": f"What happens ({i})?\nA. run\nB. walk\nC. sit\nD. jump",
            "answer": "ABCD"[i % 4], "type": "QA", "length": 60}  # fmt: skip


def _videomathqa(i):
    return {"videoID": f"vm{i}", "question_id": f"vm{i}", "question": f"How many sides ({i})?",
            "options": ["(A) 3", "(B) 4", "(C) 5", "(D) 6", "(E) 8"], "answer": "ABCDE"[i % 5],
            "category": "Counting", "length": "short"}  # fmt: skip


def _mvbench(i):
    return {"video": f"mv{i}.mp4", "question": f"What happens ({i})?", "candidates": ["run", "walk", "sit"],
            "answer": ["run", "walk", "sit"][i % 3]}  # fmt: skip


#: task -> (stock YAML, split, row builder, video path under $HF_HOME per row, overrides)
TASKS = {
    "videomme_local": ("videomme/videomme.yaml", "test", _videomme, lambda r: f"videomme/data/{r['videoID']}.mp4"),
    "egoschema_subset_local": ("egoschema/egoschema_subset.yaml", "test", _egoschema,
                               lambda r: f"egoschema/videos/{r['video_idx']}.mp4"),
    "egoschema_subset_mcppl_local": ("egoschema/egoschema_subset_mcppl.yaml", "test", _egoschema,
                                     lambda r: f"egoschema/videos/{r['video_idx']}.mp4"),
    "nextqa_mc_test_local": ("nextqa/nextqa_mc_test.yaml", "test", _nextqa,
                             lambda r: f"nextqa/NExTVideo/{r['video']}.mp4"),
    "perceptiontest_val_mc_local": ("perceptiontest/val/perceptiontest_mc.yaml", "validation", _perception,
                                    lambda r: f"perceptiontest_val/videos/{r['video_name']}.mp4"),
    "perceptiontest_val_mcppl_local": ("perceptiontest/val/perceptiontest_mcppl.yaml", "validation", _perception,
                                       lambda r: f"perceptiontest_val/videos/{r['video_name']}.mp4"),
    "longvideobench_val_v_local": ("longvideobench/longvideobench_val_v.yaml", "validation", _lvb,
                                   lambda r: f"datasets/longvideobench/videos/{r['video_path']}"),
    "longvideobench_val_i_local": ("longvideobench/longvideobench_val_i.yaml", "validation", _lvb,
                                   lambda r: f"datasets/longvideobench/videos/{r['video_path']}"),
    "mlvu_dev_local": ("mlvu/mlvu_dev.yaml", "test", _mlvu, lambda r: f"mlvu/{r['video_name']}"),
    "videomme_v2_local": ("videomme_v2/videomme_v2.yaml", "test", _videomme_v2,
                          lambda r: f"videomme_v2/{r['video_id']}.mp4"),
    "timescope_local": ("timescope/timescope.yaml", "test", _timescope, lambda r: f"timescope/{r['video']}"),
    "videomathqa_mcq_local": ("videomathqa/videomathqa_mcq.yaml", "test", _videomathqa,
                              lambda r: f"videomathqa/videos/{r['videoID']}.mp4"),
    **{f"mvbench_{s}_local": (f"mvbench/mvbench_{s}.yaml", "train", _mvbench,
                              lambda r, s=s: f"mvbench_video/{_mvbench_dir(s)}/{r['video']}") for s in SUBTASKS},
}  # fmt: skip
#: the blind twin: the stock videomme_no_visual YAML names videomme_doc_to_text / _process_results in
#: videomme/no_visual/utils.py, which lacks them (lmms-eval 0.7.3 cannot load that task); its docs and
#: functions are videomme's with the no_visual doc_to_visual
BLIND = "videomme_no_visual_local"
N_ROWS = 3
PTEST = "lmms_eval.tasks.perceptiontest.val.utils"
PTEST_FIX = """
def accuracy(results, args=None):
    return sum(int(r["pred_id"]) == int(r["answer_id"]) for r in results) / len(results)
"""


def _mvbench_dir(sub: str) -> str:
    import importlib

    return importlib.import_module("lmms_eval.tasks.mvbench.utils").DATA_LIST[sub]


def _write_task(root: Path, hf: Path, task: str) -> None:
    stock_yaml, split, build, video = TASKS[task]
    rows = [build(i) for i in range(N_ROWS)]
    data = _parquet(root / "data" / f"{task}.parquet", rows)
    for i, r in enumerate(rows):
        _video(hf / video(r), seed=i)
        if task.startswith("longvideobench"):
            sub = hf / "datasets/longvideobench/subtitles" / r["subtitle_path"]
            sub.parent.mkdir(parents=True, exist_ok=True)
            sub.write_text(json.dumps([{"timestamp": [0.0, 1.0], "text": "a red car"}]))
    (root / "tasks" / f"{task}.yaml").write_text(local_yaml(stock_yaml, task, data, split))


@pytest.fixture(scope="module")
def stock_runs(tmp_path_factory):
    """Both arms' runs over every task (two lmms-eval invocations)."""
    from train_helpers import write_dna_run

    import dna_vlm
    from dna_vlm.runs.loading import load_model
    from dna_vlm.tiny.default import build_tiny_model

    root = tmp_path_factory.mktemp("stock")
    hf = root / "hf"
    (root / "tasks").mkdir()
    for task in TASKS:
        _write_task(root, hf, task)
    no_visual = "lmms_eval.tasks.videomme.no_visual.utils.videomme_doc_to_visual_empty"
    (root / "tasks" / f"{BLIND}.yaml").write_text(
        local_yaml(
            "videomme/videomme.yaml",
            BLIND,
            root / "data" / "videomme_local.parquet",
            "test",
            doc_to_visual=Fn(no_visual),
        )
    )
    # lmms-eval 0.7.3's perceptiontest_val_aggregate_accuracy counts answer_dict["correct"], which the mcppl
    # process_results does not write (KeyError: the whole run fails): the one non-stock function here
    (root / "tasks" / "ptest_fix.py").write_text(PTEST_FIX)
    cfg = root / "tasks" / "perceptiontest_val_mcppl_local.yaml"
    cfg.write_text(
        cfg.read_text().replace(f"{PTEST}.perceptiontest_val_aggregate_accuracy", "ptest_fix.accuracy")
    )
    tiny = build_tiny_model(root / "tiny")
    model, _ = load_model(pretrained=str(tiny))
    dna_vlm.patch(model)
    with torch_no_grad():
        for name, p in dna_vlm.patching.dna_named_parameters(model):
            if name.endswith("neg_scale"):
                p.fill_(0.25)
            elif "v_neg" in name and name.endswith("weight"):
                p.normal_(0, 0.05)
    write_dna_run(model, root / "run", tiny)
    tasks = [*TASKS, BLIND]
    base = _run(root, hf, f"pretrained={tiny},max_frames=4", tasks, "base")
    (hf / "egoschema/videos" / f"{MISSING[1]}.mp4").unlink()
    cand = _run(root, hf, f"dna={root / 'run'},max_frames=4,bad_video=skip", tasks, "cand")
    return {"root": root, "base": base, "cand": cand}


def torch_no_grad():
    import torch

    return torch.no_grad()


def _run(root: Path, hf: Path, model_args: str, tasks: list[str], name: str) -> dict:
    """``python -m dna_vlm.eval.lmms.run`` (the wrapper that fails on failure) -> {"results", "samples"}."""
    env = {**os.environ, "HF_HOME": str(hf), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hfds"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}  # fmt: skip
    cmd = [sys.executable, "-m", "dna_vlm.eval.lmms.run", "--model_args", model_args, "--tasks", ",".join(tasks),
           "--output_path", str(root / name), "--include_path", str(root / "tasks"), "--timeout", "1500"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1600, check=False)
    assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["results_json"] = json.loads(Path(out["results"]).read_text())
    out["stderr"] = proc.stderr
    return out


# ------------------------------------------------------------------------------------------------ tests

#: task -> (the reader's pattern, lmms-eval's aggregated metric key, scale to a fraction) where the stock
#: aggregate is plain accuracy over the docs (mlvu macro-averages over 7 task types; perceptiontest_val_mcppl's
#: stock aggregation fails, see PTEST_FIX)
STOCK_ACC = {
    "videomme_local": ("videomme*", "videomme_perception_score,none", 100),
    "egoschema_subset_local": ("egoschema_subset*", "score,none", 1),
    "egoschema_subset_mcppl_local": ("egoschema_subset*", "score,none", 1),
    "nextqa_mc_test_local": ("nextqa_mc_*", "exact_match,none", 1),
    "perceptiontest_val_mc_local": ("perceptiontest_val_mc*", "accuracy,none", 1),
    "longvideobench_val_v_local": ("longvideobench_*", "lvb_acc,none", 1),
    "longvideobench_val_i_local": ("longvideobench_*", "lvb_acc,none", 1),
    **{f"mvbench_{s}_local": ("mvbench_*", "mvbench_accuracy,none", 100) for s in SUBTASKS},
    "videomme_v2_local": ("videomme_v2*", "videomme_v2_overall_acc,none", 100),
    "timescope_local": ("timescope*", "timescope_perception_score,none", 100),
    "videomathqa_mcq_local": ("videomathqa_mcq*", "videomathqa_perception_score,none", 100),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", [*TASKS])
def test_every_stock_task(stock_runs, task, tmp_path):
    base, cand = stock_runs["base"]["samples"][task], stock_runs["cand"]["samples"][task]
    rep = attribute(base, cand, failed="wrong", bootstrap=200, out_dir=tmp_path / "rep", plots=False)
    assert rep["n"] == N_ROWS and rep["pairing"]["questions_checked"] == N_ROWS
    assert rep["inputs"]["baseline"]["logs"][0]["reader"] != "generic"
    assert rep["arms"]["baseline"]["runs"][0]["model"] == "stock"
    assert rep["arms"]["candidate"]["runs"][0]["model"] == "DnA"
    assert rep["arms"]["candidate"]["runs"][0]["run_dir"] == str((stock_runs["root"] / "run").resolve())
    if task in STOCK_ACC:  # attribute's per-question reading adds up to lmms-eval's own aggregate
        pattern, key, scale = STOCK_ACC[task]
        assert rep["inputs"]["baseline"]["logs"][0]["reader"] == pattern
        stock = stock_runs["base"]["results_json"]["results"][task][key] / scale
        assert rep["baseline_acc"] == pytest.approx(stock, abs=1e-4), (task, rep["baseline_acc"], stock)
    if task.startswith("egoschema"):  # the deleted video: failed in the candidate, listed, never scored right
        assert rep["failed"]["counts"] == {"baseline": 0, "candidate": 1}
        ex = attribute(base, cand, bootstrap=0)
        assert ex["n"] == N_ROWS - 1 and ex["failed"]["excluded_docs"] == 1
        gone = ex["failed"]["candidate"][0]
        assert gone["id"] == "2" and (task != MISSING[0] or f"{MISSING[1]}.mp4" in gone["reason"])
    else:
        assert rep["failed"]["counts"] == {"baseline": 0, "candidate": 0}


@pytest.mark.slow
def test_pooled_mvbench_and_blind(stock_runs, tmp_path):
    runs = stock_runs
    base = [runs["base"]["samples"][f"mvbench_{s}_local"] for s in SUBTASKS]
    cand_dir = Path(runs["cand"]["samples"][f"mvbench_{SUBTASKS[0]}_local"]).parent
    cand = str(cand_dir / "*_samples_mvbench_*_local.jsonl")  # a glob
    rep = attribute(base, [cand], by="task", bootstrap=200, out_dir=tmp_path / "mv", plots=False)
    assert rep["n"] == N_ROWS * len(SUBTASKS) and set(rep["by_group"]["task"]) == {
        f"mvbench_{s}_local" for s in SUBTASKS
    }
    assert all(g["n"] == N_ROWS for g in rep["by_group"]["task"].values())
    assert "| mvbench_action_count_local |" in (tmp_path / "mv" / "report.md").read_text()
    # the blind twin (videomme_no_visual) pairs with videomme; a video log as --blind is refused
    b, c = runs["base"]["samples"]["videomme_local"], runs["cand"]["samples"]["videomme_local"]
    rep = attribute(b, c, blind=runs["base"]["samples"][BLIND], bootstrap=0)
    assert rep["blind"]["n"] == N_ROWS and rep["pairing"]["blind_verified"] is True
    video_log = tmp_path / "copy" / Path(c).name  # the candidate's video log again, with its provenance
    video_log.parent.mkdir()
    shutil.copy(c, video_log)
    shutil.copy(provenance_path(c), provenance_path(video_log))
    with pytest.raises(AttributionError, match=r"given as --blind but was answered with the video.*controls"):
        attribute(b, c, blind=video_log)
