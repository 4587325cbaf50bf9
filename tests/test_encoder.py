"""The Encoder section: crafted sample logs and probe results with known answers."""

import argparse
import json

import numpy as np
import pytest
from dna_vlm.eval.attribute.encoder_section import (
    EncoderError,
    add_encoder_args,
    carry_through,
    decompose_errors,
    encoder_markdown,
    encoder_section,
    encoder_section_from_args,
)

N = 100


def _write_log(path, correct, density=None):
    """An lmms-eval sample log in the dna_vlm tasks' form: one row per doc with the `dna_vlm` record."""
    with open(path, "w") as f:
        for i, c in enumerate(correct):
            rec = {"id": f"q{i:03d}", "correct": int(c), "pred": "A" if c else "B", "answer": "A"}
            if density is not None:
                rec["density"] = int(density[i])
            f.write(json.dumps({"doc_id": i, "target": rec["answer"], "acc": int(c), "dna_vlm": rec}) + "\n")
    return path


def _preds(correct):
    return [
        {"id": f"q{i:03d}", "label": "x", "pred": "x" if c else "y", "correct": bool(c)}
        for i, c in enumerate(correct)
    ]


def _probe(base, cand, base_oracle=None):
    asked_b = {"predictions": _preds(base)}
    if base_oracle is not None:
        asked_b["oracle"] = {"predictions": _preds(base_oracle)}
    return {
        "arms": {
            "softmax": {"labels": {}, "asked": asked_b},
            "dna": {"labels": {}, "asked": {"predictions": _preds(cand)}},
        }
    }


@pytest.fixture
def crafted(tmp_path):
    """100 docs; the baseline is wrong on docs 0-39: the oracle input fixes 0-19; of 20-39 the probe on the
    oracle input is right on 20-31 (encoder has it) and wrong on 32-39 (encoder cannot resolve it).
    The DnA probe gains on docs 40-69 (30 up, 0 down); DnA QA fixes docs 0-14 (15 up, 0 down):
    carry-through 0.15 / 0.30 = 0.5."""
    b = np.ones(N, int)
    b[:40] = 0
    c = b.copy()
    c[:15] = 1
    o = b.copy()
    o[:20] = 1
    po = np.ones(N, int)
    po[32:40] = 0
    pb = np.zeros(N, int)
    pb[70:] = 1
    pc = pb.copy()
    pc[40:70] = 1
    density = np.arange(N) % 2
    return {
        "baseline": _write_log(tmp_path / "b.jsonl", b, density),
        "candidate": _write_log(tmp_path / "c.jsonl", c, density),
        "oracle": _write_log(tmp_path / "o.jsonl", o),
        "probe": _probe(pb, pc, po),
        "blind": _write_log(tmp_path / "blind.jsonl", np.arange(N) % 4 == 0),
        "noise": {
            0.5: _write_log(tmp_path / "n05.jsonl", b * (np.arange(N) % 3 > 0)),
            2.0: _write_log(tmp_path / "n2.jsonl", np.arange(N) % 4 == 0),
        },
        "tmp": tmp_path,
    }


def test_decomposition_is_net_and_sums_to_the_error_rate(crafted):
    """Error rate 0.40 = distractor effect +0.20 (oracle QA 0.80 - 0.60) + readout gap on the oracle input
    +0.12 (probe 0.92 - QA 0.80) + not linearly readable 0.08; paired terms carry exact CIs and verdicts."""
    sec = encoder_section(
        crafted["baseline"], crafted["candidate"], probe=crafted["probe"], oracle=crafted["oracle"],
        by=("density",), n_boot=2000,
    )  # fmt: skip
    dec = sec["overall"]["decomposition"]
    assert (
        dec["n_errors"] == 40 and dec["error_rate"] == pytest.approx(0.4) and dec["input"] == "oracle input"
    )
    parts = dec["parts"]
    assert parts["distractor_effect"]["delta"] == pytest.approx(0.20)
    assert (parts["distractor_effect"]["fixed"], parts["distractor_effect"]["broken"]) == (20, 0)
    assert parts["readout_gap"]["delta"] == pytest.approx(0.12)
    assert parts["not_linearly_readable"]["rate"] == pytest.approx(0.08)
    assert dec["sum_check"] == pytest.approx(dec["error_rate"])
    for k in ("distractor_effect", "readout_gap"):  # net paired effects: the verdict follows the rule
        g = parts[k]
        assert g["significant"] == (g["delta_ci"][0] > 0 or g["delta_ci"][1] < 0) == (g["p_adjusted"] < 0.05)
    for group in sec["by_group"]["density"].values():  # per group too
        assert group["decomposition"]["sum_check"] == pytest.approx(group["decomposition"]["error_rate"])
    h = sec["overall"]["oracle"]
    assert h["headroom"]["delta"] == pytest.approx(0.20)
    assert h["share_closed"]["defined"] and h["share_closed"]["ratio"] == pytest.approx(0.75)
    md = "\n".join(encoder_markdown(sec))
    assert "distractor effect (net)" in md and "not linearly readable after pooling" in md
    assert "encoder's share" not in md and "Assumptions" in md


