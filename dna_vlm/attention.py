"""DnA modules: the negative branch (shared by every adapter) and a standalone timm-style attention.

The negative branch owns everything DnA adds to an attention layer: the negative query Q-, the negative
value V- (unless values are shared) and the per-head ``neg_scale`` (lambda). Two parametrisations:

* ``"full"``: own (dim -> dim) maps for Q- and V-, as in the paper;
* ``"lowrank"`` (rank r): Q- = Q+ + B_q A_q and V- = B_v A_v with B zero-initialised, a parameter-efficient
  DnA that still starts function-preserving.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dna_vlm.kernel import dna_attention, dna_attention_lowrank_scores, requested_impl
from dna_vlm.options import DnAOptions

__all__ = [
    "DnAAttention",
    "NegativeBranch",
    "SoftmaxAttention",
    "attention_dropout_p",
    "negative_branch_num_params",
    "split_fused_qv",
]


def negative_branch_num_params(dim: int, num_heads: int, opts: DnAOptions, bias: bool = True) -> int:
    """Parameters a negative branch adds to one layer of width ``dim``."""
    if opts.neg_branch == "full":
        per_map = dim * dim + (dim if bias else 0)
    else:
        per_map = 2 * opts.neg_rank * dim
    return per_map * (1 if opts.shared_values else 2) + num_heads


#: the largest (Nq, Nk) scores of one head that NegativeBranch.scores_attention materialises (bytes); above it the
#: fused two-SDPA path runs (N = 1448 in fp32)
SCORES_HEAD_LIMIT = 8 << 20


class NegativeBranch(nn.Module):
    """Q-, V- and lambda for one attention layer of width ``dim`` with ``num_heads`` heads.

    ``forward(x, q_pos, v_pos)`` takes the layer input x (..., dim) and the positive projections
    (..., dim) *before* head split / rotary / norms, and returns (q_neg, v_neg) in the same layout, so each
    adapter applies its tower's own per-query transforms (rotary, qk-norm) to q_neg exactly as to q_pos.
    """

    def __init__(self, dim: int, num_heads: int, opts: DnAOptions, bias: bool = True):
        super().__init__()
        self.dim, self.num_heads, self.opts = dim, num_heads, opts
        r = opts.neg_rank
        if opts.neg_branch == "full":
            self.q_neg = nn.Linear(dim, dim, bias=bias)
            self.v_neg = None if opts.shared_values else nn.Linear(dim, dim, bias=bias)
        else:
            self.q_neg_a, self.q_neg_b = nn.Linear(dim, r, bias=False), nn.Linear(r, dim, bias=False)
            if not opts.shared_values:
                self.v_neg_a, self.v_neg_b = nn.Linear(dim, r, bias=False), nn.Linear(r, dim, bias=False)
        self.neg_scale = nn.Parameter(torch.full((num_heads,), opts.effective_neg_scale_init))

    @torch.no_grad()
    def init_from(self, q: nn.Linear, v: nn.Linear) -> NegativeBranch:
        """Warm-start from the layer's positive (dim -> dim) query and value maps, per ``opts.init``."""
        o = self.opts
        if o.neg_branch == "full":
            if o.init == "random":
                _trunc_normal(self.q_neg.weight), _zero(self.q_neg.bias)
                if self.v_neg is not None:
                    _trunc_normal(self.v_neg.weight), _zero(self.v_neg.bias)
            else:
                a = 1.0 if o.init == "preserve" else o.scaled_a
                _copy_linear(self.q_neg, q, a)
                if self.v_neg is not None:
                    _copy_linear(self.v_neg, v, 0.0 if o.init == "preserve" else o.scaled_b)
        else:
            pairs = [(self.q_neg_a, self.q_neg_b)]
            if not o.shared_values:
                pairs.append((self.v_neg_a, self.v_neg_b))
            for a_lin, b_lin in pairs:  # LoRA-style: A random, B zero => BA = 0 at "preserve"
                nn.init.kaiming_uniform_(a_lin.weight, a=math.sqrt(5))
                nn.init.zeros_(b_lin.weight) if o.init == "preserve" else _trunc_normal(b_lin.weight)
        self.neg_scale.fill_(o.effective_neg_scale_init)
        return self

    def forward(
        self, x: torch.Tensor, q_pos: torch.Tensor, v_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs in the activations' dtype whatever the parameters' dtype: fp32 master weights (training a bf16
        / fp16 model) are cast on the fly, like PEFT's LoRA, so the optimiser updates the fp32 copy."""
        if self.opts.neg_branch == "full":
            q_neg = _linear(x, self.q_neg)
            v_neg = v_pos if self.v_neg is None else _linear(x, self.v_neg)
        else:
            q_neg, v_neg = self._lowrank(x, q_pos, v_pos)
        return q_neg, v_neg

    def scores_applicable(self, x: torch.Tensor, attn_mask, dropout_p: float) -> bool:
        """Whether :meth:`scores_attention` may replace ``forward`` + :func:`dna_attention` for input x (B, N, C).

        Only for the low-rank branch, under ``DNA_VLM_ATTENTION_IMPL=auto``, without gradients (it has no
        backward), on CPU in fp32/fp64 (on CUDA the two fused SDPA calls are faster), with no mask and no
        dropout, and while one head's (N, N) scores stay under ``SCORES_HEAD_LIMIT`` bytes.
        """
        n = x.shape[-2]
        return (
            self.opts.neg_branch == "lowrank"
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and attn_mask is None
            and dropout_p == 0.0
            and n * n * x.element_size() <= SCORES_HEAD_LIMIT
            and requested_impl() == "auto"
        )

    def scores_attention(self, x: torch.Tensor, q, k, v, scale: float | None = None) -> torch.Tensor:
        """DnA output (B, H, N, d) from the layer input x (B, N, C) and the positive q, k, v (B, H, N, d), by
        :func:`dna_vlm.kernel.dna_attention_lowrank_scores` (check :meth:`scores_applicable` first): the
        negative scores come from the positive ones by a rank-r update, with no second SDPA call."""
        r, H = self.opts.neg_rank, self.num_heads
        a = self._a_maps(x)  # (B, N, r or 2r), shared by all heads
        b_q = self.q_neg_b.weight.to(x.dtype).view(H, q.shape[-1], r)
        a_v = b_v = None
        if not self.opts.shared_values:
            a_v, b_v = a[..., r:], self.v_neg_b.weight.to(x.dtype).view(H, v.shape[-1], r)
        return dna_attention_lowrank_scores(q, k, v, a[..., :r], b_q, a_v, b_v, self.neg_scale, scale)

    def _a_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``[A_q x, A_v x]`` (..., 2r), or ``A_q x`` (..., r) with shared values: both A maps in one matmul."""
        a_w = self.q_neg_a.weight
        if not self.opts.shared_values:
            a_w = torch.cat([a_w, self.v_neg_a.weight])
        return nn.functional.linear(x, a_w.to(x.dtype))

    def _lowrank(self, x: torch.Tensor, q_pos: torch.Tensor, v_pos: torch.Tensor):
        """``q_pos + B_q A_q x`` and ``B_v A_v x`` (or ``v_pos``), (..., dim) each: both A maps in one matmul
        (x is read once) and the q sum inside the B_q matmul (``addmm``: no separate pass over q)."""
        r, dim = self.opts.neg_rank, self.dim
        a = self._a_maps(x)
        a = a.reshape(-1, a.shape[-1])  # (T, r or 2r)
        b_q = self.q_neg_b.weight.to(x.dtype)  # (dim, r)
        q_neg = torch.addmm(q_pos.reshape(-1, dim), a[:, :r], b_q.t()).view(q_pos.shape)
        if self.opts.shared_values:
            return q_neg, v_pos
        v_neg = (a[:, r:] @ self.v_neg_b.weight.to(x.dtype).t()).view(q_pos.shape)
        return q_neg, v_neg

    def extra_repr(self) -> str:
        o = self.opts
        rank = f", rank={o.neg_rank}" if o.neg_branch == "lowrank" else ""
        return f"{o.neg_branch}{rank}, heads={self.num_heads}, shared_values={o.shared_values}, init={o.init}"


def _linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """``lin(x)`` computed in x's dtype (the weights cast when they differ, e.g. fp32 masters of a bf16 model)."""
    if lin.weight.dtype == x.dtype:
        return lin(x)
    b = None if lin.bias is None else lin.bias.to(x.dtype)
    return nn.functional.linear(x, lin.weight.to(x.dtype), b)


def split_fused_qv(qkv: nn.Linear) -> tuple[nn.Linear, nn.Linear]:
    """Temporary (dim -> dim) copies of the q and v rows of a fused (dim -> 3 dim) ``qkv``, for warm starts."""
    dim = qkv.in_features
    w, b = qkv.weight, qkv.bias
    q, v = (nn.Linear(dim, dim, bias=b is not None, device=w.device, dtype=w.dtype) for _ in range(2))
    with torch.no_grad():
        q.weight.copy_(w[:dim]), v.weight.copy_(w[2 * dim :])
        if b is not None:
            q.bias.copy_(b[:dim]), v.bias.copy_(b[2 * dim :])
    return q, v


def _trunc_normal(w: torch.Tensor) -> None:
    nn.init.trunc_normal_(w, std=0.02)


def _zero(b: torch.Tensor | None) -> None:
    if b is not None:
        b.zero_()


def attention_dropout_p(attn: nn.Module) -> float:
    """Attention dropout of a timm (``attn_drop``: Dropout or float) or HF (``dropout``) attention."""
    for name in ("attn_drop", "dropout", "attention_dropout"):
        d = getattr(attn, name, None)
        if d is not None:
            return float(d.p if isinstance(d, nn.Dropout) else d)
    return 0.0


def _copy_linear(dst: nn.Linear, src: nn.Linear, factor: float) -> None:
    dst.weight.copy_(src.weight.detach().to(dst.weight) * factor)
    if dst.bias is not None:
        dst.bias.copy_(src.bias.detach().to(dst.bias) * factor if src.bias is not None else 0.0)


class SoftmaxAttention(nn.Module):
    """Stock multi-head softmax attention (timm layout: fused ``qkv``, ``proj``); the benchmark's baseline."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, H, N, d)."""
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) -> projected (B, N, C)."""
        B, _, N, _ = o.shape
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, -1)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        drop = self.attn_drop if self.training else 0.0
        o = nn.functional.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask, dropout_p=drop
        )
        return self._merge(o)


class DnAAttention(SoftmaxAttention):
    """Denoising attention, a drop-in for :class:`SoftmaxAttention` / timm's ``Attention``.

    ``qkv`` and ``proj`` are the positive branch and output projection (same names as timm, so pretrained
    weights load as they are); ``neg`` is the :class:`NegativeBranch`. Build with
    ``DnAAttention(dim, num_heads, ...)`` or warm-start with :meth:`from_attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        options: DnAOptions | None = None,
        **option_kwargs,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        # standalone layers start from random weights (nothing to preserve) unless options say otherwise
        self.opts = options if options is not None else DnAOptions(**{"init": "random", **option_kwargs})
        if options is not None and option_kwargs:
            raise TypeError(
                f"DnAAttention: pass options= or keyword options {sorted(option_kwargs)}, not both"
            )
        self.neg = NegativeBranch(dim, num_heads, self.opts, bias=qkv_bias)
        self.neg.init_from(*self._qv_linears())

    def _qv_linears(self) -> tuple[nn.Linear, nn.Linear]:
        return split_fused_qv(self.qkv)

    @classmethod
    def from_attention(
        cls, attn: nn.Module, num_heads: int | None = None, init: str = "preserve", **dna_kwargs
    ) -> DnAAttention:
        """Warm-start from a softmax attention: timm/``SoftmaxAttention`` (``qkv``, ``proj``) or HF-style
        (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``). With ``init="preserve"`` the output is identical."""
        if hasattr(attn, "qkv"):
            w, b, proj = attn.qkv.weight, attn.qkv.bias, attn.proj
        elif all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
            lins = (attn.q_proj, attn.k_proj, attn.v_proj)
            w = torch.cat([lin.weight for lin in lins])
            b = torch.cat([lin.bias for lin in lins]) if attn.q_proj.bias is not None else None
            proj = attn.out_proj
        else:
            raise TypeError(
                f"{type(attn).__name__} has neither a fused `qkv` nor `q_proj/k_proj/v_proj/out_proj`; "
                "build DnAAttention directly and load its weights"
            )
        num_heads = num_heads or getattr(attn, "num_heads", None)
        if num_heads is None:
            raise ValueError(f"{type(attn).__name__} has no `num_heads`; pass num_heads=")
        new = cls(
            w.shape[1],
            num_heads,
            qkv_bias=b is not None,
            attn_drop=attention_dropout_p(attn),
            init=init,
            **dna_kwargs,
        )
        new.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.qkv.weight.copy_(w)
            if b is not None:
                new.qkv.bias.copy_(b)
            new.proj.load_state_dict(proj.state_dict())
        new.neg.init_from(*new._qv_linears())
        return new

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C); attn_mask broadcastable to (B, H, N, N)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        drop = self.attn_drop if self.training else 0.0
        if self.neg.scores_applicable(x, attn_mask, drop):
            return self._merge(self.neg.scores_attention(x, self._heads(q), self._heads(k), self._heads(v)))
        q_neg, v_neg = self.neg(x, q, v)
        o = dna_attention(
            self._heads(q), self._heads(q_neg), self._heads(k), self._heads(v), self._heads(v_neg),
            self.neg.neg_scale, attn_mask=attn_mask, dropout_p=drop,
        )  # fmt: skip
        return self._merge(o)

    def num_dna_parameters(self) -> int:
        return sum(p.numel() for p in self.neg.parameters())

    def extra_repr(self) -> str:
        o = self.opts
        rank = f", neg_rank={o.neg_rank}" if o.neg_branch == "lowrank" else ""
        return (
            f"dim={self.qkv.in_features}, num_heads={self.num_heads}, neg_branch={o.neg_branch}{rank}, "
            f"shared_values={o.shared_values}, init={o.init}, dna_params={self.num_dna_parameters():,}"
        )
