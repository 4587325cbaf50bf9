#!/usr/bin/env python
"""The one-pass Triton DnA kernel on a CUDA GPU: correctness against fp64, then timing against SDPA, one run.

(a) Correctness. For each case (dtype bf16 / fp16 / fp32, head dim 64 / 72 / 80 / 96 / 128, N = 197 / 577 / 729 /
    4096, mask none / bool key padding / additive key padding / full bool (B, H, N, N) / fully masked rows) the
    triton kernel's output and the gradients of all six inputs are compared with the fp64 reference on the same
    values. The yardstick is the two-SDPA fused path's error on the same inputs: triton must stay within
    ``K`` times it plus a per-dtype floor, and be finite. Fully masked rows must be exactly 0 with finite
    gradients on both the triton and the fused path (issue 25, item 10b). Any failure: exit 1.

(b) Timing, bf16, no mask, N = 197 / 577 / 729 / 4096, forward and forward+backward: the triton kernel vs ONE
    stock flash SDPA call (q, k, v) vs the two-call fused DnA path. Each repetition times the three in a random
    order; the table gives the median of the per-repetition ratios with a distribution-free 95% CI (order
    statistics of the ratios, binomial ranks) and each method's peak memory (torch.cuda.max_memory_allocated
    above the inputs).

Usage: python scripts/gpu_check_triton.py [--quick] [--skip-timing] [--reps 30] [--json PATH]
Exit status: 0 all correct; 1 a correctness failure; 2 no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

K = 4.0  # triton may be this many times less accurate than the fused path, plus FLOOR
FLOOR = {torch.bfloat16: 4e-3, torch.float16: 5e-4, torch.float32: 2e-5}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NAMES = ("out", "q_pos", "q_neg", "k", "v_pos", "v_neg", "neg_scale")
TIMING_SHAPES = {  # N: (B, H, d): ViT-B/16 224, CLIP-L/14 336, SigLIP so400m 384, a long packed sequence
    197: (32, 12, 64),
    577: (16, 16, 64),
    729: (16, 16, 72),
    4096: (2, 16, 64),
}


def cases(quick: bool) -> list[tuple[str, int, int, str]]:
    """(dtype, d, N, mask) rows, chosen so each compiled triton variant is reused (compiles cost seconds)."""
    rows = [("bf16", d, 197, "keypad") for d in (64, 72, 80, 96, 128)]
    rows += [("bf16", 72, 577, m) for m in ("none", "keypad_float", "full", "dead")]
    rows += [("fp16", 64, 197, "keypad"), ("fp16", 72, 577, "keypad")]
    rows += [("fp32", 64, 197, "keypad"), ("fp32", 128, 197, "keypad")]
    rows += [("bf16", 72, 729, "keypad"), ("bf16", 64, 4096, "none"), ("fp16", 64, 4096, "dead")]
    return rows[:3] + rows[5:7] if quick else rows


def make(B, H, N, d, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    ts = [torch.randn(B, H, N, d, device="cuda", dtype=torch.float64, generator=g) for _ in range(5)]
    lam = 0.5 + 0.1 * torch.randn(H, device="cuda", dtype=torch.float64, generator=g)
    return [*ts, lam], torch.randn(B, H, N, d, device="cuda", dtype=torch.float64, generator=g)


def make_mask(kind: str, B, H, N):
    """(mask, dead row index or None). Key padding masks the last N/8 keys of the second batch element."""
    if kind == "none":
        return None, None
    keep = torch.ones(B, 1, 1, N, dtype=torch.bool, device="cuda")
    keep[-1, ..., N - max(1, N // 8) :] = False
    if kind == "keypad":
        return keep, None
    if kind == "keypad_float":  # HF style: finfo.min on padded keys, plus a small bias everywhere
        g = torch.Generator(device="cuda").manual_seed(5)
        bias = 0.1 * torch.randn(B, 1, 1, N, device="cuda", dtype=torch.float64, generator=g)
        return bias.masked_fill(~keep, torch.finfo(torch.float32).min), None
    if kind == "full":
        g = torch.Generator(device="cuda").manual_seed(6)
        m = torch.rand(B, H, N, N, device="cuda", generator=g) > 0.3
        m[..., 0] = True
        return m, None
    if kind == "dead":  # batch element 0 has no key at all; element 1 is padded
        keep[0] = False
        return keep, (0,)
    raise ValueError(kind)


def run(fn, ins, grad_out, dtype, mask):
    x = [t.to(dtype).detach().requires_grad_(True) for t in ins[:5]]
    lam = ins[5].to(torch.float64 if dtype == torch.float64 else torch.float32).detach().requires_grad_(True)
    m = mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
    out = fn(*x, lam, attn_mask=m)
    return [out, *torch.autograd.grad(out, [*x, lam], grad_out.to(out.dtype))]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max().clamp(min=1e-6))


def check(dtype_name: str, d: int, N: int, mask_kind: str) -> dict:
    from dna_vlm.kernel import dna_attention_fused, dna_attention_reference
    from dna_vlm.kernel_triton import dna_attention_triton

    dtype = DTYPES[dtype_name]
    B, H = (1, 2) if N >= 4096 else (2, 4)
    ins, grad_out = make(B, H, N, d, seed=d + N)
    mask, dead = make_mask(mask_kind, B, H, N)
    rounded = [t.to(dtype).double() for t in ins[:5]] + [ins[5].float().double()]
    ref = run(dna_attention_reference, rounded, grad_out.to(dtype).double(), torch.float64, mask)
    row = {"dtype": dtype_name, "d": d, "N": N, "mask": mask_kind, "ok": True, "notes": []}
    for impl, fn in (("fused", dna_attention_fused), ("triton", dna_attention_triton)):
        got = run(fn, ins, grad_out, dtype, mask)
        errs = {n: rel_err(a, b) for n, a, b in zip(NAMES, got, ref, strict=True)}
        row[impl] = max(errs.values())
        row[impl + "_worst"] = max(errs, key=errs.get)
        if dead is not None:
            zero = bool((got[0][dead] == 0).all())
            finite = all(bool(torch.isfinite(g).all()) for g in got)
            if not (zero and finite):
                row["ok"] = False
                row["notes"].append(f"{impl}: fully masked rows not 0 with finite grads")
    row["tol"] = K * row["fused"] + FLOOR[dtype]
    if not row["triton"] <= row["tol"]:
        row["ok"] = False
        row["notes"].append(
            f"triton error {row['triton']:.1e} ({row['triton_worst']}) > tol {row['tol']:.1e}"
        )
    return row


def median_ci(xs: list[float], conf: float = 0.95) -> tuple[float, float, float]:
    """Median and a distribution-free CI: order statistics x_(j), x_(n+1-j) with the largest j such that
    2 P(Bin(n, 1/2) <= j - 1) <= 1 - conf (needs n >= 6 for 95%; else the full range)."""
    xs = sorted(xs)
    n = len(xs)
    med = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    cdf, j = 0.0, 0
    for i in range(n):
        cdf += math.comb(n, i) / 2**n  # P(B <= i)
        if 2 * cdf > 1 - conf:
            break
        j = i + 1
    j = max(j, 1)
    return med, xs[j - 1], xs[n - j]


def timed(fn, inner: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / inner


def peak_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def methods(N: int, backward: bool) -> dict:
    """name -> zero-argument callable (forward, or forward + backward) on bf16 inputs of the N-token shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dna_vlm.kernel import dna_attention_fused
    from dna_vlm.kernel_triton import dna_attention_triton

    B, H, d = TIMING_SHAPES[N]
    g = torch.Generator(device="cuda").manual_seed(N)
    x = [torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(5)]
    x = [t.requires_grad_(backward) for t in x]
    lam = torch.full((H,), 0.5, device="cuda", requires_grad=backward)
    up = torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, generator=g)

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(x[0], x[2], x[3])

    def step(f, inputs):
        def go():
            out = f()
            if backward:
                torch.autograd.grad(out, inputs, up)

        return go

    return {
        "sdpa_flash": step(flash, [x[0], x[2], x[3]]),
        "dna_fused": step(lambda: dna_attention_fused(*x, lam), [*x, lam]),
        "dna_triton": step(lambda: dna_attention_triton(*x, lam), [*x, lam]),
    }


