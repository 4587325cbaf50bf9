"""The public patch API: report, errors (double patch, unsupported model, bad layers, mismatched checkpoints),
dna_parameters, PEFT wrapping (patch -> get_peft_model -> mark_dna_trainable -> save_dna), bare towers."""

from __future__ import annotations

import json

import pytest
import torch

import dna_vlm
from dna_vlm import (
    AlreadyPatchedError,
    CheckpointMismatchError,
    NotPatchedError,
    UnsupportedModelError,
)
from dna_vlm.patching import (
    PatchState,
    adapter_named,
    dna_layers,
    dna_named_parameters,
    mark_dna_trainable,
    patch_state,
)
from dna_vlm.tiny import families as F


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _perturb(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dna_vlm.dna_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------- report
def test_report_lists_modules_params_and_prints_a_table():
    model, _ = F.build("llava_onevision")
    report = dna_vlm.patch(model, layers="last:1")
    assert report.family == "siglip" and report.model_type == "llava_onevision"
    assert report.attention_class == "SiglipAttention"
    assert len(report.modules) == 1
    assert report.modules[0].startswith("model.vision_tower.") and report.modules[0].endswith(
        "layers.1.self_attn"
    )
    assert report.towers == ["model.vision_tower"]
    names = [n for n, _ in dna_named_parameters(model)]
    assert report.trainable == names
    leaves = ("neg_scale", "q_neg.weight", "q_neg.bias", "v_neg.weight", "v_neg.bias")
    assert sorted(names) == sorted(f"{report.modules[0]}.neg.{p}" for p in leaves)
    # 2 full (32 -> 32) maps with bias + one lambda per head (2 heads)
    assert (
        report.params_added == 2 * (32 * 32 + 32) + 2 == sum(p.numel() for p in dna_vlm.dna_parameters(model))
    )
    text = str(report)
    assert "family=siglip" in text and "model_type=llava_onevision" in text
    assert report.modules[0] in text and "2,114" in text
    assert "1 modules replaced, 2,114 parameters added (5 tensors)" in text
    # the names in the report are the model's own parameter names
    assert set(names) <= dict(model.named_parameters()).keys()


def test_dna_parameters_are_exactly_the_added_ones():
    model, _ = F.build("qwen2_vl")
    before = set(dict(model.named_parameters()))
    dna_vlm.patch(model, neg_branch="lowrank", neg_rank=2, shared_values=True)
    added = set(dict(model.named_parameters())) - before
    assert {n for n, _ in dna_named_parameters(model)} == added
    assert all(".neg." in n for n in added)
    assert len(list(dna_vlm.dna_parameters(model))) == len(added)


def test_supported_model_types_lists_every_family():
    types = set(dna_vlm.supported_model_types())
    assert set(F.model_types()) <= types


# ------------------------------------------------------------------------------------------- errors
def test_double_patch_raises():
    model, _ = F.build("llava")
    dna_vlm.patch(model)
    with pytest.raises(AlreadyPatchedError, match="already has DnA layers"):
        dna_vlm.patch(model)
    assert isinstance(AlreadyPatchedError("x"), ValueError)


def _tiny_idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1),
        image_token_id=120,
    )  # fmt: skip
    return Idefics3ForConditionalGeneration(cfg).eval()


def _tiny_blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=128),
        text_config=OPTConfig(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32),
        num_query_tokens=4,
    )  # fmt: skip
    return Blip2ForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize(
    "make,model_type,attn_class",
    [(_tiny_idefics3, "idefics3", "Idefics3VisionAttention"), (_tiny_blip2, "blip-2", "Blip2Attention")],
)
def test_unsupported_model_raises_documented_error(make, model_type, attn_class):
    model = make()
    with pytest.raises(UnsupportedModelError) as info:
        dna_vlm.patch(model)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.model_type == model_type and err.attention_class == attn_class
    msg = str(err)
    assert model_type in msg and attn_class in msg
    for cls in (
        "SiglipAttention",
        "CLIPAttention",
        "Qwen2_5_VLVisionAttention",
        "VideoLlama3VisionAttention",
    ):
        assert cls in msg
    assert "adapters/" in msg and "dna_vlm.adapters" in msg and "ADAPTERS" in msg  # where to add a family
    assert not dna_vlm.is_patched(model)


