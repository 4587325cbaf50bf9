"""The DnA attention kernel.

    out = softmax(s * q_pos k^T + mask) v_pos  -  neg_scale[h] * softmax(-s * q_neg k^T + mask) v_neg

Three implementations share one validated entry point, :func:`dna_attention`:

* ``reference`` materialises both (Nq, Nk) probability matrices with an fp32 softmax. It is slow and
  memory-hungry, and exists to be obviously right.
* ``fused`` runs each branch through ``torch.nn.functional.scaled_dot_product_attention`` (the negative
  branch is an ordinary softmax attention with a negated query, never a negative scale), so flash /
  memory-efficient / cuDNN backends are used and no (Nq, Nk) buffer is ever allocated by this module.
* ``triton`` (:mod:`dna_vlm.kernel_triton`, needs the triton package and CUDA tensors) computes both branches in
  one pass over the keys (each K tile loaded once) with a fused backward. It has no dropout, no fp64 and head dims
  up to 128; on anything it cannot handle it raises ValueError naming why (never a silent fallback).

The implementation is chosen per call: ``DNA_VLM_ATTENTION_IMPL`` (``auto`` | ``fused`` | ``reference`` |
``triton``), overridden by the :func:`use_impl` context manager. ``auto`` is ``fused``.

A fully masked query row (every key masked, bool False or additive -inf) gives output 0 and zero gradients on
every implementation (what SDPA does), not NaN.

A fourth, forward-only path serves the low-rank negative branch (Q- = Q+ + B_q A_q x, V- = B_v A_v x):
:func:`dna_attention_lowrank_scores` computes the positive scores once per head and gets the negative ones
from them by a rank-r update, S- = -S+ - s a_q (K B_q)^T, and P- V- as (P- a_v) B_v^T, so the negative branch
never runs a second QK^T or a full PV. It materialises a few heads' (Nq, Nk) scores at a time, which pays on
CPU (where SDPA runs at a lower FLOP rate than the GEMMs around it); the layers use it only under ``auto`` on
CPU without gradients (``NegativeBranch.scores_applicable``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from dna_vlm.kernel_checks import _shape, _validate

__all__ = [
    "IMPLS",
    "attention_probs",
    "block_diagonal_mask",
    "current_impl",
    "dna_attention",
    "dna_attention_fused",
    "dna_attention_lowrank_scores",
    "dna_attention_reference",
    "dna_attention_varlen",
    "requested_impl",
    "use_impl",
]

IMPLS = ("auto", "fused", "reference", "triton")
ENV_VAR = "DNA_VLM_ATTENTION_IMPL"
_local = threading.local()


def requested_impl() -> str:
    """What was asked for: the innermost :func:`use_impl`, else the env var (``auto`` when neither)."""
    impl = getattr(_local, "impl", None) or os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if impl not in IMPLS:
        raise ValueError(f"{ENV_VAR}={impl!r} is not one of {IMPLS}; unset it or pick one of those.")
    return impl


def current_impl() -> str:
    """The implementation the next :func:`dna_attention` call will use (``auto`` resolves to ``fused``)."""
    impl = requested_impl()
    # auto stays on the two-SDPA fused path: the triton kernel has not been timed on a GPU yet
    return "fused" if impl == "auto" else impl


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Force ``"reference"``, ``"fused"`` or ``"triton"`` (or ``"auto"``) for calls inside the block (thread-local)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    prev = getattr(_local, "impl", None)
    _local.impl = impl
    try:
        yield
    finally:
        _local.impl = prev


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for half types, the input's own for fp32/fp64."""
    return torch.promote_types(dtype, torch.float32)