def time_one(N: int, backward: bool, reps: int) -> dict:
    ms = methods(N, backward)
    ctx = torch.enable_grad() if backward else torch.no_grad()
    with ctx:
        for f in ms.values():  # warm up: triton compiles, cuDNN/flash pick kernels
            f(), f()
        torch.cuda.synchronize()
        one = min(timed(f, 1) for f in ms.values())
        inner = max(1, min(200, int(20.0 / max(one, 1e-3))))  # ~20 ms per measurement
        times = {k: [] for k in ms}
        for _ in range(reps):
            order = list(ms)
            random.shuffle(order)
            for k in order:
                times[k].append(timed(ms[k], inner))
        peaks = {k: peak_mib(f) for k, f in ms.items()}
    row = {"N": N, "shape": TIMING_SHAPES[N], "mode": "fwd+bwd" if backward else "fwd", "inner": inner}
    for k in ms:
        row[k + "_ms"] = median_ci(times[k])[0]
        row[k + "_peak_mib"] = peaks[k]
    for num, den in (("dna_triton", "sdpa_flash"), ("dna_fused", "sdpa_flash"), ("dna_triton", "dna_fused")):
        ratios = [a / b for a, b in zip(times[num], times[den], strict=True)]
        row[f"{num}/{den}"] = median_ci(ratios)
    return row


