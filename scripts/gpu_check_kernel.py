#!/usr/bin/env python
"""The DnA kernel on every CUDA SDPA backend, against an fp64 reference, forward and backward.

For each backend (flash, memory-efficient, cuDNN, math), dtype (bf16, fp16), shape (N = 197, 577, 729, 4096)
and mask (none, bool key padding, additive float, varlen packing) it runs ``dna_attention`` (the fused path,
forced to that backend) and compares output and the gradients of all six inputs with the fp64 reference path
on the same values. The yardstick is stock attention's own error on the same backend and dtype: DnA's error
must stay within ``K`` times the error of one stock SDPA call (plus a small floor), and be finite.

A row whose backend refuses the configuration (e.g. flash with a mask) is printed as ``n/a`` with the reason,
not as a failure. For the record it also runs the OLD fused path (SDPA with ``scale=-s``) and prints its error
in the last column (informational: that path is gone; this shows what it did on this card).

Usage: python scripts/gpu_check_kernel.py [--quick]   (exit 1 on any failure; without CUDA: exit 0)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
import torch.nn.functional as F

K = 4.0  # DnA = two branches + a combine: a few times one call's rounding error
FLOOR = {torch.bfloat16: 4e-3, torch.float16: 5e-4}
SHAPES = {  # name: (B, H, N, d)
    "vitb-197": (2, 12, 197, 64),
    "so400m-729": (2, 16, 729, 72),
    "clip-577": (2, 16, 577, 64),
    "long-4096": (1, 8, 4096, 64),
}
BACKENDS = ("flash", "efficient", "cudnn", "math")
DEV = "cuda"  # --device cpu: a dry run of this script on the math backend


def backend_ctx(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([b])


def inputs(B, H, N, d, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    t = [torch.randn(B, H, N, d, device=DEV, dtype=torch.float64, generator=g) for _ in range(5)]
    lam = 0.5 + 0.1 * torch.randn(H, device=DEV, dtype=torch.float64, generator=g)
    return [*t, lam]


def mask_for(kind: str, B, H, N):
    if kind == "none" or kind == "varlen":
        return None
    if kind == "bool":  # key padding: the last 13% of keys masked for the second batch element
        m = torch.ones(B, 1, 1, N, dtype=torch.bool, device=DEV)
        m[-1, ..., N - max(1, N // 8) :] = False
        return m
    g = torch.Generator(device=DEV).manual_seed(7)
    return torch.randn(B, 1, N, N, device=DEV, dtype=torch.float64, generator=g)  # additive bias


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.isfinite(a).all():
        return float("inf")
    a, b = a.detach(), b.detach()
    return float((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-6))


def run_dna(fn, ins, mask, kind, dtype, grad_out, cu=None):
    """(output, grads of the six inputs) of ``fn`` on ``ins`` cast to ``dtype`` (lambda stays fp32)."""
    x = [t.to(dtype).detach().requires_grad_(True) for t in ins[:5]]
    lam = ins[5].float().detach().requires_grad_(True)
    m = None if mask is None else (mask if mask.dtype == torch.bool else mask.to(dtype))
    if kind == "varlen":
        from dna_vlm import dna_attention_varlen

        out = dna_attention_varlen(*x, lam, cu_seqlens=cu)
    else:
        out = fn(*x, lam, attn_mask=m)
    grads = torch.autograd.grad(out, [*x, lam], grad_out.to(out.dtype))
    return out, grads


def reference(ins, mask, kind, grad_out, cu=None):
    from dna_vlm.kernel import dna_attention_reference

    x = [t.detach().requires_grad_(True) for t in ins]
    if kind == "varlen":
        cuts = cu.tolist()
        outs = [
            dna_attention_reference(*(t[:, :, a:b] for t in x[:5]), x[5]) for a, b in itertools.pairwise(cuts)
        ]
        out = torch.cat(outs, dim=2)
    else:
        out = dna_attention_reference(*x, attn_mask=mask)
    return out, torch.autograd.grad(out, x, grad_out)


def stock_err(ins, mask, kind, dtype, grad_out, cu=None) -> float:
    """Max relative error (output and q/k/v grads) of ONE stock SDPA call on this backend vs fp64 math."""
    q, k, v = ins[0], ins[2], ins[3]
    if kind == "varlen":  # stock attention on the first segment is a fair yardstick
        a, b = int(cu[0]), int(cu[1])
        q, k, v, grad_out = q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], grad_out[:, :, a:b]
    m64 = mask
    lo = [t.to(dtype).detach().requires_grad_(True) for t in (q, k, v)]
    m = None if mask is None else (mask if mask.dtype == torch.bool else mask.to(dtype))
    out = F.scaled_dot_product_attention(*lo, attn_mask=m)
    g_lo = torch.autograd.grad(out, lo, grad_out.to(dtype))
    hi = [t.detach().requires_grad_(True) for t in (q, k, v)]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(*hi, attn_mask=m64)
        g_hi = torch.autograd.grad(ref, hi, grad_out)
    return max(rel_err(out, ref), *(rel_err(a, b) for a, b in zip(g_lo, g_hi, strict=True)))


def legacy_negative_scale(q_pos, q_neg, k, v_pos, v_neg, lam, attn_mask=None):
    """The removed fused path: the negative branch ran SDPA with scale = -s."""
    s = q_pos.shape[-1] ** -0.5
    o_pos = F.scaled_dot_product_attention(q_pos, k, v_pos, attn_mask=attn_mask, scale=s)
    o_neg = F.scaled_dot_product_attention(q_neg, k, v_neg, attn_mask=attn_mask, scale=-s)
    return (o_pos.float() - lam.view(1, -1, 1, 1) * o_neg.float()).to(o_pos.dtype)


def check(backend: str, dtype, shape: str, kind: str) -> dict:
    import dna_vlm

    B, H, N, d = SHAPES[shape]
    ins = inputs(B, H, N, d)
    cu = None
    if kind == "varlen":  # three packed segments of unequal length in one sequence
        B, ins = 1, [t[:1] if t.dim() == 4 else t for t in ins]
        cu = torch.tensor([0, N // 3, N // 3 + N // 2, N], device="cpu")
    mask = mask_for(kind, B, H, N)
    grad_out = torch.randn(B, H, N, d, device=DEV, dtype=torch.float64)
    ref_out, ref_grads = reference(ins, mask, kind, grad_out, cu)
    row = {"backend": backend, "dtype": str(dtype).split(".")[-1], "shape": shape, "mask": kind}
    with backend_ctx(backend):
        try:
            row["stock"] = stock_err(ins, mask, kind, dtype, grad_out, cu)
        except RuntimeError as e:
            row["na"] = str(e).splitlines()[0][:70]
            return row
        with dna_vlm.use_impl("fused"):
            out, grads = run_dna(dna_vlm.dna_attention, ins, mask, kind, dtype, grad_out, cu)
        row["fwd"] = rel_err(out, ref_out)
        row["bwd"] = max(rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True))
        if kind != "varlen":
            try:
                old, _ = run_dna(legacy_negative_scale, ins, mask, kind, dtype, grad_out)
                row["legacy"] = rel_err(old, ref_out)
            except RuntimeError as e:
                row["legacy"] = f"error: {str(e)[:30]}"
    tol = K * row["stock"] + FLOOR[dtype]
    row["tol"] = tol
    row["ok"] = row["fwd"] <= tol and row["bwd"] <= tol
    return row


def fmt(x) -> str:
    return f"{x:.1e}" if isinstance(x, float) else str(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one shape (ViT-B) only")
    ap.add_argument("--device", default="cuda", help="cpu: dry run of this script (math backend only)")
    args = ap.parse_args(argv)
    global DEV
    DEV = args.device
    backends = BACKENDS if DEV == "cuda" else ("math",)
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA: nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    print(f"card: {card} | torch {torch.__version__} | cudnn {torch.backends.cudnn.version()}")
    hdr = f"{'backend':<10}{'dtype':<9}{'shape':<12}{'mask':<7}{'stock':>9}{'fwd':>9}{'bwd':>9}{'tol':>9}{'legacy -s':>11}  result"
    print(hdr + "\n" + "-" * len(hdr))
    shapes = ["vitb-197"] if args.quick else list(SHAPES)
    failed = total = 0
    t0 = time.time()
    for backend in backends:
        for dtype in (torch.bfloat16, torch.float16):
            for shape in shapes:
                for kind in ("none", "bool", "float", "varlen"):
                    r = check(backend, dtype, shape, kind)
                    head = f"{r['backend']:<10}{r['dtype']:<9}{r['shape']:<12}{r['mask']:<7}"
                    if "na" in r:
                        print(f"{head}{'n/a':>9}  backend refuses: {r['na']}")
                        continue
                    total += 1
                    failed += not r["ok"]
                    print(
                        f"{head}{fmt(r['stock']):>9}{fmt(r['fwd']):>9}{fmt(r['bwd']):>9}{fmt(r['tol']):>9}"
                        f"{fmt(r.get('legacy', '-')):>11}  {'ok' if r['ok'] else 'FAIL'}"
                    )
    print(
        f"\nkernel: {failed} failed of {total} run ({time.time() - t0:.0f} s); error = max |x - ref| / max |ref| "
        f"over the output and all six gradients vs fp64; tol = {K} x stock SDPA's error + floor"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
