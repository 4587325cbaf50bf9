"""The linear probe of ``dna-vlm probe``: standardised features, multinomial L2 logistic regression
(scikit-learn), C chosen by stratified k-fold cross-validation on the training split only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["C_GRID", "FittedProbe", "default_jobs", "fit_many", "fit_probe", "score_rows"]

#: candidate inverse L2 strengths (the same for every arm and label)
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
MAX_FOLDS = 5


@dataclass
class FittedProbe:
    """A fitted probe: the scikit-learn pipeline, its classes, the chosen C and its cross-validated accuracy."""

    pipeline: object
    classes: list[str]
    C: float
    cv_acc: float
    n_train: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n, F)`` features -> ``(n,)`` predicted labels (strings)."""
        if len(x) == 0:
            return np.zeros(0, dtype=object)
        if len(self.classes) == 1:  # a constant training label: nothing to fit
            return np.full(len(x), self.classes[0], dtype=object)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self.pipeline.predict(x)


def fit_probe(x: np.ndarray, y: Sequence[str], seed: int = 0, n_jobs: int | None = None) -> FittedProbe:
    """Fit the probe on ``(n, F)`` training features and their labels.

    ``StandardScaler`` then ``LogisticRegressionCV`` (newton-cholesky: a few exact Newton steps per C, the
    same optimum lbfgs creeps toward in hundreds of iterations, 2x faster here; multinomial for > 2 classes,
    L2) over
    :data:`C_GRID` with ``StratifiedKFold`` (up to 5 folds, fewer when a class has fewer rows, shuffled with
    ``seed``), refitted on the whole training split at the best C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y = np.asarray([str(v) for v in y], dtype=object)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return FittedProbe(None, [str(c) for c in classes], float("nan"), float("nan"), len(y))
    folds = int(min(MAX_FOLDS, counts.min()))
    if folds < 2:
        raise ValueError(
            f"probe: class {classes[counts.argmin()]!r} has {counts.min()} training row(s); cross-validation "
            "needs >= 2 per class - use a larger training split"
        )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    lr = LogisticRegressionCV(
        Cs=list(C_GRID),
        cv=cv,
        scoring="accuracy",
        max_iter=1000,
        n_jobs=n_jobs,
        solver="newton-cholesky",
        **_l2_kwargs(),
    )
    # one BLAS thread: the problems are small, and threads on a busy machine cost 10-20x (measured: 5.3 s
    # against 0.3 s per fit on 2 loaded cores)
    # the weakest penalties of the grid may stop at max_iter on near-separable folds: scored as they are
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), lr).fit(np.asarray(x, dtype=np.float64), y)
    scores = lr.scores_ if not isinstance(lr.scores_, dict) else next(iter(lr.scores_.values()))
    cv_acc = np.asarray(scores).reshape(-1, len(C_GRID)).mean(axis=0)  # mean over folds, per C
    best = float(np.ravel(lr.C_)[0])
    return FittedProbe(pipe, [str(c) for c in classes], best, float(cv_acc.max()), len(y))


def default_jobs() -> int:
    """Processes for :func:`fit_many`: the CPUs this process may use (each fit runs on one thread)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fit_many(jobs: dict, seed: int = 0, n_jobs: int = 1) -> dict:
    """``{key: (x, y)}`` -> ``{key: FittedProbe}``: :func:`fit_probe` on each, in ``n_jobs`` joblib worker
    processes when > 1 (whole fits per worker, one BLAS thread each: the same results as serially)."""
    if n_jobs <= 1 or len(jobs) < 2:
        return {k: fit_probe(x, y, seed=seed) for k, (x, y) in jobs.items()}
    from joblib import Parallel, delayed

    fits = Parallel(n_jobs=min(n_jobs, len(jobs)))(delayed(fit_probe)(x, y, seed) for x, y in jobs.values())
    return dict(zip(jobs, fits, strict=True))


def _l2_kwargs() -> dict:
    """A pure L2 penalty in the spelling of the installed scikit-learn: 1.8+ deprecates ``penalty`` in favour
    of ``l1_ratios`` (0 = L2) and offers the simplified fitted attributes; older releases default to L2."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
        return {"use_legacy_attributes": False, "l1_ratios": (0.0,)}
    return {}


def score_rows(
    probes: dict[str, FittedProbe], x: np.ndarray, rows: Sequence[dict], fields: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(labels, preds)``: row i scored by the probe of ``fields[i]`` (its label is ``rows[i][fields[i]]``)."""
    preds = [""] * len(rows)
    for field in sorted(set(fields)):
        idx = [i for i, f in enumerate(fields) if f == field]
        for i, p in zip(idx, probes[field].predict(x[idx]), strict=True):
            preds[i] = str(p)
    return [str(r[f]) for r, f in zip(rows, fields, strict=True)], preds
