"""The linear probe of ``dna-vlm probe``: standardised features, multinomial L2 logistic regression
(scikit-learn), C chosen by stratified k-fold cross-validation on the training split only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["C_GRID", "C_LIMITS", "FittedProbe", "default_jobs", "fit_many", "fit_probe", "score_rows"]

#: candidate inverse L2 strengths (the same for every arm and label); extended by two decades at a time when
#: the best C lands on an edge, up to :data:`C_LIMITS`
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
C_LIMITS = (1e-6, 1e6)
MAX_FOLDS = 5


@dataclass
class FittedProbe:
    """A fitted probe: the scikit-learn pipeline, its classes, the chosen C, its cross-validated accuracy,
    the C grid searched (after any extension) and ``C_at_edge`` ("low" / "high" when the chosen C is still
    at an end of it: the CV curve kept rising up to :data:`C_LIMITS`, or was flat; else None)."""

    pipeline: object
    classes: list[str]
    C: float
    cv_acc: float
    n_train: int
    C_grid: tuple[float, ...] = ()
    C_at_edge: str | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n, F)`` features -> ``(n,)`` predicted labels (strings)."""
        if len(x) == 0:
            return np.zeros(0, dtype=object)
        if len(self.classes) == 1:  # a constant training label: nothing to fit
            return np.full(len(x), self.classes[0], dtype=object)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self.pipeline.predict(x)


def _pipeline():
    """StandardScaler -> L2 logistic regression (newton-cholesky: a few exact Newton steps per C, the same
    optimum lbfgs creeps toward in hundreds of iterations; multinomial for > 2 classes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=1000, solver="newton-cholesky"))]
    )


def _cv_acc(x: np.ndarray, y: np.ndarray, Cs: list[float], cv) -> np.ndarray:
    """Mean cross-validated accuracy per C; the scaler is fitted inside each training fold (a Pipeline in
    ``GridSearchCV``), so no held-out fold leaks into the standardisation."""
    from sklearn.model_selection import GridSearchCV

    gs = GridSearchCV(_pipeline(), {"lr__C": Cs}, cv=cv, scoring="accuracy", refit=False, n_jobs=1)
    return np.asarray(gs.fit(x, y).cv_results_["mean_test_score"], dtype=float)


def _search(x: np.ndarray, y: np.ndarray, cv) -> tuple[list[float], np.ndarray, int]:
    """``(grid, cv accuracy per C, best index)``: :data:`C_GRID`, extended two decades at a time past the
    edge the best C lands on (up to :data:`C_LIMITS`). Ties go to the smallest C (the strongest penalty)."""
    Cs, acc = list(C_GRID), _cv_acc(x, y, list(C_GRID), cv)
    while True:
        best = int(np.flatnonzero(acc == acc.max())[0])
        new: list[float] = []
        if best == len(Cs) - 1:
            new = [c for c in (Cs[-1] * 10, Cs[-1] * 100) if c <= C_LIMITS[1] * (1 + 1e-9)]
        elif best == 0 and acc.max() > acc.min():  # a flat curve (all tied) is not pushed further down
            new = [c for c in (Cs[0] / 100, Cs[0] / 10) if c >= C_LIMITS[0] * (1 - 1e-9)]
        if not new:
            return Cs, acc, best
        Cs, acc = [*Cs, *new], np.concatenate([acc, _cv_acc(x, y, new, cv)])
        order = np.argsort(Cs)
        Cs, acc = [Cs[i] for i in order], acc[order]


def fit_probe(x: np.ndarray, y: Sequence[str], seed: int = 0, n_jobs: int | None = None) -> FittedProbe:
    """Fit the probe on ``(n, F)`` training features and their labels.

    A ``StandardScaler`` -> ``LogisticRegression`` pipeline (L2; see :func:`_pipeline`) cross-validated over
    the C grid with ``StratifiedKFold`` (up to 5 folds, fewer when a class has fewer rows, shuffled with
    ``seed``; the scaler refitted in every fold), the grid extended when the best C is at its edge
    (:func:`_search`), then refitted on the whole training split at the best C. ``n_jobs`` is accepted for
    compatibility; parallelism is across fits (:func:`fit_many`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    del n_jobs
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
    x = np.asarray(x, dtype=np.float64)
    # one BLAS thread: the problems are small, and threads on a busy machine cost 10-20x (measured: 5.3 s
    # against 0.3 s per fit on 2 loaded cores)
    # the weakest penalties of the grid may stop at max_iter on near-separable folds: scored as they are
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Cs, acc, best = _search(x, y, cv)
        pipe = _pipeline().set_params(lr__C=Cs[best]).fit(x, y)
    edge = "low" if best == 0 else "high" if best == len(Cs) - 1 else None
    return FittedProbe(
        pipe, [str(c) for c in classes], float(Cs[best]), float(acc[best]), len(y), tuple(Cs), edge
    )


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
