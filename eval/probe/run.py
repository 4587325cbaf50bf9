"""``dna-vlm probe``: encoder-level accuracy - what a linear read-out of the visual tokens the LLM receives
can tell about each video, for the stock model and any training runs, paired on the same test rows.

Usage::

    dna-vlm probe --model BASE --run softmax=runs/softmax --run dna=runs/dna \\
        --train data/train.jsonl --test data/test.jsonl --test-oracle data/test_oracle.jsonl \\
        --label target_color target_shape target_motion --asked 'target_{category}' --out probe_out

Features (:mod:`dna_vlm.eval.probe.features`): the projector's output tokens of the sampled frames (frozen),
pooled (``mean`` or ``mean+diff``). Probe (:func:`fit_probe`): standardised features, multinomial logistic
regression with an L2 penalty (scikit-learn), its strength C chosen by stratified cross-validation on the
training split only; the test rows are used once, to score. Every arm gets the same folds and C grid.

``DIR/probe.json`` holds, per arm and label: ``acc``, ``acc_ci95`` (Wilson), ``n_train``, ``n_test``,
``chance`` (the most frequent test label's share, with its Wilson CI), per-group accuracy, per-test-row
predictions (id, label, pred, correct), a shuffled-label control (the same probe fitted and scored with the
labels permuted among the rows of each split, so they say nothing about the video: it must land at chance) and, with ``--test-oracle``, the same probe's predictions on the oracle rows.
``--asked TEMPLATE`` adds a per-row view ``asked``: each test row scored by the probe of the label the row's
question asks (``target_{category}`` on the synthetic set), the encoder-level twin of the QA answer.
``comparisons``: every pair of arms, paired on the test rows (exact McNemar, paired bootstrap CI), as
``attribute`` compares QA logs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from dna_vlm.eval.degrade import Planted
from dna_vlm.eval.probe.fit import default_jobs, fit_many, score_rows
from dna_vlm.eval.stats import apply_family, compare, wilson_ci

__all__ = [
    "PROBE_FORMAT",
    "ProbeError",
    "add_parser",
    "compare_arms",
    "probe_arms",
    "run_probe",
    "summary_lines",
]

PROBE_FORMAT = "dna-vlm-probe/1"


class ProbeError(ValueError):
    """Bad probe input (the message names the file / field and how to fix it)."""


def _load_rows(path: str | Path) -> list[dict]:
    """Rows of a dataset JSONL (validated by :func:`dna_vlm.data.dataset.load_dataset`), as dicts with absolute videos."""
    from dna_vlm.data.dataset import load_dataset

    return [e.to_row() for e in load_dataset(path)]


def _labels(rows: list[dict], field: str, source: str) -> list[str]:
    missing = [r["id"] for r in rows if field not in r or r[field] is None]
    if missing:
        raise ProbeError(
            f"{source}: {len(missing)} rows have no label field {field!r} (e.g. {missing[:3]}); pass a "
            "--label every row carries (dna-vlm synth-data writes target_color / target_shape / target_motion)"
        )
    return [str(r[field]) for r in rows]


def _asked_field(template: str, row: dict, source: str) -> str:
    try:
        return template.format(**row)
    except (KeyError, IndexError, ValueError) as e:
        raise ProbeError(f"{source}: row {row['id']}: --asked {template!r} cannot be filled ({e})") from None


def _group_acc(rows: list[dict], correct: np.ndarray, by: tuple[str, ...]) -> dict:
    out: dict = {}
    for field in by:
        vals = [r.get(field) for r in rows]
        if all(v is None for v in vals):
            continue
        groups: dict = {}
        for v in sorted({str(v) for v in vals}):
            mask = np.array([str(x) == v for x in vals])
            k, n = int(correct[mask].sum()), int(mask.sum())
            groups[v] = {"n": n, "acc": k / n, "acc_ci95": wilson_ci(k, n)}
        out[field] = groups
    return out


def _result(rows, labels, preds, by, n_train: int) -> dict:
    """Accuracy block of one probe on one set of rows (per-row predictions included)."""
    correct = np.array([p == t for p, t in zip(preds, labels, strict=True)], dtype=np.int64)
    k, n = int(correct.sum()), len(rows)
    top = max(np.unique(labels, return_counts=True)[1]) if n else 0
    return {
        "acc": k / n if n else math.nan,
        "acc_ci95": wilson_ci(k, n),
        "n_train": n_train,
        "n_test": n,
        "chance": top / n if n else math.nan,
        "chance_ci95": wilson_ci(int(top), n),
        "by_group": _group_acc(rows, correct, by),
        "predictions": [
            {"id": r["id"], "label": t, "pred": p, "correct": bool(c)}
            for r, t, p, c in zip(rows, labels, preds, correct, strict=True)
        ],
    }


def probe_arms(
    features: dict, rows: dict, labels: list[str], asked: str | None, by, seed: int, n_jobs: int = 1,
    controlled: set[str] | None = None,
) -> dict:  # fmt: skip
    """Fit and score every arm's probes. ``features[arm][split]``: ``(n, F)``; ``rows[split]``: dataset rows
    (splits ``train``, ``test`` and optionally ``oracle``). Every fit (each arm x label, real and permuted
    labels) runs through :func:`fit_many` (``n_jobs`` processes). ``controlled``: the arms that get the
    shuffled-label control (default: all; a planted arm ``<arm>@<change>`` runs the same pipeline on the same
    rows as its arm, whose control covers it, and its block says ``null``). Returns ``{arm: {"labels":
    {field: block}, "asked": block | None}}``."""
    n_test = len(rows["test"])
    jobs = {}
    for arm, f in features.items():
        for field in labels:
            y_train = _labels(rows["train"], field, "train")
            jobs[arm, field, None] = (f["train"], y_train)
            if controlled is not None and arm not in controlled:
                continue
            for k in range(N_PERMUTATIONS):
                perm, _ = _permutations(seed, k, len(y_train), n_test)
                jobs[arm, field, k] = (f["train"], [y_train[i] for i in perm])
    fits = fit_many(jobs, seed=seed, n_jobs=n_jobs)
    out: dict = {}
    for arm, f in features.items():
        out[arm] = {"labels": {}, "asked": None}
        fitted = {field: fits[arm, field, None] for field in labels}
        for field in labels:
            shuffled = [fits[arm, field, k] for k in range(N_PERMUTATIONS) if (arm, field, k) in fits]
            out[arm]["labels"][field] = _label_block(fitted[field], shuffled, f, rows, field, by, seed)
        if asked:
            out[arm]["asked"] = _asked_block(fitted, f, rows, asked, by)
    return out


def _label_block(probe, shuffled: list, f: dict, rows: dict, field: str, by, seed: int) -> dict:
    y_train = _labels(rows["train"], field, "train")
    y_test = _labels(rows["test"], field, "test")
    block = _result(rows["test"], y_test, list(probe.predict(f["test"])), by, len(y_train))
    block.update(C=probe.C, C_at_edge=probe.C_at_edge, C_grid=list(probe.C_grid), cv_acc=probe.cv_acc,
                 classes=probe.classes)  # fmt: skip
    block["shuffled_labels_control"] = _shuffled_control(shuffled, f, y_test, seed) if shuffled else None
    if "oracle" in f:
        y_or = _labels(rows["oracle"], field, "test-oracle")
        block["oracle"] = _result(rows["oracle"], y_or, list(probe.predict(f["oracle"])), by, len(y_train))
    return block


#: independent label permutations pooled in the shuffled-label control (one draw alone lands outside its
#: own 95% CI 1 time in 20; pooling a few keeps the control from crying wolf)
N_PERMUTATIONS = 3


def _permutations(seed: int, k: int, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation ``k`` of the train and of the test labels (one generator, train drawn first)."""
    rng = np.random.default_rng([seed, k])
    return rng.permutation(n_train), rng.permutation(n_test)