def test_carry_through_has_the_known_ratio(crafted):
    sec = encoder_section(crafted["baseline"], crafted["candidate"], probe=crafted["probe"], n_boot=4000)
    o = sec["overall"]
    assert o["encoder_gain"]["delta"] == pytest.approx(0.30) and o["qa_gain"]["delta"] == pytest.approx(0.15)
    ct = o["carry_through"]
    assert ct["defined"] and ct["ratio"] == pytest.approx(0.5)
    assert ct["ci"][0] < 0.5 < ct["ci"][1] and ct["ci"][0] > 0.0 and ct["ci"][1] < 1.0
    assert o["encoder_gain"]["significant"] and ct["ci_level"] == pytest.approx(0.95)
    # the same through the function, on bare arrays
    b, c = np.array([0] * 10 + [1] * 90), np.array([1] * 10 + [1] * 90)
    pb, pc = np.array([0] * 40 + [1] * 60), np.ones(100, int)
    res = carry_through(b, c, pb, pc, 2000, 0, "t")
    assert res["ratio"] == pytest.approx(0.25) and res["defined"]
    # without an oracle log: readout gap and not linearly readable on the test input (probe 0.30, QA 0.60)
    dec = o["decomposition"]
    assert set(dec["parts"]) == {"readout_gap", "not_linearly_readable"} and dec["input"] == "test input"
    assert dec["parts"]["readout_gap"]["delta"] == pytest.approx(0.30 - 0.60)
    assert dec["parts"]["not_linearly_readable"]["count"] == 70
    assert dec["sum_check"] == pytest.approx(0.40)


def test_carry_through_undefined_when_encoder_gain_ci_contains_zero(crafted):
    b = np.array([0, 1] * 50)
    pb = np.array([1, 0] + [1] * 98)
    pc = np.array([0, 1] + [1] * 98)  # one up, one down: no encoder gain
    res = carry_through(b, b, pb, pc, 2000, 0, "u")
    assert not res["defined"] and res["ratio"] is None and res["ci"] is None
    assert "not significant" in res["why"]
    sec = encoder_section(crafted["baseline"], crafted["baseline"], probe=_probe(pb, pc), n_boot=2000)
    assert not sec["overall"]["carry_through"]["defined"]
    md = "\n".join(encoder_markdown(sec))
    assert "undefined" in md and "carry-through" in md


def test_controls_noise_curve_markdown_and_args(crafted):
    p = argparse.ArgumentParser()
    add_encoder_args(p)
    args = p.parse_args([
        "--oracle", str(crafted["oracle"]), "--control", f"blind={crafted['blind']}",
        "--noise", f"0.5={crafted['noise'][0.5]}", "--noise", f"2={crafted['noise'][2.0]}",
    ])  # fmt: skip
    path = crafted["tmp"] / "probe.json"
    path.write_text(json.dumps(crafted["probe"]))
    args.probe = str(path)
    sec = encoder_section_from_args(
        args, [crafted["baseline"]], crafted["candidate"], by=("density",), n_boot=500, out_dir=crafted["tmp"]
    )
    ctrl = sec["controls"]["blind"]
    assert ctrl["candidate_acc"] == pytest.approx(0.25) and ctrl["delta"] == pytest.approx(0.25 - 0.6)
    assert ctrl["family"] == "controls" and ctrl["family_size"] == 1
    noisy = [pt["vs_0"] for pt in sec["noise_curve"][1:]]
    assert {g["family"] for g in noisy} == {"noise curve"} and all(g["family_size"] == 2 for g in noisy)
    assert all(g["p_adjusted"] == pytest.approx(min(1, 2 * g["mcnemar_p"])) for g in noisy)
    for g in sec["by_group"]["density"].values():  # each column of a per-group table: one family of 2
        assert (
            g["encoder_gain"]["family"] == "encoder gain by density" and g["encoder_gain"]["family_size"] == 2
        )
        assert g["qa_gain"]["ci_level"] == pytest.approx(1 - 0.05 / 2)
    assert [pt["sigma"] for pt in sec["noise_curve"]] == [0.0, 0.5, 2.0]
    assert sec["noise_curve"][0]["acc"] == pytest.approx(0.6)
    assert (crafted["tmp"] / "encoder_noise_curve.png").is_file()
    md = "\n".join(encoder_markdown(sec))
    for text in (
        "Encoder gain",
        "carry-through",
        "distractor effect (net)",
        "Verdict rule",
        "Input controls",
        "Noise curve",
        "By density",
        "Definitions",
    ):
        assert text in md, text
    json.dumps(sec)  # JSON-safe
    assert encoder_section_from_args(p.parse_args([]), crafted["baseline"], crafted["candidate"]) is None


