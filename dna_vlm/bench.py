"""`dna-vlm bench`: DnA vs stock softmax attention, measured side by side in one run.

Every number is a ratio against the stock attention timed in the same process, with the two interleaved
(stock, dna, stock, dna, ...) and the median taken, so machine load affects both alike. Not a test: tests
never time anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kernel import dna_attention_fused, dna_attention_fused_onecall
from .module import DnAAttention, SoftmaxAttention


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    H: int
    N: int
    d: int
    mlp_ratio: float = 4.0

    @property
    def C(self) -> int:
        return self.H * self.d


SHAPES = {
    "vit-b": Shape("ViT-B", 8, 12, 197, 64),
    "so400m": Shape("SigLIP-so400m/frame", 8, 16, 729, 72, mlp_ratio=4304 / 1152),
    "long": Shape("long packed video", 1, 16, 4096, 80),
}
QUICK = {"tiny": Shape("tiny", 2, 4, 64, 16)}


def layer_flops(s: Shape, dna: bool) -> float:
    """Forward FLOPs of one pre-norm encoder layer (matmuls only; 2 FLOPs per multiply-add).

    stock: qkv (3C^2) + out (C^2) projections, QK^T and PV (2 N C per token), MLP (2 C * mlp).
    DnA adds the Q- and V- projections (2C^2) and a second QK^T + PV.
    """
    per_token = 2 * (4 * s.C**2 + 2 * s.N * s.C + 2 * s.C * s.C * s.mlp_ratio)
    if dna:
        per_token += 2 * (2 * s.C**2 + 2 * s.N * s.C)
    return per_token * s.B * s.N


def flop_floor(s: Shape) -> float:
    return layer_flops(s, True) / layer_flops(s, False)


class EncoderLayer(nn.Module):
    """Pre-norm ViT block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, attn: nn.Module, dim: int, hidden: int):
        super().__init__()
        self.ln1, self.ln2, self.attn = nn.LayerNorm(dim), nn.LayerNorm(dim), attn
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def interleaved_medians(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device
) -> dict[str, float]:
    """Median seconds of each fn, run round-robin so drift and load hit all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_time(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs start/stop lines to fd 2; keep the benchmark table readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(fn: Callable[[], object], device) -> int:
    """Peak bytes allocated while fn runs (CUDA allocator stats, or CPU profiler allocation events)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    acts = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr(), torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    return peak


def _core_fns(s: Shape, device, dtype, backward: bool, form: str = "two-call"):
    g = torch.Generator(device="cpu").manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_(backward)

    q, qn, k, v, vn = (t(s.B, s.H, s.N, s.d) for _ in range(5))
    lam = torch.full((s.H,), 0.5, device=device, requires_grad=backward)
    dna_fn = dna_attention_fused if form == "two-call" else dna_attention_fused_onecall

    def run(f):
        def call():
            out = f()
            if backward:
                out.backward(torch.ones_like(out))
            return out

        return call

    stock = run(lambda: F.scaled_dot_product_attention(q, k, v))
    dna = run(lambda: dna_fn(q, qn, k, v, vn, lam))
    return stock, dna


def _layer_fns(s: Shape, device, dtype, backward: bool):
    torch.manual_seed(0)
    hidden = round(s.C * s.mlp_ratio)
    stock_layer = EncoderLayer(SoftmaxAttention(s.C, s.H, qkv_bias=True), s.C, hidden).to(device, dtype)
    dna_layer = EncoderLayer(DnAAttention(s.C, s.H, qkv_bias=True, init="random"), s.C, hidden).to(
        device, dtype
    )
    x = torch.randn(s.B, s.N, s.C, device=device, dtype=dtype, requires_grad=backward)

    def run(layer):
        def call():
            out = layer(x)
            if backward:
                out.backward(torch.ones_like(out))
            return out

        return call

    return run(stock_layer), run(dna_layer)


@dataclass
class Row:
    shape: str
    what: str
    stock_ms: float
    dna_ms: float
    ratio: float
    floor: float
    stock_peak_mb: float | None = None
    dna_peak_mb: float | None = None