def _shuffled_control(fits: list, f: dict, y_test: list[str], seed: int) -> dict:
    """The probe fitted and scored with labels shuffled among the rows of each split (``fits[k]``: fitted on
    the train labels of permutation k; they carry no information about the features): a sound pipeline
    (CV, scaling, no leak through row order) lands at chance: its CI holds ``expected_if_independent``
    (what its predictions score on labels independent of them, at most ``chance``, the majority share).
    Correct counts pooled over :data:`N_PERMUTATIONS` permutations (Wilson CI)."""
    k_total, accs, expected = 0, [], 0.0
    for k, fit in enumerate(fits):
        _, test_perm = _permutations(seed, k, fit.n_train, len(y_test))
        y_test_perm = np.array(y_test, dtype=object)[test_perm]
        pred = fit.predict(f["test"])
        hits = int(np.sum(pred == y_test_perm))
        k_total, accs = k_total + hits, [*accs, hits / max(1, len(y_test))]
        labels, counts = np.unique(np.asarray(y_test, dtype=object), return_counts=True)
        share = dict(zip(labels, counts / max(1, len(y_test)), strict=True))
        expected += float(np.mean([share.get(p, 0.0) for p in pred])) / len(fits) if len(pred) else 0.0
    n = len(fits) * len(y_test)
    top = max(np.unique(y_test, return_counts=True)[1]) if len(y_test) else 0
    return {
        "acc": k_total / n if n else math.nan,
        "acc_ci95": wilson_ci(k_total, n),
        "per_permutation": accs,
        "n_permutations": len(fits),
        "chance": top / len(y_test) if len(y_test) else math.nan,
        # what these predictions score on labels independent of them: sum_c share_pred(c) * share_label(c)
        "expected_if_independent": expected,
    }


