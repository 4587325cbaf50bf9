"""The one-pass Triton DnA kernel against the float64 reference (values and all six gradients), dispatch, errors,
and fully masked rows (output 0, zero gradients) on every implementation.

Without CUDA the kernels run in Triton's interpreter: ``TRITON_INTERPRET=1`` must be set before
``dna_vlm.kernel_triton`` is imported (``triton.jit`` picks interpreter or compiler when the kernel is defined,
not when triton is imported). tests/conftest.py sets it for the suite and this module again when run alone;
``dna_vlm`` itself imports ``kernel_triton`` only on first use.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import dna_vlm
from dna_vlm import kernel_triton as kt
from dna_vlm.kernel import (
    current_impl,
    dna_attention_fused,
    dna_attention_reference,
    dna_attention_varlen,
    use_impl,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not kt._interpreted():
    pytest.skip(
        "dna_vlm.kernel_triton was imported before TRITON_INTERPRET=1 was set, so its kernels are compiled-only; "
        "run with TRITON_INTERPRET=1 in the environment",
        allow_module_level=True,
    )
NAMES = ("q_pos", "q_neg", "k", "v_pos", "v_neg", "neg_scale")
# relative to the largest entry of the reference
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.fixture
def blocks(monkeypatch):
    """Set the kernels' (BM, BN), e.g. (16, 16) so a 61-token sequence spans several blocks."""
    return lambda bm_bn: monkeypatch.setattr(kt, "BLOCKS", bm_bn)


def make(B, H, Nq, Nk, d, dv, seed=0):
    """float64 (q_pos, q_neg, k, v_pos, v_neg, lambda) and an upstream gradient, on CPU."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, Nq, d), (B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, dv), (B, H, Nk, dv)]
    ts = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    lam = torch.rand(H, generator=g, dtype=torch.float64) + 0.1
    return [*ts, lam], torch.randn(B, H, Nq, dv, generator=g, dtype=torch.float64)


def make_mask(kind, B, H, Nq, Nk, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "keypad":  # (B, 1, 1, Nk) bool, as vision towers pad
        m = torch.rand(B, 1, 1, Nk, generator=g) > 0.3
    elif kind == "keypad_h":  # (B, H, 1, Nk) bool
        m = torch.rand(B, H, 1, Nk, generator=g) > 0.3
    elif kind == "keypad_float":  # (B, 1, 1, Nk) additive, HF style: finfo.min on padded keys, plus a bias
        m = torch.randn(B, 1, 1, Nk, generator=g).masked_fill(
            torch.rand(B, 1, 1, Nk, generator=g) < 0.3, -3e38
        )
    elif kind == "full":  # (B, H, Nq, Nk) bool
        m = torch.rand(B, H, Nq, Nk, generator=g) > 0.3
    elif kind == "full_float":  # (Nq, Nk) additive, broadcast over B and H
        return torch.randn(Nq, Nk, generator=g, dtype=torch.float64)
    else:
        raise ValueError(kind)
    m[..., 0] = True if m.dtype == torch.bool else 0.0  # keep one key per row
    return m


def run(fn, ins, grad_out, dtype, mask, **kw):
    """fn's output and gradients of the six inputs, on ``ins`` cast to ``dtype`` (lambda stays fp32)."""
    x = [t.to(DEV, dtype).requires_grad_(True) for t in ins[:5]]
    x.append(ins[5].to(DEV, torch.float32 if dtype != torch.float64 else dtype).requires_grad_(True))
    if mask is not None:
        mask = mask.to(DEV) if mask.dtype == torch.bool else mask.to(DEV, dtype)
    out = fn(*x, attn_mask=mask, **kw)
    return out, torch.autograd.grad(out, x, grad_out.to(DEV, out.dtype))


def check_against_fp64(ins, grad_out, dtype, mask=None, **kw):
    """The triton kernel on ``dtype`` inputs vs the float64 reference on the same (rounded) values."""
    rounded = [t.to(dtype).double() for t in ins[:5]] + [ins[5].float().double()]
    out, grads = run(kt.dna_attention_triton, ins, grad_out, dtype, mask, **kw)
    assert out.dtype == dtype and out.shape == grad_out.shape
    want, want_grads = run(
        dna_attention_reference, rounded, grad_out.to(dtype).double(), torch.float64, mask, **kw
    )
    for name, got, ref in zip(("out", *NAMES), (out, *grads), (want, *want_grads), strict=True):
        assert got.dtype == (torch.float32 if name == "neg_scale" else dtype), name
        tol = TOL[dtype] * max(float(ref.detach().abs().max()), 1e-3)
        torch.testing.assert_close(
            got.double(), ref, atol=tol, rtol=TOL[dtype], msg=lambda m, n=name: f"{n} ({dtype}): {m}"
        )