@pytest.mark.parametrize("layers", ["last:0", "last:3", "first:1", [2], [-3], [0, 0], [], ["0"]])
def test_bad_layers_raise(layers):
    model, _ = F.build("llava_onevision")
    with pytest.raises(ValueError, match="layers"):
        dna_vlm.patch(model, layers=layers)
    assert not dna_vlm.is_patched(model)


def test_negative_layer_index_and_all():
    model, _ = F.build("llava_onevision")
    report = dna_vlm.patch(model, layers=[-1])
    assert [layer.layer_index for _, layer in dna_layers(model)] == [1]
    assert len(report.modules) == 1
    dna_vlm.unpatch(model)
    assert len(dna_vlm.patch(model, layers="all").modules) == 2


def test_bad_options_raise():
    model, _ = F.build("llava")
    with pytest.raises(ValueError, match="neg_rank"):
        dna_vlm.patch(model, neg_branch="lowrank")
    with pytest.raises(ValueError, match="init"):
        dna_vlm.patch(model, init="nope")
    assert not dna_vlm.is_patched(model)


def test_not_patched_errors():
    model, _ = F.build("llava")
    with pytest.raises(NotPatchedError):
        dna_vlm.unpatch(model)
    with pytest.raises(NotPatchedError):
        dna_vlm.save_dna(model, "/nonexistent/never-written")
    with pytest.raises(NotPatchedError):
        mark_dna_trainable(model)


def test_non_preserving_inits_run():
    model, inputs = F.build("qwen2_vl")
    ref = _logits(model, inputs)
    dna_vlm.patch(model, init="random")
    out = _logits(model, inputs)
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)
    dna_vlm.unpatch(model)
    dna_vlm.patch(model, init="scaled", neg_scale_init=0.1)
    assert torch.isfinite(_logits(model, inputs)).all()


# ------------------------------------------------------------------------------------------- patch state
def test_patch_state_is_typed_and_seen_through_wrappers():
    from peft import LoraConfig, get_peft_model

    model, _ = F.build("llava_onevision")
    assert patch_state(model) is None
    report = dna_vlm.patch(model, layers="last:1", neg_scale_init=0.25)
    state = patch_state(model)
    assert isinstance(state, PatchState)
    assert state.family == "siglip" and state.attention_class == "SiglipAttention"
    assert state.adapter is adapter_named("siglip") and state.adapter.name == "siglip"
    assert state.options == dna_vlm.DnAOptions(neg_scale_init=0.25)
    (rec,) = state.layers
    assert (rec.tower, rec.index, rec.key) == ("model.vision_tower", 1, report.modules[0])
    assert rec.fingerprint and all(
        k.split(".")[0] in ("q_proj", "k_proj", "v_proj", "out_proj") for k in rec.fingerprint
    )
    with pytest.raises(AttributeError):
        state.family = "clip"  # frozen
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_alpha=4))
    assert patch_state(peft_model) is state
    dna_vlm.unpatch(peft_model.unload())
    assert patch_state(model) is None


def test_adapter_named_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown tower family 'nope'") as info:
        adapter_named("nope")
    assert all(name in str(info.value) for name in ("siglip", "clip", "qwen_vl", "videollama3", "internvl"))


def test_unpatch_refusal_leaves_every_layer_patched():
    """unpatch checks all layers before restoring any: a refusal on the last layer changes nothing."""
    from peft import LoraConfig, get_peft_model

    model, _ = F.build("llava_onevision")
    dna_vlm.patch(model)
    target = r".*vision_tower.*layers\.1\.self_attn\.q_proj"  # LoRA inside the last DnA layer only
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target, lora_alpha=4))
    with pytest.raises(NotPatchedError, match="unload"):
        dna_vlm.unpatch(peft_model)
    assert [layer.layer_index for _, layer in dna_layers(peft_model)] == [0, 1]
    assert patch_state(peft_model) is not None


# ------------------------------------------------------------------------------------------- checkpoints
def test_load_dna_refuses_other_architecture(tmp_path):
    src, _ = F.build("llava")
    dna_vlm.patch(src)
    dna_vlm.save_dna(src, tmp_path / "clip")
    other, _ = F.build("llava_onevision")
    with pytest.raises(CheckpointMismatchError, match=r"llava model \(clip tower\).*llava_onevision"):
        dna_vlm.load_dna(other, tmp_path / "clip")
    assert not dna_vlm.is_patched(other)