def _asked_block(fitted: dict, f: dict, rows: dict, template: str, by) -> dict:
    """Each row scored by the probe of the field its question asks (``template`` filled from the row)."""
    block = {"template": template}
    for split in ("test", "oracle"):
        if split not in f:
            continue
        rs = rows[split]
        fields = [_asked_field(template, r, split) for r in rs]
        unknown = sorted(set(fields) - set(fitted))
        if unknown:
            raise ProbeError(
                f"--asked {template!r} names fields {unknown} that are not among --label {sorted(fitted)}"
            )
        labels, preds = score_rows(fitted, f[split], rs, fields)
        res = _result(rs, labels, preds, by, fitted[fields[0]].n_train if fields else 0)
        res["chance"] = res["chance_ci95"] = None  # mixed label spaces: see each label's chance
        if split == "test":
            block.update(res)
        else:
            block["oracle"] = res
    return block


def compare_arms(arms: dict) -> list[dict]:
    """Every pair of arms (in order), paired on test rows: per label and for ``asked`` (and on oracle rows).
    Exact McNemar p and exact CIs (:data:`~dna_vlm.eval.stats.VERDICT_RULE`); for each view and set of rows,
    the pairs of arms are one family."""
    names, out = list(arms), []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            views = {f"label:{k}": (v, arms[b]["labels"][k]) for k, v in arms[a]["labels"].items()}
            if arms[a]["asked"] and arms[b]["asked"]:
                views["asked"] = (arms[a]["asked"], arms[b]["asked"])
            for view, (x, y) in views.items():
                for where, bx, by_ in (("test", x, y), ("oracle", x.get("oracle"), y.get("oracle"))):
                    if bx is None or by_ is None:
                        continue
                    cx = np.array([p["correct"] for p in bx["predictions"]], dtype=np.int64)
                    cy = np.array([p["correct"] for p in by_["predictions"]], dtype=np.int64)
                    out.append(
                        {"baseline": a, "candidate": b, "view": view, "rows": where, **compare(cx, cy)}
                    )
    for key in sorted({(r["view"], r["rows"]) for r in out}):
        apply_family([r for r in out if (r["view"], r["rows"]) == key], f"probe {key[0]} on {key[1]} rows")
    return out


def _arm_specs(
    model: str | None, runs: list[str], stock: bool, stock_name: str = "stock"
) -> dict[str, tuple[str | None, str | None]]:
    """``{name: (pretrained, run_dir)}``; a run is ``PATH`` (named by its folder) or ``NAME=PATH``."""
    specs: dict[str, tuple[str | None, str | None]] = {}
    if stock:
        if not model:
            raise ProbeError("probe: the stock arm needs --model (or pass --no-stock with --run)")
        specs[stock_name] = (model, None)
    for r in runs:
        name, _, path = r.rpartition("=") if "=" in r else (Path(r).name, "", r)
        if name in specs:
            raise ProbeError(f"probe: two arms named {name!r}; name them with --run NAME=PATH")
        specs[name] = (model, path)
    if not specs:
        raise ProbeError("probe: nothing to probe; pass --model (the stock model) and/or --run")
    return specs


