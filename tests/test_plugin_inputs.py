"""The dna_vlm lmms-eval model's inputs, in-process on the tiny model: input controls (video=none|shuffled|
single, encoder_noise), bad_video=fail|skip, the failure encoding a stock metric scores wrong, image-list
visuals, ``until`` as a stopping criterion, frames keyed by the video (not the doc), provenance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval")

from dna_vlm.eval.lmms.controls import Controls, ProjectorNoise, apply_video_control
from dna_vlm.eval.logs.records import (
    FAILED_GOLD_LOSS,
    FAILED_LOSS,
    failed_response,
    provenance_path,
    read_provenance,
    row_failure,
)
from train_helpers import make_clip


def _instances(reqtype, args_list):
    from lmms_eval.api.instance import Instance

    return [
        Instance(reqtype, args, 0, {"task": args[-2], "doc_id": args[-3], "repeats": 1}) for args in args_list
    ]


class FakeTask:
    """What the plugin reads from an lmms-eval task: ``doc_to_visual`` is a bound method of it."""

    def __init__(self, target=0, choices=("A", "B", "C")):
        self.target, self.choices = target, list(choices)

    def doc_to_visual(self, doc):
        return [doc["video_path"]]

    def doc_to_target(self, doc):
        return self.target

    def doc_to_choice(self, doc):
        return self.choices


def _text(doc) -> str:
    from dna_vlm.data.prompting import format_question

    return format_question(doc["question"], doc["options"])


def _visual(doc):
    return [doc["video_path"]]


def _blind(doc):
    return []


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """tiny model dir + 4 docs: two real clips (different colours), a corrupt file and a missing file."""
    from dna_vlm.tiny.default import build_tiny_model

    root = tmp_path_factory.mktemp("plugin_inputs")
    tiny = build_tiny_model(root / "tiny")
    v0 = make_clip(root / "v0.mp4", "red", n_frames=8, size=32, seed=1)
    v1 = make_clip(root / "v1.mp4", "blue", n_frames=8, size=32, seed=2)
    (root / "corrupt.mp4").write_bytes(b"not an mp4" * 20)
    docs = [
        {
            "video_path": str(p),
            "question": f"What colour is shown? ({i})",
            "options": ["red", "blue", "green"],
        }
        for i, p in enumerate([v0, v1, root / "corrupt.mp4", root / "missing.mp4"])
    ]
    return {"root": root, "tiny": tiny, "docs": docs}


def _model(env, **kw):
    from dna_vlm.eval.lmms.plugin import DnaVLM

    m = DnaVLM(pretrained=str(env["tiny"]), max_frames=4, **kw)
    m.task_dict = {"t": {"test": env["docs"]}, "u": {"test": env["docs"][:2]}}
    return m


@pytest.fixture(scope="module")
def full(env):
    return _model(env, bad_video="skip")


def _gen_reqs(env, idxs, dtv=_visual, task="t", gk=None):
    gk = gk or {"max_new_tokens": 3, "until": []}
    return _instances("generate_until", [(_text(env["docs"][i]), gk, dtv, i, task, "test") for i in idxs])


def _mc_reqs(env, idxs, dtv=_visual, task="t"):
    return _instances(
        "loglikelihood", [(_text(env["docs"][i]), c, dtv, i, task, "test") for i in idxs for c in "ABC"]
    )


# ------------------------------------------------------------------------------------------------ controls


def test_video_controls_on_frames():
    frames = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    shuffled = apply_video_control(frames, "shuffled", seed=0)
    assert not np.array_equal(shuffled, frames)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731 - the frame multiset
    assert key(shuffled) == key(frames)
    assert np.array_equal(apply_video_control(frames, "shuffled", seed=0), shuffled)  # seeded
    single = apply_video_control(frames, "single", seed=0)
    assert single.shape == frames.shape and all(np.array_equal(f, frames[3]) for f in single)
    assert apply_video_control(frames, "none", 0) is None and apply_video_control(frames, "full", 0) is frames
    with pytest.raises(ValueError, match="video must be one of"):
        Controls.parse("blurred", 0, 0)
    with pytest.raises(ValueError, match="encoder_noise"):
        Controls.parse("full", "-1", 0)


def test_shuffled_and_single_in_the_plugin(env, full):
    args = _gen_reqs(env, [0])[0].args
    base = full.visuals.load(args, env["docs"][0])
    for mode in ("shuffled", "single"):
        m = _model(env, video=mode)
        x = m.visuals.load(args, env["docs"][0])
        assert x.frames.shape == base.frames.shape and x.context == base.context
        if mode == "shuffled":
            assert sorted(map(bytes, x.frames)) == sorted(map(bytes, base.frames))
            assert not np.array_equal(x.frames, base.frames)
        else:
            assert all(np.array_equal(f, base.frames[len(base.frames) // 2]) for f in x.frames)
        assert m.provenance["controls"]["video"] == mode
        out = m.generate_until(_gen_reqs(env, [0, 1]))
        assert all(isinstance(o, str) for o in out)


def test_video_none_equals_the_blind_task(env, full):
    """video=none on the video task == the blind task (doc_to_visual -> []) with the default model, for
    both output types: one prompt builder serves both."""
    blind = _model(env, video="none")  # never opens a video: even the corrupt/missing docs run
    assert blind.generate_until(_gen_reqs(env, [0, 1, 2, 3])) == full.generate_until(
        _gen_reqs(env, [0, 1, 2, 3], dtv=_blind)
    )
    assert blind.loglikelihood(_mc_reqs(env, [0, 2])) == full.loglikelihood(_mc_reqs(env, [0, 2], dtv=_blind))
    assert blind.provenance["controls"] == {"video": "none", "encoder_noise": 0.0, "control_seed": 0}


def _projector_outputs(m, reqs, run):
    from dna_vlm.runs.loading import find_projector

    seen = []
    _name, proj = find_projector(m.model)
    h = proj.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        result = run(reqs)
    finally:
        h.remove()
    return seen, result


def test_encoder_noise_zero_is_bit_identical_and_sigma_sets_the_rms(env, full):
    zero = _model(env, encoder_noise=0)
    assert zero.noise.handle is None
    reqs = _mc_reqs(env, [0, 1])
    clean_out, clean_ll = _projector_outputs(full, reqs, full.loglikelihood)
    assert zero.loglikelihood(reqs) == clean_ll
    assert zero.generate_until(_gen_reqs(env, [0])) == full.generate_until(_gen_reqs(env, [0]))

    sigma = 0.5
    noisy = _model(env, encoder_noise=sigma)
    noisy_out, noisy_ll = _projector_outputs(noisy, reqs, noisy.loglikelihood)
    assert noisy.provenance["controls"]["encoder_noise"] == sigma
    assert clean_ll != noisy_ll
    # the hook registered after the noise hook sees the noised tokens: diff RMS / clean RMS ~ sigma
    for c, n in zip(clean_out, noisy_out, strict=True):
        ratio = ((n - c).pow(2).mean().sqrt() / c.pow(2).mean().sqrt()).item()
        assert ratio == pytest.approx(sigma, rel=0.1)
    for i in (0, 3):  # the 3 options of one question share one video and one noise draw
        d = [noisy_out[j] - clean_out[j] for j in range(i, i + 3)]
        assert torch.equal(d[0], d[1]) and torch.equal(d[1], d[2])
    assert not torch.equal(noisy_out[0] - clean_out[0], noisy_out[3] - clean_out[3])
    assert noisy.loglikelihood(reqs[3:]) == noisy_ll[3:]  # seeded per doc (its visual), not by position


def test_projector_noise_hook_alone():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(5, 8).repeat(2, 1)  # one video's 5 tokens, twice (two options of one question)
    clean = lin(x)
    hook = ProjectorNoise.__new__(ProjectorNoise)
    hook.sigma, hook.mask, hook.scramble, hook.seeds = 0.25, 0.0, 0.0, [7, 9]
    noisy = hook._hook(lin, (x,), clean)
    d = noisy - clean
    assert not torch.equal(d[:5], d[5:])  # two videos, two seeds
    hook.seeds = [7, 7]
    d2 = hook._hook(lin, (x,), clean) - clean
    assert torch.equal(d2[:5], d[:5]) and torch.equal(d2[5:], d2[:5])


# ------------------------------------------------------------------------------------------------ bad videos


def test_bad_video_fail_lists_every_unreadable_video_before_any_forward(env, monkeypatch):
    from dna_vlm.eval.lmms.plugin import BadVideoError

    m = _model(env)  # default: fail
    assert m.provenance["bad_video"] == "fail"
    calls = []
    monkeypatch.setattr(m._model, "forward", lambda *a, **k: calls.append(1))

    def exits(doc):
        sys.exit("video path: /nowhere.mp4 does not exist")

    reqs = _gen_reqs(env, [0, 2, 3]) + _gen_reqs(env, [1], dtv=exits, task="u")
    with pytest.raises(BadVideoError) as e:
        m.generate_until(reqs)
    msg = str(e.value)
    assert "3 unreadable video(s)" in msg and "bad_video=skip" in msg
    assert "task=t doc_id=2" in msg and "corrupt.mp4" in msg
    assert "task=t doc_id=3" in msg and "missing.mp4" in msg
    assert "task=u doc_id=1" in msg and "does not exist" in msg
    assert not calls
    with pytest.raises(BadVideoError):
        m.loglikelihood(_mc_reqs(env, [0, 3]))
    assert not calls


def test_bad_video_skip_failures_lose_and_are_recognisable(env, full):
    gold_a = FakeTask(target=0)  # the gold answer is A: the failure must not pick it
    reqs = _instances(
        "loglikelihood",
        [(_text(env["docs"][i]), c, gold_a.doc_to_visual, i, "t", "test") for i in (0, 3) for c in "ABC"],
    )
    out = full.loglikelihood(reqs)
    ok, bad = out[:3], out[3:]
    assert all(v < FAILED_LOSS / 2 for v, _ in ok)
    assert bad == [(FAILED_GOLD_LOSS, False), (FAILED_LOSS, False), (FAILED_LOSS, False)]
    lls = np.array([v for v, _ in bad])
    assert int(np.argmin(lls)) != 0 and int(np.argmin(lls / np.array([1.0, 1.0, 1.0]))) != 0
    row = {"doc_id": 3, "filtered_resps": [[str(v), str(g)] for v, g in bad], "acc": 0.0}
    assert row_failure(row)[0] and not row_failure({"filtered_resps": [[str(v), str(g)] for v, g in ok]})[0]

    gen = full.generate_until(
        _instances(
            "generate_until",
            [(_text(env["docs"][3]), {"max_new_tokens": 2}, gold_a.doc_to_visual, 3, "t", "test")],
        )
    )
    assert gen[0].startswith("[dna_vlm:failed] B | ") and "missing.mp4" in gen[0]
    failed, reason = row_failure({"filtered_resps": gen[0]})
    assert failed and "missing.mp4" in reason
    assert row_failure({"resps": [["fine", gen[0]]]})[0]  # multi-round: any round
    assert not any(c in "ABCDE" for c in failed_response("VideoError: /Data/A.mp4"))
    fails = [f for f in full.provenance["failures"] if f["doc_id"] == 3]
    assert fails and fails[0]["task"] == "t" and fails[0]["path"].endswith("missing.mp4")


# ------------------------------------------------------------------------------------------------ visuals


def test_frames_belong_to_their_video_not_the_doc_position(env, full):
    """Two tasks whose doc ids collide get each their own video's frames (and outputs)."""
    swapped = list(reversed(env["docs"][:2]))
    full.task_dict["u"] = {"test": swapped}
    try:
        a = full.visuals.load(_gen_reqs(env, [0])[0].args, env["docs"][0])
        b = full.visuals.load(_gen_reqs(env, [0], task="u")[0].args, swapped[0])
        assert not np.array_equal(a.frames, b.frames)
        alone_u = full.loglikelihood(_mc_reqs(env, [0], task="u"))
        together = full.loglikelihood(_mc_reqs(env, [0]) + _mc_reqs(env, [0], task="u"))
        assert together[3:] == alone_u
        assert together[:3] != together[3:]
    finally:
        full.task_dict["u"] = {"test": env["docs"][:2]}


