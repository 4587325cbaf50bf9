"""The low-rank branch's score-reuse kernel (``dna_attention_lowrank_scores``) against the reference kernel on
the materialised Q- / V-, and where the layers use it: CPU inference of CLIP / SigLIP towers and
``DnAAttention``; never with gradients, masks, ``use_impl("fused")``, InternVL's q-norm or an observer."""

from __future__ import annotations

import pytest
import torch
from dna_vlm.eval.inspection.capture import capture_attention

import dna_vlm
import dna_vlm.attention as module
from dna_vlm.attention import DnAAttention
from dna_vlm.kernel import dna_attention_lowrank_scores, dna_attention_reference, use_impl
from dna_vlm.patching import dna_layers
from dna_vlm.tiny import families as F

DT = torch.float64


def _factors(B=2, H=3, Nq=7, Nk=9, d=8, dv=6, r=2, shared=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=DT)

    q, k = t(B, H, Nq, d), t(B, H, Nk, d)
    v = t(B, H, Nk, d if shared else dv)
    a_q, b_q = t(B, Nq, r), t(H, d, r)
    a_v, b_v = (None, None) if shared else (t(B, Nk, r), t(H, dv, r))
    lam = t(H)
    return q, k, v, a_q, b_q, a_v, b_v, lam


def _materialised(q, v, a_q, b_q, a_v, b_v):
    """q_neg[b, h] = q[b, h] + a_q[b] b_q[h]^T, v_neg[b, h] = a_v[b] b_v[h]^T (or v): the plain formula."""
    q_neg = q + torch.einsum("bnr,hdr->bhnd", a_q, b_q)
    v_neg = v if a_v is None else torch.einsum("bnr,hdr->bhnd", a_v, b_v)
    return q_neg, v_neg


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("step_bytes", [1, 1 << 30])  # one head per step / all heads in one step
@pytest.mark.parametrize("scale", [None, 0.3])
def test_equals_reference_on_materialised_branch(shared, step_bytes, scale):
    q, k, v, a_q, b_q, a_v, b_v, lam = _factors(shared=shared)
    q_neg, v_neg = _materialised(q, v, a_q, b_q, a_v, b_v)
    want = dna_attention_reference(q, q_neg, k, v, v_neg, lam, scale=scale)
    got = dna_attention_lowrank_scores(q, k, v, a_q, b_q, a_v, b_v, lam, scale=scale, step_bytes=step_bytes)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert got.transpose(1, 2).is_contiguous()  # (B, N, H, dv) in memory: merging heads is a view


def test_forward_only_and_clear_errors():
    q, k, v, a_q, b_q, a_v, b_v, lam = _factors()
    with pytest.raises(RuntimeError, match="forward-only"):
        dna_attention_lowrank_scores(q, k, v, a_q, b_q, a_v, b_v, lam.requires_grad_())
    lam = lam.detach()
    with pytest.raises(ValueError, match=r"b_q has shape \(3, 8, 5\), expected \(3, 8, 2\)"):
        dna_attention_lowrank_scores(q, k, v, a_q, torch.zeros(3, 8, 5, dtype=DT), a_v, b_v, lam)
    with pytest.raises(ValueError, match="both a_v and b_v, or neither"):
        dna_attention_lowrank_scores(q, k, v, a_q, b_q, a_v, None, lam)
    with pytest.raises(TypeError, match=r"a_q has dtype torch\.float32"):
        dna_attention_lowrank_scores(q, k, v, a_q.float(), b_q, a_v, b_v, lam)
    with pytest.raises(TypeError, match="use dna_attention for half types"):
        half = [t.bfloat16() for t in (q, k, v, a_q, b_q, a_v, b_v)]
        dna_attention_lowrank_scores(*half, lam)
    with pytest.raises(ValueError, match="positive finite"):
        dna_attention_lowrank_scores(q, k, v, a_q, b_q, a_v, b_v, lam, scale=-0.1)


@pytest.fixture
def calls(monkeypatch):
    """How many times the layers called the score-reuse kernel (the module's own reference, wrapped)."""
    seen = []
    real = module.dna_attention_lowrank_scores

    def spy(*args, **kwargs):
        seen.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "dna_attention_lowrank_scores", spy)
    return seen


@pytest.mark.parametrize("shared", [False, True])
def test_dnaattention_uses_it_only_for_cpu_inference(calls, shared):
    torch.manual_seed(0)
    attn = DnAAttention(
        32, 4, qkv_bias=True, neg_branch="lowrank", neg_rank=3, shared_values=shared, init="random"
    )
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        fast = attn(x)
        assert len(calls) == 1
        with use_impl("fused"):
            fused = attn(x)
        with use_impl("reference"):
            attn(x)
        attn(x, attn_mask=torch.ones(10, 10, dtype=torch.bool))
        assert len(calls) == 1  # the explicit impls and a mask take the SDPA path
    torch.testing.assert_close(fast, fused, atol=1e-6, rtol=0)
    out = attn(x)  # with gradients: the fused path, which has a backward
    out.sum().backward()
    assert len(calls) == 1 and attn.neg.q_neg_b.weight.grad is not None
    full = DnAAttention(32, 4, init="random")
    with torch.no_grad():
        full(x)
    assert len(calls) == 1  # the full branch has no rank-r structure to reuse


SEPARATE_QKV = [t for t in F.model_types() if F.FAMILIES[t].adapter in ("clip", "siglip", "internvl")]


@pytest.mark.parametrize("model_type", SEPARATE_QKV)
def test_towers_use_it_where_q_is_untransformed(calls, model_type):
    model, inputs = F.build(model_type)
    dna_vlm.patch(model, neg_branch="lowrank", neg_rank=2, init="random")
    with torch.no_grad():
        fast = model(**inputs).logits
        with use_impl("fused"):
            fused = model(**inputs).logits
    n_layers = len(list(dna_layers(model)))
    if F.FAMILIES[model_type].adapter == "internvl":
        assert calls == []  # q-norm on both queries: S- is no rank-r update of S+
    else:
        assert len(calls) >= n_layers  # every patched layer, at least once
    torch.testing.assert_close(fast, fused, atol=1e-5, rtol=0)


def test_observed_layers_keep_the_kernel_call(calls):
    """``dna-vlm inspect`` wraps run_kernel: the observed layer must go through it, the others need not."""
    model, inputs = F.build("llava_onevision")
    dna_vlm.patch(model, neg_branch="lowrank", neg_rank=2, init="random")
    layers = [layer for _, layer in dna_layers(model)]
    with torch.no_grad(), capture_attention(layers[:1]) as maps:
        model(**inputs)
    assert len(maps) >= 1 and maps[0].layer_index == layers[0].layer_index
    assert len(calls) >= len(layers) - 1 and not layers[0].observed