def run_probe(
    out_dir: str | Path,
    train: str | Path,
    test: str | Path,
    labels: list[str],
    model: str | None = None,
    runs: list[str] | tuple = (),
    stock: bool = True,
    stock_name: str = "stock",
    test_oracle: str | Path | None = None,
    asked: str | None = None,
    pooling: str = "mean+diff",
    num_frames: int | None = None,
    by: tuple[str, ...] = ("density", "category"),
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    n_boot: int = 10000,
    n_jobs: int | None = None,
    planted: tuple[Planted | str, ...] = (),
    planted_arms: tuple[str, ...] | None = None,
) -> dict:
    """Extract features for every arm (each video decoded once), fit and score the probes, compare the arms
    and write ``out_dir/probe.json``; returns its content. The stock ``model`` is the arm ``stock_name``. ``num_frames`` defaults to the first run's
    ``num_frames`` (else 8), as the lmms-eval plugin's ``max_frames`` does.

    ``planted``: planted degradations of the encoder's output (:class:`~dna_vlm.eval.degrade.Planted` or its
    name, ``scramble0.5``: the plugin's ``encoder_scramble=0.5``): each adds the arm ``<arm>@<name>`` for every
    arm of ``planted_arms`` (default: all) - its features are the arm's tokens with that degradation, on every
    split, so its probe is fitted to the degraded encoder as any arm's is."""
    from dna_vlm.eval.probe.features import extract_features

    from dna_vlm.files import atomic_write_json
    from dna_vlm.runs.loading import load_model, read_run_config

    t0 = time.perf_counter()
    specs = _arm_specs(model, list(runs), stock, stock_name)
    planted = tuple(d if isinstance(d, Planted) else Planted.parse(d) for d in planted)
    unknown = sorted(set(planted_arms or ()) - set(specs))
    if unknown:
        raise ProbeError(f"probe: --planted-arm {unknown} are not arms of this probe ({sorted(specs)})")
    rows = _load_splits(train, test, test_oracle, labels, asked)  # fails before the (slow) model loads
    if num_frames is None:
        run_dirs = [r for _, r in specs.values() if r]
        num_frames = int(read_run_config(run_dirs[0]).get("num_frames") or 8) if run_dirs else 8
    models = {
        n: load_model(pretrained=p, run_dir=r, device=device, dtype=dtype) for n, (p, r) in specs.items()
    }
    keep = set(models) | {f"{a}@{d.name}" for a in (planted_arms or models) for d in planted}
    feats: dict = {n: {} for n in models if n in keep} | {n: {} for n in sorted(keep - set(models))}
    for split, rs in rows.items():
        videos = [r["video"] for r in rs]
        got = extract_features(models, videos, num_frames, pooling, batch_size, desc=split, planted=planted,
                               planted_arms=planted_arms)  # fmt: skip
        for n, x in got.items():
            if n in keep:
                feats[n][split] = x
    controlled = set(models)  # the real arms; a planted arm shares its arm's pipeline and its control
    del models
    jobs = default_jobs() if n_jobs is None else n_jobs
    arms = probe_arms(feats, rows, list(labels), asked, tuple(by), seed, n_jobs=jobs, controlled=controlled)
    result = {
        "format": PROBE_FORMAT,
        "settings": {
            "train": str(train), "test": str(test), "test_oracle": str(test_oracle) if test_oracle else None,
            "labels": list(labels), "asked": asked, "pooling": pooling, "num_frames": num_frames,
            "by": list(by), "seed": seed, "n_boot": n_boot,
            "arms": {n: {"pretrained": p, "run": r} for n, (p, r) in specs.items()},
            "planted": {f"{a}@{d.name}": {"arm": a, **d.model_args} for a in (planted_arms or specs) for d in planted},
            "feature_dim": {n: int(f["test"].shape[1]) for n, f in feats.items()},
        },
        "arms": arms,
        "comparisons": compare_arms(arms),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "probe.json", result)
    return result


def _load_splits(train, test, test_oracle, labels, asked) -> dict[str, list[dict]]:
    """The rows of each split, with every ``labels`` field (and the ``asked`` field) checked present."""
    rows = {"train": _load_rows(train), "test": _load_rows(test)}
    if test_oracle:
        rows["oracle"] = _load_rows(test_oracle)
        _check_oracle(rows["test"], rows["oracle"], test, test_oracle)
    for split, rs in rows.items():
        for field in labels:
            _labels(rs, field, str({"train": train, "test": test, "oracle": test_oracle}[split]))
        if asked:
            missing = {_asked_field(asked, r, split) for r in rs} - set(labels)
            if missing:
                raise ProbeError(
                    f"--asked {asked!r} names fields {sorted(missing)} that are not among --label"
                )
    return rows


def _check_oracle(test: list[dict], oracle: list[dict], test_path, oracle_path) -> None:
    a, b = [r["id"] for r in test], [r["id"] for r in oracle]
    if sorted(a) != sorted(b):
        raise ProbeError(
            f"--test-oracle {oracle_path} does not hold the rows of --test {test_path} "
            f"({len(set(a) - set(b))} ids only in the test file, {len(set(b) - set(a))} only in the oracle file)"
        )