@pytest.mark.parametrize("d", [64, 72, 80, 96, 128])
def test_head_dims_fp32_keypad(d):
    """Every supported head dim at its shipped block sizes; N = 37 is no multiple of any block."""
    ins, go = make(1, 2, 37, 37, d, d, seed=d)
    check_against_fp64(ins, go, torch.float32, make_mask("keypad", 1, 2, 37, 37))


@pytest.mark.parametrize("mask", [None, "keypad", "keypad_h", "keypad_float", "full", "full_float"])
def test_masks_multiblock_fp32(mask, blocks):
    """Small blocks so both loops run over several partial blocks; Nq != Nk; every mask form."""
    blocks((16, 16))
    B, H, Nq, Nk = 2, 2, 29, 61
    ins, go = make(B, H, Nq, Nk, 16, 32, seed=3)
    check_against_fp64(ins, go, torch.float32, make_mask(mask, B, H, Nq, Nk))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d,dv", [(72, 40), (32, 32)])
def test_half_dtypes(dtype, d, dv, blocks):
    blocks((16, 32))
    ins, go = make(1, 2, 37, 45, d, dv, seed=5)
    check_against_fp64(ins, go, dtype, make_mask("keypad", 1, 2, 37, 45))


def test_scale_strided_inputs_and_inference_path(blocks):
    """A custom scale; (B, N, H, d)-laid-out inputs (no copy needed); no-grad forward equals the autograd one."""
    blocks((16, 16))
    ins, go = make(2, 3, 33, 33, 16, 16, seed=7)
    check_against_fp64(ins, go, torch.float32, make_mask("keypad", 2, 3, 33, 33), scale=0.3)
    x = [t.float().transpose(1, 2).contiguous().transpose(1, 2) for t in ins[:5]] + [ins[5].float()]
    with torch.no_grad():
        out = kt.dna_attention_triton(*x)
    torch.testing.assert_close(out, dna_attention_reference(*x), atol=2e-5, rtol=2e-5)
    assert out.transpose(1, 2).is_contiguous()  # (B, Nq, H, dv) memory: merging heads is a view


def test_fully_masked_rows_are_zero_on_every_path(blocks):
    """Issue 25 #10b: a row with every key masked gives output 0 and zero gradients on reference, fused and
    triton (bool False and additive -inf alike), and the paths agree everywhere."""
    blocks((16, 16))
    B, H, Nq, Nk = 2, 2, 21, 19
    ins, go = make(B, H, Nq, Nk, 16, 16, seed=11)
    keypad = torch.ones(B, 1, 1, Nk, dtype=torch.bool)
    keypad[1] = False  # batch element 1: no key at all
    full = make_mask("full", B, H, Nq, Nk)
    full[:, :, [0, 17]] = False
    additive = torch.zeros(Nq, Nk).masked_fill(~full[0, 0], float("-inf"))
    for mask, dead in ((keypad, (1, slice(None), slice(None))), (full, (slice(None), slice(None), [0, 17])),
                       (additive, (slice(None), slice(None), [0, 17]))):  # fmt: skip
        results = {}
        for name, fn in (("reference", dna_attention_reference), ("fused", dna_attention_fused),
                         ("triton", kt.dna_attention_triton)):  # fmt: skip
            out, grads = run(fn, ins, go, torch.float32, mask)
            assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads), name
            assert (out[dead] == 0).all(), name
            assert (grads[0][dead] == 0).all() and (grads[1][dead] == 0).all(), name
            results[name] = (out, *grads)
        for name in ("fused", "triton"):
            for what, a, b in zip(("out", *NAMES), results[name], results["reference"], strict=True):
                torch.testing.assert_close(
                    a, b, atol=2e-5, rtol=2e-5, msg=lambda m, n=name, w=what: f"{n} {w}: {m}"
                )
    ref64 = run(dna_attention_reference, ins, go, torch.float64, keypad)
    assert (ref64[0][1] == 0).all() and all(torch.isfinite(g).all() for g in ref64[1])


def test_dispatch_goes_to_triton_and_auto_stays_fused(monkeypatch):
    ins, _ = make(1, 2, 5, 5, 16, 16)
    ins = [t.float() for t in ins]
    calls = []
    monkeypatch.setattr(kt, "dna_attention_triton", lambda *a, **k: calls.append("triton") or a[3])
    monkeypatch.setattr("dna_vlm.kernel.dna_attention_fused", lambda *a, **k: calls.append("fused") or a[3])
    dna_vlm.dna_attention(*ins)
    assert current_impl() == "fused"  # auto: the two-SDPA path until the triton kernel is timed on a GPU
    with use_impl("triton"):
        assert current_impl() == "triton"
        dna_vlm.dna_attention(*ins)
    monkeypatch.setenv("DNA_VLM_ATTENTION_IMPL", "triton")
    dna_vlm.dna_attention(*ins)
    with use_impl("auto"):
        dna_vlm.dna_attention(*ins)
    assert calls == ["fused", "triton", "triton", "fused"]