def _head_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(H,) sum over batch, tokens and features of ``a * b`` for (B, H, N, dv) tensors, in fp32 or fp64.

    A batched dot product (bmm of (B*H, 1, M) by (B*H, M, 1)): no (B, H, N, dv) product is materialised.
    """
    acc = _acc(a.dtype)
    B, H = a.shape[:2]
    x = a.to(acc).reshape(B * H, 1, -1)
    y = b.to(acc).reshape(B * H, -1, 1)
    return torch.bmm(x, y).view(B, H).sum(0)


class _Combine(torch.autograd.Function):
    """out = o_pos - lam[h] * o_neg, with a backward that reuses the saved branch output.

    Autograd's own backward of ``addcmul`` multiplies the incoming gradient by o_neg into a full (B, H, N, dv)
    buffer and then reduces it to (H,); here the lambda gradient is one batched dot product.
    """

    @staticmethod
    def forward(ctx, o_pos, o_neg, neg_scale):
        lam = neg_scale.view(1, -1, 1, 1)
        if o_pos.dtype in (torch.float32, torch.float64):
            out = torch.addcmul(o_pos, o_neg, lam.to(o_pos.dtype), value=-1.0)
        else:  # half types: accumulate in fp32, round once, so lambda keeps its fp32 precision
            acc = _acc(o_pos.dtype)
            out = (o_pos.to(acc) - lam.to(acc) * o_neg.to(acc)).to(o_pos.dtype)
        ctx.save_for_backward(o_neg, neg_scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        o_neg, neg_scale = ctx.saved_tensors
        g_pos = g_neg = g_lam = None
        if ctx.needs_input_grad[0]:
            g_pos = grad
        if ctx.needs_input_grad[1]:
            acc = _acc(grad.dtype)
            g_neg = (grad.to(acc) * neg_scale.view(1, -1, 1, 1).to(acc)).neg_().to(o_neg.dtype)
        if ctx.needs_input_grad[2]:
            g_lam = _head_dots(grad, o_neg).neg_().to(neg_scale.dtype)
        return g_pos, g_neg, g_lam


def _combine(o_pos: torch.Tensor, o_neg: torch.Tensor, neg_scale: torch.Tensor) -> torch.Tensor:
    """o_pos - neg_scale[h] * o_neg in the inputs' dtype (half types accumulate in fp32 and round once).

    With gradients: :class:`_Combine`. Without (inference, fp32/fp64): in place, no third (B, H, N, dv) buffer.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (o_pos, o_neg, neg_scale)):
        return _Combine.apply(o_pos, o_neg, neg_scale)
    if o_pos.dtype in (torch.float32, torch.float64):
        return o_pos.addcmul_(o_neg, neg_scale.view(1, -1, 1, 1).to(o_pos.dtype), value=-1.0)
    acc = _acc(o_pos.dtype)
    return (o_pos.to(acc) - neg_scale.view(1, -1, 1, 1).to(acc) * o_neg.to(acc)).to(o_pos.dtype)


