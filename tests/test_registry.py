"""Registry meta-test: every adapter implements the interface, every family has a test and a tiny model,
and each family's tiny model is picked by the right adapter, with its tower and projector found."""

from __future__ import annotations

import importlib

import pytest
import test_adapters
from dna_vlm.adapters import ADAPTERS, Adapter, DnALayer
from torch import nn

import dna_vlm
from dna_vlm.patching import find_adapter
from dna_vlm.tiny import families as F

#: the model types the issue lists; each needs a tiny model in tests/families.py
REQUIRED_MODEL_TYPES = {
    "llava_onevision", "llava_next_video", "video_llava", "llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
    "video_llama_3", "internvl",
}  # fmt: skip


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.__name__)
def test_adapter_implements_the_interface(adapter):
    assert issubclass(adapter, Adapter)
    assert isinstance(adapter.name, str) and adapter.name
    for attr in ("attention_classes", "model_types", "tower_paths", "projector_paths"):
        value = getattr(adapter, attr)
        assert isinstance(value, tuple) and value and all(isinstance(v, str) and v for v in value), attr
    layer = adapter.layer_cls
    assert issubclass(layer, DnALayer) and layer is not DnALayer
    for method in ("forward", "positive_qv"):
        assert getattr(layer, method) is not getattr(DnALayer, method), (
            f"{layer.__name__}.{method} not implemented"
        )
    assert layer.positive_modules, (
        f"{layer.__name__}.positive_modules is empty (save_dna could not see tuning)"
    )


def test_adapter_names_unique_and_attention_classes_disjoint():
    names = [a.name for a in ADAPTERS]
    assert len(names) == len(set(names))
    classes = [c for a in ADAPTERS for c in a.attention_classes]
    assert len(classes) == len(set(classes))


def test_every_family_has_tests_and_a_tiny_model():
    registry = {a.name for a in ADAPTERS}
    assert registry == test_adapters.COVERED_FAMILIES
    assert {f.adapter for f in F.FAMILIES.values()} == registry
    assert set(F.FAMILIES) >= REQUIRED_MODEL_TYPES


def test_model_types_are_advertised():
    supported = set(dna_vlm.supported_model_types())
    assert set(F.FAMILIES) <= supported
    for a in ADAPTERS:
        assert set(a.model_types) <= supported


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.__name__)
def test_attention_classes_exist_in_transformers(adapter):
    """Guard against renamed HF classes: each class name is defined by some transformers modeling module."""
    import transformers.models as tm

    modules = {
        "SiglipAttention": "siglip", "Siglip2Attention": "siglip2", "CLIPAttention": "clip",
        "VisionAttention": "qwen2_vl", "Qwen2_5_VLVisionAttention": "qwen2_5_vl",
        "Qwen3VLVisionAttention": "qwen3_vl", "Qwen3VLMoeVisionAttention": "qwen3_vl_moe",
        "VideoLlama3VisionAttention": "video_llama_3", "InternVLVisionAttention": "internvl",
    }  # fmt: skip
    for cls in adapter.attention_classes:
        assert cls in modules, f"add {cls} to this table"
        mod = importlib.import_module(f"{tm.__name__}.{modules[cls]}.modeling_{modules[cls]}")
        assert isinstance(getattr(mod, cls, None), type), f"transformers no longer defines {cls}"


@pytest.mark.parametrize("model_type", F.model_types())
def test_family_model_is_found_by_its_adapter(model_type):
    model, _ = F.build(model_type)
    adapter, towers = find_adapter(model)
    assert adapter.name == F.FAMILIES[model_type].adapter
    assert model.config.model_type in adapter.model_types
    assert towers and all(adapter.attention_modules(t) for _, t in towers)
    if model_type == "video_llava":
        assert sorted(p for p, _ in towers) == ["model.image_tower", "model.video_tower"]
    projector = adapter.find_projector(model)
    assert isinstance(projector, nn.Module)
    tower_ids = {id(m) for _, t in towers for m in t.modules()}
    if adapter.name != "qwen_vl":  # Qwen's merger lives inside the tower
        assert id(projector) not in tower_ids
    dna_vlm.patch(model)  # once patched (attention classes replaced), the recorded family is used
    assert find_adapter(model)[0] is adapter
    assert [p for p, _ in find_adapter(model)[1]] == [p for p, _ in towers]
