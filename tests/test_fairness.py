"""Issue 12: a fair control arm and DnA parameters that train in half precision.

- ``patch(model, attention="softmax")`` installs the same adapter layer as DnA with the negative branch off,
  running the same SDPA call as DnA's positive branch: at init the control arm and the DnA arm give
  BIT-IDENTICAL logits on every family, in fp32 and bf16 (also with DnA's parameters in fp32 master weights);
- the control arm round-trips through save_dna / load_dna and unpatches exactly; the kernel both arms used is
  recorded (:func:`dna_vlm.patching.attention_kernel`);
- DnA's own parameters can be kept in fp32 in a bf16 model (``dna_dtype``) and then get fp32 gradients;
- only vision attention is patched: a bare CLIPTextModel (a causal text encoder) is not a tower.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import dna_vlm
from dna_vlm.patching import attention_kernel, dna_layers, dna_named_parameters, patch_state
from dna_vlm.tiny import families as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cast(model, inputs: dict, dtype: torch.dtype):
    model.to(dtype)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("model_type", F.model_types())
def test_control_and_dna_arms_are_bit_identical_at_init(model_type, dtype):
    model, inputs = F.build(model_type)
    inputs = _cast(model, inputs, DTYPES[dtype])
    control, dna_model, dna_fp32 = model, copy.deepcopy(model), copy.deepcopy(model)
    rep = dna_vlm.patch(control, attention="softmax")
    assert rep.params_added == 0 and rep.trainable == [] and len(rep.modules) >= 2
    assert all(layer.neg is None for _, layer in dna_layers(control))
    dna_vlm.patch(dna_model)
    dna_vlm.patch(dna_fp32, dna_dtype=torch.float32)
    assert {p.dtype for _, p in dna_named_parameters(dna_fp32)} == {torch.float32}
    want = _logits(control, inputs)
    assert want.dtype == DTYPES[dtype] and torch.isfinite(want).all()
    assert torch.equal(_logits(dna_model, inputs), want)
    assert torch.equal(_logits(dna_fp32, inputs), want)
    assert attention_kernel(control) == attention_kernel(dna_model) == "dna_vlm-sdpa"


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_5_vl"])
def test_arms_identical_with_gradients_and_reference_kernel(model_type):
    """The training path (autograd through the combine) and the reference kernel keep the arms identical."""
    model, inputs = F.build(model_type)
    control = copy.deepcopy(model)
    dna_vlm.patch(control, attention="softmax")
    dna_vlm.patch(model)
    with torch.enable_grad():
        a, b = control(**inputs).logits, model(**inputs).logits
    assert b.requires_grad and torch.equal(a, b)
    with dna_vlm.use_impl("reference"):
        assert attention_kernel(model) == "dna_vlm-reference"
        assert torch.equal(_logits(control, inputs), _logits(model, inputs))


def test_control_arm_save_load_unpatch(tmp_path):
    model, inputs = F.build("qwen2_vl")
    stock = _logits(model, inputs)
    assert attention_kernel(model) == "hf-eager"
    dna_vlm.patch(model, attention="softmax")
    assert patch_state(model).options.attention == "softmax"
    want = _logits(model, inputs)
    torch.testing.assert_close(want, stock, atol=1e-5, rtol=0)  # function-preserving, like DnA
    dna_vlm.save_dna(model, tmp_path / "ctrl")
    fresh, _ = F.build("qwen2_vl")
    dna_vlm.load_dna(fresh, tmp_path / "ctrl")
    assert patch_state(fresh).options.attention == "softmax"
    assert all(layer.neg is None for _, layer in dna_layers(fresh))
    assert torch.equal(_logits(fresh, inputs), want)
    dna_vlm.unpatch(fresh)
    assert torch.equal(_logits(fresh, inputs), stock)
    with pytest.raises(ValueError, match="attention"):
        dna_vlm.patch(fresh, attention="linear")


def test_fp32_master_weights_get_fp32_gradients_in_a_bf16_model():
    model, inputs = F.build("llava_onevision")
    inputs = _cast(model, inputs, torch.bfloat16)
    dna_vlm.patch(model, dna_dtype=torch.float32)
    named = dict(dna_named_parameters(model))
    with torch.no_grad():  # move off the preserving start so every DnA parameter gets a gradient
        for n, p in named.items():
            p.add_(0.05 * torch.randn_like(p)) if "v_neg" in n else None
    model(**inputs).logits.float().pow(2).mean().backward()
    for n, p in named.items():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, n
        assert p.grad.abs().sum() > 0, n
    assert dna_vlm.patching.set_dna_dtype(model, torch.bfloat16) == len(named)


def test_bare_clip_text_model_is_not_a_vision_tower():
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = CLIPTextModel(CLIPTextConfig(**small)).eval()
    with pytest.raises(dna_vlm.UnsupportedModelError):
        dna_vlm.patch(text)
    assert not dna_vlm.is_patched(text)
    # a full CLIPModel: only the vision tower's attention is replaced, never the causal text encoder's
    vision = CLIPVisionConfig(**small, image_size=32, patch_size=8)
    both = CLIPModel(
        CLIPConfig(text_config=CLIPTextConfig(**small).to_dict(), vision_config=vision.to_dict())
    )
    report = dna_vlm.patch(both.eval())
    assert report.towers == ["vision_model"] and len(report.modules) == 2
    assert all(key.startswith("vision_model.") for key, _ in dna_layers(both))


def test_causal_attention_is_refused():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8,
    )  # fmt: skip
    tower = SiglipVisionModel(cfg).eval()
    next(m for m in tower.modules() if type(m).__name__ == "SiglipAttention").is_causal = True
    with pytest.raises(TypeError, match="causal"):
        dna_vlm.patch(tower)
    assert not dna_vlm.is_patched(tower)


# ------------------------------------------------------------------------------ lambda moves under bf16
@pytest.fixture(scope="module")
def train_env(tmp_path_factory):
    from train_helpers import make_dataset, tiny_model

    root = tmp_path_factory.mktemp("bf16")
    return {"root": root, "model": str(tiny_model(root)), "data": str(make_dataset(root, n=4))}


def _bf16_run(train_env, out: Path, **kw) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from dna_vlm.train import train

    run = train(
        dict(model=train_env["model"], data=train_env["data"], output=str(out), num_frames=2, batch_size=2,
             max_steps=3, dtype="bfloat16", progress=False, **kw)
    )  # fmt: skip
    return load_file(str(run / "dna" / "dna_weights.safetensors"))


def test_lambda_moves_under_bf16_with_fp32_master_weights(train_env, tmp_path):
    """Issue 12 bug 3: in bf16, AdamW at lr 1e-4 left lambda at exactly 0.5. The trainer keeps DnA's own
    parameters in fp32 (default ``dna_dtype="float32"``): after 3 real steps every lambda has moved."""
    weights = _bf16_run(train_env, tmp_path / "fp32")
    lambdas = {k: v for k, v in weights.items() if k.endswith("neg_scale")}
    assert lambdas and all(v.dtype == torch.float32 for v in weights.values())
    for k, v in lambdas.items():
        assert bool((v != 0.5).all()) and bool(((v - 0.5).abs() < 0.01).all()), (k, v)
    # the bug it fixes, reproduced: the same run with DnA's parameters in the model's bf16
    stuck = _bf16_run(train_env, tmp_path / "bf16", dna_dtype="model")
    assert all(bool((v == 0.5).all()) for k, v in stuck.items() if k.endswith("neg_scale"))


def test_run_config_records_the_attention_kernel(tmp_path):
    from dna_vlm.runs.config import RunConfig

    rc = RunConfig(base_model="m", attention="softmax", num_frames=4, attention_kernel="dna_vlm-sdpa")
    rc.write(tmp_path)
    assert RunConfig.read(tmp_path).attention_kernel == "dna_vlm-sdpa"
    (tmp_path / "run_config.json").write_text(
        '{"format": "dna-vlm-run/1", "base_model": "m", "attention": "dna", "num_frames": 4}'
    )
    assert RunConfig.read(tmp_path).attention_kernel is None  # older run dirs: not recorded
