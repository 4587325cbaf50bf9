"""DnA in one Triton kernel: both softmax branches in a single pass over the keys.

    out = softmax(s Q+ K^T + m) V+  -  lambda[h] * softmax(-s Q- K^T + m) V-

Forward (FlashAttention-2 style). One program owns a (BM,) block of query rows of one (batch, head) and holds
both query tiles, Q+ and Q- (BM, d). It walks the keys in (BN,) blocks; each K tile (BN, d) is loaded once and
serves both branches (scores S+ = s Q+ K^T and S- = -s Q- K^T), then the V+ and V- tiles (BN, dv) are loaded and
two online-softmax accumulators (running max, running sum, (BM, dv) output) are updated. The combined output
O = O+ - lambda O- is written once, with both branches' log-sum-exps (B, H, Nq) and, when gradients are needed,
the unscaled O- (B, H, Nq, dv): the backward needs each branch's own output, and O+ = O + lambda O-.

Backward (FA2 style, P recomputed from the saved log-sum-exps, deterministic: no atomics).
With G+ = P+ * (dO V+^T - D+) and G- = P- * (dO V-^T - R), where R = rowsum(dO * O-) and
D+ = rowsum(dO * O+) = rowsum(dO * O) + lambda R (a small preprocess kernel computes the row sums):

    dQ+ = s G+ K        dQ- = lambda s G- K        dK = s (G+^T Q+ + lambda G-^T Q-)
    dV+ = P+^T dO       dV- = -lambda P-^T dO      dlambda[h] = -sum(dO * O-) = -sum over (b, n) of R

One kernel per key block accumulates dK, dV+, dV- over the query blocks; one per query block accumulates
dQ+, dQ- over the key blocks.

Head dims are split into a power-of-two main piece plus a power-of-two tail (d = 72 is 64 + 16 with 8 columns
masked, not a 128-wide tile); both pieces are >= 16 because ``tl.dot`` needs it on GPUs. Scores are kept in
log2 units (exp2). Masks are additive biases: a key-padding row vector (mask size 1 along Nq) or a full
(Nq, Nk) tile. A fully masked query row gives output 0 and zero gradients, as the other implementations do.

Triton is optional: importing this module needs it, but :mod:`dna_vlm.kernel` imports it only when the
``triton`` implementation is asked for. On CPU the kernels run only under ``TRITON_INTERPRET=1`` (set before
this module is imported), which is for tests.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - exercised only without triton
    triton = None
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

from dna_vlm.kernel_checks import _validate

__all__ = ["MAX_HEAD_DIM", "dna_attention_triton", "triton_available"]

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: (BM, BN) override for every kernel, e.g. small blocks so tests cover multi-block loops at small N
BLOCKS: tuple[int, int] | None = None


def triton_available() -> bool:
    return triton is not None


def _require_triton() -> None:
    if triton is None:
        raise ImportError(
            "dna_vlm's 'triton' attention implementation needs the triton package "
            "(pip install triton; it ships with CUDA builds of torch on Linux), or use impl 'fused'"
        ) from _IMPORT_ERROR


if triton is not None:
    # Triton's CPU interpreter (numpy) has no bf16 arithmetic: there, and only there, bf16 tiles are widened to
    # fp32 as they are loaded (loads and stores stay bf16). Decided when the kernels are defined, as triton.jit is.
    _WIDEN_BF16 = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"))

    @triton.jit
    def _load2(ptr, rows, row_ok, stride, NC: tl.constexpr, C0: tl.constexpr, C1: tl.constexpr):
        """(R, C0) main and (R, C1) tail pieces of the rows ``rows`` of an (N, NC) matrix (last dim contiguous).

        Without a tail (C1 == 0) the tail is the main piece again, never used (keeps call sites uniform)."""
        base = ptr + rows[:, None] * stride
        c0 = tl.arange(0, C0)
        x0 = tl.load(base + c0[None, :], mask=row_ok[:, None] & (c0[None, :] < NC), other=0.0)
        if C1 > 0:
            c1 = C0 + tl.arange(0, C1)
            x1 = tl.load(base + c1[None, :], mask=row_ok[:, None] & (c1[None, :] < NC), other=0.0)
        else:
            x1 = x0
        if _WIDEN_BF16 and x0.dtype == tl.bfloat16:
            x0, x1 = x0.to(tl.float32), x1.to(tl.float32)
        return x0, x1

    @triton.jit
    def _store2(ptr, rows, row_ok, stride, x0, x1, NC: tl.constexpr, C0: tl.constexpr, C1: tl.constexpr):
        base = ptr + rows[:, None] * stride
        c0 = tl.arange(0, C0)
        tl.store(base + c0[None, :], x0.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (c0[None, :] < NC))
        if C1 > 0:
            c1 = C0 + tl.arange(0, C1)
            tl.store(
                base + c1[None, :], x1.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (c1[None, :] < NC)
            )

    @triton.jit
    def _dot_nt(a0, a1, b0, b1, C1: tl.constexpr, PREC: tl.constexpr):
        """a @ b^T, both split along their shared last dim into main and tail pieces: (M, N) fp32."""
        acc = tl.dot(a0, tl.trans(b0), input_precision=PREC)
        if C1 > 0:
            acc = tl.dot(a1, tl.trans(b1), acc, input_precision=PREC)
        return acc

    @triton.jit
    def _bias(Bias, sm_m, sm_n, rows, row_ok, cols, col_ok, MASK: tl.constexpr):
        """Additive log2-unit bias for the (BM, BN) score tile; -inf on keys past Nk.

        MASK 0: none; 1: one (Nk,) row per (b, h), broadcast over queries; 2: a full (Nq, Nk) tile."""
        if MASK == 0:
            b = tl.where(col_ok, 0.0, float("-inf"))[None, :]
        elif MASK == 1:
            b = tl.load(Bias + cols * sm_n, mask=col_ok, other=float("-inf"))[None, :]
        else:
            offs = rows[:, None] * sm_m + cols[None, :] * sm_n
            b = tl.load(Bias + offs, mask=row_ok[:, None] & col_ok[None, :], other=float("-inf"))
        return b

    @triton.jit
    def _online_update(s, m, lsum, a0, a1, v0, v1, DV1: tl.constexpr, PREC: tl.constexpr):
        """One FA2 step for one branch: fold the (BM, BN) log2 scores ``s`` and their V tile into the running
        max ``m``, running sum ``lsum`` and (BM, dv) accumulator pieces ``a0``, ``a1``."""
        m_new = tl.maximum(m, tl.max(s, 1))
        # a row with every key masked so far has m_new = -inf: subtract 0 instead so exp2 gives 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        lsum = lsum * alpha + tl.sum(p, 1)
        pv = p.to(v0.dtype)
        a0 = tl.dot(pv, v0, a0 * alpha[:, None], input_precision=PREC)
        if DV1 > 0:
            a1 = tl.dot(pv, v1, a1 * alpha[:, None], input_precision=PREC)
        return m_new, lsum, a0, a1

    @triton.jit
    def _fwd_kernel(
        Qp, Qn, K, Vp, Vn, Bias, Lam, Out, On, Lse,
        sqp_b, sqp_h, sqp_n, sqn_b, sqn_h, sqn_n, sk_b, sk_h, sk_n,
        svp_b, svp_h, svp_n, svn_b, svn_h, svn_n,
        so_b, so_h, so_n, son_b, son_h, son_n, sm_b, sm_h, sm_m, sm_n,
        H, Nq, Nk, s2,
        D: tl.constexpr, DV: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
        DV0: tl.constexpr, DV1: tl.constexpr, MASK: tl.constexpr, STORE_ON: tl.constexpr,
        PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1)
        b, h = (bh // H).to(tl.int64), bh % H  # int64: b * stride_b may pass 2^31 on big batches
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = rows < Nq
        qp0, qp1 = _load2(Qp + b * sqp_b + h * sqp_h, rows, row_ok, sqp_n, D, D0, D1)
        qn0, qn1 = _load2(Qn + b * sqn_b + h * sqn_h, rows, row_ok, sqn_n, D, D0, D1)
        K += b * sk_b + h * sk_h
        Vp += b * svp_b + h * svp_h
        Vn += b * svn_b + h * svn_h
        Bias += b * sm_b + h * sm_h
        m_p = tl.full((BM,), float("-inf"), tl.float32)
        m_n = tl.full((BM,), float("-inf"), tl.float32)
        l_p = tl.zeros((BM,), tl.float32)
        l_n = tl.zeros((BM,), tl.float32)
        ap0 = tl.zeros((BM, DV0), tl.float32)
        an0 = tl.zeros((BM, DV0), tl.float32)
        ap1 = tl.zeros((BM, DV1 if DV1 > 0 else 16), tl.float32)
        an1 = tl.zeros((BM, DV1 if DV1 > 0 else 16), tl.float32)
        for start in range(0, Nk, BN):
            cols = start + tl.arange(0, BN)
            col_ok = cols < Nk
            k0, k1 = _load2(K, cols, col_ok, sk_n, D, D0, D1)  # one K tile for both branches
            bias = _bias(Bias, sm_m, sm_n, rows, row_ok, cols, col_ok, MASK)
            s_p = _dot_nt(qp0, qp1, k0, k1, D1, PREC) * s2 + bias
            s_n = _dot_nt(qn0, qn1, k0, k1, D1, PREC) * (-s2) + bias
            vp0, vp1 = _load2(Vp, cols, col_ok, svp_n, DV, DV0, DV1)
            m_p, l_p, ap0, ap1 = _online_update(s_p, m_p, l_p, ap0, ap1, vp0, vp1, DV1, PREC)
            vn0, vn1 = _load2(Vn, cols, col_ok, svn_n, DV, DV0, DV1)
            m_n, l_n, an0, an1 = _online_update(s_n, m_n, l_n, an0, an1, vn0, vn1, DV1, PREC)
        _fwd_epilogue(
            Out + b * so_b + h * so_h, On + b * son_b + h * son_h, Lse, Lam, bh, h, rows, row_ok,
            so_n, son_n, Nq, H, m_p, l_p, ap0, ap1, m_n, l_n, an0, an1, DV, DV0, DV1, STORE_ON,
        )  # fmt: skip

    @triton.jit
    def _fwd_epilogue(
        Out, On, Lse, Lam, bh, h, rows, row_ok, so_n, son_n, Nq, H,
        m_p, l_p, ap0, ap1, m_n, l_n, an0, an1,
        DV: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr, STORE_ON: tl.constexpr,
    ):  # fmt: skip
        """Normalise both branches, write O+ - lambda O- (and O-), and the log2-sum-exps."""
        lam = tl.load(Lam + h)
        dead = l_p == 0.0  # every key masked: output 0; lse = +inf makes the backward's P exactly 0
        l_p = tl.where(dead, 1.0, l_p)
        l_n = tl.where(dead, 1.0, l_n)
        inv_p = tl.where(dead, 0.0, 1.0 / l_p)[:, None]
        inv_n = tl.where(dead, 0.0, 1.0 / l_n)[:, None]
        _store2(Out, rows, row_ok, so_n, ap0 * inv_p - lam * (an0 * inv_n), ap1 * inv_p - lam * (an1 * inv_n),
                DV, DV0, DV1)  # fmt: skip
        if STORE_ON:
            _store2(On, rows, row_ok, son_n, an0 * inv_n, an1 * inv_n, DV, DV0, DV1)
        lse_p = tl.where(dead, float("inf"), m_p + tl.log2(l_p))
        lse_n = tl.where(dead, float("inf"), m_n + tl.log2(l_n))
        tl.store(Lse + bh * Nq + rows, lse_p, mask=row_ok)
        tl.store(Lse + (tl.num_programs(1) + bh) * Nq + rows, lse_n, mask=row_ok)

    @triton.jit
    def _rowdot_kernel(
        dO, Out, On, R, sdo_b, sdo_h, sdo_n, so_b, so_h, so_n, son_b, son_h, son_n, H, Nq,
        DV: tl.constexpr, DV0: tl.constexpr, DV1: tl.constexpr, BM: tl.constexpr,
    ):  # fmt: skip
        """R[0] = rowsum(dO * O), R[1] = rowsum(dO * O-), each (B, H, Nq) fp32."""
        bh = tl.program_id(1)
        b, h = (bh // H).to(tl.int64), bh % H
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = rows < Nq
        g0, g1 = _load2(dO + b * sdo_b + h * sdo_h, rows, row_ok, sdo_n, DV, DV0, DV1)
        o0, o1 = _load2(Out + b * so_b + h * so_h, rows, row_ok, so_n, DV, DV0, DV1)
        n0, n1 = _load2(On + b * son_b + h * son_h, rows, row_ok, son_n, DV, DV0, DV1)
        g0 = g0.to(tl.float32)
        r_o = tl.sum(g0 * o0.to(tl.float32), 1)
        r_n = tl.sum(g0 * n0.to(tl.float32), 1)
        if DV1 > 0:
            g1 = g1.to(tl.float32)
            r_o += tl.sum(g1 * o1.to(tl.float32), 1)
            r_n += tl.sum(g1 * n1.to(tl.float32), 1)
        tl.store(R + bh * Nq + rows, r_o, mask=row_ok)
        tl.store(R + (tl.num_programs(1) + bh) * Nq + rows, r_n, mask=row_ok)

    @triton.jit
    def _grad_scores(
        qp0, qp1, qn0, qn1, k0, k1, vp0, vp1, vn0, vn1, g0, g1, bias, lse_p, lse_n, d_p, r_n, s2,
        D1: tl.constexpr, DV1: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        """Recompute P+, P- (BM, BN) from the saved log2-sum-exps; G+ = P+ (dO V+^T - D+), G- = P- (dO V-^T - R)."""
        p_p = tl.exp2(_dot_nt(qp0, qp1, k0, k1, D1, PREC) * s2 + bias - lse_p[:, None])
        p_n = tl.exp2(_dot_nt(qn0, qn1, k0, k1, D1, PREC) * (-s2) + bias - lse_n[:, None])
        g_p = p_p * (_dot_nt(g0, g1, vp0, vp1, DV1, PREC) - d_p[:, None])
        g_n = p_n * (_dot_nt(g0, g1, vn0, vn1, DV1, PREC) - r_n[:, None])
        return p_p, p_n, g_p, g_n

    @triton.jit
    def _bwd_kv_kernel(
        Qp, Qn, K, Vp, Vn, Bias, Lam, dO, Lse, Dp, R, dK, dVp, dVn,
        sqp_b, sqp_h, sqp_n, sqn_b, sqn_h, sqn_n, sk_b, sk_h, sk_n,
        svp_b, svp_h, svp_n, svn_b, svn_h, svn_n, sdo_b, sdo_h, sdo_n, sm_b, sm_h, sm_m, sm_n,
        sdk_b, sdk_h, sdk_n, sdvp_b, sdvp_h, sdvp_n, sdvn_b, sdvn_h, sdvn_n,
        H, Nq, Nk, s2, scale,
        D: tl.constexpr, DV: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
        DV0: tl.constexpr, DV1: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        """dK, dV+, dV- for one (BN,) key block, accumulated over every query block."""
        bh = tl.program_id(1)
        b, h = (bh // H).to(tl.int64), bh % H
        cols = tl.program_id(0) * BN + tl.arange(0, BN)
        col_ok = cols < Nk
        k0, k1 = _load2(K + b * sk_b + h * sk_h, cols, col_ok, sk_n, D, D0, D1)
        vp0, vp1 = _load2(Vp + b * svp_b + h * svp_h, cols, col_ok, svp_n, DV, DV0, DV1)
        vn0, vn1 = _load2(Vn + b * svn_b + h * svn_h, cols, col_ok, svn_n, DV, DV0, DV1)
        Qp += b * sqp_b + h * sqp_h
        Qn += b * sqn_b + h * sqn_h
        dO += b * sdo_b + h * sdo_h
        Bias += b * sm_b + h * sm_h
        lam = tl.load(Lam + h)
        dk0 = tl.zeros((BN, D0), tl.float32)
        dk1 = tl.zeros((BN, D1 if D1 > 0 else 16), tl.float32)
        dvp0 = tl.zeros((BN, DV0), tl.float32)
        dvn0 = tl.zeros((BN, DV0), tl.float32)
        dvp1 = tl.zeros((BN, DV1 if DV1 > 0 else 16), tl.float32)
        dvn1 = tl.zeros((BN, DV1 if DV1 > 0 else 16), tl.float32)
        for start in range(0, Nq, BM):
            rows = start + tl.arange(0, BM)
            row_ok = rows < Nq
            qp0, qp1 = _load2(Qp, rows, row_ok, sqp_n, D, D0, D1)
            qn0, qn1 = _load2(Qn, rows, row_ok, sqn_n, D, D0, D1)
            g0, g1 = _load2(dO, rows, row_ok, sdo_n, DV, DV0, DV1)
            # rows past Nq: lse = +inf gives P = 0, so they add nothing
            lse_p = tl.load(Lse + bh * Nq + rows, mask=row_ok, other=float("inf"))
            lse_n = tl.load(Lse + (tl.num_programs(1) + bh) * Nq + rows, mask=row_ok, other=float("inf"))
            d_p = tl.load(Dp + bh * Nq + rows, mask=row_ok, other=0.0)
            r_n = tl.load(R + bh * Nq + rows, mask=row_ok, other=0.0)
            bias = _bias(Bias, sm_m, sm_n, rows, row_ok, cols, col_ok, MASK)
            p_p, p_n, g_p, g_n = _grad_scores(
                qp0, qp1, qn0, qn1, k0, k1, vp0, vp1, vn0, vn1, g0, g1, bias, lse_p, lse_n, d_p, r_n, s2,
                D1, DV1, PREC,
            )  # fmt: skip
            pt_p = tl.trans(p_p).to(g0.dtype)
            pt_n = tl.trans(p_n).to(g0.dtype)
            dvp0 = tl.dot(pt_p, g0, dvp0, input_precision=PREC)
            dvn0 = tl.dot(pt_n, g0, dvn0, input_precision=PREC)
            if DV1 > 0:
                dvp1 = tl.dot(pt_p, g1, dvp1, input_precision=PREC)
                dvn1 = tl.dot(pt_n, g1, dvn1, input_precision=PREC)
            gt_p = tl.trans(g_p).to(qp0.dtype)
            gt_n = tl.trans(g_n * lam).to(qp0.dtype)
            dk0 = tl.dot(gt_n, qn0, tl.dot(gt_p, qp0, dk0, input_precision=PREC), input_precision=PREC)
            if D1 > 0:
                dk1 = tl.dot(gt_n, qn1, tl.dot(gt_p, qp1, dk1, input_precision=PREC), input_precision=PREC)
        _store2(dK + b * sdk_b + h * sdk_h, cols, col_ok, sdk_n, dk0 * scale, dk1 * scale, D, D0, D1)
        _store2(dVp + b * sdvp_b + h * sdvp_h, cols, col_ok, sdvp_n, dvp0, dvp1, DV, DV0, DV1)
        _store2(dVn + b * sdvn_b + h * sdvn_h, cols, col_ok, sdvn_n, dvn0 * -lam, dvn1 * -lam, DV, DV0, DV1)

    @triton.jit
    def _bwd_q_kernel(
        Qp, Qn, K, Vp, Vn, Bias, Lam, dO, Lse, Dp, R, dQp, dQn,
        sqp_b, sqp_h, sqp_n, sqn_b, sqn_h, sqn_n, sk_b, sk_h, sk_n,
        svp_b, svp_h, svp_n, svn_b, svn_h, svn_n, sdo_b, sdo_h, sdo_n, sm_b, sm_h, sm_m, sm_n,
        sdqp_b, sdqp_h, sdqp_n, sdqn_b, sdqn_h, sdqn_n,
        H, Nq, Nk, s2, scale,
        D: tl.constexpr, DV: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
        DV0: tl.constexpr, DV1: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        """dQ+, dQ- for one (BM,) query block, accumulated over every key block."""
        bh = tl.program_id(1)
        b, h = (bh // H).to(tl.int64), bh % H
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = rows < Nq
        qp0, qp1 = _load2(Qp + b * sqp_b + h * sqp_h, rows, row_ok, sqp_n, D, D0, D1)
        qn0, qn1 = _load2(Qn + b * sqn_b + h * sqn_h, rows, row_ok, sqn_n, D, D0, D1)
        g0, g1 = _load2(dO + b * sdo_b + h * sdo_h, rows, row_ok, sdo_n, DV, DV0, DV1)
        lse_p = tl.load(Lse + bh * Nq + rows, mask=row_ok, other=float("inf"))
        lse_n = tl.load(Lse + (tl.num_programs(1) + bh) * Nq + rows, mask=row_ok, other=float("inf"))
        d_p = tl.load(Dp + bh * Nq + rows, mask=row_ok, other=0.0)
        r_n = tl.load(R + bh * Nq + rows, mask=row_ok, other=0.0)
        K += b * sk_b + h * sk_h
        Vp += b * svp_b + h * svp_h
        Vn += b * svn_b + h * svn_h
        Bias += b * sm_b + h * sm_h
        dqp0 = tl.zeros((BM, D0), tl.float32)
        dqn0 = tl.zeros((BM, D0), tl.float32)
        dqp1 = tl.zeros((BM, D1 if D1 > 0 else 16), tl.float32)
        dqn1 = tl.zeros((BM, D1 if D1 > 0 else 16), tl.float32)
        for start in range(0, Nk, BN):
            cols = start + tl.arange(0, BN)
            col_ok = cols < Nk
            k0, k1 = _load2(K, cols, col_ok, sk_n, D, D0, D1)
            vp0, vp1 = _load2(Vp, cols, col_ok, svp_n, DV, DV0, DV1)
            vn0, vn1 = _load2(Vn, cols, col_ok, svn_n, DV, DV0, DV1)
            bias = _bias(Bias, sm_m, sm_n, rows, row_ok, cols, col_ok, MASK)
            _, _, g_p, g_n = _grad_scores(
                qp0, qp1, qn0, qn1, k0, k1, vp0, vp1, vn0, vn1, g0, g1, bias, lse_p, lse_n, d_p, r_n, s2,
                D1, DV1, PREC,
            )  # fmt: skip
            g_p = g_p.to(k0.dtype)
            g_n = g_n.to(k0.dtype)
            dqp0 = tl.dot(g_p, k0, dqp0, input_precision=PREC)
            dqn0 = tl.dot(g_n, k0, dqn0, input_precision=PREC)
            if D1 > 0:
                dqp1 = tl.dot(g_p, k1, dqp1, input_precision=PREC)
                dqn1 = tl.dot(g_n, k1, dqn1, input_precision=PREC)
        lam = tl.load(Lam + h)
        _store2(dQp + b * sdqp_b + h * sdqp_h, rows, row_ok, sdqp_n, dqp0 * scale, dqp1 * scale, D, D0, D1)
        sn = scale * lam
        _store2(dQn + b * sdqn_b + h * sdqn_h, rows, row_ok, sdqn_n, dqn0 * sn, dqn1 * sn, D, D0, D1)


# ---------------------------------------------------------------------------------------------------------- host


def _split(n: int) -> tuple[int, int]:
    """(main, tail) power-of-two pieces covering a head dim, each >= 16 (tl.dot's minimum); tail 0 if none."""
    main = max(16, 1 << (n.bit_length() - 1))
    rest = n - main
    return main, (0 if rest <= 0 else max(16, 1 << (rest - 1).bit_length()))


#: (BM, BN, num_warps) per kernel, [narrow (d, dv <= 64), wide]: picked from a ptxas sweep for sm_90 (the
#: largest blocks with no or little register spilling); not yet timed on a GPU. fp32 runs exact fp32 products
#: (FMA, no tensor cores: "ieee"), which need smaller tiles.
_CONFIGS = {
    "half": {
        "fwd": [(128, 64, 8), (64, 32, 8)],
        "kv": [(32, 64, 8), (16, 32, 8)],
        "q": [(64, 32, 4), (32, 16, 4)],
    },
    "fp32": {
        "fwd": [(32, 32, 4), (32, 32, 8)],
        "kv": [(16, 32, 4), (16, 16, 8)],
        "q": [(32, 16, 4), (16, 16, 8)],
    },
}


def _blocks(kind: str, d: int, dv: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BM, BN, num_warps, num_stages) for one kernel ("fwd", "kv" or "q")."""
    table = _CONFIGS["fp32" if dtype == torch.float32 else "half"][kind]
    bm, bn, warps = table[max(d, dv) > 64]
    if BLOCKS is not None:
        bm, bn = BLOCKS
    return bm, bn, warps, 2 if kind == "fwd" else 1


def _bhn(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _lastdim_contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _mask_bias(attn_mask, B, H, Nq, Nk, like) -> tuple[torch.Tensor, int]:
    """(bias, kind): the mask as an fp32 log2-unit additive bias viewed (B, H, 1 or Nq, Nk), zero strides kept."""
    if attn_mask is None:
        return like.new_zeros(1, 1, 1, 1).expand(B, H, 1, 1), 0
    if attn_mask.requires_grad:
        raise ValueError(
            "dna_attention (impl 'triton'): attn_mask requires grad, but the triton kernel does not "
            "differentiate the mask; use impl 'fused' or 'reference'"
        )
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    if m.dtype == torch.bool:
        bias = torch.zeros(m.shape, device=m.device, dtype=torch.float32).masked_fill_(~m, float("-inf"))
    else:
        # clamp so HF's finfo(dtype).min stays finite after the log2e scaling; -inf stays -inf
        bias = torch.where(m == float("-inf"), float("-inf"), m.float().clamp(min=-1e30) * LOG2E)
    kind = 1 if m.shape[2] == 1 else 2
    return bias.expand(B, H, 1 if kind == 1 else Nq, Nk), kind


def _check(q_pos, k, v_pos, attn_mask, dropout_p) -> None:
    """Raise ValueError for what the triton kernel does not handle (never a silent fallback)."""
    where = "dna_attention (impl 'triton')"
    if dropout_p > 0.0:
        raise ValueError(
            f"{where}: triton impl supports dropout_p=0 only; use fused (got dropout_p={dropout_p})"
        )
    if q_pos.dtype not in DTYPES:
        raise ValueError(f"{where}: dtype {q_pos.dtype} is not supported (bf16, fp16, fp32); use fused")
    d, dv = q_pos.shape[-1], v_pos.shape[-1]
    if not (0 < d <= MAX_HEAD_DIM and 0 < dv <= MAX_HEAD_DIM):
        raise ValueError(
            f"{where}: head dims d={d}, dv={dv}; the triton kernel supports 1..{MAX_HEAD_DIM}; use fused"
        )
    if q_pos.device.type != "cuda" and not _interpreted():
        raise ValueError(
            f"{where}: tensors are on {q_pos.device}; the triton kernel needs CUDA tensors (or "
            "TRITON_INTERPRET=1 set before dna_vlm.kernel_triton is imported, for CPU tests); use fused"
        )
    if q_pos.shape[0] * q_pos.shape[1] > 65535:
        raise ValueError(
            f"{where}: B*H = {q_pos.shape[0] * q_pos.shape[1]} exceeds the CUDA grid's 65535 (batch, head) "
            "programs; split the batch or use fused"
        )
    if attn_mask is not None and attn_mask.device != q_pos.device:
        raise ValueError(f"{where}: attn_mask is on {attn_mask.device} but q_pos is on {q_pos.device}")


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fwd_kernel, InterpretedFunction)


def _meta(q, v, kind: str) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    (d0, d1), (dv0, dv1) = _split(d), _split(dv)
    bm, bn, warps, stages = _blocks(kind, d, dv, q.dtype)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 inputs: exact fp32 products, not TF32
    return dict(D=d, DV=dv, D0=d0, D1=d1, DV0=dv0, DV1=dv1, PREC=prec, BM=bm, BN=bn,
                num_warps=warps, num_stages=stages)  # fmt: skip


def _forward(q_pos, q_neg, k, v_pos, v_neg, lam, bias, mask_kind, scale, store_on: bool):
    """(out, o_neg or None, lse (2, B, H, Nq) fp32 log2 units) of the forward kernel."""
    B, H, Nq, _ = q_pos.shape
    Nk, dv = k.shape[2], v_pos.shape[-1]
    out = torch.empty(B, Nq, H, dv, device=q_pos.device, dtype=q_pos.dtype).transpose(1, 2)
    o_neg = torch.empty_like(out) if store_on else out
    lse = torch.empty(2, B, H, Nq, device=q_pos.device, dtype=torch.float32)
    meta = _meta(q_pos, v_pos, "fwd")
    grid = (triton.cdiv(Nq, meta["BM"]), B * H)
    if Nq and B * H:
        _fwd_kernel[grid](
            q_pos, q_neg, k, v_pos, v_neg, bias, lam, out, o_neg, lse,
            *_bhn(q_pos), *_bhn(q_neg), *_bhn(k), *_bhn(v_pos), *_bhn(v_neg), *_bhn(out), *_bhn(o_neg),
            *bias.stride(), H, Nq, Nk, scale * LOG2E, MASK=mask_kind, STORE_ON=store_on, **meta,
        )  # fmt: skip
    return out, (o_neg if store_on else None), lse


def _backward(saved, mask_kind, scale, dout):
    q_pos, q_neg, k, v_pos, v_neg, lam, bias, out, o_neg, lse = saved
    B, H, Nq, _ = q_pos.shape
    Nk = k.shape[2]
    dout = _lastdim_contig(dout)
    r = torch.empty(2, B, H, Nq, device=q_pos.device, dtype=torch.float32)
    meta = _meta(q_pos, v_pos, "q")
    dv_meta = {k_: meta[k_] for k_ in ("DV", "DV0", "DV1", "BM")}
    if Nq and B * H:
        _rowdot_kernel[(triton.cdiv(Nq, meta["BM"]), B * H)](
            dout, out, o_neg, r, *_bhn(dout), *_bhn(out), *_bhn(o_neg), H, Nq, **dv_meta
        )
    d_pos = (r[0] + lam.view(1, H, 1) * r[1]).contiguous()  # rowsum(dO * O+), O+ = O + lambda O-
    r_neg = r[1]
    dk, dvp, dvn = torch.empty_like(k), torch.empty_like(v_pos), torch.empty_like(v_neg)
    dqp, dqn = torch.empty_like(q_pos), torch.empty_like(q_neg)
    common = (*_bhn(q_pos), *_bhn(q_neg), *_bhn(k), *_bhn(v_pos), *_bhn(v_neg), *_bhn(dout), *bias.stride())
    ins = (q_pos, q_neg, k, v_pos, v_neg, bias, lam, dout, lse, d_pos, r_neg)
    kv = _meta(q_pos, v_pos, "kv")
    if Nk and B * H:
        _bwd_kv_kernel[(triton.cdiv(Nk, kv["BN"]), B * H)](
            *ins, dk, dvp, dvn, *common, *_bhn(dk), *_bhn(dvp), *_bhn(dvn),
            H, Nq, Nk, scale * LOG2E, scale, MASK=mask_kind, **kv,
        )  # fmt: skip
    if Nq and B * H:
        _bwd_q_kernel[(triton.cdiv(Nq, meta["BM"]), B * H)](
            *ins, dqp, dqn, *common, *_bhn(dqp), *_bhn(dqn),
            H, Nq, Nk, scale * LOG2E, scale, MASK=mask_kind, **meta,
        )  # fmt: skip
    dlam = -r_neg.sum((0, 2))
    return dqp, dqn, dk, dvp, dvn, dlam


class _DnATriton(torch.autograd.Function):
    """Autograd wrapper: saves inputs, O, O- and both log-sum-exps; the backward runs the fused kernels."""

    @staticmethod
    def forward(ctx, q_pos, q_neg, k, v_pos, v_neg, neg_scale, bias, mask_kind, scale):
        lam = neg_scale.detach().float().contiguous()
        out, o_neg, lse = _forward(q_pos, q_neg, k, v_pos, v_neg, lam, bias, mask_kind, scale, True)
        ctx.save_for_backward(q_pos, q_neg, k, v_pos, v_neg, lam, bias, out, o_neg, lse)
        ctx.mask_kind, ctx.scale, ctx.lam_dtype = mask_kind, scale, neg_scale.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        grads = _backward(ctx.saved_tensors, ctx.mask_kind, ctx.scale, dout)
        grads = (*grads[:5], grads[5].to(ctx.lam_dtype))
        return (
            *(g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=False)),
            None,
            None,
            None,
        )


def dna_attention_triton(
    q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask=None, dropout_p=0.0, scale=None
) -> torch.Tensor:
    """DnA through the one-pass Triton kernel; same contract as :func:`dna_vlm.kernel.dna_attention`.

    Args:
        q_pos, q_neg: (B, H, Nq, d); k: (B, H, Nk, d); v_pos, v_neg: (B, H, Nk, dv); neg_scale: (H,).
        attn_mask: bool (True = may attend) or additive float, broadcastable to (B, H, Nq, Nk).
        dropout_p: must be 0. scale: softmax scale s, default d ** -0.5.

    Returns:
        (B, H, Nq, dv) in the inputs' dtype, laid out (B, Nq, H, dv) in memory so merging heads is a view.

    Raises:
        ImportError: triton is not installed.
        ValueError: dropout, fp64, head dims over 128, CPU tensors outside the interpreter, a mask that
            requires grad: use impl ``"fused"`` for those.
    """
    _require_triton()
    _validate(q_pos, q_neg, k, v_pos, v_neg, neg_scale, attn_mask)
    if scale is not None and not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(f"dna_attention: scale must be a positive finite number, got {scale!r}")
    _check(q_pos, k, v_pos, attn_mask, dropout_p)
    s = q_pos.shape[-1] ** -0.5 if scale is None else float(scale)
    B, H, Nq, _ = q_pos.shape
    bias, kind = _mask_bias(attn_mask, B, H, Nq, k.shape[2], q_pos)
    ts = [_lastdim_contig(t) for t in (q_pos, q_neg, k, v_pos, v_neg)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*ts, neg_scale)):
        return _DnATriton.apply(*ts, neg_scale, bias, kind, s)
    lam = neg_scale.float().contiguous()
    return _forward(*ts, lam, bias, kind, s, False)[0]
