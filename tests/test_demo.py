"""`dna-vlm demo` end to end at the CI size (real training, real lmms-eval CLI), then resume."""

import json

import pytest
from dna_vlm.eval.demo.encoder_stages import PLANTED
from dna_vlm.eval.demo.pipeline import ENCODER_RUNS, SIZES, run_demo

from dna_vlm.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--size", "ci", "--out", str(out)]) == 0
    return out


def test_demo_writes_report_with_every_stage(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    assert set(report["accuracy"]) == {"baseline", "blind", "softmax-s0", "dna-s0"}
    for acc in report["accuracy"].values():
        assert acc["n"] == SIZES["ci"].n_test and 0.0 <= acc["acc"] <= 1.0
        lo, hi = acc["ci95"]
        assert lo <= acc["acc"] <= hi
    effect = report["effect_dna_minus_softmax"]["0"]
    assert {"delta", "delta_ci95", "mcnemar_p", "by_density"} <= set(effect)
    assert set(effect["by_density"]) == {"0", "1", "2", "3"}
    assert "distinguishable from zero" in report["verdict"]
    assert report["neg_branch"]["v_neg_rel_norm"] > 0  # DnA's negative branch moved off its zero start
    stages = set(report["stage_seconds"])
    assert {
        "data",
        "model",
        "baseline",
        "arm-softmax-s0",
        "arm-dna-s0",
        "eval-baseline",
        "eval-blind",
    } <= stages
    assert {"eval-softmax-s0", "eval-dna-s0", "attribute-s0", "inspect"} <= stages
    # the encoder-level measurements (issue 11): probe, oracle input, controls, noise, the Encoder section
    assert {"probe", "encoder-s0"} | {f"eval-{n}-softmax-s0" for n, _, _ in ENCODER_RUNS} <= stages
    enc = report["encoder"]["0"]
    for key in (
        "qa_gain",
        "encoder_gain",
        "carry_through",
        "oracle",
        "decomposition",
        "controls",
        "calibration",
    ):
        assert enc[key], key
    dec = enc["decomposition"]
    assert set(enc["controls"]) == {"none", "shuffled"}
    # planted changes: every scramble strength and the oracle input, each with its probe arm
    assert set(enc["calibration"]["points"]) == {d.name for d in PLANTED} | {"oracle"}
    assert {"baseline", "softmax-s0", "dna-s0"} <= set(enc["probe"])
    probe = json.loads((demo_dir / "probe" / "probe.json").read_text())
    assert len(probe["arms"]["dna-s0"]["asked"]["predictions"]) == SIZES["ci"].n_test
    assert {f"softmax-s0@{d.name}" for d in PLANTED} <= set(probe["arms"])
    assert probe["settings"]["planted"]["softmax-s0@scramble0.5"] == {
        "arm": "softmax-s0",
        "encoder_scramble": 0.5,
    }
    assert (demo_dir / "encoder" / "s0" / "encoder.json").is_file()
    assert dec
    # the instrument's acceptance checks: computed from the logs, one flag per check, all_ok their conjunction
    inst = report["instrument"]["0"]
    assert [r["strength"] for r in inst["sensitivity"]["curve"]] == [0.0, *(d.p for d in PLANTED)]
    assert inst["sensitivity"]["degradation"] == "encoder_scramble"
    flags = [inst["sensitivity"]["ok"], inst["headroom"]["oracle_ok"], inst["headroom"]["density_ok"],
             inst["headroom"]["categories_ok"], inst["power"]["qa_ok"], inst["power"]["encoder_ok"],
             inst["calibration"]["ok"]]  # fmt: skip
    assert inst["all_ok"] == all(flags)
    assert inst["power"]["qa_gain_mde"] > 0 and inst["power"]["encoder_gain_mde"] > 0
    md = (demo_dir / "report.md").read_text()
    assert "95% CI" in md and "by density" in md
    # the report opens with the answer: encoder gain, QA gain, carry-through
    opening = md.split("\n\n")[1]
    for text in ("Encoder gain", "QA gain", "carry-through"):
        assert text in opening, text
    assert "Is this an instrument?" in md and "All checks met" in md
    for link in ("attribution/s0/report.md", "inspect/inspect.md"):
        assert (demo_dir / link).is_file() and link in md
    assert list((demo_dir / "inspect").glob("overlay_*.png"))
    # the arms differ only in the attention
    arms = {
        a: json.loads((demo_dir / "runs" / f"{a}-s0" / "train_config.json").read_text())
        for a in ("softmax", "dna")
    }
    diff = {k for k in arms["dna"] if arms["dna"][k] != arms["softmax"][k]}
    assert diff <= {"attention", "output", "dna_lr"}, (
        diff
    )  # dna_lr: DnA's new parameters only (none in softmax)


def test_demo_resumes_finished_stages(demo_dir, capsys):
    before = json.loads((demo_dir / "report.json").read_text())
    (demo_dir / "stages" / "attribute-s0.json").unlink()  # as if killed after the evaluations
    run_demo(demo_dir, size="ci")
    out = capsys.readouterr().out
    report = json.loads((demo_dir / "report.json").read_text())
    assert out.count("resuming past it") == len(before["stage_seconds"]) - 1
    assert "[demo] attribute-s0 ..." in out and "[demo] baseline ..." not in out
    assert report["accuracy"] == before["accuracy"]
    assert report["effect_dna_minus_softmax"] == before["effect_dna_minus_softmax"]


def test_verdict_follows_the_one_rule_and_prints_the_mde_of_a_null():
    """4 one-sided flips out of 240: exact McNemar p = 0.125, not significant: the word says so and gives the MDE."""
    from dna_vlm.eval.demo.render import verdict

    few = {"delta": -4 / 240, "delta_ci95": [-0.033, 0.003], "mcnemar_p": 0.125, "fixed": 0, "broken": 4,
           "significant": False, "mde": 0.033}  # fmt: skip
    text = verdict({0: few})
    assert "not distinguishable from zero" in text and "±3.3 points" in text
    many = {**few, "mcnemar_p": 0.001, "fixed": 2, "broken": 20, "significant": True, "mde": None}
    assert "(distinguishable from zero)" in verdict({0: many})