def test_image_list_visuals_are_sampled_evenly_and_placeholders_removed(env, full):
    from PIL import Image

    images = [Image.new("RGB", (24, 24), (i * 20, 0, 0)) for i in range(10)]
    context = "".join(f"<image>subtitle {i}\n" for i in range(10)) + "What is shown?"
    reqs = _instances("generate_until", [(context, {"max_new_tokens": 2}, lambda d: images, 0, "t", "test")])
    x = full.visuals.load(reqs[0].args, env["docs"][0])
    assert x.frames.shape[0] == 4 and "<image>" not in x.context and "subtitle 9" in x.context
    assert [int(f[0, 0, 0]) for f in x.frames] == [20, 60, 120, 160]  # images 1, 3, 6, 8 of 10
    out = full.generate_until(reqs)
    assert isinstance(out[0], str) and not out[0].startswith("[dna_vlm:failed]")
    assert isinstance(
        full.loglikelihood(_instances("loglikelihood", [(context, "A", lambda d: images, 0, "t", "test")]))[
            0
        ][0],
        float,
    )


def test_until_stops_generation(env, full, monkeypatch):
    gk = {"max_new_tokens": 12, "until": []}
    free = full.generate_until(_gen_reqs(env, [0], gk=gk))[0]
    assert len(free) > 2, free
    stop = free[1:3]
    lengths = []
    original = full._model.generate

    def spy(*a, **k):
        out = original(*a, **k)
        lengths.append(out.shape[1] - k["input_ids"].shape[1])
        return out

    monkeypatch.setattr(full._model, "generate", spy)
    full.generate_until(_gen_reqs(env, [0], gk=gk))
    cut = full.generate_until(_gen_reqs(env, [0], gk={"max_new_tokens": 12, "until": [stop]}))[0]
    assert lengths[1] < lengths[0] and lengths[0] == 12
    assert cut == free.split(stop)[0].strip()


