"""DnAAttention / NegativeBranch: warm starts, parametrisations, gradients at init, parameter counts, repr."""

import pytest
import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipAttention

from dna_vlm import DnAAttention, DnAOptions, SoftmaxAttention
from dna_vlm.attention import negative_branch_num_params
from dna_vlm.kernel import use_impl


def _stock(dim=32, heads=4, bias=True):
    torch.manual_seed(0)
    return SoftmaxAttention(dim, heads, qkv_bias=bias).eval()


@pytest.mark.parametrize("neg_branch,rank", [("full", None), ("lowrank", 4)])
@pytest.mark.parametrize("shared", [False, True])
def test_preserve_reproduces_wrapped_attention(neg_branch, rank, shared):
    stock = _stock()
    x = torch.randn(2, 10, 32)
    mask = torch.rand(2, 1, 1, 10) > 0.2
    mask[..., 0] = True
    dna = DnAAttention.from_attention(
        stock, neg_branch=neg_branch, neg_rank=rank, shared_values=shared
    ).eval()
    torch.testing.assert_close(dna(x), stock(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dna(x, attn_mask=mask), stock(x, attn_mask=mask), atol=1e-6, rtol=1e-6)


def test_preserve_from_hf_siglip_attention_is_exact():
    cfg = SiglipVisionConfig(hidden_size=32, num_attention_heads=4)
    cfg._attn_implementation = "sdpa"
    hf = SiglipAttention(cfg).eval()
    x = torch.randn(2, 7, 32)
    dna = DnAAttention.from_attention(hf).eval()
    torch.testing.assert_close(dna(x), hf(x)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "opts,grad_name",
    [
        (dict(), "neg.v_neg.weight"),
        (dict(neg_branch="lowrank", neg_rank=3), "neg.v_neg_b.weight"),
        (dict(shared_values=True), "neg.neg_scale"),
    ],
)
def test_negative_branch_gets_gradient_at_init(opts, grad_name):
    dna = DnAAttention.from_attention(_stock(), **opts)
    x = torch.randn(2, 9, 32)
    dna(x).pow(2).sum().backward()
    grad = dict(dna.named_parameters())[grad_name].grad
    assert grad is not None and grad.abs().sum() > 0, f"{grad_name} gets no gradient at init"


def test_scaled_init_matches_authors_conversion():
    """The authors' TimeSformer / ViSCoP start: a negative-branch term of -lambda * 1e-4 * P- V+ under this
    project's subtractive formula, i.e. V- = +1e-4 V+ (issue 12: -1e-4 gave the opposite sign)."""
    from dna_vlm.kernel import attention_probs

    stock = _stock()
    dna = DnAAttention.from_attention(stock, init="scaled")
    w, b = stock.qkv.weight, stock.qkv.bias
    torch.testing.assert_close(dna.neg.q_neg.weight, 1e-4 * w[:32])
    torch.testing.assert_close(dna.neg.v_neg.weight, 1e-4 * w[64:])
    x = torch.randn(1, 5, 32)
    torch.testing.assert_close(dna(x), stock(x), atol=1e-4, rtol=1e-3)  # near-preserving, not exact
    # the effective start, computed independently: out - stock = proj_W (-lambda * 1e-4 * P- V+)
    with torch.no_grad():
        q, k, v = (dna._heads(t) for t in stock.qkv(x).chunk(3, dim=-1))
        q_neg = dna._heads(torch.nn.functional.linear(x, 1e-4 * w[:32], 1e-4 * b[:32]))
        _, p_neg = attention_probs(q, q_neg, k)
        lam = dna.neg.neg_scale.view(1, -1, 1, 1)
        term = (-lam * 1e-4 * (p_neg @ v)).transpose(1, 2).reshape(1, 5, 32)
        expected = term @ dna.proj.weight.T
        got = dna(x) - stock(x)
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.99


def test_random_init_changes_output():
    stock = _stock()
    dna = DnAAttention.from_attention(stock, init="random")
    x = torch.randn(1, 5, 32)
    assert not torch.allclose(dna(x), stock(x), atol=1e-4)


def test_shared_values_preserve_starts_lambda_at_zero():
    dna = DnAAttention.from_attention(_stock(), shared_values=True)
    assert torch.all(dna.neg.neg_scale == 0) and dna.neg.v_neg is None
    assert torch.all(DnAAttention.from_attention(_stock()).neg.neg_scale == 0.5)


C, H = 32, 4


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(), 2 * (C * C + C) + H),  # full: own Q- and V- (weights + biases) + lambda
        (dict(shared_values=True), (C * C + C) + H),  # only Q-
        (
            dict(neg_branch="lowrank", neg_rank=4),
            2 * (2 * 4 * C) + H,
        ),  # A (r x C) and B (C x r) for Q- and V-
        (dict(neg_branch="lowrank", neg_rank=2, shared_values=True), 2 * 2 * C + H),
    ],
)
def test_parameter_counts(kwargs, expected):
    dna = DnAAttention(C, H, qkv_bias=True, **kwargs)
    assert dna.num_dna_parameters() == expected
    assert negative_branch_num_params(C, H, DnAOptions(init="random", **kwargs), bias=True) == expected


