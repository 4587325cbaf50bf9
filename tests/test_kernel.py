"""The DnA kernel: fused path vs reference path (forward + gradients), an independent float64 formula, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dna_vlm
from dna_vlm.kernel import (
    block_diagonal_mask,
    current_impl,
    dna_attention_fused,
    dna_attention_fused_onecall,
    dna_attention_reference,
    dna_attention_varlen,
    use_impl,
)


def naive_dna(q_pos, q_neg, k, v_pos, v_neg, lam, mask=None, scale=None):
    """Loop-over-heads float64 formula written independently of the kernel (mask: bool or additive)."""
    B, H, Nq, d = q_pos.shape
    s = d**-0.5 if scale is None else scale
    out = torch.zeros(B, H, Nq, v_pos.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            add = torch.zeros(Nq, k.shape[2], dtype=torch.float64)
            if mask is not None:
                m = mask.expand(B, H, Nq, k.shape[2])[b, h]
                add = torch.where(m, 0.0, -math.inf).double() if m.dtype == torch.bool else m.double()
            pp = torch.softmax(s * q_pos[b, h].double() @ k[b, h].double().T + add, -1)
            pn = torch.softmax(-s * q_neg[b, h].double() @ k[b, h].double().T + add, -1)
            out[b, h] = pp @ v_pos[b, h].double() - lam[h].double() * (pn @ v_neg[b, h].double())
    return out


def make_inputs(B, H, Nq, Nk, d, dv, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, Nq, d), (B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, dv), (B, H, Nk, dv)]
    ts = [torch.randn(*s, generator=g).to(dtype).requires_grad_(requires_grad) for s in shapes]
    lam = (torch.rand(H, generator=g) + 0.1).requires_grad_(requires_grad)
    return (*ts, lam)


def make_mask(kind, B, H, Nq, Nk, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "bool_keypad":  # (B, 1, 1, Nk): padding, as vision towers use; keep >= 1 key per row
        m = torch.rand(B, 1, 1, Nk, generator=g) > 0.3
        m[..., 0] = True
        return m
    if kind == "bool_full":
        m = torch.rand(B, H, Nq, Nk, generator=g) > 0.3
        m[..., 0] = True
        return m
    if kind == "float":
        return torch.randn(1, 1, Nq, Nk, generator=g)
    raise ValueError(kind)


def test_float64_against_independent_formula():
    args = make_inputs(2, 3, 5, 7, 8, 6, dtype=torch.float64)
    for mask in (None, make_mask("bool_full", 2, 3, 5, 7), make_mask("float", 2, 3, 5, 7)):
        want = naive_dna(*args, mask=mask)
        for fn in (dna_attention_reference, dna_attention_fused):
            torch.testing.assert_close(fn(*args, attn_mask=mask), want, atol=1e-10, rtol=1e-10)


def test_scale_argument():
    args = make_inputs(1, 2, 4, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(dna_vlm.dna_attention(*args, scale=0.3), naive_dna(*args, scale=0.3))


TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
}


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    Nq=st.integers(1, 17),
    Nk=st.integers(1, 17),
    d=st.sampled_from([4, 8, 16]),
    dv=st.sampled_from([4, 8, 12]),
    mask=st.sampled_from([None, "bool_keypad", "bool_full", "float"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 1000),
)
def test_fused_matches_reference_forward_and_grads(B, H, Nq, Nk, d, dv, mask, dtype, seed):
    ins = make_inputs(B, H, Nq, Nk, d, dv, dtype=dtype, requires_grad=True, seed=seed)
    m = make_mask(mask, B, H, Nq, Nk, seed)
    out_f = dna_attention_fused(*ins, attn_mask=m)
    out_r = dna_attention_reference(*ins, attn_mask=m)
    assert out_f.dtype == dtype and out_f.shape == (B, H, Nq, dv)
    torch.testing.assert_close(out_f.float(), out_r.float(), **TOL[dtype])
    g = torch.randn_like(out_f)
    grads_f = torch.autograd.grad(out_f, ins, g)
    grads_r = torch.autograd.grad(out_r, ins, g)
    for name, gf, gr in zip(
        ["q_pos", "q_neg", "k", "v_pos", "v_neg", "neg_scale"], grads_f, grads_r, strict=True
    ):
        scale = gr.float().abs().max().clamp(min=1.0)
        torch.testing.assert_close(
            gf.float() / scale, gr.float() / scale, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}"
        )


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), H=st.integers(1, 3), seed=st.integers(0, 100)
)
def test_packed_varlen_equals_block_mask_and_per_segment(lengths, H, seed):
    N = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    ins = make_inputs(1, H, N, N, 8, 8, dtype=torch.float64, requires_grad=True, seed=seed)
    out_var = dna_attention_varlen(*ins, cu_seqlens=cu)
    out_mask = dna_attention_reference(*ins, attn_mask=block_diagonal_mask(cu))
    torch.testing.assert_close(out_var, out_mask)
    # each segment alone gives the same rows: nothing leaks across segments
    for i in range(len(lengths)):
        sl = slice(int(cu[i]), int(cu[i + 1]))
        alone = dna_attention_reference(*(t[:, :, sl] for t in ins[:5]), ins[5])
        torch.testing.assert_close(out_var[:, :, sl], alone)
    ga = torch.autograd.grad(out_var.sum(), ins)
    gb = torch.autograd.grad(out_mask.sum(), ins)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b)


def test_block_diagonal_mask_layout():
    m = block_diagonal_mask([0, 2, 5])
    assert m.shape == (1, 1, 5, 5)
    assert m[0, 0, 0, 1] and not m[0, 0, 1, 2] and m[0, 0, 4, 2]
    with pytest.raises(ValueError, match="cu_seqlens"):
        block_diagonal_mask([1, 3])


def test_shared_values_is_the_same_call():
    q_pos, q_neg, k, v, _, lam = make_inputs(1, 2, 6, 6, 8, 8, dtype=torch.float64)
    out = dna_vlm.dna_attention(q_pos, q_neg, k, v, v, lam)
    torch.testing.assert_close(out, naive_dna(q_pos, q_neg, k, v, v, lam))


def test_onecall_form_matches_twocall():
    ins = make_inputs(2, 3, 9, 9, 8, 8)
    m = make_mask("bool_keypad", 2, 3, 9, 9)
    torch.testing.assert_close(
        dna_attention_fused_onecall(*ins, attn_mask=m), dna_attention_fused(*ins, attn_mask=m)
    )


def test_dropout_only_changes_output_when_asked():
    ins = make_inputs(1, 2, 8, 8, 8, 8)
    torch.testing.assert_close(dna_vlm.dna_attention(*ins, dropout_p=0.0), dna_vlm.dna_attention(*ins))
    torch.manual_seed(1)
    a = dna_vlm.dna_attention(*ins, dropout_p=0.5)
    assert not torch.allclose(a, dna_vlm.dna_attention(*ins))


def test_neg_scale_receives_gradient_and_zero_lambda_is_softmax_attention():
    q_pos, q_neg, k, v_pos, v_neg, _ = make_inputs(1, 2, 5, 5, 8, 8, dtype=torch.float64)
    lam = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    out = dna_vlm.dna_attention(q_pos, q_neg, k, v_pos, v_neg, lam)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q_pos, k, v_pos))
    (g,) = torch.autograd.grad(out.sum(), lam)
    assert g.abs().min() > 0


def test_impl_switch_env_and_context(monkeypatch):
    ins = make_inputs(1, 1, 3, 3, 4, 4)
    calls = []
    monkeypatch.setattr("dna_vlm.kernel.dna_attention_reference", lambda *a, **k: calls.append("ref") or a[3])
    monkeypatch.setattr("dna_vlm.kernel.dna_attention_fused", lambda *a, **k: calls.append("fused") or a[3])
    dna_vlm.dna_attention(*ins)
    with use_impl("reference"):
        assert current_impl() == "reference"
        dna_vlm.dna_attention(*ins)
    monkeypatch.setenv("DNA_VLM_ATTENTION_IMPL", "reference")
    dna_vlm.dna_attention(*ins)
    with use_impl("fused"):
        dna_vlm.dna_attention(*ins)
    assert calls == ["fused", "ref", "ref", "fused"]
    monkeypatch.setenv("DNA_VLM_ATTENTION_IMPL", "bogus")
    with pytest.raises(ValueError, match="DNA_VLM_ATTENTION_IMPL='bogus'"):
        dna_vlm.dna_attention(*ins)


def test_fused_path_allocates_no_nq_by_nk_buffer():
    """Profile CPU allocations: nothing near one head's (N, N) fp32 score matrix may be allocated."""
    B, H, N, d = 1, 2, 2048, 16
    ins = make_inputs(B, H, N, N, d, d)
    mask = make_mask("bool_keypad", B, H, N, N)
    score_bytes = B * H * N * N * 4
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        dna_attention_fused(*ins, attn_mask=mask)
    biggest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    one_head = N * N * 4
    assert 0 < biggest < one_head / 4, (
        f"largest allocation {biggest} B vs one head's score matrix {one_head} B"
    )
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        dna_attention_reference(*ins, attn_mask=mask)
    assert max(e.cpu_memory_usage for e in prof.events()) >= score_bytes  # the check can see such buffers


