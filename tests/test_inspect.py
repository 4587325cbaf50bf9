"""dna-vlm inspect: principal angles, entropies and an end-to-end run on the tiny patched model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from dna_vlm.eval.inspection.capture import attention_probs, capture_attention, is_capturing
from dna_vlm.eval.inspection.run import (
    attention_entropy,
    inspect_model,
    principal_angles_deg,
    run_vision,
    value_maps,
)
from train_helpers import write_dna_run

import dna_vlm
from dna_vlm.cli import main as cli_main
from dna_vlm.kernel import dna_attention_reference


def test_principal_angles_known_cases():
    e = np.eye(6)
    assert principal_angles_deg(e[:2], e[2:4]) == pytest.approx([90.0, 90.0])
    assert principal_angles_deg(e[:3], 5 * np.diag([1, 2, 3]) @ e[:3]) == pytest.approx([0, 0, 0], abs=1e-6)
    # the row space, not the rows: a mixed basis of the same plane is still 0 degrees
    mix = np.array([[1.0, 1.0, 0, 0, 0, 0], [1.0, -2.0, 0, 0, 0, 0]])
    assert principal_angles_deg(e[:2], mix) == pytest.approx([0, 0], abs=1e-6)
    # one shared direction, one orthogonal: ascending order
    b = np.stack([e[0], e[3]])
    assert principal_angles_deg(e[:2], b) == pytest.approx([0.0, 90.0], abs=1e-6)
    # 45 degrees in a plane
    assert principal_angles_deg(e[:1], (e[0] + e[1])[None]) == pytest.approx([45.0])
    assert principal_angles_deg(e[:2], np.zeros((2, 6))) is None


def test_entropy_uniform_and_one_hot():
    n = 37
    p = torch.full((2, 3, 5, n), 1.0 / n)
    assert attention_entropy(p) == pytest.approx(torch.full((2, 3, 5), math.log(n)), abs=1e-5)
    one_hot = torch.zeros(1, 1, 4, 9)
    one_hot[..., 2] = 1.0
    assert attention_entropy(one_hot).abs().max() < 1e-6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dna_vlm.tiny.default import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _load(path):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(
        path
    )


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dna_vlm.dna_layers(model):
            for p in layer.neg.parameters():
                if p.dim() == 2:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            layer.neg.neg_scale.copy_(torch.linspace(0.1, 0.9, layer.neg.neg_scale.numel()))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from dna_vlm.video.write import write_video

    frames = np.zeros((10, 48, 64, 3), np.uint8)
    for t in range(10):
        frames[t, 12:24, 4 * t : 4 * t + 12] = (255, 40, 40)
        frames[t, 30:40, 40:52] = (40, 40, 255)
    return write_video(tmp_path_factory.mktemp("vid") / "moving.mp4", frames, fps=5)


def test_value_subspace_angles_per_branch(tiny):
    model, _ = _load(tiny)
    dna_vlm.patch(model)  # preserve init: V- = 0 -> undefined angles
    r = inspect_model(model, None, [])
    assert r["layers"][0]["angles"]["status"] == "zero_v_neg"
    assert r["layers"][0]["angles"]["per_head"][0]["mean_deg"] is None
    # set V- of head 0 to V+ (0 degrees) and of head 1 to an orthogonal complement (90 degrees)
    _, layer = next(iter(dna_vlm.dna_layers(model)))
    w_pos, _, kind = value_maps(layer)
    assert kind == "full"
    d = layer.head_dim
    with torch.no_grad():
        wn = layer.neg.v_neg.weight
        wn.normal_()
        wn[:d] = 3 * w_pos[:d]
        q, _ = torch.linalg.qr(w_pos[d : 2 * d].T, mode="complete")  # (C, C): first d columns span head 1
        wn[d : 2 * d] = q[:, d : 2 * d].T
    r = inspect_model(model, None, [], layers=[0])
    heads = r["layers"][0]["angles"]["per_head"]
    assert heads[0]["max_deg"] == pytest.approx(0.0, abs=1e-3)
    assert heads[1]["min_deg"] == pytest.approx(90.0, abs=1e-3)
    assert len(heads[1]["angles_deg"]) == d
    dna_vlm.unpatch(model)
    dna_vlm.patch(model, neg_branch="lowrank", neg_rank=2, init="random")
    r = inspect_model(model, None, [], layers="last:1")
    h = r["layers"][0]["angles"]["per_head"][0]
    assert len(h["angles_deg"]) == 2 and 0 <= h["min_deg"] <= h["max_deg"] <= 90
    dna_vlm.unpatch(model)
    dna_vlm.patch(model, shared_values=True)
    r = inspect_model(model, None, [])
    assert r["layers"][0]["angles"]["status"] == "shared_values"
    assert r["layers"][0]["angles"]["per_head"][0]["max_deg"] == 0.0


def test_inspect_end_to_end(tiny, video, tmp_path):
    model, processor = _load(tiny)
    dna_vlm.patch(model)
    _perturb(model)
    frames_arr = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    r = inspect_model(model, processor, [video, frames_arr], tmp_path / "out", num_frames=4)
    n_layers = len(list(dna_vlm.dna_layers(model)))
    assert len(r["layers"]) == n_layers
    e = r["layers"][-1]
    H = e["num_heads"]
    assert len(e["lambda"]) == H and e["lambda"][0] == pytest.approx(0.1)
    ent = e["entropy"]
    n_tokens = ent["keys"][0]
    assert ent["max"] == pytest.approx(math.log(n_tokens))
    for branch in ("positive", "negative"):
        assert len(ent[branch]) == H and all(0 < x <= math.log(n_tokens) + 1e-5 for x in ent[branch])
    assert len(ent["per_video"]) == 2
    assert r["videos"][0]["frames"] == 4 and r["videos"][1]["frames"] == 3
    assert not any(is_capturing(layer) for _, layer in dna_vlm.dna_layers(model))
    out = tmp_path / "out"
    saved = json.loads((out / "inspect.json").read_text())
    assert saved["summary"]["layers"] == n_layers and saved["videos"][0]["overlay"].endswith(".png")
    for png in ["weights.png", "entropy.png", saved["videos"][0]["overlay"], saved["videos"][1]["overlay"]]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (out / "inspect.md").read_text()
    assert "principal angle" in md and "## Definitions" in md


def test_entropy_recorded_matches_direct_softmax(tiny):
    """The reduced capture equals the entropy of the full maps capture_attention records."""
    model, processor = _load(tiny)
    dna_vlm.patch(model)
    _perturb(model, seed=1)
    frames = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    r = inspect_model(model, processor, [frames], layers=[0])
    _, layer = next(iter(dna_vlm.dna_layers(model)))
    with capture_attention([layer]) as maps:
        run_vision(model, processor, frames)
    assert not is_capturing(layer)
    ref = attention_entropy(maps[0].p_neg).mean(dim=(0, 2))
    assert r["layers"][0]["entropy"]["negative"] == pytest.approx(ref.tolist(), abs=1e-5)


def test_cli_inspect_run_dir(tiny, video, tmp_path, capsys):
    model, _ = _load(tiny)
    dna_vlm.patch(model)
    _perturb(model, seed=2)
    run = tmp_path / "run"
    write_dna_run(model, run, tiny)
    out = tmp_path / "insp"
    rc = cli_main(
        ["inspect", "--run", str(run), "--videos", str(video), "--num-frames", "3", "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    assert "mean V+/V- angle" in capsys.readouterr().out
    r = json.loads((out / "inspect.json").read_text())
    assert r["summary"]["angle_status"] == ["ok"] and r["summary"]["mean_lambda"] == pytest.approx(0.5)
    # an unpatched model is refused with a clear message
    rc = cli_main(["inspect", "--model", str(tiny), "--out", str(tmp_path / "x")])
    assert rc == 2 and "DnA-patched" in capsys.readouterr().err


def test_inspect_packed_tower_qwen2_5_vl(tmp_path):
    """Packed (cu_seqlens) towers: entropies per attention segment (Qwen2.5-VL windows vs full layers)."""
    from transformers import Qwen2VLVideoProcessor

    from dna_vlm.tiny import families as F

    model, _ = F.build("qwen2_5_vl")
    dna_vlm.patch(model)
    _perturb(model, seed=3)
    vp = Qwen2VLVideoProcessor(
        patch_size=F.PATCH,
        temporal_patch_size=F.TEMPORAL,
        merge_size=F.MERGE,
        min_pixels=256,
        max_pixels=4096,
    )
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    r = inspect_model(model, vp, [frames], tmp_path)
    full = set(model.config.vision_config.fullatt_block_indexes)
    for e in r["layers"]:
        (nk,) = e["entropy"]["keys"]
        assert nk == (64 if e["index"] in full else 4)  # 2 temporal x 8x8 patches; 8px windows = 2x2 patches
        assert e["entropy"]["max"] == pytest.approx(math.log(nk))
        assert all(0 < x <= math.log(nk) + 1e-5 for x in e["entropy"]["positive"] + e["entropy"]["negative"])
    assert r["videos"][0]["overlay"] is None  # no plain patch grid in a packed tower's token order
    assert (tmp_path / "inspect.json").is_file() and (tmp_path / "entropy.png").is_file()


@pytest.mark.parametrize("masked", [None, "bool", "additive"])
def test_attention_probs_are_the_kernels(masked):
    """P+ V+ - lambda P- V- with the captured probabilities is the reference kernel's output."""
    g = torch.Generator().manual_seed(0)
    B, H, N, d = 2, 3, 7, 4
    q, qn, k, v, vn = (torch.randn(B, H, N, d, generator=g) for _ in range(5))
    lam = torch.rand(H, generator=g)
    mask = None
    if masked:
        mask = torch.rand(B, 1, N, N, generator=g) > 0.3
        mask[..., 0] = True  # every query keeps a key
        if masked == "additive":
            mask = torch.zeros(mask.shape).masked_fill(~mask, -1e4)
    p_pos, p_neg = attention_probs(q, qn, k, mask, scale=0.3)
    assert p_pos.shape == (B, H, N, N) and torch.allclose(p_neg.sum(-1), torch.ones(B, H, N))
    ref = dna_attention_reference(q, qn, k, v, vn, lam, mask, scale=0.3)
    torch.testing.assert_close(p_pos @ v - lam.view(1, -1, 1, 1) * (p_neg @ vn), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_5_vl"])
def test_capture_leaves_the_forward_bit_identical_and_unhooks(model_type):
    from dna_vlm.tiny import families as F

    model, inputs = F.build(model_type)
    dna_vlm.patch(model)
    _perturb(model, seed=4)
    layers = [layer for _, layer in dna_vlm.dna_layers(model)]
    with torch.no_grad():
        ref = model(**inputs).logits
        with capture_attention(layers) as maps:
            assert all(is_capturing(layer) for layer in layers)
            with pytest.raises(RuntimeError, match="already being captured"), capture_attention(layers[:1]):
                pass
            out = model(**inputs).logits
        assert torch.equal(out, ref)
        assert {m.position for m in maps} == set(range(len(layers)))
        assert [m.layer_index for m in maps[: len(layers)]] == [layer.layer_index for layer in layers]
        packed = model_type.startswith("qwen")
        assert all((m.cu_seqlens is not None) == packed for m in maps)
        assert not any(is_capturing(layer) for layer in layers)
        with pytest.raises(ValueError, match="boom"), capture_attention(layers):
            raise ValueError("boom")
        assert not any(is_capturing(layer) for layer in layers)  # restored on errors too
        assert torch.equal(model(**inputs).logits, ref)
