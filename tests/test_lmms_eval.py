"""The dna_vlm lmms-eval plugin, its tasks and the lmms-eval 0.7.3 workarounds.

Fast tests drive the plugin class in-process on the tiny model; the ``slow`` ones run the real lmms-eval CLI
in subprocesses (one shared run for most assertions, one deliberately failing run, two import-order checks).
Everything is local: the tiny model, the synthetic clips and the data sets are built here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval")

from dna_vlm.eval.lmms import compat as lmms_compat  # noqa: E402
from dna_vlm.eval.lmms.run import TASKS_DIR, LmmsEvalError, build_command, read_samples, run_lmms  # noqa: E402
from dna_vlm.eval.logs.records import read_provenance  # noqa: E402
from train_helpers import lmms_env, write_dna_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTH_TASKS = ["dna_vlm_synth", "dna_vlm_synth_mcppl", "dna_vlm_synth_blind", "dna_vlm_mcq"]


# ------------------------------------------------------------------------------------------------ assets


def _load_utils():
    spec = importlib.util.spec_from_file_location("dna_vlm_task_utils", TASKS_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """tiny model, synthetic test split (4 rows, row 2's video corrupt), a generic JSONL (MCQ + open-ended +
    missing video), a training-style run dir (DnA) and a bare save_dna dir."""
    import dna_vlm
    from dna_vlm.data.synth import generate_dataset
    from dna_vlm.runs.loading import load_model
    from dna_vlm.tiny.default import build_tiny_model

    root = tmp_path_factory.mktemp("lmms")
    tiny = build_tiny_model(root / "tiny")
    synth = generate_dataset(root / "synth", n_train=0, n_val=0, n_test=4, seed=0)
    rows = [json.loads(x) for x in Path(synth["test"]).read_text().splitlines()]
    (root / "synth" / "videos" / "corrupt.mp4").write_bytes(b"this is not an mp4 file" * 8)
    rows[2]["video"] = "videos/corrupt.mp4"
    synth_jsonl = root / "synth" / "eval.jsonl"
    synth_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))

    mcq = [
        {k: rows[0][k] for k in ("id", "video", "question", "options", "answer")},
        {"id": "open-1", "video": rows[1]["video"], "question": "What is shown?", "answer": "a circle"},
        {"id": "gone", "video": "videos/missing.mp4", "question": "Q?", "options": ["x", "y"], "answer": "B"},
    ]
    for r in mcq:
        r["video"] = str((root / "synth" / r["video"]).resolve()) if r["id"] != "gone" else r["video"]
    mcq_jsonl = root / "mcq" / "qa.jsonl"
    mcq_jsonl.parent.mkdir()
    mcq_jsonl.write_text("".join(json.dumps(r) + "\n" for r in mcq))

    # a DnA run dir with non-trivial negative-branch weights (so a stock load would differ)
    model, _ = load_model(pretrained=str(tiny))
    dna_vlm.patch(model)
    with torch.no_grad():
        for name, p in dna_vlm.patching.dna_named_parameters(model):
            if name.endswith("neg_scale"):
                p.fill_(0.25)
            elif "v_neg" in name and name.endswith("weight"):
                p.normal_(0, 0.02)
    run_dir = root / "run"
    write_dna_run(model, run_dir, tiny)
    return {
        "root": root,
        "tiny": tiny,
        "synth_jsonl": synth_jsonl,
        "mcq_jsonl": mcq_jsonl,
        "run_dir": run_dir,
        "dna_dir": run_dir / "dna",
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------ helpers


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "dna_vlm" for ep in entry_points(group="lmms_eval.models"))


def _subprocess_env(root: Path, **extra) -> dict[str, str]:
    """Offline env for the lmms-eval CLI; the installed package must declare the entry point."""
    env = lmms_env(root, LMMS_EVAL_DATASETS_CACHE=str(root / "hf" / "lmms_datasets"))
    assert _entry_point_installed(), (
        "the installed dna-vlm metadata has no lmms_eval.models entry point: reinstall (pip install -e .)"
    )
    env.update(extra)
    return env


def _instances(reqtype, args_list):
    from lmms_eval.api.instance import Instance

    return [
        Instance(reqtype, args, 0, {"task": args[-2], "doc_id": args[-3], "repeats": 1}) for args in args_list
    ]


# ------------------------------------------------------------------------------------------------ registration


def test_manifest_and_pyproject_entry_point():
    from dna_vlm.eval.lmms import plugin as lmms_plugin
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    text = (REPO / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        assert '[project.entry-points."lmms_eval.models"]\n' in text
        assert 'dna_vlm = "dna_vlm.eval.lmms.plugin:manifests"' in text
    else:
        eps = tomllib.loads(text)["project"]["entry-points"]["lmms_eval.models"]
        assert eps == {"dna_vlm": "dna_vlm.eval.lmms.plugin:manifests"}
    reg = ModelRegistryV2()
    for m in reg._coerce_payload_to_manifests(lmms_plugin.manifests):
        reg.register_manifest(m)
    cls = reg.get_model_class("dna_vlm")  # validates: subclass of lmms, is_simple matches "simple"
    assert cls is lmms_plugin.DnaVLM and issubclass(cls, lmms) and cls.is_simple


# ------------------------------------------------------------------------------------------------ workarounds


def test_compat_switch(monkeypatch):
    monkeypatch.delenv(lmms_compat.ENV, raising=False)
    assert lmms_compat.enabled("unwrap") and lmms_compat.enabled("filelock")
    monkeypatch.setenv(lmms_compat.ENV, "0")
    assert not lmms_compat.enabled("unwrap") and not lmms_compat.enabled("filelock")
    monkeypatch.setenv(lmms_compat.ENV, "-unwrap")
    assert not lmms_compat.enabled("unwrap") and lmms_compat.enabled("filelock")


def test_unwrap_workaround_keeps_loglikelihood_tuples():
    """Bug 1: lmms_eval/api/instance.py:71 stringifies (loss, is_greedy); multiple_choice then breaks."""
    import lmms_eval.api.instance as instance

    current = instance.unwrap_generation_output
    original = getattr(current, "__wrapped__", current)
    try:
        # the bug, in the installed lmms-eval
        text, _ = original((-1.5, True))
        assert isinstance(text, str)
        with pytest.raises(ValueError):
            lls, is_greedy = zip(*[text, text], strict=False)  # what api/task.py:1606 does with the responses
        # the workaround
        instance.unwrap_generation_output = original
        assert lmms_compat.patch_unwrap()
        patched = instance.unwrap_generation_output
        assert patched((-1.5, True)) == ((-1.5, True), None)
        assert patched((3, False)) == ((3.0, False), None)
        lls, is_greedy = zip(*[patched((-1.5, True))[0], patched((-0.5, False))[0]], strict=True)
        assert lls == (-1.5, -0.5) and is_greedy == (True, False)
        # everything else still goes through the original
        assert patched("abc") == ("abc", None)
        assert patched(("abc", {"input_tokens": 3}))[1].input_tokens == 3
        assert patched(["r1", "r2"]) == (["r1", "r2"], None)
    finally:
        instance.unwrap_generation_output = current


def test_task_index_workaround_reuses_the_index_until_a_yaml_changes(tmp_path):
    """Workaround 4: one index per folder per process, rebuilt when a task YAML is added or changed."""
    from lmms_eval.tasks import TaskManager

    current = TaskManager._get_task_and_group
    original = getattr(current, "__wrapped__", current)
    calls = []

    def counting(self, task_dir):
        calls.append(task_dir)
        return original(self, task_dir)

    def write(name, task):
        (tmp_path / name).write_text(f"task: {task}\ndataset_path: json\noutput_type: generate_until\n")

    try:
        TaskManager._get_task_and_group = counting
        assert lmms_compat.patch_task_index()
        tm = TaskManager.__new__(TaskManager)  # no __init__: it would index every stock task
        write("a.yaml", "t_a")
        first = tm._get_task_and_group(str(tmp_path))
        first["t_a"]["yaml_path"] = "mutated by a caller"
        second = tm._get_task_and_group(str(tmp_path))
        assert len(calls) == 1 and set(second) == {"t_a"} and second["t_a"]["yaml_path"].endswith("a.yaml")
        write("b.yaml", "t_b")
        assert set(tm._get_task_and_group(str(tmp_path))) == {"t_a", "t_b"} and len(calls) == 2
        write("a.yaml", "t_c_longer")  # changed content (and size)
        assert set(tm._get_task_and_group(str(tmp_path))) == {"t_c_longer", "t_b"} and len(calls) == 3
    finally:
        TaskManager._get_task_and_group = current


_IMPORT_ORDER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lmms_eval.evaluator as ev   # imports lmms_eval.models -> loads the entry point -> plugin
    out = {"plugin_loaded": "dna_vlm.eval.lmms.plugin" in sys.modules}
    from lmms_eval import models
    out["model_class"] = models.get_model("dna_vlm").__name__
    text, _ = ev.unwrap_generation_output((-1.5, True))
    out["unwrap_type"] = type(text).__name__
    try:
        import filelock._api
        ev._enable_reentrant_filelocks()
        from datasets.utils._filelock import FileLock as DsLock
        import filelock, os, tempfile
        p = os.path.join(tempfile.mkdtemp(), "x.lock")
        a, b = filelock.FileLock(p), DsLock(p)
        with a:
            with b:  # cross-class re-entrant lock: what lmms-eval's patch exists for
                pass
        out["filelock"] = "ok"
    except Exception as e:
        out["filelock"] = type(e).__name__ + ": " + str(e)
    import filelock
    out["filelock_version"] = filelock.__version__
    print("RESULT " + json.dumps(out))
    """
)


