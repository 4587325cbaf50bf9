"""The planted degradations of the encoder's output (dna_vlm.eval.degrade): the plugin's hook and the probe's
features apply the same mask / scramble to the same video; the scramble cannot be averaged away."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dna_vlm.eval.degrade import Planted, degrade_tokens, random_rotation, token_mask, visual_seed
from dna_vlm.eval.lmms.controls import Controls, ProjectorNoise
from dna_vlm.eval.probe.features import _degraded


def test_token_mask_is_exact_seeded_and_nested_in_size():
    m = token_mask((8, 16), 0.25, seed=3)
    assert m.shape == (8, 16) and m.sum() == 32
    assert np.array_equal(m, token_mask((8, 16), 0.25, seed=3))
    assert not np.array_equal(m, token_mask((8, 16), 0.25, seed=4))
    assert token_mask((4, 4), 0.0, 1).sum() == 0 and token_mask((4, 4), 1.0, 1).all()
    # one permutation per seed: a stronger mask zeroes a superset of a weaker one's tokens
    assert (token_mask((8, 16), 0.5, 3) >= m).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        token_mask((2, 2), 1.5, 0)


def test_mask_zeroes_exactly_the_masked_tokens_and_keeps_the_rest():
    x = torch.randn(4, 9, 6)
    y = degrade_tokens(x, seed=11, mask=0.5)
    m = torch.from_numpy(token_mask((4, 9), 0.5, 11))
    assert torch.equal(y[m], torch.zeros_like(y[m])) and torch.equal(y[~m], x[~m])
    assert torch.equal(degrade_tokens(x, 11), x)  # nothing asked: unchanged


def test_plugin_hook_and_probe_features_mask_the_same_tokens():
    """The hook splits the projector output per video and seeds each by its visual; the probe masks its
    (T, N, D) tokens of the same frames with the same seed: identical tokens."""
    frames = [np.full((4, 8, 8, 3), v, np.uint8) for v in (10, 200)]
    seeds = [visual_seed(f, 0) for f in frames]
    tokens = torch.randn(2 * 4, 5, 3)  # (B*T, N, D): 2 videos of 4 frames
    for kind in ("mask", "scramble"):
        hook = ProjectorNoise.__new__(ProjectorNoise)
        hook.sigma, hook.mask, hook.scramble, hook.seeds = 0.0, 0.0, 0.0, seeds
        setattr(hook, kind, 0.5)
        out = hook._hook(None, (), tokens)
        for i in range(2):
            probe = _degraded(tokens[4 * i : 4 * i + 4].numpy(), seeds[i], Planted(kind, 0.5))
            assert np.array_equal(out[4 * i : 4 * i + 4].numpy(), probe)
        assert not torch.equal(out, tokens)
    assert Planted("mask", 0.25).name == "mask0.25"


def test_planted_names_parse_and_model_args():
    d = Planted.parse("scramble0.5")
    assert d == Planted("scramble", 0.5) == Planted.parse("scramble=0.5")
    assert d.name == "scramble0.5" and d.model_args == {"encoder_scramble": 0.5}
    for bad in ("blur0.5", "scramble", "scramble1.5", "mask0"):
        with pytest.raises(ValueError, match="planted"):
            Planted.parse(bad)


def test_scramble_rotates_exactly_the_chosen_tokens_keeping_their_norms():
    x = torch.randn(4, 9, 16)
    y = degrade_tokens(x, seed=5, scramble=0.5)
    m = torch.from_numpy(token_mask((4, 9), 0.5, 6))  # positions from seed + 1
    assert torch.equal(y[~m], x[~m]) and not torch.allclose(y[m], x[m])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a normalisation layer cannot tell
    rot = random_rotation(16, 7)  # rotation from seed + 2, one for the whole video
    assert torch.allclose(rot @ rot.T, torch.eye(16), atol=1e-5)
    assert torch.allclose(y[m], x[m] @ rot.T, atol=1e-6)


def test_scramble_survives_pooling_where_the_mask_does_not():
    """Why the scramble is the demo's degradation: after mean-pooling (any pooling reader), zeroing 75% of
    tokens that all carry the same evidence leaves its direction intact (cosine 1), while scrambling them
    leaves a mixture dominated by one coherent decoy (cosine ~ 1 - p)."""
    gen = torch.Generator().manual_seed(0)
    evidence = torch.randn(16, generator=gen)
    # every token shows the same attribute
    x = evidence.expand(8, 4, 16) + 0.05 * torch.randn(8, 4, 16, generator=gen)

    def cos(y):
        return float(torch.nn.functional.cosine_similarity(y.mean((0, 1)), evidence, dim=0))

    assert cos(degrade_tokens(x, 3, mask=0.75)) > 0.99
    scrambled = [cos(degrade_tokens(x, s, scramble=0.75)) for s in range(200)]
    assert 0.15 < float(np.mean(scrambled)) < 0.45  # (1 - p) / sqrt((1 - p)^2 + p^2) = 0.32
    assert float(np.mean([cos(degrade_tokens(x, s, scramble=1.0)) for s in range(200)])) < 0.1


def test_encoder_mask_model_arg_is_checked_and_recorded():
    c = Controls.parse("full", 0, 0, "0.5")
    assert c.encoder_mask == 0.5 and c.degrades and c.as_dict()["encoder_mask"] == 0.5
    assert "encoder_mask" not in Controls.parse("full", 0, 0).as_dict()  # old provenance unchanged
    for bad in ("1.5", "-0.1", "x"):
        with pytest.raises(ValueError, match="encoder_mask"):
            Controls.parse("full", 0, 0, bad)
    with pytest.raises(ValueError, match="need a video"):
        Controls.parse("none", 0, 0, 0.5)
    c = Controls.parse("full", 0, 0, 0, "0.25")
    assert c.encoder_scramble == 0.25 and c.degrades and c.as_dict()["encoder_scramble"] == 0.25
    assert "encoder_scramble" not in Controls.parse("full", 0, 0).as_dict()
    with pytest.raises(ValueError, match="encoder_scramble"):
        Controls.parse("full", 0, 0, 0, "2")


def test_cached_rotation_equals_a_fresh_draw():
    """random_rotation is cached (one QR per video, not per scramble strength); the cache changes no value."""
    first = random_rotation(16, 123)
    random_rotation.cache_clear()
    again = random_rotation(16, 123)
    assert torch.equal(again, first) and random_rotation(16, 123) is again


def test_planted_features_only_for_the_planted_arms(tmp_path):
    """extract_features degrades only the arms named in planted_arms, with the values it gives when it
    degrades every arm (the demo plants on the control arm alone)."""
    from dna_vlm.eval.probe.features import extract_features

    from dna_vlm.data.synth import generate_dataset
    from dna_vlm.runs.loading import load_model
    from dna_vlm.tiny.default import build_tiny_model

    data = generate_dataset(tmp_path / "d", n_train=0, n_val=0, n_test=3)
    rows = [json.loads(ln) for ln in Path(data["test"]).read_text().splitlines()]
    videos = [str(tmp_path / "d" / r["video"]) for r in rows]
    model = load_model(pretrained=str(build_tiny_model(tmp_path / "m", seed=0)))
    models, planted = {"a": model, "b": model}, (Planted("scramble", 0.5), Planted("scramble", 1.0))
    every = extract_features(models, videos, 4, "mean", planted=planted)
    only = extract_features(models, videos, 4, "mean", planted=planted, planted_arms=["a"])
    assert set(only) == {"a", "b", "a@scramble0.5", "a@scramble1"}
    assert set(every) == set(only) | {"b@scramble0.5", "b@scramble1"}
    assert all(np.array_equal(only[k], every[k]) for k in only)
    assert not np.array_equal(only["a@scramble1"], only["a"])