CHECK_HEADER = f"{'dtype':<6}{'d':>5}{'N':>6}  {'mask':<13}{'fused':>9}{'triton':>9}{'tol':>9}  result"


def print_check(r: dict) -> None:
    res = "ok" if r["ok"] else "FAIL " + "; ".join(r["notes"])
    print(
        f"{r['dtype']:<6}{r['d']:>5}{r['N']:>6}  {r['mask']:<13}{r['fused']:>9.1e}{r['triton']:>9.1e}"
        f"{r['tol']:>9.1e}  {res}",
        flush=True,
    )


def print_timing(r: dict) -> None:
    ratio = " | ".join(
        f"{k} {m:.2f} [{lo:.2f}, {hi:.2f}]"
        for k in ("dna_triton/sdpa_flash", "dna_fused/sdpa_flash", "dna_triton/dna_fused")
        for m, lo, hi in [r[k]]
    )
    ms = " ".join(
        f"{k}={r[k + '_ms']:.3f}ms/{r[k + '_peak_mib']:.0f}MiB"
        for k in ("sdpa_flash", "dna_fused", "dna_triton")
    )
    print(f"N={r['N']:<5} {r['mode']:<8} {ratio}\n{'':15}{ms}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few correctness cases, N=197 and 729 timing only")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--reps", type=int, default=30, help="timing repetitions (>= 6 for a 95%% CI)")
    ap.add_argument("--json", metavar="PATH", help="write every row as JSON here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_check_triton: no CUDA device; this script checks and times the triton kernel on a GPU only"
        )
        return 2
    import triton

    try:
        import dna_vlm  # noqa: F401
    except ImportError:  # run from a checkout that is not installed: use the package next to this script
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"card: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    t0 = time.time()
    checks = []
    if not args.skip_check:
        print("correctness: max relative error over the output and all six gradients vs fp64")
        print(CHECK_HEADER + "\n" + "-" * len(CHECK_HEADER))
        for c in cases(args.quick):
            try:
                checks.append(check(*c))
            except Exception as e:  # a compile or launch error is a failure of that case, not of the run
                checks.append(dict(zip(("dtype", "d", "N", "mask"), c, strict=True), ok=False, fused=math.nan,
                                   triton=math.nan, tol=math.nan, notes=[f"{type(e).__name__}: {e}"[:300]]))  # fmt: skip
            print_check(checks[-1])
    report["checks"] = checks
    timing = []
    if not args.skip_timing:
        print(f"\ntiming (bf16, no mask; median ratio of per-rep times [95% CI], {args.reps} reps)")
        for N in (197, 729) if args.quick else tuple(TIMING_SHAPES):
            for backward in (False, True):
                try:
                    timing.append(time_one(N, backward, args.reps))
                    print_timing(timing[-1])
                except Exception as e:
                    print(f"N={N} {'fwd+bwd' if backward else 'fwd'}: error {type(e).__name__}: {e}"[:400])
                    timing.append({"N": N, "mode": "fwd+bwd" if backward else "fwd", "error": str(e)[:400]})
    report["timing"] = timing
    failed = [c for c in checks if not c["ok"]]
    report["failed"] = len(failed)
    print(f"\n{len(checks) - len(failed)}/{len(checks)} correctness cases ok, {time.time() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