def test_mismatched_questions_are_refused(crafted, tmp_path):
    short = _write_log(tmp_path / "short.jsonl", np.ones(N - 5, int))
    with pytest.raises(EncoderError, match="lacks 5"):
        encoder_section(crafted["baseline"], short, n_boot=0)
    with pytest.raises(EncoderError, match="no arm"):
        encoder_section(
            crafted["baseline"], crafted["candidate"], probe=crafted["probe"], probe_arms=("a", "b")
        )


def test_decompose_errors_direct():
    b = np.array([0, 0, 0, 1] * 5)
    out = decompose_errors(b, np.array([1, 0, 0, 1] * 5), np.array([0, 1, 0, 0] * 5))
    assert out["parts"]["distractor_effect"]["delta"] == pytest.approx(0.25)
    assert out["parts"]["readout_gap"]["delta"] == pytest.approx(0.25 - 0.5)  # probe 1/4 vs oracle QA 2/4
    assert out["parts"]["not_linearly_readable"]["rate"] == pytest.approx(0.75)
    assert out["sum_check"] == pytest.approx(out["error_rate"]) == pytest.approx(0.75)
    only_oracle = decompose_errors(b, np.array([1, 0, 0, 1] * 5), None)
    assert set(only_oracle["parts"]) == {"distractor_effect", "error_left_on_oracle"}
    assert only_oracle["sum_check"] == pytest.approx(0.75)
    assert decompose_errors(b, None, None) == {}


def test_definedness_follows_the_printed_verdict_in_every_cell():
    """Item 7: carry-through is defined exactly when the encoder gain it prints is significant (its printed
    CI excludes 0), over every (fixed, broken) cell with up to 15 of each at n = 240: one source for both."""
    n = 240
    for f in range(16):
        for b_ in range(16):
            pb = np.zeros(n, int)
            pb[f : f + b_] = 1  # broken: baseline probe right, candidate wrong
            pc = pb.copy()
            pc[:f] = 1
            pc[f : f + b_] = 0
            qa = np.zeros(n, int)
            res = carry_through(qa, qa, pb, pc, 0, 0, "cell")
            g = encoder_gain_of(pb, pc)
            assert res["defined"] == g["significant"] == (g["delta_ci"][0] > 0 or g["delta_ci"][1] < 0), (
                f,
                b_,
            )


def encoder_gain_of(pb, pc):
    from dna_vlm.eval.stats import compare

    return compare(pb, pc)


