"""The demo's resumable stages: a fresh run hands on what a resumed run reads back, so both print the same report."""

from dna_vlm.eval.attribute.encoder_section_render import _ordered_parts
from dna_vlm.eval.demo.stages import Stages


def test_a_fresh_stage_returns_what_a_resumed_run_reads(tmp_path):
    made = {"zeta": (1, 2), "alpha": {"b": 1, "a": 2}}
    fresh = Stages(tmp_path, force=False, fingerprint="f").run("s", lambda: made)
    resumed = Stages(tmp_path, force=False, fingerprint="f").run("s", lambda: {"never": "called"})
    assert fresh == resumed == {"alpha": {"a": 2, "b": 1}, "zeta": [1, 2]}
    assert list(fresh) == list(resumed) == ["alpha", "zeta"]  # the same order, so the same report
    assert list(fresh["alpha"]) == ["a", "b"]
    other = Stages(tmp_path, force=False, fingerprint="g").run("s", lambda: {"new": 1})
    assert other == {"new": 1}  # another fingerprint reruns the stage


def test_decomposition_terms_print_in_their_logical_order_whatever_the_key_order():
    parts = {"readout_gap": {}, "not_linearly_readable": {}, "distractor_effect": {}, "zz_other": {}}
    got = [k for k, _ in _ordered_parts({"parts": parts})]
    assert got == ["distractor_effect", "readout_gap", "not_linearly_readable", "zz_other"]
