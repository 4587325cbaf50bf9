"""`dna-vlm demo` end to end at the CI size (real training, real lmms-eval CLI), then resume."""

import json

import pytest
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
        "noise_curve",
    ):
        assert enc[key], key
    parts = enc["decomposition"]["parts"]
    assert set(parts) == {"fixed_by_oracle", "encoder_has_it_llm_does_not", "encoder_cannot_resolve"}
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0)
    assert set(enc["controls"]) == {"none", "shuffled"} and [p["sigma"] for p in enc["noise_curve"]] == [
        0,
        0.5,
        2,
    ]
    assert set(enc["probe"]) == {"baseline", "softmax-s0", "dna-s0"}
    probe = json.loads((demo_dir / "probe" / "probe.json").read_text())
    assert len(probe["arms"]["dna-s0"]["asked"]["predictions"]) == SIZES["ci"].n_test
    assert (demo_dir / "encoder" / "s0" / "encoder.json").is_file()
    assert (demo_dir / "encoder" / "s0" / "encoder_noise_curve.png").is_file()
    md = (demo_dir / "report.md").read_text()
    assert "95% CI" in md and "by density" in md
    # the report opens with the answer: encoder gain, QA gain, carry-through, the encoder's share of errors
    opening = md.split("\n\n")[1]
    for text in ("Encoder gain", "QA gain", "carry-through", "encoder's share of the baseline's"):
        assert text in opening, text
    assert "encoder/s0/encoder_noise_curve.png" in md and "Error decomposition" in md
    for link in ("attribution/s0/report.md", "inspect/inspect.md"):
        assert (demo_dir / link).is_file() and link in md
    assert list((demo_dir / "inspect").glob("overlay_*.png"))
    # the arms differ only in the attention
    arms = {
        a: json.loads((demo_dir / "runs" / f"{a}-s0" / "train_config.json").read_text())
        for a in ("softmax", "dna")
    }
    diff = {k for k in arms["dna"] if arms["dna"][k] != arms["softmax"][k]}
    assert diff <= {"attention", "output"}, diff


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


def test_verdict_needs_the_exact_test_to_agree_with_the_bootstrap_ci():
    """4 one-sided flips out of 240: the percentile bootstrap CI excludes 0, exact McNemar p = 0.125."""
    from dna_vlm.eval.demo.render import verdict

    few = {"delta": -4 / 240, "delta_ci95": [-0.033, -0.004], "mcnemar_p": 0.125, "fixed": 0, "broken": 4}
    text = verdict({0: few})
    assert "not distinguishable from zero" in text and "4 discordant" in text
    many = {**few, "mcnemar_p": 0.001, "fixed": 2, "broken": 20}
    assert "(distinguishable from zero)" in verdict({0: many})
    inside = {**few, "delta_ci95": [-0.02, 0.01], "mcnemar_p": 0.5}
    assert verdict({0: inside}).endswith("(not distinguishable from zero)")