def bench_shape(s: Shape, device, dtype, reps: int, warmup: int, memory: bool = True) -> list[Row]:
    rows = []
    for backward in (False, True):
        mode = "fwd+bwd" if backward else "fwd"
        ctx = torch.enable_grad() if backward else torch.no_grad()
        with ctx:
            for what, (stock, dna), floor in (
                (f"attention core {mode}", _core_fns(s, device, dtype, backward), 2.0),
                (f"encoder layer {mode}", _layer_fns(s, device, dtype, backward), flop_floor(s)),
            ):
                m = interleaved_medians({"stock": stock, "dna": dna}, reps, warmup, device)
                row = Row(s.name, what, m["stock"] * 1e3, m["dna"] * 1e3, m["dna"] / m["stock"], floor)
                if memory:
                    row.stock_peak_mb = peak_memory(stock, device) / 2**20
                    row.dna_peak_mb = peak_memory(dna, device) / 2**20
                rows.append(row)
    return rows


def compare_forms(s: Shape, device, dtype, reps: int, warmup: int) -> dict[str, float]:
    """Forward+backward ms of the two-call form vs one SDPA call over 2H heads."""
    with torch.enable_grad():
        _, two = _core_fns(s, device, dtype, True, "two-call")
        _, one = _core_fns(s, device, dtype, True, "one-call")
        m = interleaved_medians({"two-call": two, "one-call": one}, reps, warmup, device)
    return {k: v * 1e3 for k, v in m.items()}


def format_table(rows: list[Row]) -> str:
    head = f"{'shape':<22} {'measure':<24} {'stock ms':>9} {'DnA ms':>9} {'DnA/stock':>9} {'floor':>6} {'vs floor':>8} {'peak MB stock/DnA':>18}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = f"{r.stock_peak_mb:.1f}/{r.dna_peak_mb:.1f}" if r.stock_peak_mb is not None else "-"
        lines.append(
            f"{r.shape:<22} {r.what:<24} {r.stock_ms:>9.2f} {r.dna_ms:>9.2f} {r.ratio:>9.3f} {r.floor:>6.2f} "
            f"{r.ratio / r.floor:>8.3f} {mem:>18}"
        )
    return "\n".join(lines)


def machine() -> str:
    """The card, or the CPU model and core count, plus torch and Python versions."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name()
    else:
        dev = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                dev = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        dev = f"{dev} ({os.cpu_count()} cores)"
    return f"{dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark DnA against stock attention (ratios measured in one run)")
    p.add_argument("--shapes", default="vit-b,so400m,long", help=f"comma list of {','.join(SHAPES)}")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few reps (smoke test)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (CUDA default) | float16")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument(
        "--compare-forms", action="store_true", help="also time two SDPA calls vs one call over 2H heads"
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument(
        "--video", action="store_true", help="benchmark decord frame sampling vs PyAV decode-then-pick"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.video:
        from .video_bench import run_video_bench

        run_video_bench(quick=args.quick)
        return 0
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shapes = list(QUICK.values()) if args.quick else [SHAPES[n.strip()] for n in args.shapes.split(",")]
    reps, warmup = (3, 1) if args.quick else (args.reps, args.warmup)
    print(f"dna-vlm bench: {machine()}, {dtype}; medians of {reps} interleaved reps")
    for s in shapes:
        print(f"  {s.name}: B={s.B} H={s.H} N={s.N} d={s.d}; encoder-layer FLOP floor {flop_floor(s):.3f}")
    rows = []
    for s in shapes:
        rows += bench_shape(s, device, dtype, reps, warmup, memory=not args.no_memory)
        print(format_table(rows[-4:]).split("\n", 2)[-1], flush=True)
    print()
    print(format_table(rows))
    forms = {}
    if args.compare_forms:
        for s in shapes:
            forms[s.name] = compare_forms(s, device, dtype, reps, warmup)
            f = forms[s.name]
            print(
                f"{s.name}: two-call {f['two-call']:.2f} ms, one-call (2H heads) {f['one-call']:.2f} ms (fwd+bwd)"
            )
    if args.json:
        from ._io import atomic_write_json

        atomic_write_json(
            args.json,
            {"machine": machine(), "dtype": str(dtype), "rows": [asdict(r) for r in rows], "forms": forms},
        )
    return 0