# ------------------------------------------------------------------------------------------------ provenance


def test_provenance_record_and_reader(env, full, tmp_path):
    p = full.provenance
    assert p["bad_video"] == "skip" and p["controls"]["video"] == "full"
    assert p["base_model"]["model_type"] and len(p["base_model"]["config_sha256"]) == 64
    assert p["frame_sampling"]["num_frames"] == 4 and p["patch_table"] == [] and p["dna_vlm_version"]
    samples = tmp_path / "m" / "2026-01-01T00-00-00.1_samples_videomme.jsonl"
    samples.parent.mkdir()
    samples.write_text("{}\n")
    assert read_provenance(samples) is None
    results = samples.with_name("2026-01-01T00-00-00.1_results.json")
    results.write_text(json.dumps({"config": {"dna_vlm": {"bad_video": "fail"}}}))
    assert read_provenance(samples) == {"bad_video": "fail"}
    provenance_path(samples).write_text(json.dumps({"bad_video": "skip"}))
    assert provenance_path(samples).name == "2026-01-01T00-00-00.1_dna_vlm.json"
    assert read_provenance(samples) == {"bad_video": "skip"}  # the file beside wins
    provenance_path(samples).write_text("{")
    with pytest.raises(ValueError, match=r"dna_vlm\.json"):
        read_provenance(samples)