def test_load_dna_refuses_other_shapes_and_leaves_model_unpatched(tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    src, _ = F.build("llava_onevision")
    dna_vlm.patch(src)
    dna_vlm.save_dna(src, tmp_path / "dna")

    # same model type, wider tower (48 instead of 32)
    cfg = src.config.__class__.from_dict(src.config.to_dict())
    cfg.vision_config.hidden_size = 48
    cfg.vision_config.intermediate_size = 96
    wide = LlavaOnevisionForConditionalGeneration(cfg).eval()
    state = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="different size"):
        dna_vlm.load_dna(wide, tmp_path / "dna")
    assert not dna_vlm.is_patched(wide)
    assert all(torch.equal(v, state[k]) for k, v in wide.state_dict().items())

    # same model type, one vision layer: layer 1 of the checkpoint does not exist
    cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size = 32, 64
    cfg.vision_config.num_hidden_layers = 1
    shallow = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with pytest.raises(CheckpointMismatchError, match="different architecture"):
        dna_vlm.load_dna(shallow, tmp_path / "dna")
    assert not dna_vlm.is_patched(shallow)


def test_load_dna_into_patched_model_and_bad_dirs(tmp_path):
    model, _ = F.build("llava")
    dna_vlm.patch(model)
    dna_vlm.save_dna(model, tmp_path / "dna")
    with pytest.raises(AlreadyPatchedError):
        dna_vlm.load_dna(model, tmp_path / "dna")
    fresh, _ = F.build("llava")
    with pytest.raises(FileNotFoundError, match=r"dna_config\.json"):
        dna_vlm.load_dna(fresh, tmp_path)
    cfg = json.loads((tmp_path / "dna" / "dna_config.json").read_text())
    cfg["format"] = "something-else/9"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dna_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="format"):
        dna_vlm.load_dna(fresh, tmp_path / "bad")
    assert not dna_vlm.is_patched(fresh)


def test_save_dna_writes_only_dna_tensors_when_nothing_else_changed(tmp_path):
    from safetensors.torch import load_file

    model, _ = F.build("internvl")
    dna_vlm.patch(model, layers=[1])
    dna_vlm.save_dna(model, tmp_path)
    tensors = load_file(tmp_path / "dna_weights.safetensors")
    assert set(tensors) == {n for n, _ in dna_named_parameters(model)}
    cfg = json.loads((tmp_path / "dna_config.json").read_text())
    assert cfg["tuned_positive"] == [] and cfg["model_type"] == "internvl"
    assert cfg["layers"] == [{"tower": "model.vision_tower", "name": "encoder.layer.1.attention", "index": 1}]
    # the dna_config.json schema (format dna-vlm/1) that existing run dirs carry
    assert set(cfg) == {
        "format", "dna_vlm_version", "model_type", "family", "attention_class", "options", "layers",
        "tuned_positive", "shapes",
    }  # fmt: skip
    assert cfg["format"] == "dna-vlm/1" and cfg["family"] == "internvl"
    assert cfg["options"] == {
        "init": "preserve", "neg_branch": "full", "neg_rank": None, "shared_values": False,
        "neg_scale_init": 0.5, "scaled_a": 1e-4, "scaled_b": 1e-4, "attention": "dna",
    }  # fmt: skip
    assert cfg["shapes"] == {k: list(v.shape) for k, v in tensors.items()}
    assert not list(tmp_path.glob("*.tmp"))


