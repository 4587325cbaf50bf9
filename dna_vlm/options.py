"""``DnAOptions``: what a DnA layer computes and how it starts -- one object, validated once, passed and stored whole.

:func:`dna_vlm.patch` takes it (or builds it from keyword options), each DnA layer keeps it, ``save_dna`` and
a training run's ``run_config.json`` record ``to_dict()`` of it, and ``DnAOptions(**that_dict)`` rebuilds it.
Like PEFT's ``LoraConfig``: add an option here (a field, its check in ``__post_init__``) and every place that
patches, saves or loads carries it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["ARMS", "COMPARISON", "CONTROL_ARM", "DNA_ARM", "INITS", "NEG_BRANCHES", "DnAOptions"]

INITS = ("preserve", "scaled", "random")
#: what a patched attention layer computes: DnA, or the fair softmax control (the same layer and SDPA call
#: as DnA's positive branch, with the negative branch off)
DNA_ARM, CONTROL_ARM = "dna", "softmax"
ARMS = (DNA_ARM, CONTROL_ARM)
#: the order of a comparison: (baseline, candidate) = the control arm, then DnA
COMPARISON = (CONTROL_ARM, DNA_ARM)
NEG_BRANCHES = ("full", "lowrank")


@dataclass(frozen=True)
class DnAOptions:
    """What a DnA layer looks like and how it starts; validated on construction.

    Args:
        init: ``"preserve"`` (Q- = Q+, V- = 0: output identical to the wrapped attention), ``"scaled"``
            (Q- = a*Q+, V- = b*V+ with a = b = 1e-4) or ``"random"``. ``"scaled"`` reproduces the *effective*
            start of the authors' conversions of pretrained models (their TimeSformer attention and their
            ViSCoP vision-tower conversion): a negative-branch term of ``-lambda * 1e-4 * P- V+`` at step 0.
            Their files write the branch additively (README, "DnA, as implemented here"); under this project's subtractive
            ``P+ V+ - lambda P- V-`` the same term needs V- = +1e-4 V+, hence ``scaled_b = +1e-4`` (the old
            -1e-4 started with the opposite sign).
        neg_branch: ``"full"`` or ``"lowrank"``.
        neg_rank: rank r of the ``"lowrank"`` branch.
        shared_values: the paper's ablation, V- = V+ (no V- parameters).
        neg_scale_init: initial lambda for every head. With ``shared_values`` and ``"preserve"`` lambda starts
            at 0 instead, because V- = V+ cannot be zero; that is the only exact start.
        scaled_a, scaled_b: the factors of the ``"scaled"`` init.
        attention: ``"dna"``, or ``"softmax"``: the fair control arm, the same adapter layer running the same
            SDPA call as DnA's positive branch with no negative branch (no parameters added), so at init both
            arms give bit-identical outputs and every later difference comes from DnA itself.
    """

    init: str = "preserve"
    neg_branch: str = "full"
    neg_rank: int | None = None
    shared_values: bool = False
    neg_scale_init: float = 0.5
    scaled_a: float = 1e-4
    scaled_b: float = 1e-4
    attention: str = "dna"

    def __post_init__(self):
        if self.attention not in ARMS:
            raise ValueError(f"attention={self.attention!r} is not one of {ARMS}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is not one of {INITS}")
        if self.neg_branch not in NEG_BRANCHES:
            raise ValueError(f"neg_branch={self.neg_branch!r} is not one of {NEG_BRANCHES}")
        if self.neg_branch == "lowrank":
            if not isinstance(self.neg_rank, int) or self.neg_rank < 1:
                raise ValueError(
                    f"neg_branch='lowrank' needs an integer neg_rank >= 1, got neg_rank={self.neg_rank!r}"
                )
            if self.init == "scaled":
                raise ValueError(
                    "init='scaled' (Q- = a*Q+) cannot be expressed by neg_branch='lowrank' (Q- = Q+ + BA); "
                    "use init='preserve' or 'random' with lowrank, or neg_branch='full' with 'scaled'"
                )
        elif self.neg_rank is not None:
            raise ValueError(
                f"neg_rank={self.neg_rank} only applies to neg_branch='lowrank'; drop it or set that branch"
            )
        if not math.isfinite(self.neg_scale_init):
            raise ValueError(f"neg_scale_init must be finite, got {self.neg_scale_init}")

    @property
    def effective_neg_scale_init(self) -> float:
        return 0.0 if (self.shared_values and self.init == "preserve") else float(self.neg_scale_init)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DnAOptions:
        """Rebuild from :meth:`to_dict` output; fields an older dna-vlm did not write take their defaults, a
        field this version does not know is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DnA options {unknown} are not known to this dna-vlm (known: {sorted(known)})")
        return cls(**d)
