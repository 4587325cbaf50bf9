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


def test_decomposition_shares_sum_to_one_with_known_counts(crafted):
    sec = encoder_section(
        crafted["baseline"], crafted["candidate"], probe=crafted["probe"], oracle=crafted["oracle"],
        by=("density",), n_boot=2000,
    )  # fmt: skip
    dec = sec["overall"]["decomposition"]
    assert dec["n_errors"] == 40
    counts = {k: p["count"] for k, p in dec["parts"].items()}
    assert counts == {"fixed_by_oracle": 20, "encoder_has_it_llm_does_not": 12, "encoder_cannot_resolve": 8}
    assert sum(p["share"] for p in dec["parts"].values()) == pytest.approx(1.0)
    for p in dec["parts"].values():
        lo, hi = p["share_ci95"]
        assert lo <= p["share"] <= hi
    assert dec["encoder_share"]["count"] == 28 and dec["encoder_share"]["share"] == pytest.approx(0.7)
    for group in sec["by_group"]["density"].values():  # per group too
        parts = group["decomposition"]["parts"].values()
        assert sum(p["share"] for p in parts) == pytest.approx(1.0)
        assert sum(p["count"] for p in parts) == group["decomposition"]["n_errors"]
    h = sec["overall"]["oracle"]
    assert h["headroom"]["delta"] == pytest.approx(0.20)
    assert h["share_closed"]["defined"] and h["share_closed"]["ratio"] == pytest.approx(0.75)


def test_carry_through_has_the_known_ratio(crafted):
    sec = encoder_section(crafted["baseline"], crafted["candidate"], probe=crafted["probe"], n_boot=4000)
    o = sec["overall"]
    assert o["encoder_gain"]["delta"] == pytest.approx(0.30) and o["qa_gain"]["delta"] == pytest.approx(0.15)
    ct = o["carry_through"]
    assert ct["defined"] and ct["ratio"] == pytest.approx(0.5)
    assert ct["ci95"][0] < 0.5 < ct["ci95"][1] and ct["ci95"][0] > 0.0 and ct["ci95"][1] < 1.0
    # the same through the function, on bare arrays
    b, c = np.array([0] * 10 + [1] * 90), np.array([1] * 10 + [1] * 90)
    pb, pc = np.array([0] * 40 + [1] * 60), np.ones(100, int)
    res = carry_through(b, c, pb, pc, 2000, 0, "t")
    assert res["ratio"] == pytest.approx(0.25) and res["defined"]
    # without an oracle log: two-way split of the baseline's errors by the probe on the test input
    dec = o["decomposition"]
    assert set(dec["parts"]) == {"probe_right", "probe_wrong"} and dec["parts"]["probe_wrong"]["count"] == 40


def test_carry_through_undefined_when_encoder_gain_ci_contains_zero(crafted):
    b = np.array([0, 1] * 50)
    pb = np.array([1, 0] + [1] * 98)
    pc = np.array([0, 1] + [1] * 98)  # one up, one down: no encoder gain
    res = carry_through(b, b, pb, pc, 2000, 0, "u")
    assert not res["defined"] and res["ratio"] is None and res["ci95"] is None
    assert "contains 0" in res["why"]
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
    assert [pt["sigma"] for pt in sec["noise_curve"]] == [0.0, 0.5, 2.0]
    assert sec["noise_curve"][0]["acc"] == pytest.approx(0.6)
    assert (crafted["tmp"] / "encoder_noise_curve.png").is_file()
    md = "\n".join(encoder_markdown(sec))
    for text in (
        "Encoder gain",
        "carry-through",
        "encoder's share",
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
    b = np.array([0, 0, 0, 1])
    out = decompose_errors(b, np.array([1, 0, 0, 1]), np.array([0, 1, 0, 0]))
    assert {k: p["count"] for k, p in out["parts"].items()} == {
        "fixed_by_oracle": 1, "encoder_has_it_llm_does_not": 1, "encoder_cannot_resolve": 1,
    }  # fmt: skip
    assert decompose_errors(b, None, None) == {}


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
    assert sum(p["share"] for p in overall["decomposition"]["parts"].values()) == pytest.approx(1.0)
    assert overall["carry_through"]["ratio"] == pytest.approx(0.5)
    md = (out / "report.md").read_text()
    assert "carry-through" in md and md.index("Encoder gain") < md.index("Definitions")
