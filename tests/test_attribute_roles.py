"""Every input of `dna-vlm attribute` is checked against the provenance the plugin writes (issue 25 item 2):
a control, noise or oracle run of the wrong kind or of the other arm's model is refused, naming the flag, the
file and what the provenance says; the README's blind workflow (``video=none`` on the video task) is
accepted. The ``slow`` tests use real plugin runs (built once per session in test_attribute_pairing.py); the
others craft provenance files beside crafted logs.
"""

from __future__ import annotations

import json

import pytest
from dna_vlm.eval.attribute.compare import AttributionError, attribute
from test_attribute_pairing import real_runs_for

from dna_vlm.cli import main as cli_main


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    pytest.importorskip("lmms_eval")
    return real_runs_for(tmp_path_factory)["logs"]


def _attribute(logs, **encoder):
    return attribute(logs["base"], logs["dna"], bootstrap=0, encoder=encoder)


@pytest.mark.slow
def test_each_role_is_checked_against_the_real_provenance(logs):
    """Issue 25 item 2: `--control none` took a full-video run of the other arm, `--noise 0.5` a sigma-2 run
    and a DnA-arm noise run, `--oracle` a run not on the oracle task; all were reported under the flag's
    label. Each is refused now; the right runs are verified."""
    ok = _attribute(logs, controls={"none": logs["none"]}, noise={2.0: logs["noise2"]}, oracle=logs["oracle"])
    assert {flag: r["verified"] for flag, r in ok["roles"].items()} == {
        "--baseline": True, "--candidate": True, "--control none": True, "--noise 2": True, "--oracle": True,
    }  # fmt: skip
    refused = {
        r"--control none .*_samples_dna_vlm_synth.jsonl: its provenance says controls.video='full'": dict(
            controls={"none": logs["dna"]}
        ),
        r"--control none .*: a run of another model than the baseline: its provenance says run_dir=.*run_dna": dict(
            controls={"none": logs["dna_none"]}
        ),
        r"--noise 0.5 .*provenance \(.*_dna_vlm.json\) says controls.video='full', encoder_noise=2; --noise 0.5 "
        r"takes a run with video='full', encoder_noise=0.5": dict(noise={0.5: logs["noise2"]}),
        r"--noise 2 .*: a run of another model than the baseline": dict(noise={2.0: logs["dna_noise2"]}),
        r"--oracle .*: not a run on the oracle input: .* holds the baseline's own clips": dict(
            oracle=logs["base"]
        ),
        r"--control shuffled .*controls.video='none'": dict(controls={"shuffled": logs["none"]}),
    }
    for message, encoder in refused.items():
        with pytest.raises(AttributionError, match=message):
            _attribute(logs, **encoder)