ERRORS = [
    (
        lambda a: {**a, "q_neg": a["q_neg"][:, :, :2]},
        r"q_neg has shape \(2, 3, 2, 8\) but q_pos has shape \(2, 3, 5, 8\)",
    ),
    (lambda a: {**a, "v_neg": a["v_neg"][..., :4]}, r"v_neg has shape .* but v_pos has shape"),
    (
        lambda a: {**a, "k": a["k"][:, :2]},
        r"k has shape \(2, 2, 7, 8\) but q_pos .*; k must be \(B=2, H=3, Nk, d=8\)",
    ),
    (
        lambda a: {**a, "v_pos": a["v_pos"][:, :, :6], "v_neg": a["v_neg"][:, :, :6]},
        r"v_pos has shape .* but k has shape",
    ),
    (lambda a: {**a, "q_pos": a["q_pos"][0]}, r"q_pos must be 4-D \(B, H, N, d\), got shape \(3, 5, 8\)"),
    (lambda a: {**a, "k": a["k"].double()}, r"k has dtype torch.float64 but q_pos has torch.float32"),
    (lambda a: {**a, "neg_scale": torch.ones(2)}, r"neg_scale must be a \(H,\) = \(3,\) tensor, got \(2\)"),
    (lambda a: {**a, "neg_scale": 0.5}, r"neg_scale must be a \(H,\) = \(3,\) tensor, got float"),
    (
        lambda a: {**a, "attn_mask": torch.ones(2, 3, 5, 6, dtype=torch.bool)},
        r"attn_mask has shape \(2, 3, 5, 6\), not broadcastable",
    ),
    (
        lambda a: {**a, "attn_mask": torch.ones(5, 7, dtype=torch.int64)},
        r"attn_mask must be bool or floating point",
    ),
    (
        lambda a: {**a, "v_pos": a["v_pos"].long(), "v_neg": a["v_neg"].long()},
        r"v_pos must be floating point",
    ),
]


