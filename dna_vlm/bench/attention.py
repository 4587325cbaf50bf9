"""`dna-vlm bench`: DnA vs stock softmax attention, measured side by side in one run.

Every number is a ratio against the stock attention timed in the same process, with the arms interleaved
(stock, dna, stock, dna, ...): each repetition times every arm back to back, the row's ratio is the median of
the per-repetition ratios with a distribution-free 95% CI (so load that drifts over a run hits both sides of
each ratio alike, and the CI says how far one run can be trusted). Not a test: tests never time anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dna_vlm.attention import DnAAttention, SoftmaxAttention
from dna_vlm.bench.timing import (
    interleaved_medians,
    interleaved_times,
    machine,
    median_ci,
    peak_memory,
    steady_allocator,
)
from dna_vlm.kernel import dna_attention_fused, dna_attention_fused_onecall, use_impl


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


def layer_flops(s: Shape, dna: bool, rank: int | None = None, reuse_scores: bool = False) -> float:
    """Forward FLOPs of one pre-norm encoder layer (matmuls only; 2 FLOPs per multiply-add).

    stock: qkv (3C^2) + out (C^2) projections, QK^T and PV (2 N C per token), MLP (2 C * mlp).
    DnA adds the Q- and V- projections (2C^2) and a second QK^T + PV; with ``rank`` r (the low-rank negative
    branch) the two projections are rank-r pairs instead (C r + r C each: 4 C r); ``rank=0`` counts the
    second QK^T + PV alone (the ``2-SDPA core`` arm: DnA's attention core without negative projections).
    ``reuse_scores`` (with a rank): the score-reuse kernel instead of a second QK^T + PV — both A maps (2 C r),
    K B_q (C r), the rank-r update of the scores and P- a_v (H N r each) and (P- a_v) B_v (C r).
    """
    per_token = 2 * (4 * s.C**2 + 2 * s.N * s.C + 2 * s.C * s.C * s.mlp_ratio)
    if dna and reuse_scores:
        per_token += 2 * (4 * s.C * rank + 2 * s.H * s.N * rank)
    elif dna:
        proj = 2 * s.C**2 if rank is None else 4 * s.C * rank
        per_token += 2 * (proj + 2 * s.N * s.C)
    return per_token * s.B * s.N


def flop_floor(s: Shape, rank: int | None = None, reuse_scores: bool = False) -> float:
    """DnA layer FLOPs / stock layer FLOPs (``rank``: the low-rank negative branch of that rank; 0: none;
    ``reuse_scores``: that branch by the score-reuse kernel)."""
    return layer_flops(s, True, rank, reuse_scores) / layer_flops(s, False)


class CoreFloorAttention(SoftmaxAttention):
    """Stock attention that runs DnA's whole attention core (two SDPA calls and the combine, Q- = Q+, V- = V+):
    DnA without its negative projections. Its layer ratio is the measured floor of every negative branch that
    makes a second SDPA call (not of the score-reuse kernel): what that call costs here, not in FLOPs."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        lam = torch.zeros(self.num_heads, device=x.device, dtype=x.dtype)
        return self._merge(dna_attention_fused(q, q, k, v, v, lam, attn_mask=attn_mask))


class EncoderLayer(nn.Module):
    """Pre-norm ViT block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, attn: nn.Module, dim: int, hidden: int):
        super().__init__()
        self.ln1, self.ln2, self.attn = nn.LayerNorm(dim), nn.LayerNorm(dim), attn
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


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


CORE_FLOOR = "2-SDPA core"


def _layer_fns(s: Shape, device, dtype, backward: bool, ranks: tuple[int, ...] = ()) -> tuple[dict, dict]:
    """({arm: callable running one encoder layer on one input}, {arm: FLOP floor}) for "stock", "dna",
    "lowrank r=R" (the path the layers choose: in CPU inference the score-reuse kernel), in forward-only runs
    also "lowrank r=R, 2 SDPA" (forced ``use_impl("fused")``), and :data:`CORE_FLOOR`."""
    torch.manual_seed(0)
    hidden = round(s.C * s.mlp_ratio)
    x = torch.randn(s.B, s.N, s.C, device=device, dtype=dtype, requires_grad=backward)
    attns = {"stock": SoftmaxAttention(s.C, s.H, qkv_bias=True)}
    attns["dna"] = DnAAttention(s.C, s.H, qkv_bias=True, init="random")
    floors = {"dna": flop_floor(s)}
    forced = set()
    for r in ranks:
        low = DnAAttention(s.C, s.H, qkv_bias=True, init="random", neg_branch="lowrank", neg_rank=r)
        attns[f"lowrank r={r}"] = low
        with torch.enable_grad() if backward else torch.no_grad():
            reuse = low.neg.scores_applicable(x, None, 0.0)
        floors[f"lowrank r={r}"] = flop_floor(s, r, reuse_scores=reuse)
        if reuse:
            attns[f"lowrank r={r}, 2 SDPA"] = low
            floors[f"lowrank r={r}, 2 SDPA"] = flop_floor(s, r)
            forced.add(f"lowrank r={r}, 2 SDPA")
    attns[CORE_FLOOR] = CoreFloorAttention(s.C, s.H, qkv_bias=True)
    floors[CORE_FLOOR] = flop_floor(s, 0)
    layers = {k: EncoderLayer(a, s.C, hidden).to(device, dtype) for k, a in attns.items()}

    def run(layer, impl):
        def call():
            with use_impl(impl):
                out = layer(x)
                if backward:
                    out.backward(torch.ones_like(out))
            return out

        return call

    fns = {k: run(layer, "fused" if k in forced else "auto") for k, layer in layers.items()}
    return fns, floors


@dataclass
class Row:
    shape: str
    what: str
    stock_ms: float  # median over repetitions
    dna_ms: float  # median over repetitions
    ratio: float  # median of the per-repetition ratios arm / stock
    floor: float
    stock_peak_mb: float | None = None
    dna_peak_mb: float | None = None
    arm: str = "dna"  # "dna" (full negative branch), "lowrank r=R", "lowrank r=R, 2 SDPA" or CORE_FLOOR
    ratio_lo: float | None = None  # 95% CI of the median ratio (median_ci)
    ratio_hi: float | None = None
    stock_times_ms: list[float] | None = None  # per repetition, index-aligned with dna_times_ms
    dna_times_ms: list[float] | None = None
    stock_faults: float | None = None  # mean minor page faults per call
    dna_faults: float | None = None


def bench_shape(
    s: Shape,
    device,
    dtype,
    reps: int,
    warmup: int,
    memory: bool = True,
    ranks: tuple[int, ...] = (),
    modes: tuple[str, ...] = ("fwd", "fwd+bwd"),
) -> list[Row]:
    """Core and layer rows, forward then forward+backward; ``ranks`` add low-rank DnA layer rows, timed
    interleaved with the same stock and full-DnA layers and the :data:`CORE_FLOOR` layer."""
    rows = []
    for backward in [m == "fwd+bwd" for m in modes]:
        mode = "fwd+bwd" if backward else "fwd"
        with torch.enable_grad() if backward else torch.no_grad():
            stock, dna = _core_fns(s, device, dtype, backward)
            rows += _rows(s, f"attention core {mode}", {"stock": stock, "dna": dna}, {"dna": 2.0}, reps, warmup,
                          device, memory)  # fmt: skip
            fns, floors = _layer_fns(s, device, dtype, backward, ranks)
            rows += _rows(s, f"encoder layer {mode}", fns, floors, reps, warmup, device, memory)
    return rows


def _rows(s: Shape, what: str, fns: dict, floors: dict, reps: int, warmup: int, device, memory: bool):
    """One Row per non-stock fn of ``fns``, all timed interleaved with ``fns["stock"]``."""
    faults: dict[str, float] = {}
    t = interleaved_times(fns, reps, warmup, device, faults)
    stock_mb = peak_memory(fns["stock"], device) / 2**20 if memory else None
    rows = []
    for arm, floor in floors.items():
        ratio, lo, hi = median_ci([a / b for a, b in zip(t[arm], t["stock"], strict=True)])
        row = Row(
            s.name, what, statistics.median(t["stock"]) * 1e3, statistics.median(t[arm]) * 1e3, ratio, floor,
            arm=arm, ratio_lo=lo, ratio_hi=hi,
            stock_times_ms=[v * 1e3 for v in t["stock"]], dna_times_ms=[v * 1e3 for v in t[arm]],
            stock_faults=faults["stock"], dna_faults=faults[arm],
        )  # fmt: skip
        if memory:
            row.stock_peak_mb, row.dna_peak_mb = stock_mb, peak_memory(fns[arm], device) / 2**20
        rows.append(row)
    return rows


def core_breakdown(s: Shape, device, dtype, reps: int, warmup: int) -> dict[str, float]:
    """Forward+backward ms of the attention core's parts, interleaved: one SDPA (stock), two SDPA calls,
    two calls with the negated query, DnA with autograd's ``addcmul`` combine, DnA (``_Combine``)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, qn, k, v, vn = (
        torch.randn(s.B, s.H, s.N, s.d, generator=g).to(device, dtype).requires_grad_(True) for _ in range(5)
    )
    lam = torch.full((s.H,), 0.5, device=device, requires_grad=True)
    sdpa = F.scaled_dot_product_attention

    def both(a, b):
        torch.autograd.backward([a, b], [torch.ones_like(a), torch.ones_like(b)])

    def dna_addcmul():
        o = torch.addcmul(sdpa(q, k, v), sdpa(qn.neg(), k, vn), lam.view(1, -1, 1, 1).to(dtype), value=-1.0)
        o.backward(torch.ones_like(o))

    def dna():
        o = dna_attention_fused(q, qn, k, v, vn, lam)
        o.backward(torch.ones_like(o))

    fns = {
        "stock (1 SDPA)": lambda: sdpa(q, k, v).backward(
            torch.ones(s.B, s.H, s.N, s.d, device=device, dtype=dtype)
        ),
        "2 SDPA": lambda: both(sdpa(q, k, v), sdpa(qn, k, vn)),
        "2 SDPA, -q_neg": lambda: both(sdpa(q, k, v), sdpa(qn.neg(), k, vn)),
        "DnA, addcmul combine": dna_addcmul,
        "DnA (_Combine)": dna,
    }
    with torch.enable_grad():
        m = interleaved_medians(fns, reps, warmup, device)
    return {k: v * 1e3 for k, v in m.items()}