def test_varlen_under_triton(blocks):
    blocks((16, 16))
    ins, _ = make(1, 2, 23, 23, 16, 16, seed=2)
    x = [t.float().requires_grad_(True) for t in ins]
    cu = [0, 5, 17, 23]
    with use_impl("triton"):
        out = dna_attention_varlen(*x, cu_seqlens=cu)
    want = dna_attention_reference(*x, attn_mask=dna_vlm.block_diagonal_mask(cu))
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), x), torch.autograd.grad(want.sum(), x), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


UNSUPPORTED = [
    (dict(dropout_p=0.1), r"triton impl supports dropout_p=0 only; use fused"),
    (dict(dtype=torch.float64), r"dtype torch.float64 is not supported .*use fused"),
    (dict(d=160), r"head dims d=160, dv=160; the triton kernel supports 1..128; use fused"),
    (dict(mask_grad=True), r"attn_mask requires grad.*use impl 'fused'"),
    (dict(H=65536, N=1), r"B\*H = 65536 exceeds the CUDA grid's 65535"),
]


@pytest.mark.parametrize("case,message", UNSUPPORTED)
def test_unsupported_inputs_raise_under_triton(case, message):
    N = case.get("N", 4)
    ins, _ = make(1, case.get("H", 2), N, N, case.get("d", 16), case.get("d", 16))
    x = [t.to(case.get("dtype", torch.float32)) for t in ins]
    mask = torch.zeros(1, 1, 1, N, requires_grad=True) if case.get("mask_grad") else None
    with use_impl("triton"), pytest.raises(ValueError, match=message):
        dna_vlm.dna_attention(*x, attn_mask=mask, dropout_p=case.get("dropout_p", 0.0))


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setattr(kt, "_interpreted", lambda: False)
    ins, _ = make(1, 1, 4, 4, 16, 16)
    if DEV == "cpu":
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            kt.dna_attention_triton(*[t.float() for t in ins])


def test_missing_triton_is_a_clear_import_error():
    """With triton unimportable, dna_vlm still imports; asking for the triton impl names the fix."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None
        import torch, dna_vlm
        from dna_vlm import kernel_triton
        assert not kernel_triton.triton_available()
        x = torch.randn(1, 1, 4, 8)
        with dna_vlm.use_impl("triton"):
            try:
                dna_vlm.dna_attention(x, x, x, x, x, torch.ones(1))
            except ImportError as e:
                assert "pip install triton" in str(e), e
            else:
                raise SystemExit("no ImportError")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_head_dim_split():
    """Power-of-two main piece plus a power-of-two tail, both >= 16 (tl.dot's minimum), never 128 for 72."""
    assert [kt._split(d) for d in (8, 16, 40, 64, 72, 80, 96, 128)] == [
        (16, 0), (16, 0), (32, 16), (64, 0), (64, 16), (64, 16), (64, 32), (128, 0)
    ]  # fmt: skip


AOT = """
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from dna_vlm import kernel_triton as kt

PTRS32 = {"Bias", "Lam", "Lse", "Dp", "R"}
for dtype, d, mask in ((torch.bfloat16, 72, 1), (torch.float16, 64, 2), (torch.float32, 128, 0)):
    x = torch.empty(1, 1, 1, d, dtype=dtype)
    ty = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    for kind, fn in (("fwd", kt._fwd_kernel), ("kv", kt._bwd_kv_kernel), ("q", kt._bwd_q_kernel)):
        consts = {**kt._meta(x, x, kind), "MASK": mask}
        consts.update(STORE_ON=True) if kind == "fwd" else None
        opts = {"num_warps": consts.pop("num_warps"), "num_stages": consts.pop("num_stages")}
        sig = {}
        for a in fn.arg_names:
            if a in consts:
                sig[a] = "constexpr"
            elif a in ("s2", "scale"):
                sig[a] = "fp32"
            elif a in ("H", "Nq", "Nk") or a.startswith("s"):
                sig[a] = "i32"
            else:
                sig[a] = "*fp32" if a in PTRS32 else "*" + ty
        k = compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options=opts)
        assert k.asm["cubin"], (kind, ty, d)
print("ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The interpreter accepts code the GPU compiler rejects: compile the three kernels for sm_90 (no GPU
    needed, triton's bundled ptxas) in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", AOT], capture_output=True, text=True, env=env, timeout=300)
    if "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("triton's ptxas is not available")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
