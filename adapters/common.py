"""Layer bodies shared by several families (each family file still owns its adapter and its table line)."""

from __future__ import annotations

import torch
from dna_vlm.adapters.base import DnALayer, kernel_mask
from torch import nn

from dna_vlm.attention import attention_dropout_p


def _split_heads_bnd(t: torch.Tensor | None, head_dim: int) -> torch.Tensor | None:
    """(B, N, H*d) -> (B, H, N, d); None (the control arm's absent negative branch) stays None."""
    if t is None:
        return None
    B, N, _ = t.shape
    return t.view(B, N, -1, head_dim).transpose(1, 2)


def _split_heads_packed(t: torch.Tensor | None, head_dim: int) -> torch.Tensor | None:
    """(N, H*d) -> (N, H, d), the layout the rotary helpers of packed towers expect; None stays None."""
    return None if t is None else t.view(t.shape[0], -1, head_dim)


def _packed_to_bhnd(t: torch.Tensor | None) -> torch.Tensor | None:
    """(N, H, d) -> (1, H, N, d); None stays None."""
    return None if t is None else t.transpose(0, 1).unsqueeze(0)


class SeparateQKVLayer(DnALayer):
    """Towers with ``q_proj``, ``k_proj``, ``v_proj`` and an output map on (B, N, C) inputs with an optional
    mask (CLIP, SigLIP, InternVL). Signature: ``forward(hidden_states, attention_mask=None, **kw)`` ->
    ``(out, None)``: attention weights are never materialised (use ``dna-vlm inspect`` to see them)."""

    out_name = "out_proj"
    positive_modules = ("q_proj", "k_proj", "v_proj", "out_proj")

    def positive_qv(self) -> tuple[nn.Linear, nn.Linear]:
        return self.q_proj, self.v_proj

    def project(self, x: torch.Tensor):
        """x (B, N, C) -> q, q_neg, k, v, v_neg, each (B, N, C) (q_neg, v_neg None in the control arm)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q_neg, v_neg = self.negative(x, q, v)
        return q, q_neg, k, v, v_neg

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        B, N, _ = hidden_states.shape
        scale = getattr(self, "scale", None) or getattr(self, "scaling", None)
        o = self._lowrank_scores(hidden_states, attention_mask, scale)
        if o is None:
            heads = [_split_heads_bnd(t, self.head_dim) for t in self.project(hidden_states)]
            o = self.attend(
                *heads, attn_mask=attention_mask, dropout_p=attention_dropout_p(self), scale=scale
            )
        out = getattr(self, self.out_name)(o.transpose(1, 2).reshape(B, N, -1))
        return out, None

    def _lowrank_scores(self, x: torch.Tensor, attention_mask, scale) -> torch.Tensor | None:
        """(B, H, N, d) by the low-rank branch's score-reuse kernel (``NegativeBranch.scores_applicable``), or
        None. Not when a subclass transforms the queries in ``project`` (InternVL's q-norm: S- is then no rank-r
        update of S+) nor while the layer is observed (``dna-vlm inspect`` wraps :meth:`run_kernel`)."""
        if self.neg is None or type(self).project is not SeparateQKVLayer.project or self.observed:
            return None
        drop = attention_dropout_p(self) if self.training else 0.0
        if not self.neg.scores_applicable(x, kernel_mask(attention_mask), drop):
            return None
        q, k, v = (
            _split_heads_bnd(t, self.head_dim) for t in (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        )
        return self.neg.scores_attention(x, q, k, v, scale)


class PackedRotaryLayer(DnALayer):
    """Towers on packed (N, C) inputs with ``cu_seqlens`` and 2-D rotary embeddings (Qwen-VL, VideoLLaMA3).

    Rotary is applied to both queries with the tower's own ``apply_rotary_pos_emb_vision``; attention never
    crosses a ``cu_seqlens`` boundary (images / frame groups / Qwen2.5-VL windows)."""

    def qkv_packed(self, x: torch.Tensor):
        """x (N, C) -> q, k, v, each (N, C)."""
        raise NotImplementedError

    def output(self, o: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def wrap_output(self, out: torch.Tensor):
        return out

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        N = hidden_states.shape[0]
        q, k, v = self.qkv_packed(hidden_states)
        q_neg, v_neg = self.negative(hidden_states, q, v)
        q, q_neg, k, v, v_neg = (_split_heads_packed(t, self.head_dim) for t in (q, q_neg, k, v, v_neg))
        cos, sin = position_embeddings
        rotary = self.hf_module.apply_rotary_pos_emb_vision
        q, k = rotary(q, k, cos, sin)
        if q_neg is not None:
            q_neg, _ = rotary(q_neg, q_neg, cos, sin)
        scale = getattr(self, "scaling", None) or getattr(self, "scale", None)
        o = self.attend(
            *(_packed_to_bhnd(t) for t in (q, q_neg, k, v, v_neg)),
            cu_seqlens=cu_seqlens, dropout_p=attention_dropout_p(self), scale=scale,
        )  # fmt: skip
        return self.wrap_output(self.output(o.squeeze(0).transpose(0, 1).reshape(N, -1)))