def compare_forms(s: Shape, device, dtype, reps: int, warmup: int) -> dict[str, float]:
    """Forward+backward ms of the two-call form vs one SDPA call over 2H heads."""
    with torch.enable_grad():
        _, two = _core_fns(s, device, dtype, True, "two-call")
        _, one = _core_fns(s, device, dtype, True, "one-call")
        m = interleaved_medians({"two-call": two, "one-call": one}, reps, warmup, device)
    return {k: v * 1e3 for k, v in m.items()}


def format_table(rows: list[Row]) -> str:
    """Rows as text; "DnA/stock" is the median per-repetition ratio, "95% CI" its interval, "faults/call" the
    mean minor page faults per call (stock/arm)."""
    head = (
        f"{'shape':<22} {'measure':<24} {'arm':<20} {'stock ms':>9} {'DnA ms':>9} {'DnA/stock':>9} "
        f"{'95% CI':>15} {'floor':>6} {'vs floor':>8} {'peak MB stock/DnA':>18} {'faults/call':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = f"{r.stock_peak_mb:.1f}/{r.dna_peak_mb:.1f}" if r.stock_peak_mb is not None else "-"
        ci = f"[{r.ratio_lo:.3f}, {r.ratio_hi:.3f}]" if r.ratio_lo is not None else "-"
        flt = f"{r.stock_faults:.0f}/{r.dna_faults:.0f}" if r.stock_faults is not None else "-"
        lines.append(
            f"{r.shape:<22} {r.what:<24} {r.arm:<20} {r.stock_ms:>9.2f} {r.dna_ms:>9.2f} {r.ratio:>9.3f} "
            f"{ci:>15} {r.floor:>6.2f} {r.ratio / r.floor:>8.3f} {mem:>18} {flt:>12}"
        )
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark DnA against stock attention (ratios measured in one run)")
    p.add_argument("--shapes", default="vit-b,so400m,long", help=f"comma list of {','.join(SHAPES)}")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few reps (smoke test)")
    p.add_argument(
        "--reps", type=int, default=7, help="timed repetitions per row, interleaved across arms (default: 7)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default: 2)")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu)",
    )
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (CUDA default) | float16")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's adaptive mmap threshold on CPU (page faults then differ between arms and runs)",
    )
    p.add_argument(
        "--compare-forms", action="store_true", help="also time two SDPA calls vs one call over 2H heads"
    )
    p.add_argument(
        "--lowrank-ranks",
        default="8,32",
        help="ranks of neg_branch='lowrank' timed beside full DnA in the encoder-layer rows ('' for none); in CPU "
        "forward runs each rank also gets a 'lowrank r=R, 2 SDPA' row (the layer without the score-reuse kernel)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the attention core's parts fwd+bwd (one SDPA, two SDPA, negated query, combines)",
    )
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd (default both)")
    p.add_argument(
        "--breakdown-only", action="store_true", help="only the attention core's parts (implies --breakdown)"
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument(
        "--video",
        action="store_true",
        help="video decoding instead: decord vs PyAV, exact vs keyframe seek, resize paths, frame cache, "
        "prefetch (the --video-* options below)",
    )
    from dna_vlm.bench.video_decode import add_video_bench_args

    add_video_bench_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.video:
        from dna_vlm.bench.video_decode import main_video_bench

        return main_video_bench(args)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shapes = list(QUICK.values()) if args.quick else [SHAPES[n.strip()] for n in args.shapes.split(",")]
    reps, warmup = (3, 1) if args.quick else (args.reps, args.warmup)
    ranks = tuple(int(r) for r in args.lowrank_ranks.split(",") if r.strip())
    alloc = "allocator: default" if args.default_malloc or device.type != "cpu" else steady_allocator()
    print(f"dna-vlm bench: {machine()}, {dtype}; medians of {reps} interleaved reps; {alloc}")
    for s in shapes:
        low = "".join(f", lowrank r={r} {flop_floor(s, r):.3f}" for r in ranks)
        print(
            f"  {s.name}: B={s.B} H={s.H} N={s.N} d={s.d}; encoder-layer FLOP floor {flop_floor(s):.3f}{low}"
        )
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not set(modes) <= {"fwd", "fwd+bwd"}:
        print(f"bench: --modes takes fwd and/or fwd+bwd, got {args.modes!r}", file=sys.stderr)
        return 2
    rows = []
    for s in [] if args.breakdown_only else shapes:
        new = bench_shape(s, device, dtype, reps, warmup, not args.no_memory, ranks, modes)
        print(format_table(new).split("\n", 2)[-1], flush=True)
        rows += new
    print()
    print(format_table(rows))
    shares = attention_share(rows, shapes)
    print(format_shares(shares))
    forms, parts = {}, {}
    if args.compare_forms:
        for s in shapes:
            forms[s.name] = compare_forms(s, device, dtype, reps, warmup)
            f = forms[s.name]
            print(
                f"{s.name}: two-call {f['two-call']:.2f} ms, one-call (2H heads) {f['one-call']:.2f} ms (fwd+bwd)"
            )
    if args.breakdown or args.breakdown_only:
        for s in shapes:
            parts[s.name] = core_breakdown(s, device, dtype, reps, warmup)
        print()
        print(format_breakdown(parts))
    if args.json:
        _write_json(args.json, dtype, rows, forms, parts, shares, alloc)
    return 0


def _write_json(path, dtype, rows: list[Row], forms: dict, parts: dict, shares: dict, alloc: str) -> None:
    from dna_vlm.files import atomic_write_json

    atomic_write_json(
        path,
        {
            "machine": machine(),
            "dtype": str(dtype),
            "allocator": alloc,
            "rows": [asdict(r) for r in rows],
            "forms": forms,
            "breakdown": parts,
            "attention_share": shares,
        },
    )


def attention_share(rows: list[Row], shapes: list[Shape]) -> dict[str, dict[str, float]]:
    """Per shape and mode: what the second attention call alone costs, measured, against the layer.

    ``core_extra_share`` = (DnA core ms - stock core ms) / stock layer ms, from the core and layer rows, next
    to the same share in FLOPs (``core_flop_share``): when time share > FLOP share, SDPA runs at a lower FLOP
    rate than the layer's GEMMs and the layer ratio cannot reach its FLOP floor. ``measured_floor`` (with
    ``_lo`` / ``_hi``) is the :data:`CORE_FLOOR` layer's ratio, timed interleaved with the other layer arms:
    the least a DnA layer whose negative branch makes a second SDPA call pays over stock on this machine.
    """
    out = {}
    for s in shapes:
        for mode in ("fwd", "fwd+bwd"):
            core = next((r for r in rows if r.shape == s.name and r.what == f"attention core {mode}"), None)
            layer = next((r for r in rows if r.shape == s.name and r.what == f"encoder layer {mode}"), None)
            if core is None or layer is None:
                continue
            entry = {
                "core_extra_share": (core.dna_ms - core.stock_ms) / layer.stock_ms,
                "core_flop_share": 2 * s.N * s.C / (4 * s.C**2 + 2 * s.N * s.C + 2 * s.C * s.C * s.mlp_ratio),
            }
            floor = next(
                (r for r in rows if r.shape == s.name and r.what == layer.what and r.arm == CORE_FLOOR), None
            )
            if floor is not None:
                entry |= {"measured_floor": floor.ratio, "measured_floor_lo": floor.ratio_lo,
                          "measured_floor_hi": floor.ratio_hi}  # fmt: skip
            out[f"{s.name} {mode}"] = entry
    return out


def format_shares(shares: dict[str, dict[str, float]]) -> str:
    lines = []
    for key, v in shares.items():
        line = (
            f"{key}: the second attention core alone adds {100 * v['core_extra_share']:.1f}% of the stock layer's "
            f"time (its FLOP share: {100 * v['core_flop_share']:.1f}%)"
        )
        if "measured_floor" in v:
            line += (
                f"; the {CORE_FLOOR} layer (DnA without negative projections, the floor of every negative "
                f"branch that makes a second SDPA call here) runs at {v['measured_floor']:.3f} [{v['measured_floor_lo']:.3f}, "
                f"{v['measured_floor_hi']:.3f}] of stock"
            )
        lines.append(line)
    return "\n".join(lines)


def format_breakdown(parts: dict[str, dict[str, float]]) -> str:
    """The attention core's parts (fwd+bwd ms and / stock) per shape, as a text table."""
    lines = [f"{'shape':<22} {'attention core part, fwd+bwd':<28} {'ms':>9} {'/ stock':>8}"]
    for shape, m in parts.items():
        base = m["stock (1 SDPA)"]
        lines += [f"{shape:<22} {k:<28} {v:>9.2f} {v / base:>8.3f}" for k, v in m.items()]
    return "\n".join(lines)