def test_patched_model_provenance_has_table_and_weights(env, tmp_path):
    import dna_vlm
    from dna_vlm.runs.loading import load_model

    model, _ = load_model(pretrained=str(env["tiny"]))
    dna_vlm.patch(model)
    dna_vlm.save_dna(model, tmp_path / "dna")
    m = _model(env, dna=str(tmp_path / "dna"))
    p = m.provenance
    assert p["patch_table"] and all("module" in r for r in p["patch_table"])
    assert p["dna_options"]["attention"] == "dna" and p["attention"] == "dna"
    assert p["weights"]["files"] and len(p["weights"]["sha256"]) == 64
    assert Path(p["dna_dir"]) == (tmp_path / "dna").resolve()


def test_frame_cache_prefetch_and_seek_model_args(env, full, tmp_path):
    """frame_cache=DIR, prefetch=N, seek=exact give the same outputs as the defaults; a second model reads
    the first one's cache; seek=keyframe runs and is recorded."""
    reqs = _mc_reqs(env, [0, 1])
    expected = full.loglikelihood(reqs)
    m = _model(env, frame_cache=str(tmp_path / "fc"), prefetch=2, seek="exact")
    assert m.loglikelihood(reqs) == expected
    assert m.visuals.loader.disk.stats.writes == 2 and m.visuals.loader._ahead is None
    again = _model(env, frame_cache=str(tmp_path / "fc"), seek="exact")
    assert again.loglikelihood(reqs) == expected and again.visuals.loader.disk.stats.hits == 2
    p = m.provenance["frame_sampling"]
    assert p["frame_cache"] == str(tmp_path / "fc") and p["prefetch"] == 2 and p["seek"] == "exact"
    key = _model(env, seek="keyframe")
    assert key.provenance["frame_sampling"]["seek"] == "keyframe"
    assert key.visuals.load(reqs[0].args, env["docs"][0]).frames.shape[0] == 4
    with pytest.raises(ValueError, match="seek must be one of"):
        _model(env, seek="fast")