def summary_lines(result: dict) -> list[str]:
    """A plain-text table: accuracy per arm and label (with the shuffled-label control and oracle)."""
    lines = [
        f"{'arm':<14} {'label':<16} {'acc %':>6} {'95% CI':>14} {'chance':>7} {'shuffled':>9} {'oracle':>7}"
    ]
    for arm, a in result["arms"].items():
        views = {**a["labels"], **({"asked": a["asked"]} if a["asked"] else {})}
        for name, b in views.items():
            ci = f"[{100 * b['acc_ci95'][0]:.1f}, {100 * b['acc_ci95'][1]:.1f}]"
            chance = "-" if b.get("chance") is None else f"{100 * b['chance']:.1f}"
            shuf = b.get("shuffled_labels_control")
            shuf = "-" if shuf is None else f"{100 * shuf['acc']:.1f}"
            orc = "-" if b.get("oracle") is None else f"{100 * b['oracle']['acc']:.1f}"
            lines.append(
                f"{arm:<14} {name:<16} {100 * b['acc']:>6.1f} {ci:>14} {chance:>7} {shuf:>9} {orc:>7}"
            )
    return lines


def add_parser(sub) -> None:
    """``dna-vlm probe`` (its one-line help is in :data:`dna_vlm.cli.SUBCOMMANDS`)."""
    p = sub.add_parser("probe", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--model", help="base model (path or hub id): the stock arm, and the base of runs")
    p.add_argument("--run", action="append", default=[], metavar="[NAME=]RUN_DIR", help="a dna-vlm train run")
    p.add_argument("--no-stock", action="store_true", help="probe only the runs, not the stock --model")
    p.add_argument("--train", required=True, help="dataset JSONL the probe is fitted on")
    p.add_argument("--test", required=True, help="dataset JSONL the probe is scored on")
    p.add_argument(
        "--test-oracle", help="the test rows re-rendered without distractors (synth-data writes it)"
    )
    p.add_argument(
        "--label", nargs="+", required=True, metavar="FIELD", help="closed-vocabulary row field(s)"
    )
    p.add_argument("--asked", metavar="TEMPLATE", help="per-row label field, e.g. 'target_{category}'")
    p.add_argument(
        "--pooling",
        default="mean+diff",
        choices=("mean", "mean+diff"),
        help="visual tokens -> features: the mean token, or the mean and the temporal difference "
        "(default: mean+diff)",
    )
    p.add_argument("--num-frames", type=int, help="frames per video (default: the run's num_frames, else 8)")
    p.add_argument("--by", nargs="*", default=["density", "category"], help="row fields to group accuracy by")
    p.add_argument("--batch-size", type=int, default=16, help="videos per forward pass (default: 16)")
    p.add_argument(
        "--device", default="cpu", help="torch device for the models, e.g. cpu, cuda (default: cpu)"
    )
    p.add_argument(
        "--dtype", default="float32", help="model dtype: float32, bfloat16 or float16 (default: float32)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the probe fits, controls and bootstrap (default: 0)"
    )
    p.add_argument(
        "--n-boot", type=int, default=10000, help="bootstrap resamples of arm comparisons (default: 10000)"
    )
    p.add_argument("--jobs", type=int, help="processes fitting probes (default: the CPUs available)")
    p.add_argument(
        "--mask", type=float, nargs="*", default=[], metavar="P",
        help="planted degradations: arm <arm>@mask<P> = the arm's tokens with the plugin's encoder_mask=P",
    )  # fmt: skip
    p.add_argument(
        "--scramble", type=float, nargs="*", default=[], metavar="P",
        help="planted degradations: arm <arm>@scramble<P> = the arm's tokens with the plugin's encoder_scramble=P",
    )  # fmt: skip
    p.add_argument(
        "--planted-arm", "--mask-arm", nargs="*", metavar="ARM", dest="planted_arm",
        help="arms that get the --mask / --scramble variants (default: all)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (probe.json)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        res = run_probe(
            args.out, args.train, args.test, args.label, model=args.model, runs=args.run,
            stock=not args.no_stock, test_oracle=args.test_oracle, asked=args.asked, pooling=args.pooling,
            num_frames=args.num_frames, by=tuple(args.by), batch_size=args.batch_size, device=args.device,
            dtype=args.dtype, seed=args.seed, n_boot=args.n_boot, n_jobs=args.jobs,
            planted=(*(Planted("mask", p) for p in args.mask), *(Planted("scramble", p) for p in args.scramble)),
            planted_arms=tuple(args.planted_arm) if args.planted_arm else None,
        )  # fmt: skip
    except (ProbeError, ValueError) as e:
        print(f"dna-vlm probe: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(res)))
    print(f"\nprobe: {Path(args.out) / 'probe.json'}")
    return 0