def _run_import_order(root: Path, **env) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ORDER_SCRIPT],
        env=_subprocess_env(root, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.slow
def test_entry_point_loads_plugin_before_evaluator_needs_workarounds(tmp_path):
    """Discovery + ordering: the evaluator's own import of lmms_eval.models loads the plugin, so the
    evaluator binds the patched unwrap_generation_output and _enable_reentrant_filelocks works."""
    out = _run_import_order(tmp_path)
    assert out["plugin_loaded"] and out["model_class"] == "DnaVLM"
    assert out["unwrap_type"] == "tuple"
    assert out["filelock"] == "ok", out


@pytest.mark.slow
def test_without_workarounds_lmms_eval_breaks(tmp_path):
    """The same checks with DNA_VLM_LMMS_COMPAT=0 fail: the workarounds are what makes them pass."""
    out = _run_import_order(tmp_path, **{lmms_compat.ENV: "0"})
    assert out["plugin_loaded"]
    assert out["unwrap_type"] == "str"  # bug 1
    if int(out["filelock_version"].split(".")[0]) >= 4:  # bug 2 exists only with filelock 4.x
        assert out["filelock"].startswith("ModuleNotFoundError"), out
    else:
        assert out["filelock"] == "ok"


# ------------------------------------------------------------------------------------------------ tasks


def test_task_helpers(monkeypatch):
    u = _load_utils()
    assert u.parse_letter("B", ["x", "y", "z"]) == "B"
    assert u.parse_letter("(C) zebra", ["x", "y", "z"]) == "C"
    assert u.parse_letter("The answer is A.", ["x", "y"]) == "A"
    assert u.parse_letter("it is red", ["blue", "red"]) == "B"
    assert u.parse_letter("no idea", ["blue", "red"]) is None
    doc = {
        "id": "7",
        "question": "Q",
        "options": ["a", "b"],
        "answer": "B",
        "category": "color",
        "density": 2,
    }
    assert (
        u.doc_to_text(doc)
        == "Q\nA. a\nB. b\nAnswer with the option's letter from the given choices directly."
    )
    assert u.doc_to_choice(doc) == ["A", "B"] and u.doc_to_target_index(doc) == 1
    r = u.process_results_generate(doc, ["B"])
    assert r["acc"] == 1.0 and r["failed"] == 0
    assert {k: r["dna_vlm"][k] for k in ("id", "category", "density", "pred", "correct")} == {
        "id": "7",
        "category": "color",
        "density": 2,
        "pred": "B",
        "correct": True,
    }
    r = u.process_results_generate(doc, ["[dna_vlm:failed] VideoError: /x.mp4: video file not found"])
    assert r["failed"] == 1 and r["acc"] == 0.0
    assert r["dna_vlm"]["failed"] and "x.mp4" in r["dna_vlm"]["reason"]
    r = u.process_results_mc(doc, [(2.0, False), (1.0, True)])
    assert r["dna_vlm"]["pred"] == "B" and r["acc"] == 1.0 and r["dna_vlm"]["losses"] == [2.0, 1.0]
    r = u.process_results_mc(doc, [(1e9, False), (1e9, False)])
    assert r["failed"] == 1 and r["dna_vlm"]["reason"]
    with pytest.raises(TypeError, match="unwrap_generation_output"):
        u.process_results_mc(doc, ["(2.0, False)", "(1.0, True)"])
    open_doc = {"id": "o", "question": "Q", "options": None, "answer": "A circle"}
    assert u.process_results_generate(open_doc, ["a circle."])["acc"] == 1.0
    monkeypatch.delenv("DNA_VLM_NOT_SET_X", raising=False)
    with pytest.raises(ValueError, match="DNA_VLM_NOT_SET_X"):
        u._expand("${DNA_VLM_NOT_SET_X}", "t")
    for name in ("dna_vlm_mcq", "dna_vlm_mcq_blind", "dna_vlm_mcq_mcppl"):
        assert (TASKS_DIR / f"{name}.yaml").is_file()


# ------------------------------------------------------------------------------------------------ plugin in-process


@pytest.fixture(scope="module")
def plugin(assets):
    from dna_vlm.eval.lmms.plugin import DnaVLM

    u = _load_utils()
    m = DnaVLM(pretrained=str(assets["tiny"]), max_frames=4, batch_size=2, bad_video="skip")
    docs = []
    for r in assets["rows"]:
        d = dict(r)
        d["video_path"] = str(assets["synth_jsonl"].parent / r["video"])
        docs.append(d)
    m.task_dict = {"t": {"test": docs}}
    return m, u, docs


def test_generate_until_failure_blind_and_batching(plugin):
    m, u, docs = plugin
    gk = {"max_new_tokens": 3, "until": []}

    def exits(doc):  # lmms-eval's own tasks sys.exit() on a missing video
        sys.exit("video path: /nowhere.mp4 does not exist")

    reqs = _instances(
        "generate_until",
        [
            (u.doc_to_text(docs[0]), gk, u.doc_to_visual, 0, "t", "test"),
            (u.doc_to_text(docs[2]), gk, u.doc_to_visual, 2, "t", "test"),  # corrupt video
            (u.doc_to_text(docs[1]), gk, u.doc_to_visual_blind, 1, "t", "test"),  # text-only
            (u.doc_to_text(docs[3]), gk, exits, 3, "t", "test"),
            (u.doc_to_text(docs[3]), gk, u.doc_to_visual, 3, "t", "test"),
        ],
    )
    out = m.generate_until(reqs)
    assert len(out) == 5 and all(isinstance(o, str) for o in out)
    assert not out[0].startswith("[dna_vlm:failed]") and not out[4].startswith("[dna_vlm:failed]")
    assert out[1].startswith("[dna_vlm:failed]") and "corrupt.mp4" in out[1]
    assert not out[2].startswith("[dna_vlm:failed]")
    assert out[3].startswith("[dna_vlm:failed]") and "does not exist" in out[3]
    # batched == one at a time (greedy decoding, left padding)
    m.batch_size_per_gpu = 1
    try:
        single = m.generate_until(reqs)
    finally:
        m.batch_size_per_gpu = 2
    assert single == out


def test_loglikelihood_is_mean_nll_of_the_continuation(plugin):
    import torch.nn.functional as F

    from dna_vlm.data.prompting import build_inputs
    from dna_vlm.video.decode import sample_frames

    m, u, docs = plugin
    ctx = u.doc_to_text(docs[0])
    conts = ["A", "B", "yellow square", "D"]
    reqs = _instances("loglikelihood", [(ctx, c, u.doc_to_visual, 0, "t", "test") for c in conts])
    reqs += _instances("loglikelihood", [(u.doc_to_text(docs[2]), "A", u.doc_to_visual, 2, "t", "test")])
    reqs += _instances("loglikelihood", [(ctx, "C", u.doc_to_visual_blind, 0, "t", "test")])
    out = m.loglikelihood(reqs)
    assert all(isinstance(v, float) and isinstance(g, bool) for v, g in out)
    assert out[4][0] >= 1e8 and out[4][1] is False  # corrupt video: the failure sentinel
    assert out[5][0] < 1e8  # blind: text-only scoring works
    # reference: one choice at a time, full logits, labels without the closing end-of-turn token
    frames = sample_frames(docs[0]["video_path"], num_frames=4).frames
    for c, (loss, _greedy) in zip(conts, out[:4], strict=True):
        batch = build_inputs(m.processor, [frames], [ctx], answers=[c])
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = m.model(**batch).logits[0, :-1]
        tgt = labels[0, 1:]
        sel = (tgt != -100).nonzero().flatten().tolist()
        while len(sel) > 1 and int(tgt[sel[-1]]) in m._eos_ids:
            sel.pop()
        ref = F.cross_entropy(logits[sel].float(), tgt[sel]).item()
        assert loss == pytest.approx(ref, rel=1e-4, abs=1e-4), c


def test_generate_until_multi_round(plugin):
    m, u, docs = plugin
    seen = []

    def doc_to_text(doc, previous_output=None, round_idx=0, previous_round_info=None):
        seen.append((round_idx, list(previous_output)))
        return None, f"round {round_idx}: go on", round_idx >= 2, previous_output, {"r": round_idx}

    gk = {"max_new_tokens": 2}
    reqs = _instances(
        "generate_until_multi_round",
        [
            (u.doc_to_text(docs[0]), gk, u.doc_to_visual, doc_to_text, 0, "t", "test"),
            (u.doc_to_text(docs[2]), gk, u.doc_to_visual, doc_to_text, 2, "t", "test"),
        ],
    )
    out = m.generate_until_multi_round(reqs)
    assert len(out[0]) == 2 and all(isinstance(x, str) for x in out[0])
    assert [r for r, _ in seen] == [1, 2] and len(seen[1][1]) == 2
    assert len(out[1]) == 1 and out[1][0].startswith("[dna_vlm:failed]")


def test_attention_dna_run_dir_and_save_dna_dir_load(assets):
    from dna_vlm.eval.lmms.plugin import DnaVLM

    import dna_vlm

    stock = DnaVLM(pretrained=str(assets["tiny"]))
    assert not dna_vlm.is_patched(stock.model) and stock.max_frames == 8

    patched = DnaVLM(pretrained=str(assets["tiny"]), attention="dna")
    assert dna_vlm.is_patched(patched.model)

    for model_args in (
        {"dna": str(assets["run_dir"])},
        {"pretrained": str(assets["tiny"]), "dna": str(assets["dna_dir"])},
    ):
        m = DnaVLM(**model_args)
        assert dna_vlm.is_patched(m.model), model_args
        scales = [p for n, p in dna_vlm.patching.dna_named_parameters(m.model) if n.endswith("neg_scale")]
        assert scales and all(torch.allclose(s, torch.full_like(s, 0.25)) for s in scales)
    assert DnaVLM(dna=str(assets["run_dir"])).max_frames == 4  # the run's num_frames

    with pytest.raises(ValueError, match="neither a training run dir"):
        DnaVLM(pretrained=str(assets["tiny"]), dna=str(assets["root"]))
    with pytest.raises(ValueError, match="attention"):
        DnaVLM(pretrained=str(assets["tiny"]), attention="flash")


# ------------------------------------------------------------------------------------------------ the real CLI


@pytest.fixture(scope="module")
def cli_run(assets):
    root = assets["root"]
    return run_lmms(
        {"dna": assets["run_dir"], "max_frames": 4, "bad_video": "skip"},
        SYNTH_TASKS,
        root / "out",
        batch_size=2,
        env=_subprocess_env(
            root, DNA_VLM_SYNTH_JSONL=str(assets["synth_jsonl"]), DNA_VLM_MCQ_JSONL=str(assets["mcq_jsonl"])
        ),
        timeout=600,
    )


@pytest.mark.slow
def test_cli_results_and_sample_logs(cli_run, assets):
    res = cli_run.results["results"]
    for t in SYNTH_TASKS:
        assert 0.0 <= res[t]["acc,none"] <= 1.0
    assert res["dna_vlm_synth"]["failed,none"] == 1  # the corrupt clip
    assert res["dna_vlm_synth_mcppl"]["failed,none"] == 1
    assert res["dna_vlm_synth_blind"]["failed,none"] == 0  # blind never opens the video
    assert res["dna_vlm_mcq"]["failed,none"] == 1  # the missing video
    assert cli_run.results["config"]["model"] == "dna_vlm"

    by_task = {t: read_samples(p) for t, p in cli_run.samples.items()}
    rows = {r["id"]: r for r in assets["rows"]}
    for t in ("dna_vlm_synth", "dna_vlm_synth_mcppl", "dna_vlm_synth_blind"):
        recs = [s["dna_vlm"] for s in by_task[t]]
        assert sorted(r["id"] for r in recs) == sorted(rows)
        for r in recs:
            assert r["category"] == rows[r["id"]]["category"] and r["density"] == rows[r["id"]]["density"]
            assert r["answer"] == rows[r["id"]]["answer"]
            assert r["blind"] == t.endswith("blind")
            assert set(r) >= {"id", "category", "density", "correct", "pred", "answer", "failed", "reason"}
    failed = [s["dna_vlm"] for s in by_task["dna_vlm_synth"] if s["dna_vlm"]["failed"]]
    assert (
        len(failed) == 1
        and "corrupt.mp4" in failed[0]["reason"]
        and failed[0]["id"] == assets["rows"][2]["id"]
    )
    mc = [s["dna_vlm"] for s in by_task["dna_vlm_synth_mcppl"]]
    ok = [r for r in mc if not r["failed"]]
    assert len(ok) == 3 and all(len(r["losses"]) == 4 and r["pred"] in "ABCD" for r in ok)
    bad = [r for r in mc if r["failed"]]
    assert "corrupt.mp4" in bad[0]["reason"]  # the loglikelihood path keeps the reason too
    mcq = {s["dna_vlm"]["id"]: s["dna_vlm"] for s in by_task["dna_vlm_mcq"]}
    assert mcq["gone"]["failed"] and "missing.mp4" in mcq["gone"]["reason"]
    assert mcq["open-1"]["pred"] is not None and not mcq["open-1"]["failed"]


@pytest.mark.slow
def test_cli_exits_0_on_failure_so_run_lmms_checks_results(assets, tmp_path):
    """Bug 3 (the CLI exits 0 after a failed evaluation) and bug 1 end to end: without the unwrap workaround
    the multiple_choice task fails; lmms-eval still exits 0 and run_lmms raises with the stderr tail."""
    env = _subprocess_env(
        assets["root"], DNA_VLM_SYNTH_JSONL=str(assets["synth_jsonl"]), **{lmms_compat.ENV: "-unwrap"}
    )
    with pytest.raises(LmmsEvalError, match="exited 0 but wrote no results") as e:
        run_lmms(
            {"pretrained": assets["tiny"], "max_frames": 2},
            ["dna_vlm_synth_mcppl"],
            tmp_path / "out",
            limit=1,
            env=env,
            timeout=600,
        )
    assert "unwrap_generation_output" in str(e.value)


@pytest.mark.slow
def test_cli_data_parallel_two_cpu_processes(assets, tmp_path):
    """Rank / world size come from accelerate: two CPU processes (gloo) split the docs, lmms-eval gathers
    them, and a failure's reason survives on the rank that hit it."""
    env = _subprocess_env(
        assets["root"], DNA_VLM_SYNTH_JSONL=str(assets["synth_jsonl"]), ACCELERATE_USE_CPU="true"
    )
    cmd = build_command(
        {"pretrained": assets["tiny"], "max_frames": 2, "bad_video": "skip"},
        ["dna_vlm_synth_mcppl"],
        tmp_path / "out",
    )  # python -m lmms_eval ...
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Running on rank 1" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert "dna_vlm: 2 processes, data parallel" in proc.stderr
    samples = list((tmp_path / "out").rglob("*_samples_dna_vlm_synth_mcppl.jsonl"))
    assert len(samples) == 1, proc.stderr[-3000:]
    recs = [s["dna_vlm"] for s in read_samples(samples[0])]
    assert sorted(r["id"] for r in recs) == sorted(r["id"] for r in assets["rows"])
    (bad,) = [r for r in recs if r["failed"]]
    assert "corrupt.mp4" in bad["reason"]
    prov = read_provenance(samples[0])  # failures of every process, written by rank 0
    assert [f["doc_id"] for f in prov["failures"]] == [2] and prov["bad_video"] == "skip"