def test_bare_tower_patch_save_load(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    tower = SiglipVisionModel(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tower(pixel_values=x).last_hidden_state
    report = dna_vlm.patch(tower)
    assert [m.rsplit(".", 3)[-3:] for m in report.modules] == [
        ["layers", "0", "self_attn"],
        ["layers", "1", "self_attn"],
    ]
    assert all(not n.startswith(".") for n in report.modules + report.trainable)
    assert set(report.trainable) <= dict(tower.named_parameters()).keys()
    with torch.no_grad():
        torch.testing.assert_close(tower(pixel_values=x).last_hidden_state, ref, atol=1e-5, rtol=0)
    _perturb(tower)
    with torch.no_grad():
        expected = tower(pixel_values=x).last_hidden_state
    dna_vlm.save_dna(tower, tmp_path)
    torch.manual_seed(0)
    fresh = SiglipVisionModel(cfg).eval()
    dna_vlm.load_dna(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(pixel_values=x).last_hidden_state, expected)


# ------------------------------------------------------------------------------------------- PEFT
def test_peft_flow_patch_then_wrap_then_train_and_save(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, inputs = F.build("llava_onevision")
    dna_vlm.patch(model)
    n_dna = len(list(dna_vlm.dna_parameters(model)))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    # get_peft_model froze the DnA parameters; the helper makes them trainable again
    assert not any(p.requires_grad for p in dna_vlm.dna_parameters(peft_model))
    assert mark_dna_trainable(peft_model) == n_dna
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".neg." in n for n in trainable) and any("lora_" in n for n in trainable)
    assert len(list(dna_vlm.dna_parameters(peft_model))) == n_dna
    with pytest.raises(AlreadyPatchedError):
        dna_vlm.patch(peft_model)

    # the LoRA-wrapped q_proj/v_proj inside DnA layers still run, and gradients reach the DnA parameters
    _perturb(peft_model)
    out = peft_model(**inputs).logits
    out.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dna_vlm.dna_parameters(peft_model))
    with torch.no_grad():
        expected = peft_model(**inputs).logits  # LoRA B starts at zero: the adapter is a no-op so far

    dna_vlm.save_dna(peft_model, tmp_path)
    cfg = json.loads((tmp_path / "dna_config.json").read_text())
    assert cfg["tuned_positive"] == []  # LoRA does not touch the base weights
    fresh, _ = F.build("llava_onevision")
    dna_vlm.load_dna(fresh, tmp_path)
    torch.testing.assert_close(_logits(fresh, inputs), expected, atol=1e-6, rtol=0)

    # unpatch refuses while PEFT's LoRA layers sit inside the DnA layers, and says what to do
    with pytest.raises(NotPatchedError, match="unload"):
        dna_vlm.unpatch(peft_model)
    base = peft_model.unload()
    dna_vlm.unpatch(base)
    assert not dna_vlm.is_patched(base)


def test_peft_tuned_base_weight_is_saved(tmp_path):
    """A positive-branch weight changed under PEFT (e.g. a merged adapter) is saved via its base_layer."""
    from peft import LoraConfig, get_peft_model

    model, _ = F.build("qwen2_vl")
    dna_vlm.patch(model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["qkv"]))
    key, layer = next(iter(dna_layers(peft_model)))
    with torch.no_grad():
        layer.qkv.base_layer.weight.add_(0.05)
    dna_vlm.save_dna(peft_model, tmp_path)
    cfg = json.loads((tmp_path / "dna_config.json").read_text())
    assert cfg["tuned_positive"] == [f"{key}.qkv.weight"]


def test_instance_forward_of_original_is_not_adopted():
    """accelerate's hooks (device_map / offload) replace `forward` on the instance: DnA must not inherit it."""
    model, inputs = F.build("llava")
    ref = _logits(model, inputs)
    for attn in [m for m in model.modules() if type(m).__name__ == "CLIPAttention"]:
        # what accelerate's add_hook_to_module does, in spirit: an instance-level forward
        attn.forward = (lambda f: lambda *a, **k: f(*a, **k))(attn.forward)
    dna_vlm.patch(model)
    _perturb(model)
    assert (_logits(model, inputs) - ref).abs().max() > 1e-4  # the DnA layers really run


@pytest.mark.parametrize("model_type,attr", [("llava", "q_proj"), ("qwen2_vl", "qkv")])
def test_quantized_tower_is_refused_clearly(model_type, attr):
    bnb = pytest.importorskip("bitsandbytes")
    model, _ = F.build(model_type)
    cls = "CLIPAttention" if model_type == "llava" else "VisionAttention"
    attn = [m for m in model.modules() if type(m).__name__ == cls][-1]
    old = getattr(attn, attr)  # the second layer only: patch() fails half-way through
    setattr(attn, attr, bnb.nn.Linear4bit(old.in_features, old.out_features))
    before = dict(model.named_modules())
    with pytest.raises(TypeError, match="quantized"):
        dna_vlm.patch(model)
    assert not dna_vlm.is_patched(model)  # the first layer was put back
    assert dict(model.named_modules()) == before