def test_fused_and_reference_agree_in_module_with_grads():
    dna = DnAAttention(32, 4, qkv_bias=True, init="random")
    x = torch.randn(2, 11, 32, requires_grad=True)
    out_f = dna(x)
    g_f = torch.autograd.grad(out_f.sum(), [x, dna.neg.neg_scale, dna.neg.q_neg.weight])
    with use_impl("reference"):
        out_r = dna(x)
        g_r = torch.autograd.grad(out_r.sum(), [x, dna.neg.neg_scale, dna.neg.q_neg.weight])
    torch.testing.assert_close(out_f, out_r, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_f, g_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_dropout_only_in_training():
    dna = DnAAttention(32, 4, attn_drop=0.5, init="random")
    x = torch.randn(1, 6, 32)
    dna.eval()
    torch.testing.assert_close(dna(x), dna(x))
    dna.train()
    assert not torch.allclose(dna(x), dna(x))


def test_extra_repr_tells_the_settings():
    text = repr(DnAAttention(32, 4, neg_branch="lowrank", neg_rank=2, init="preserve"))
    for part in (
        "num_heads=4",
        "neg_branch=lowrank",
        "neg_rank=2",
        "shared_values=False",
        "init=preserve",
        "dna_params=",
    ):
        assert part in text


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(init="zeros"), "init='zeros' is not one of"),
        (dict(neg_branch="diag"), "neg_branch='diag' is not one of"),
        (dict(neg_branch="lowrank"), "needs an integer neg_rank >= 1"),
        (
            dict(neg_branch="lowrank", neg_rank=2, init="scaled"),
            "cannot be expressed by neg_branch='lowrank'",
        ),
        (dict(neg_rank=2), "only applies to neg_branch='lowrank'"),
    ],
)
def test_option_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DnAOptions(**kwargs)


def test_from_attention_rejects_unknown_layout():
    with pytest.raises(TypeError, match="neither a fused `qkv` nor"):
        DnAAttention.from_attention(nn.Linear(4, 4))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lowrank_fused_projection_equals_the_plain_formula(shared, dtype):
    """One matmul for both A maps + addmm for q: the same q_neg = q + B_q A_q x and v_neg = B_v A_v x (or v),
    values and gradients, with q / v strided views of a fused qkv output (as in DnAAttention)."""
    torch.manual_seed(0)
    C, H, r = 32, 4, 3
    attn = DnAAttention(C, H, neg_branch="lowrank", neg_rank=r, shared_values=shared, init="random").to(dtype)
    neg = attn.neg
    x = torch.randn(2, 5, C, dtype=dtype, requires_grad=True)
    q, _, v = attn.qkv(x).chunk(3, dim=-1)  # non-contiguous views
    got_q, got_v = neg(x, q, v)
    lin = torch.nn.functional.linear
    want_q = q + lin(lin(x, neg.q_neg_a.weight), neg.q_neg_b.weight)
    want_v = v if shared else lin(lin(x, neg.v_neg_a.weight), neg.v_neg_b.weight)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_q, want_q, **tol)
    torch.testing.assert_close(got_v, want_v, **tol)
    g = torch.randn_like(got_q)
    params = [x, *neg.parameters()]
    got = torch.autograd.grad(
        (got_q * g).sum() + (got_v * g).sum(), params, allow_unused=True, retain_graph=True
    )
    want = torch.autograd.grad((want_q * g).sum() + (want_v * g).sum(), params, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **tol)