def test_run_lmms_failure_summary_and_bad_video_block(tmp_path):
    from dna_vlm.eval.lmms.run import bad_video_block, failure_summary, format_failures

    log = tmp_path / "x_samples_t.jsonl"
    rows = [
        {"doc_id": 0, "filtered_resps": "B", "acc": 1.0},
        {"doc_id": 1, "filtered_resps": "[dna_vlm:failed] B | videoerror: gone", "acc": 0.0},
        {
            "doc_id": 2,
            "filtered_resps": [[str(FAILED_GOLD_LOSS), "False"], [str(FAILED_LOSS), "False"]],
            "acc": 0.0,
        },
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = failure_summary({"results": {"t": {"acc,none": 0.33, "acc_stderr,none": 0.1}}}, {"t": log})
    assert summary == {"t": {"failed": 2, "total": 3, "scored": {"acc": [0.0, 0.0]}, "doc_ids": [1, 2]}}
    text = format_failures(summary)
    assert "t: 2 of 3 failed" in text and "acc: 0 of 2 scored > 0" in text
    err = "noise\nBadVideoError: dna_vlm: 2 unreadable video(s) (bad_video=fail; fix ...):\n  task=a doc_id=1 path=x: r\n  task=a doc_id=2 path=y: r\nTraceback tail"
    block = bad_video_block(err)
    assert block.count("task=a") == 2 and "Traceback" not in block


def test_short_clip_repeats_frames_instead_of_failing(tmp_path):
    """A clip with fewer frames than max_frames is evaluated (frames repeated, logged), as lmms-eval's own
    loaders do, rather than failing the doc; the repeat policy is part of the cache key's sampling."""
    import numpy as np
    from dna_vlm.eval.lmms.visuals import FrameLoader, Visual

    from dna_vlm.video.write import write_video

    clip = write_video(tmp_path / "short.mp4", np.full((4, 32, 32, 3), 90, np.uint8), fps=4)
    loader = FrameLoader(max_frames=8, fps=None)
    frames = loader.frames(Visual("video", str(clip)))
    assert frames.shape[0] == 8 and loader.sampling()["short"] == "repeat"