def attention_probs(q_pos, q_neg, k, attn_mask=None, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(P+, P-): both branches' materialised (B, H, Nq, Nk) probabilities in the accumulation dtype.

    For the reference path and diagnostics (``dna-vlm inspect``); masks as for :func:`dna_attention`. A fully
    masked row (every key -inf) gets probabilities 0 (not NaN) and passes zero gradient back.
    """
    s = q_pos.shape[-1] ** -0.5 if scale is None else scale
    acc = _acc(q_pos.dtype)
    kt = k.to(acc).transpose(-2, -1)
    bias = None
    if attn_mask is not None:
        bias = attn_mask.to(acc) if attn_mask.dtype != torch.bool else torch.zeros_like(attn_mask, dtype=acc)
        if attn_mask.dtype == torch.bool:
            bias = bias.masked_fill(~attn_mask, float("-inf"))

    # rows with every key masked: softmax of a finite stand-in row, then zeroed, so neither values nor grads are NaN
    dead = None if bias is None else (bias == float("-inf")).all(-1, keepdim=True)
    if dead is not None and not dead.any():
        dead = None

    def probs(q, sign):
        scores = sign * s * (q.to(acc) @ kt)
        if bias is None:
            return torch.softmax(scores, dim=-1)
        if dead is None:
            return torch.softmax(scores + bias, dim=-1)
        return torch.softmax((scores + bias).masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)

    return probs(q_pos, 1.0), probs(q_neg, -1.0)


def dna_attention_reference(
    q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask=None, dropout_p=0.0, scale=None
) -> torch.Tensor:
    """Plain path: materialised (B, H, Nq, Nk) scores, fp32 softmax. Same contract as :func:`dna_attention`."""
    p_pos, p_neg = attention_probs(q_pos, q_neg, k, attn_mask, scale)

    def out(p, v):
        if dropout_p > 0.0:
            p = F.dropout(p, p=dropout_p)
        return (p @ v.to(p.dtype)).to(q_pos.dtype)

    return _combine(out(p_pos, v_pos), out(p_neg, v_neg), neg_scale)


def dna_attention_fused(
    q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask=None, dropout_p=0.0, scale=None
) -> torch.Tensor:
    """Fused path: two SDPA calls, never an (Nq, Nk) buffer; the negative branch attends with ``-q_neg``.

    softmax(-s q k^T) is computed as softmax(s (-q) k^T), never with a negative ``scale``: CUDA's flash,
    memory-efficient and cuDNN kernels assume scale > 0 (running row maxima of unscaled scores, -inf padding
    of partial key blocks before scaling), and the same code path runs on every device so CPU tests cover it.

    Two calls beat one call over 2H heads (``[q_pos, -q_neg]``, ``[k, k]``, ``[v_pos, v_neg]``) in
    ``scripts/bench_attention.py --compare-forms``: the one-call form must copy k and both values into new
    (B, 2H, N, d) tensors, which costs more than the second kernel launch saves.
    """
    s = q_pos.shape[-1] ** -0.5 if scale is None else scale
    o_pos = F.scaled_dot_product_attention(q_pos, k, v_pos, attn_mask=attn_mask, dropout_p=dropout_p, scale=s)
    o_neg = F.scaled_dot_product_attention(
        q_neg.neg(), k, v_neg, attn_mask=attn_mask, dropout_p=dropout_p, scale=s
    )
    return _combine(o_pos, o_neg, neg_scale)


def dna_attention_fused_onecall(
    q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask=None, dropout_p=0.0, scale=None
) -> torch.Tensor:
    """The one-call form over 2H heads; kept for the benchmark that chose the two-call form."""
    H = q_pos.shape[1]
    q = torch.cat([q_pos, -q_neg], dim=1)
    kk = torch.cat([k, k], dim=1)
    v = torch.cat([v_pos, v_neg], dim=1)
    if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[1] == H and H > 1:
        attn_mask = torch.cat([attn_mask, attn_mask], dim=1)
    o = F.scaled_dot_product_attention(q, kk, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return _combine(o[:, :H], o[:, H:], neg_scale)


#: scores materialised per step of :func:`dna_attention_lowrank_scores` (a few heads' (Nq, Nk) blocks: cache-sized)
SCORES_STEP_BYTES = 2 << 20


def dna_attention_lowrank_scores(
    q_pos, k, v_pos, a_q, b_q, a_v, b_v, neg_scale, scale=None, step_bytes: int = SCORES_STEP_BYTES
) -> torch.Tensor:
    """DnA with a low-rank negative branch given by its factors; forward only, no mask, no dropout.

    The negative branch is ``q_neg[b, h] = q_pos[b, h] + a_q[b] @ b_q[h]^T`` and ``v_neg[b, h] = a_v[b] @
    b_v[h]^T`` (``a_v = b_v = None``: shared values, ``v_neg = v_pos``) — what ``NegativeBranch(neg_branch=
    "lowrank")`` computes, split into heads. Per head the positive scores S+ are formed once and reused:
    S- = -S+ - s a_q (K_h B_q,h)^T (an (Nq, r) x (r, Nk) update) and P- V- = (P- a_v) B_v,h^T.

    Args:
        q_pos, k: (B, H, Nq, d) and (B, H, Nk, d); v_pos: (B, H, Nk, dv).
        a_q: (B, Nq, r) and a_v: (B, Nk, r), shared by all heads; b_q: (H, d, r); b_v: (H, dv, r).
        neg_scale: (H,) lambda. scale: softmax scale s, default d ** -0.5.
        step_bytes: how many heads' scores one step materialises (at least one head).

    Returns:
        (B, H, Nq, dv), laid out (B, Nq, H, dv) in memory so merging heads is a view.
    """
    B, H, Nq, d = q_pos.shape
    Nk, dv, r = k.shape[2], v_pos.shape[-1], a_q.shape[-1]
    _validate_lowrank(q_pos, k, v_pos, a_q, b_q, a_v, b_v, neg_scale)
    if scale is not None and not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(
            f"dna_attention_lowrank_scores: scale must be a positive finite number, got {scale!r}"
        )
    s = d**-0.5 if scale is None else float(scale)
    kb = torch.matmul(k, b_q.to(k.dtype))  # (B, H, Nk, r): K_h B_q,h
    lam = neg_scale.to(q_pos.dtype)
    w = None if b_v is None else (b_v.to(q_pos.dtype) * lam.view(H, 1, 1)).transpose(1, 2)  # (H, r, dv)
    out = torch.empty(B, Nq, H, dv, device=q_pos.device, dtype=q_pos.dtype).transpose(1, 2)
    step = max(1, min(H, step_bytes // max(1, Nq * Nk * q_pos.element_size())))
    for b in range(B):
        for h0 in range(0, H, step):
            hs = slice(h0, min(H, h0 + step))
            n = hs.stop - h0
            scores = torch.bmm(q_pos[b, hs], k[b, hs].transpose(1, 2)).mul_(s)  # (n, Nq, Nk)
            o = torch.bmm(torch.softmax(scores, -1), v_pos[b, hs])  # P+ V+
            # in place: S+ becomes S- = -S+ - s a_q (K B_q)^T (P+ is already taken), o becomes o+ - lambda o-
            scores.baddbmm_(a_q[b].expand(n, Nq, r), kb[b, hs].transpose(1, 2), beta=-1, alpha=-s)
            p_neg = torch.softmax(scores, -1)
            if w is None:  # shared values: o+ - lambda P- V+
                o.addcmul_(torch.bmm(p_neg, v_pos[b, hs]), lam[hs].view(n, 1, 1), value=-1.0)
            else:
                o.baddbmm_(torch.bmm(p_neg, a_v[b].expand(n, Nk, r)), w[hs], alpha=-1.0)
            out[b, hs] = o
    return out


def _validate_lowrank(q_pos, k, v_pos, a_q, b_q, a_v, b_v, neg_scale) -> None:
    """Shapes, dtypes and the forward-only rule of :func:`dna_attention_lowrank_scores`."""
    tensors = {"q_pos": q_pos, "k": k, "v_pos": v_pos, "a_q": a_q, "b_q": b_q, "neg_scale": neg_scale}
    if (a_v is None) != (b_v is None):
        raise ValueError("dna_attention_lowrank_scores: pass both a_v and b_v, or neither (shared values)")
    if a_v is not None:
        tensors |= {"a_v": a_v, "b_v": b_v}
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        raise RuntimeError(
            "dna_attention_lowrank_scores is forward-only (no autograd); run it under torch.no_grad() or use "
            "dna_attention with the materialised q_neg / v_neg"
        )
    if q_pos.dim() != 4 or q_pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"dna_attention_lowrank_scores: q_pos must be a 4-D (B, H, Nq, d) float32/float64 tensor (softmax of "
            f"materialised scores), got shape {_shape(q_pos)} {q_pos.dtype}; use dna_attention for half types"
        )
    B, H, Nq, d = q_pos.shape
    Nk, dv, r = k.shape[2], v_pos.shape[-1], a_q.shape[-1]
    want = {
        "k": (B, H, Nk, d), "v_pos": (B, H, Nk, dv), "a_q": (B, Nq, r), "b_q": (H, d, r), "neg_scale": (H,),
        "a_v": (B, Nk, r), "b_v": (H, dv, r),
    }  # fmt: skip
    for name, t in tensors.items():
        if name != "q_pos" and tuple(t.shape) != want[name]:
            raise ValueError(
                f"dna_attention_lowrank_scores: {name} has shape {_shape(t)}, expected {want[name]} "
                f"(q_pos {_shape(q_pos)}, rank r={r})"
            )
        if t.device != q_pos.device:
            raise ValueError(
                f"dna_attention_lowrank_scores: {name} is on {t.device} but q_pos is on {q_pos.device}"
            )
    for name in ("k", "v_pos", "a_q") + (("a_v",) if a_v is not None else ()):
        if tensors[name].dtype != q_pos.dtype:
            raise TypeError(
                f"dna_attention_lowrank_scores: {name} has dtype {tensors[name].dtype} but q_pos has {q_pos.dtype}"
            )


def dna_attention(
    q_pos: torch.Tensor,
    q_neg: torch.Tensor,
    k: torch.Tensor,
    v_pos: torch.Tensor,
    v_neg: torch.Tensor,
    neg_scale: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Denoising attention (DnA).

    Args:
        q_pos, q_neg: (B, H, Nq, d) positive and negative queries.
        k: (B, H, Nk, d) keys, shared by both branches.
        v_pos, v_neg: (B, H, Nk, dv) values of the two subspaces (pass ``v_neg=v_pos`` for shared values).
        neg_scale: (H,) per-head lambda; receives gradients.
        attn_mask: bool (True = may attend) or additive float, broadcastable to (B, H, Nq, Nk).
        dropout_p: attention dropout on both branches; pass 0.0 in eval (the module does this for you).
        scale: softmax scale s; default d ** -0.5.

    Returns:
        (B, H, Nq, dv) tensor in the inputs' dtype.
    """
    _validate(q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask)
    if scale is not None and not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(f"dna_attention: scale must be a positive finite number, got {scale!r}")
    impl = current_impl()
    if impl == "triton":
        from dna_vlm.kernel_triton import dna_attention_triton  # lazy: importing dna_vlm never needs triton

        return dna_attention_triton(q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask, dropout_p, scale)
    fn = dna_attention_reference if impl == "reference" else dna_attention_fused
    return fn(q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask, dropout_p, scale)


def block_diagonal_mask(cu_seqlens: torch.Tensor | Sequence[int], device=None) -> torch.Tensor:
    """(1, 1, N, N) bool mask, True inside each packed segment ``[cu[i], cu[i+1])``.

    ``cu_seqlens`` are cumulative lengths starting at 0, as Qwen-VL / VideoLLaMA3 towers build them.
    This allocates N x N bools: prefer :func:`dna_attention_varlen` for long packed sequences.
    """
    cu = torch.as_tensor(cu_seqlens, device=device).long()
    _check_cu(cu)
    n = int(cu[-1])
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), cu[1:] - cu[:-1])
    assert seg.numel() == n
    return (seg[:, None] == seg[None, :])[None, None]


