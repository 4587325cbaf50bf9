"""Every vision-tower family, on tiny models of the real HF classes: patch is function-preserving on the FULL
model forward (video where the family takes video), generate runs, DnA parameters change outputs and get
gradients, unpatch is bit-exact, save/load round-trips, layer selection and branch options preserve the
function, packed videos do not attend to each other, and eager / sdpa give the same result."""

from __future__ import annotations

import pytest
import torch

import dna_vlm
from dna_vlm.patching import dna_layers, dna_named_parameters
from dna_vlm.tiny import families as F

#: the adapter families this file tests (tests/test_registry.py checks it equals the registry)
#: (every test below runs on each tiny model of tests/families.py; each family there names its adapter)
COVERED_FAMILIES = {"siglip", "clip", "qwen_vl", "videollama3", "internvl"}

MODEL_TYPES = F.model_types()
ATOL = 1e-5


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _perturb_dna(model, seed: int = 1, std: float = 0.3) -> None:
    """Move every DnA parameter away from its function-preserving start (deterministically)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dna_named_parameters(model):
            noise = torch.randn(p.shape, generator=g).to(p)
            p.add_(noise * (std if not name.endswith("neg_scale") else 0.2))


def _perturb_positive(model, seed: int = 2) -> str:
    """Change one positive-branch weight (as tuning would); returns its DnA-layer-relative name."""
    key, layer = next(iter(dna_layers(model)))
    mod_name = layer.positive_modules[0]
    w = getattr(layer, mod_name).weight
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w.add_(torch.randn(w.shape, generator=g).to(w) * 0.1)
    return f"{key}.{mod_name}.weight"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_patch_is_function_preserving_on_full_forward(model_type):
    fam = F.FAMILIES[model_type]
    model, inputs = F.build(model_type)
    assert ("pixel_values_videos" in inputs) == fam.video or model_type == "internvl"
    ref = _logits(model, inputs)
    report = dna_vlm.patch(model)
    assert report.family == fam.adapter
    assert report.model_type == model_type
    n_towers = 2 if model_type == "video_llava" else 1
    assert len(report.modules) == 2 * n_towers  # every tiny tower has 2 attention layers
    torch.testing.assert_close(_logits(model, inputs), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generate_runs_and_matches_unpatched(model_type):
    model, inputs = F.build(model_type)
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=F.PAD)
    with torch.no_grad():
        ref = model.generate(**inputs, **kw)
        dna_vlm.patch(model)
        out = model.generate(**inputs, **kw)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert torch.equal(out, ref)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_dna_parameters_change_output_and_receive_gradients(model_type):
    model, inputs = F.build(model_type)
    ref = _logits(model, inputs)
    dna_vlm.patch(model)
    for p in model.parameters():
        p.requires_grad_(False)
    dna_vlm.patching.mark_dna_trainable(model)

    # At the function-preserving start (V- = 0) training can begin: V- already gets a gradient.
    model(**inputs).logits.float().pow(2).mean().backward()
    for name, p in dna_named_parameters(model):
        if ".v_neg." in name and name.endswith("weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)

    _perturb_dna(model)
    out = model(**inputs).logits
    assert (out.detach() - ref).abs().max() > 1e-4, "DnA parameters do not reach the output"
    out.float().pow(2).mean().backward()
    for name, p in dna_named_parameters(model):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_unpatch_restores_state_dict_exactly(model_type):
    model, _ = F.build(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attn_before = {n: m for n, m in model.named_modules()}
    dna_vlm.patch(model)
    _perturb_dna(model)
    assert set(model.state_dict()) > set(before)  # DnA added keys, kept all the others
    dna_vlm.unpatch(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert {n: m for n, m in model.named_modules()} == attn_before  # the very same module objects
    assert not dna_vlm.is_patched(model)
    dna_vlm.patch(model)  # and it can be patched again


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_load_roundtrip_with_tuned_positive_weights(model_type, tmp_path):
    model, inputs = F.build(model_type, seed=0)
    dna_vlm.patch(model, layers="last:1", neg_branch="lowrank", neg_rank=2)
    _perturb_dna(model)
    tuned = _perturb_positive(model)
    expected = _logits(model, inputs)
    dna_vlm.save_dna(model, tmp_path / "dna")

    config = dna_vlm.checkpoint.read_dna_config(tmp_path / "dna")
    assert config["model_type"] == model_type and config["family"] == F.FAMILIES[model_type].adapter
    assert config["tuned_positive"] == [tuned]
    assert config["options"]["neg_branch"] == "lowrank" and config["options"]["neg_rank"] == 2

    fresh, _ = F.build(model_type, seed=0)
    assert not torch.equal(_logits(fresh, inputs), expected)
    dna_vlm.load_dna(fresh, tmp_path / "dna")
    assert dna_vlm.is_patched(fresh)
    assert torch.equal(_logits(fresh, inputs), expected)
    # saving the loaded model again keeps the tuned positive weight (it still differs from the base model)
    dna_vlm.save_dna(fresh, tmp_path / "again")
    assert dna_vlm.checkpoint.read_dna_config(tmp_path / "again")["tuned_positive"] == [tuned]


OPTIONS = {
    "layers=[0]": dict(layers=[0]),
    "last:1": dict(layers="last:1"),
    "lowrank": dict(neg_branch="lowrank", neg_rank=4),
    "shared_values": dict(shared_values=True),
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_options_are_function_preserving(model_type, option):
    model, inputs = F.build(model_type)
    ref = _logits(model, inputs)
    report = dna_vlm.patch(model, **OPTIONS[option])
    n_towers = 2 if model_type == "video_llava" else 1
    if option == "layers=[0]":
        assert [layer.layer_index for _, layer in dna_layers(model)] == [0] * n_towers
    elif option == "last:1":
        assert [layer.layer_index for _, layer in dna_layers(model)] == [1] * n_towers
    else:
        assert len(report.modules) == 2 * n_towers
    torch.testing.assert_close(_logits(model, inputs), ref, atol=ATOL, rtol=0)
    _perturb_dna(model)
    assert (_logits(model, inputs) - ref).abs().max() > 1e-5


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_sdpa_and_eager_agree(model_type):
    """Models loaded with attn_implementation="eager" and "sdpa" are both preserved by patch, and (where the
    unpatched HF model itself gives the same result under both) agree with each other once DnA is tuned."""
    eager, inputs = F.build(model_type, "eager")
    sdpa, _ = F.build(model_type, "sdpa")
    ref_e, ref_s = _logits(eager, inputs), _logits(sdpa, inputs)
    dna_vlm.patch(sdpa)
    dna_vlm.patch(eager)
    torch.testing.assert_close(_logits(eager, inputs), ref_e, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(sdpa, inputs), ref_s, atol=ATOL, rtol=0)
    _perturb_dna(sdpa)
    _perturb_dna(eager)
    if model_type == "paligemma":  # HF's own eager and sdpa PaliGemma differ (its prefix-LM text mask)
        assert (ref_e - ref_s).abs().max() > ATOL
        return
    torch.testing.assert_close(ref_s, ref_e, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(sdpa, inputs), _logits(eager, inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_type", F.PACKED)
def test_packed_videos_do_not_attend_to_each_other(model_type):
    """Two videos packed in one batch give each the same video features as running it alone."""
    model, _ = F.build(model_type)
    a, b, ab = F.packed_videos(model_type)
    dna_vlm.patch(model)
    _perturb_dna(model)  # make the negative branch matter
    with torch.no_grad():
        fa, fb, fab = (F.video_features(model, x) for x in (a, b, ab))
    assert fab.shape[0] == fa.shape[0] + fb.shape[0]
    torch.testing.assert_close(fab, torch.cat([fa, fb]), atol=ATOL, rtol=0)


def test_qwen2_5_window_layers_are_windowed():
    """Qwen2.5-VL's windowed layer gets the window cu_seqlens (more segments) and the full layer does not;
    the patched model still matches the unpatched one there (checked in the function-preserving tests)."""
    model, inputs = F.build("qwen2_5_vl")
    assert model.config.vision_config.fullatt_block_indexes == [1]
    dna_vlm.patch(model)
    seen = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, kw: seen.__setitem__(m.layer_index, len(kw["cu_seqlens"]) - 1),
            with_kwargs=True,
        )
        for _, layer in dna_layers(model)
    ]
    _logits(model, inputs)
    for h in hooks:
        h.remove()
    t = int(inputs["video_grid_thw"][0, 0])
    assert seen[1] == t  # full attention: one segment per frame group
    assert seen[0] > seen[1]  # windowed attention: several windows per frame group


def _value_rows(attn) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(weight, bias, start row) of an ORIGINAL attention's value map: v_proj, or the v third of a fused qkv."""
    if hasattr(attn, "v_proj"):
        return attn.v_proj.weight, attn.v_proj.bias, 0
    dim = attn.qkv.in_features
    return attn.qkv.weight, attn.qkv.bias, 2 * dim


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_mirrored_negative_branch_equals_scaled_values(model_type):
    """An exact, non-trivial check of the negative branch inside each tower's own forward.

    With Q- = -Q+ (so -s Q- K^T = s Q+ K^T: rotary, qk-norm, masks and packing must treat Q- exactly like Q+),
    V- = V+ and per-head lambda_h, DnA gives (1 - lambda_h) P+ V+: the unpatched model with head h's value
    rows scaled by (1 - lambda_h). A Q- that misses the rotary / norm / packing, a wrong sign or a
    misplaced per-head lambda all break it."""
    lam = torch.tensor([0.25, 0.75])  # tiny towers have 2 heads
    model, inputs = F.build(model_type)
    dna_vlm.patch(model)
    with torch.no_grad():
        for _, layer in dna_layers(model):
            q, v = layer.positive_qv()
            layer.neg.q_neg.weight.copy_(-q.weight)
            layer.neg.q_neg.bias.copy_(-q.bias if q.bias is not None else 0)
            layer.neg.v_neg.weight.copy_(v.weight)
            if v.bias is not None:
                layer.neg.v_neg.bias.copy_(v.bias)
            layer.neg.neg_scale.copy_(lam)
    out = _logits(model, inputs)

    ref_model, _ = F.build(model_type)
    adapter_classes = {c for a in dna_vlm.adapters.ADAPTERS for c in a.attention_classes}
    with torch.no_grad():
        n = 0
        for name, attn in ref_model.named_modules():
            if type(attn).__name__ in adapter_classes and not name.startswith("model.language_model"):
                w, b, start = _value_rows(attn)
                d = attn.head_dim
                for h, lam_h in enumerate(lam.tolist()):
                    rows = slice(start + h * d, start + (h + 1) * d)
                    w[rows] *= 1 - lam_h
                    if b is not None:
                        b[rows] *= 1 - lam_h
                n += 1
        assert n == len(list(dna_layers(model)))
    ref = _logits(ref_model, inputs)
    assert (ref - _logits(F.build(model_type)[0], inputs)).abs().max() > 1e-4  # the scaling matters
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_siglip2_padding_mask_is_honoured(impl):
    """Siglip2 (also claimed by the SigLIP adapter) hands its attention a padding mask: 4-D additive float
    under eager, 4-D bool under sdpa. Padded keys must stay masked in both branches."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    cfg = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4,
        num_patches=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Siglip2VisionModel._from_config(cfg, attn_implementation=impl).eval()
    pv = torch.randn(2, 16, 3 * 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    kw = dict(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=torch.tensor([[4, 4], [3, 4]]))
    with torch.no_grad():
        ref = model(**kw).last_hidden_state
        dna_vlm.patch(model)
        out = model(**kw).last_hidden_state
        torch.testing.assert_close(out[0], ref[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(out[1, :12], ref[1, :12], atol=ATOL, rtol=0)
        _perturb_dna(model)
        a = model(**kw).last_hidden_state[1, :12]
        pv[1, 12:] += 5.0  # padded patches must not influence the real ones
        b = model(**kw).last_hidden_state[1, :12]
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_flash_style_2d_padding_mask_matches_4d_mask():
    """Under flash_attention_2 HF passes a (B, N) padding mask (or None) instead of a 4-D one."""
    model, _ = F.build("llava_onevision")
    dna_vlm.patch(model)
    _perturb_dna(model)
    _, layer = next(iter(dna_layers(model)))
    x = torch.randn(2, 6, 32)
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[1, 4:] = 0
    with torch.no_grad():
        out2d, _ = layer(x, attention_mask=pad)
        out4d, _ = layer(x, attention_mask=pad.bool()[:, None, None, :])
        short, _ = layer(x[1:, :4], attention_mask=None)
    torch.testing.assert_close(out2d, out4d, atol=0, rtol=0)
    torch.testing.assert_close(out2d[1, :4], short[0], atol=ATOL, rtol=0)
