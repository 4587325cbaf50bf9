"""The planted degradations of the encoder's output (dna_vlm.eval.degrade): the plugin's hook and the probe's
features apply the same mask to the same video."""

import numpy as np
import pytest
import torch
from dna_vlm.eval.degrade import degrade_tokens, token_mask, visual_seed
from dna_vlm.eval.lmms.controls import Controls, ProjectorNoise
from dna_vlm.eval.probe.features import _masked, mask_name


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
    hook = ProjectorNoise.__new__(ProjectorNoise)
    hook.sigma, hook.mask, hook.seeds = 0.0, 0.5, seeds
    out = hook._hook(None, (), tokens)
    for i in range(2):
        probe = _masked(tokens[4 * i : 4 * i + 4].numpy(), seeds[i], 0.5)
        assert np.array_equal(out[4 * i : 4 * i + 4].numpy(), probe)
    assert mask_name(0.25) == "mask0.25"


def test_encoder_mask_model_arg_is_checked_and_recorded():
    c = Controls.parse("full", 0, 0, "0.5")
    assert c.encoder_mask == 0.5 and c.degrades and c.as_dict()["encoder_mask"] == 0.5
    assert "encoder_mask" not in Controls.parse("full", 0, 0).as_dict()  # old provenance unchanged
    for bad in ("1.5", "-0.1", "x"):
        with pytest.raises(ValueError, match="encoder_mask"):
            Controls.parse("full", 0, 0, bad)
    with pytest.raises(ValueError, match="need a video"):
        Controls.parse("none", 0, 0, 0.5)