def _check_cu(cu: torch.Tensor) -> None:
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be a 1-D non-decreasing sequence starting at 0, got {cu.tolist()}")


def dna_attention_varlen(
    q_pos, q_neg, k, v_pos, v_neg, neg_scale, cu_seqlens, dropout_p: float = 0.0, scale=None
) -> torch.Tensor:
    """DnA over packed sequences: tensors are (1, H, N, d); no attention across ``cu_seqlens`` segments.

    Runs one :func:`dna_attention` per segment (what HF's vision towers do without flash-attention), so the
    memory stays O(max segment^2) at most and O(N) on flash backends.
    """
    cu = torch.as_tensor(cu_seqlens).long().cpu()
    _check_cu(cu)
    if int(cu[-1]) != q_pos.shape[2]:
        raise ValueError(
            f"cu_seqlens ends at {int(cu[-1])} but the packed sequence has N={q_pos.shape[2]} tokens"
        )
    lengths = (cu[1:] - cu[:-1]).tolist()
    parts = [torch.split(t, lengths, dim=2) for t in (q_pos, q_neg, k, v_pos, v_neg)]
    outs = [dna_attention(*p, neg_scale, dropout_p=dropout_p, scale=scale) for p in zip(*parts, strict=True)]
    return torch.cat(outs, dim=2)