@pytest.mark.parametrize("mutate,message", ERRORS)
def test_errors_name_the_argument(mutate, message):
    names = ["q_pos", "q_neg", "k", "v_pos", "v_neg", "neg_scale"]
    args = dict(zip(names, make_inputs(2, 3, 5, 7, 8, 8), strict=True))
    with pytest.raises((ValueError, TypeError), match=message):
        dna_vlm.dna_attention(**mutate(args))


def test_varlen_rejects_wrong_total():
    ins = make_inputs(1, 1, 5, 5, 4, 4)
    with pytest.raises(ValueError, match="cu_seqlens ends at 4 but the packed sequence has N=5"):
        dna_attention_varlen(*ins, cu_seqlens=[0, 4])


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (run scripts/gpu_check.sh on a GPU machine)"
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape", [(2, 4, 197, 197, 64, 64), (1, 16, 1024, 1024, 80, 80), (2, 3, 33, 65, 72, 40)]
)
def test_cuda_fused_matches_reference(dtype, shape):
    ins = [t.cuda().detach().requires_grad_(True) for t in make_inputs(*shape, dtype=dtype)]
    m = make_mask("bool_keypad", shape[0], shape[1], shape[2], shape[3]).cuda()
    for mask in (None, m):
        out_f = dna_attention_fused(*ins, attn_mask=mask)
        out_r = dna_attention_reference(*ins, attn_mask=mask)
        torch.testing.assert_close(out_f.float(), out_r.float(), **TOL[dtype])
        g = torch.randn_like(out_f)
        for gf, gr in zip(
            torch.autograd.grad(out_f, ins, g), torch.autograd.grad(out_r, ins, g), strict=True
        ):
            scale = gr.float().abs().max().clamp(min=1.0)
            torch.testing.assert_close(gf.float() / scale, gr.float() / scale, **TOL[dtype])