@pytest.mark.slow
def test_readme_blind_workflow_is_accepted(logs, tmp_path, capsys):
    """Issue 25 item 2: the README's blind arm (`video=none` on the video task, then `--blind`) was refused
    because each row's `blind` field says false; its provenance says video: none, and that decides now.
    A blind run given as the candidate is refused. The CLI runs the Encoder section on the checked roles."""
    r = attribute(logs["base"], logs["dna"], blind=logs["none"], bootstrap=0)
    assert r["pairing"]["blind_verified"] is True and r["roles"]["--blind"]["verified"]
    with pytest.raises(AttributionError, match=r"--candidate .*controls.video='none'.*goes to --control"):
        attribute(logs["base"], logs["none"], bootstrap=0)
    argv = [
        "attribute", "--baseline", str(logs["base"]), "--candidate", str(logs["dna"]), "--blind", str(logs["none"]),
        "--control", f"none={logs['none']}", "--noise", f"2={logs['noise2']}", "--oracle", str(logs["oracle"]),
        "--bootstrap", "0", "--no-plots", "--out", str(tmp_path),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["encoder"]["controls"]["none"]["n"] > 0 and all(
        r["verified"] for r in report["roles"].values()
    )
    assert "| --noise 2 | yes |" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ crafted


def _log(folder, rows, prov=None, task="dna_vlm_synth"):
    """A plugin-shaped sample log (``dna_vlm`` records, prompt, target) with its provenance beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"20260101_000000_samples_{task}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if prov is not None:
        (folder / "20260101_000000_dna_vlm.json").write_text(json.dumps(prov))
    return path


def _rows(n=6, video="videos"):
    return [
        {"doc_id": i, "target": "A", "input": f"Q{i}?\nA. red\nB. blue", "acc": float(i % 2), "failed": 0,
         "dna_vlm": {"id": f"t{i}", "category": "color", "density": 1, "video": f"{video}/t{i}.mp4", "blind": False,
                     "answer": "A", "pred": "A" if i % 2 else "B", "correct": bool(i % 2), "failed": False}}
        for i in range(n)
    ]  # fmt: skip


def _prov(run_dir=None, video="full", noise=0.0):
    weights = {"sha256": (run_dir or "x")[-1] * 64} if run_dir else None
    return {"base_model": {"pretrained": "/m/tiny"}, "run_dir": run_dir, "weights": weights,
            "patch_table": [{"index": 0}] if run_dir else [], "controls": {"video": video, "encoder_noise": noise}}  # fmt: skip


def test_unknown_control_mixed_arm_and_missing_provenance(tmp_path, capsys):
    """Issue 25 item 2: a control name the provenance cannot confirm is refused; an arm pooling two models'
    logs is refused; a role whose run has no provenance is reported unverified (report and stderr), not
    silently taken as what its flag says."""
    base = _log(tmp_path / "b", _rows(), _prov("/runs/a"))
    cand = _log(tmp_path / "c", _rows(), _prov("/runs/b"))
    bare = _log(tmp_path / "n", _rows())
    with pytest.raises(
        AttributionError, match=r"--control foo=.*unknown control 'foo'; use one of none, blind"
    ):
        attribute(base, cand, bootstrap=0, encoder={"controls": {"foo": bare}})
    other = _log(tmp_path / "b2", _rows(), _prov("/runs/b"), task="dna_vlm_mcq")
    with pytest.raises(
        AttributionError, match=r"--baseline pools logs of two models: .*run_dir=/runs/a.*/runs/b"
    ):
        attribute([base, other], [cand, _log(tmp_path / "c2", _rows(), _prov("/runs/b"), task="dna_vlm_mcq")])
    argv = ["attribute", "--baseline", str(base), "--candidate", str(cand), "--noise", f"0.5={bare}",
            "--bootstrap", "0", "--no-plots", "--out", str(tmp_path / "rep")]  # fmt: skip
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "warning: --noise 0.5: role unverified: 20260101_000000_samples_dna_vlm_synth.jsonl: no dna_vlm provenance"
        in err
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| --noise 0.5 | **unverified**" in md and "| --baseline | yes |" in md


def test_oracle_evidence_from_the_clips(tmp_path):
    """The oracle input is recognised by its clips (synth-data's videos/oracle/) when the task is not named
    *_oracle; its density (0 by construction) may differ from the test question's."""
    base = _log(tmp_path / "b", _rows(), _prov())
    cand = _log(tmp_path / "c", _rows(), _prov("/runs/b"))
    rows = _rows(video="videos/oracle")
    for r in rows:
        r["dna_vlm"]["density"] = 0
    oracle = _log(tmp_path / "o", rows, _prov())
    r = attribute(base, cand, bootstrap=0, encoder={"oracle": oracle})
    assert r["roles"]["--oracle"]["verified"]
    with pytest.raises(AttributionError, match=r"--oracle .*a run of another model than the baseline"):
        attribute(base, cand, bootstrap=0, encoder={"oracle": _log(tmp_path / "o2", rows, _prov("/runs/b"))})
