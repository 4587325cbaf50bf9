"""``run_lmms_many``: several lmms-eval runs in one ``python -m lmms_eval --config FILE`` process.

The ``slow`` tests run the real CLI offline on the tiny model and the synthetic task (``--limit``ed):
- two runs in one process give the same per-doc outputs, accuracy and provenance as two ``run_lmms`` calls;
- a broken run between two good ones raises, naming it, and keeps the good ones (``completed``, on disk).
The fast ones check the config file and the argument checks without a subprocess.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lmms_eval")

from dna_vlm.eval.lmms.run import (
    LmmsEvalError,
    LmmsRun,
    LmmsSpec,
    build_command,
    build_config_command,
    read_samples,
    run_lmms,
    run_lmms_many,
)
from train_helpers import lmms_env, make_dataset, tiny_model

TASK = "dna_vlm_synth"
LIMIT = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms_many")
    tiny = tiny_model(root)
    data = make_dataset(root / "data", n=3, name="test.jsonl")
    env = lmms_env(
        root, DNA_VLM_SYNTH_JSONL=str(data), LMMS_EVAL_DATASETS_CACHE=str(root / "hf" / "lmms_datasets")
    )
    args = {
        "full": {"pretrained": str(tiny), "max_frames": 2},
        "none": {"pretrained": str(tiny), "max_frames": 2, "video": "none"},
    }
    return {"root": root, "env": env, "args": args}


def _spec(setup, name: str, model_args: dict, limit: int = LIMIT) -> LmmsSpec:
    return LmmsSpec(model_args, [TASK], setup["root"] / name, batch_size=2, limit=limit)


@pytest.fixture(scope="module")
def separate(setup):
    """``run_lmms`` once per model_args -> ({name: LmmsRun}, wall seconds)."""
    t0 = time.time()
    runs = {
        name: run_lmms(**_spec(setup, f"sep_{name}", a).as_kwargs(), env=setup["env"], timeout=600)
        for name, a in setup["args"].items()
    }
    return runs, time.time() - t0


@pytest.fixture(scope="module")
def together(setup):
    """``run_lmms_many`` over the same runs -> ({name: LmmsRun}, wall seconds)."""
    names = list(setup["args"])
    t0 = time.time()
    runs = run_lmms_many(
        [_spec(setup, f"many_{n}", setup["args"][n]) for n in names], env=setup["env"], timeout=600
    )
    return dict(zip(names, runs, strict=True)), time.time() - t0


def _by_doc(run: LmmsRun) -> dict[int, dict]:
    return {r["doc_id"]: r for r in read_samples(run.samples[TASK])}


# ------------------------------------------------------------------------------------------------ fast


def test_config_file_matches_the_command_line(tmp_path):
    specs = [
        LmmsSpec({"pretrained": "/m", "max_frames": 2}, [TASK, "b"], tmp_path / "a", limit=3),
        LmmsSpec("dna=/r", "t1,t2", tmp_path / "b", include_path=None, batch_size=None, log_samples=False),
    ]
    cmd = build_config_command(specs, tmp_path / "c.yaml", python="py")
    assert cmd == ["py", "-m", "lmms_eval", "--config", str(tmp_path / "c.yaml")]
    entries = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert entries[0] == {
        "model": "dna_vlm",
        "model_args": "pretrained=/m,max_frames=2",
        "tasks": f"{TASK},b",
        "output_path": str(tmp_path / "a"),
        "log_samples": True,
        "include_path": str(specs[0].include_path),
        "batch_size": "1",  # what argparse makes of --batch_size 1 / --limit 3
        "limit": 3.0,
    }
    assert entries[1] == {
        "model": "dna_vlm",
        "model_args": "dna=/r",
        "tasks": "t1,t2",
        "output_path": str(tmp_path / "b"),
        "log_samples": False,
    }
    assert "env" not in entries[0]  # lmms-eval would apply it to every run of the process
    # the same run as a command line: the spec's fields are build_command's arguments
    line = build_command(**specs[0].as_kwargs())
    assert line[line.index("--model_args") + 1] == entries[0]["model_args"]
    assert line[line.index("--tasks") + 1] == entries[0]["tasks"]


def test_output_paths_must_differ(tmp_path):
    a = LmmsSpec("pretrained=/m", [TASK], tmp_path / "out")
    with pytest.raises(ValueError, match=r"runs 1 and 3 share an output folder.*out and .*out\b"):
        run_lmms_many([a, LmmsSpec("pretrained=/n", [TASK], tmp_path / "other"), a])
    with pytest.raises(ValueError, match="not nested"):
        run_lmms_many([a, LmmsSpec("pretrained=/n", [TASK], tmp_path / "out" / "sub")])
    with pytest.raises(ValueError, match="no runs"):
        run_lmms_many([])


# ------------------------------------------------------------------------------------------------ the real CLI


@pytest.mark.slow
def test_one_process_equals_separate_runs(setup, separate, together):
    sep, sep_s = separate
    many, many_s = together
    print(f"\ntwo run_lmms calls: {sep_s:.1f} s; one run_lmms_many call: {many_s:.1f} s")
    for name in setup["args"]:
        a, b = _by_doc(sep[name]), _by_doc(many[name])
        assert a.keys() == b.keys() == set(range(LIMIT)), name
        for d in a:  # lmms-eval drops "resps" from a sample log row when it equals "filtered_resps"
            for key in ("resps", "filtered_resps", "dna_vlm"):
                assert a[d].get(key) == b[d].get(key), (name, d, key)
        acc = [r.results["results"][TASK]["acc,none"] for r in (sep[name], many[name])]
        assert acc[0] == acc[1], name
        # each run's provenance is its own model's (the process loaded two)
        assert many[name].results["config"]["dna_vlm"]["controls"]["video"] == name
        assert many[name].results_path.is_relative_to(setup["root"] / f"many_{name}")
    runs = list(many.values())
    assert all(r.command == runs[0].command and r.stderr == runs[0].stderr for r in runs)
    assert 0 < sum(r.seconds for r in runs) <= many_s + 1


@pytest.mark.slow
def test_broken_run_is_named_and_the_good_ones_kept(setup):
    good = setup["args"]["full"]
    specs = [
        _spec(setup, "keep_1", good, limit=1),
        _spec(setup, "broken", {"dna": "/nonexistent", "max_frames": 2}, limit=1),
        _spec(setup, "keep_3", good, limit=1),
    ]
    with pytest.raises(LmmsEvalError) as e:
        run_lmms_many(specs, env=setup["env"], timeout=600)
    msg = str(e.value)
    assert "run 2 (output_path=" in msg and str(specs[1].output_path) in msg and "dna=/nonexistent" in msg
    assert "1 of 3 runs" in msg and "run 1 (" not in msg and "run 3 (" not in msg
    assert e.value.failed == [specs[1]]
    kept = e.value.completed
    assert len(kept) == 2
    for r, spec in zip(kept, (specs[0], specs[2]), strict=True):
        assert r.results_path.is_relative_to(spec.output_path)
        assert r.results_path.is_file() and r.samples[TASK].is_file()
        assert TASK in r.results["results"] and r.returncode == 0
    assert not list(Path(specs[1].output_path).rglob("*_results.json"))