def test_attribute_cli_writes_the_encoder_section(crafted):
    """`dna-vlm attribute --probe/--oracle/--noise` puts the Encoder section into report.json and report.md."""
    from dna_vlm.cli import main

    probe = crafted["tmp"] / "probe.json"
    probe.write_text(json.dumps(crafted["probe"]))
    out = crafted["tmp"] / "rep"
    argv = ["attribute", "--baseline", str(crafted["baseline"]), "--candidate", str(crafted["candidate"]),
            "--probe", str(probe), "--oracle", str(crafted["oracle"]), "--noise", f"2={crafted['noise'][2.0]}",
            "--bootstrap", "200", "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    overall = report["encoder"]["overall"]
    assert overall["decomposition"]["n_errors"] == 40
    assert overall["decomposition"]["sum_check"] == pytest.approx(0.40)
    assert overall["carry_through"]["ratio"] == pytest.approx(0.5)
    md = (out / "report.md").read_text()
    assert "carry-through" in md and md.index("Encoder gain") < md.index("Definitions")


def _planted(crafted, tmp, label, enc_up, qa_up):
    """A planted change: probe right on ``enc_up`` more docs (40, 41, ...) than the baseline's probe, QA
    right on ``qa_up`` more docs (20, 21, ...) than the baseline (negative: that many fewer, from doc 70 /
    doc 40 on)."""
    pb = np.zeros(N, int)
    pb[70:] = 1
    b = np.ones(N, int)
    b[:40] = 0
    p, q = pb.copy(), b.copy()
    if enc_up >= 0:
        p[40 : 40 + enc_up] = 1
    else:
        p[70 : 70 - enc_up] = 0
    if qa_up >= 0:
        q[20 : 20 + qa_up] = 1
    else:
        q[40 : 40 - qa_up] = 0
    return _write_log(tmp / f"{label}.jsonl", q, np.arange(N) % 2), _preds(p)


def test_planted_calibration_recovers_the_known_slope(crafted):
    """Planted changes with QA gain = 0.5 x encoder gain (+10/+5, +30/+15, -20/-10 points) give slope 0.5;
    DnA (+30 encoder, +15 QA) sits on the line: predicted +15, residual 0, consistent."""
    probe = json.loads(json.dumps(crafted["probe"]))
    planted = {}
    for label, e, q in (("plus10", 10, 5), ("plus30", 30, 15), ("minus20", -20, -10)):
        log, preds = _planted(crafted, crafted["tmp"], label, e, q)
        probe["arms"][label] = {"labels": {}, "asked": {"predictions": preds}}
        planted[label] = (log, label)
    path = crafted["tmp"] / "probe_planted.json"
    path.write_text(json.dumps(probe))
    sec = encoder_section(crafted["baseline"], crafted["candidate"], probe=str(path), planted=planted,
                          n_boot=2000, out_dir=crafted["tmp"])  # fmt: skip
    cal = sec["calibration"]
    assert cal["slope"] == pytest.approx(0.5)
    assert cal["slope_ci"][0] <= 0.5 <= cal["slope_ci"][1] and cal["slope_significant"]
    pts = cal["points"]
    assert pts["plus30"]["encoder_gain"]["delta"] == pytest.approx(0.30)
    assert pts["minus20"]["qa_gain"]["delta"] == pytest.approx(-0.10)
    assert pts["plus10"]["encoder_gain"]["family_size"] == 3  # each column: one family over the planted
    assert pts["plus30"]["carry_through"]["ratio"] == pytest.approx(0.5)
    d = cal["dna"]
    assert d["qa_gain_predicted"] == pytest.approx(0.15) and d["residual"] == pytest.approx(0.0)
    assert d["residual_ci"][0] <= 0 <= d["residual_ci"][1] and d["consistent"]
    assert "An encoder change of 10 points carries +5.0" in cal["sentence"]
    assert (crafted["tmp"] / "encoder_calibration.png").is_file()
    md = "\n".join(encoder_markdown(sec))
    assert "Calibrated carry-through" in md and "encoder_calibration.png" in md
    # the same draw is what the section prints: a second run reproduces every CI
    again = encoder_section(
        crafted["baseline"], crafted["candidate"], probe=str(path), planted=planted, n_boot=2000
    )
    assert again["calibration"]["slope_ci"] == cal["slope_ci"]


def test_planted_cli_and_errors(crafted):
    from dna_vlm.eval.attribute.encoder_section import planted_pairs

    from dna_vlm.cli import main

    assert planted_pairs(["a=x/y.jsonl:arm1"]) == {"a": ("x/y.jsonl", "arm1")}
    assert planted_pairs(["a=C:/x.jsonl:arm"]) == {"a": ("C:/x.jsonl", "arm")}
    with pytest.raises(EncoderError, match="LABEL=QA_LOG:PROBE_ARM"):
        planted_pairs(["a=nolog"])
    probe = json.loads(json.dumps(crafted["probe"]))
    log, preds = _planted(crafted, crafted["tmp"], "p20", 20, 10)
    probe["arms"]["p20"] = {"labels": {}, "asked": {"predictions": preds}}
    path = crafted["tmp"] / "probe_cli.json"
    path.write_text(json.dumps(probe))
    with pytest.raises(EncoderError, match="needs --probe"):
        encoder_section(crafted["baseline"], crafted["candidate"], planted={"p20": (log, "p20")})
    with pytest.raises(EncoderError, match="no arm 'nope'"):
        encoder_section(
            crafted["baseline"], crafted["candidate"], probe=str(path), planted={"p20": (log, "nope")}
        )
    out = crafted["tmp"] / "rep_planted"
    argv = ["attribute", "--baseline", str(crafted["baseline"]), "--candidate", str(crafted["candidate"]),
            "--probe", str(path), "--planted", f"p20={log}:p20", "--bootstrap", "300", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    cal = json.loads((out / "report.json").read_text())["encoder"]["calibration"]
    assert cal["slope"] == pytest.approx(0.5) and (out / "encoder_calibration.png").is_file()