def test_no_negative_scale_reaches_sdpa(monkeypatch):
    """CUDA's flash / memory-efficient / cuDNN kernels assume scale > 0; the fused path (the one used on
    CUDA, run here on CPU) must negate the query instead of passing scale=-s, and stay equal to the reference."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    ins = make_inputs(2, 3, 9, 11, 8, 8)
    for scale in (None, 0.3):
        out = dna_attention_fused(*ins, scale=scale)
        torch.testing.assert_close(out, dna_attention_reference(*ins, scale=scale), atol=1e-5, rtol=1e-5)
    assert len(seen) == 4 and all(s is not None and s > 0 for s in seen), seen


@pytest.mark.parametrize("scale", [0.0, -0.125, float("nan"), float("inf")])
def test_non_positive_scale_is_refused(scale):
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        dna_vlm.dna_attention(*make_inputs(1, 2, 4, 4, 8, 8), scale=scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_combine_backward_matches_autograd_formula(dtype):
    """The custom combine (saved-output backward, batched-dot lambda gradient) equals plain autograd of
    o_pos - lam * o_neg, for every input, and passes gradcheck in float64."""
    from dna_vlm.kernel import _Combine

    g = torch.Generator().manual_seed(3)
    o_pos, o_neg = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    lam = torch.rand(3, generator=g, dtype=torch.float64)
    if dtype == torch.float64:
        ins = [t.clone().requires_grad_(True) for t in (o_pos, o_neg, lam)]
        assert torch.autograd.gradcheck(_Combine.apply, ins)
    a = [
        o_pos.to(dtype).requires_grad_(True),
        o_neg.to(dtype).requires_grad_(True),
        lam.float().requires_grad_(True),
    ]
    b = [t.detach().clone().requires_grad_(True) for t in a]
    out_a = _Combine.apply(*a)
    acc = torch.promote_types(dtype, torch.float32)
    out_b = (b[0].to(acc) - b[2].view(1, -1, 1, 1).to(acc) * b[1].to(acc)).to(dtype)
    torch.testing.assert_close(out_a, out_b)
    up = torch.randn(out_a.shape, generator=g).to(dtype)
    for ga, gb in zip(torch.autograd.grad(out_a, a, up), torch.autograd.grad(out_b, b, up), strict=True):
        assert ga.dtype == gb.dtype
        torch.testing.assert_close(ga, gb, rtol=1e-5 if dtype != torch.bfloat16 else 1e-2, atol=1e-5)
