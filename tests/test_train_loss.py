"""The trimmed training loss (LM head only where a label is predicted) equals each family's own loss and
gradients, on tiny configs of the real HF classes."""

import numpy as np
import pytest
import torch

from dna_vlm.data.prompting import build_inputs
from dna_vlm.runs.loading import load_model
from dna_vlm.tiny.default import build_tiny_model, tiny_families
from dna_vlm.train.loss import lm_loss, takes_logits_to_keep


def _videos(n=2, t=4):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (t, 40, 52, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("family", [None, *tiny_families()[1:]])
def test_trimmed_loss_equals_the_models_own_loss_and_gradients(tmp_path, family):
    path = build_tiny_model(tmp_path / "m", family=family) if family else build_tiny_model(tmp_path / "m")
    model, processor = load_model(pretrained=str(path), device="cpu", dtype="float32")
    model.train()
    # answers of different lengths, so rows label different positions
    batch = build_inputs(processor, _videos(), ["What colour is it?", "Which way?"], ["B", "the left one"])
    # VideoLLaMA3's forward has no logits_to_keep: the trainer then uses the model's own loss (trim=False)
    assert takes_logits_to_keep(model) == (family != "video_llama_3")
    if not takes_logits_to_keep(model):
        return
    out = {}
    for trim in (False, True):
        model.zero_grad(set_to_none=True)
        loss = lm_loss(model, dict(batch), trim=trim)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[trim] = (loss.detach(), grads)
    torch.testing.assert_close(out[True][0], model(**batch).loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    assert out[True][1].keys() == out[False][1].keys() and out[True][1]
    for name, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_untrimmed_fallback_without_labels_or_logits_to_keep(tmp_path):
    model, processor = load_model(
        pretrained=str(build_tiny_model(tmp_path / "m")), device="cpu", dtype="float32"
    )
    batch = build_inputs(processor, _videos(1), ["Q?"], ["A"])
    batch["labels"][:] = -100  # nothing labelled: the model's own loss (nan) is returned, not an index error
    assert torch.isnan(lm_loss(model, dict(batch)))

    class NoKeep(torch.nn.Module):
        def forward(self, input_ids=None, labels=None):
            return None

    assert not takes_logits_to_keep(NoKeep())
