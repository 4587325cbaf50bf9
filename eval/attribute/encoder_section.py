"""The "Encoder" section of ``dna-vlm attribute``: how much of the QA error is the vision encoder's, and
whether an encoder-level gain carries through to QA accuracy.

Inputs, each optional beyond the two QA logs (baseline = the control arm, candidate = DnA):

- ``probe``: a ``dna-vlm probe`` result (``probe.json``) holding both arms' per-row probe predictions;
- ``oracle``: the baseline model's QA sample log on the oracle input (``test_oracle.jsonl``: the same
  questions without distractors);
- ``controls``: ``{name: sample log}`` of the baseline model under input controls (``video=none``,
  ``shuffled``, ``single``, or the blind task);
- ``noise``: ``{sigma: sample log}`` of the baseline model with ``encoder_noise=sigma``.

Everything is paired on the question id. :data:`ENCODER_DEFINITIONS` defines every number; the public entry
points are :func:`add_encoder_args`, :func:`encoder_section`, :func:`encoder_section_from_args` and
:func:`encoder_markdown` (in :mod:`dna_vlm.eval.attribute.encoder_section_render`, re-exported here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from dna_vlm.eval.attribute.encoder_section_render import encoder_markdown, plot_noise_curve
from dna_vlm.eval.logs.samples import SampleLog, expand_sources, load_samples
from dna_vlm.eval.stats import compare, excludes_zero, mcnemar_exact, quantity_rng, wilson_ci

from dna_vlm.options import COMPARISON

__all__ = [
    "ENCODER_DEFINITIONS",
    "EncoderError",
    "add_encoder_args",
    "carry_through",
    "decompose_errors",
    "encoder_markdown",
    "encoder_section",
    "encoder_section_from_args",
]

ENCODER_DEFINITIONS = """\
Encoder section (all paired on the question id; baseline = the control arm, candidate = the DnA arm):
- probe accuracy: share of test questions whose asked attribute a linear probe (dna-vlm probe: multinomial
  L2 logistic regression on the frozen, pooled visual tokens the LLM receives, C chosen by cross-validation
  on the training split) predicts right. It is what the encoder (tower + projector) makes linearly readable.
- encoder gain: probe accuracy of the candidate minus the baseline's, on the same questions; paired
  bootstrap 95% CI over docs and exact McNemar p on the discordant questions.
- QA gain: QA accuracy of the candidate minus the baseline's (as in the main report).
- carry-through: QA gain / encoder gain - the part of the encoder-level gain that reaches the answers (1:
  all of it; 0: none; > 1: QA gained more than the probe saw). 95% CI: percentile bootstrap over docs,
  resampling the docs once for both gains. Undefined (and reported so) when the encoder gain's CI contains 0:
  a ratio over a gain not distinguishable from zero means nothing.
- oracle headroom: QA accuracy of the baseline on the oracle input (each test question re-rendered without
  its distractors) minus its accuracy on the test input; paired CI and McNemar. The share of it the
  candidate closes = QA gain / oracle headroom (bootstrap CI; undefined when the headroom's CI contains 0).
- error decomposition of the baseline's errors (questions the baseline answers wrong), into:
  fixed by the oracle input - right without distractors: the distractors (input noise the encoder passes
  on) caused it; encoder has it, LLM does not use it - still wrong on the oracle input although the
  baseline's probe reads the asked attribute right from the oracle input's tokens (projector/LLM side);
  encoder cannot resolve it - still wrong on the oracle input and the probe is wrong there too.
  Counts, shares of the baseline's errors (they sum to 1) and 95% Wilson CIs.
  Without an oracle log the decomposition is two-way on the test input: probe right / probe wrong.
- encoder's share of the baseline's errors: fixed by the oracle input + encoder cannot resolve it (every
  error not in "encoder has it, LLM does not use it"); Wilson 95% CI.
- controls: QA accuracy of the baseline model with an input control (none: no video; shuffled: the frames
  in a seeded random order; single: the middle frame repeated; or the blind task) and its paired delta
  against the full-video baseline (bootstrap CI, McNemar).
- noise curve: QA accuracy of the baseline model with Gaussian noise of sigma times the visual tokens' RMS
  added to the tokens the LLM receives, against sigma (sigma 0 = the baseline run); Wilson 95% CIs.
"""


class EncoderError(ValueError):
    """Inputs of the encoder section cannot be paired (the message names the file and what to fix)."""


# ------------------------------------------------------------------------------------------------ inputs


def _log(x, name: str = "log") -> SampleLog:
    """A SampleLog from a log, a path, a folder, a glob or a list of them (as ``attribute`` takes them):
    several files are merged by question id, and an id in two files is an error."""
    if isinstance(x, SampleLog):
        return x
    paths = expand_sources(x, name)
    logs = [load_samples(p) for p in paths]
    if len(logs) == 1:
        return logs[0]
    merged = SampleLog(logs[0].path, logs[0].metric, logs[0].sha256)
    for lg in logs:
        for i, rec in lg.records.items():
            if i in merged.records:
                raise EncoderError(
                    f"encoder section: question id {i!r} is in two {name} logs ({merged.records[i].source}, "
                    f"{rec.source}); pass one task's logs per arm"
                )
            merged.records[i] = rec
    return merged


def _qa(log: SampleLog) -> dict[str, tuple[int, bool]]:
    """id -> (correct 0/1, failed)."""
    return {i: (int(r.correct), bool(r.failed)) for i, r in log.records.items()}


def _probe_view(arm: dict, view: str | None, where: str) -> dict:
    if view in (None, "asked"):
        if arm.get("asked"):
            return arm["asked"]
        if view == "asked":
            raise EncoderError(f"{where}: no 'asked' view; rerun dna-vlm probe with --asked TEMPLATE")
        if len(arm["labels"]) == 1:
            return next(iter(arm["labels"].values()))
        raise EncoderError(
            f"{where}: several labels {sorted(arm['labels'])}; choose one with --probe-view label:FIELD"
        )
    field = view.removeprefix("label:")
    if field not in arm["labels"]:
        raise EncoderError(f"{where}: no label {field!r} (has {sorted(arm['labels'])})")
    return arm["labels"][field]


def _probe_rows(probe: dict | str | Path, arms: tuple[str, str], view: str | None) -> dict[str, dict]:
    """``{"base": {id: 0/1}, "cand": {id: 0/1}, "base_oracle": {id: 0/1} (if scored)}`` from probe.json."""
    src = str(probe) if not isinstance(probe, dict) else "probe result"
    if not isinstance(probe, dict):
        probe = json.loads(Path(probe).read_text())
    out: dict[str, dict] = {}
    for key, name in zip(("base", "cand"), arms, strict=True):
        if name not in probe.get("arms", {}):
            raise EncoderError(
                f"{src}: no arm {name!r} (arms: {sorted(probe.get('arms', {}))}); set --probe-arms"
            )
        block = _probe_view(probe["arms"][name], view, f"{src} arm {name!r}")
        out[key] = {p["id"]: int(p["correct"]) for p in block["predictions"]}
        if key == "base" and block.get("oracle"):
            out["base_oracle"] = {p["id"]: int(p["correct"]) for p in block["oracle"]["predictions"]}
    return out


def _default_probe_arms(probe) -> tuple[str, str]:
    names = list((json.loads(Path(probe).read_text()) if not isinstance(probe, dict) else probe)["arms"])
    if set(COMPARISON) <= set(names):
        return COMPARISON
    if len(names) < 2:
        raise EncoderError(
            f"probe result has arms {names}; the encoder gain needs two (--probe-arms BASE CAND)"
        )
    return (names[-2], names[-1])


def _align(series: dict[str, dict], ref: str) -> list[str]:
    """The reference's ids; an error naming the input when another input lacks some of them."""
    ids = list(series[ref])
    for name, s in series.items():
        missing = [i for i in ids if i not in s]
        if missing:
            raise EncoderError(
                f"encoder section: {name} lacks {len(missing)} of the baseline's questions (e.g. {missing[:3]}); "
                "every input must cover the same test questions (same task, split and --limit)"
            )
    return ids


# ------------------------------------------------------------------------------------------------ quantities


def _ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int, name: str) -> list[float] | None:
    """95% percentile CI of sum(num)/sum(den) resampling docs (num, den: per-doc values in {-1, 0, 1}).

    A replicate depends only on the counts of the 9 (num, den) value pairs, so it is drawn exactly as
    multinomial counts of those cells. Replicates with den = 0 are dropped (their ratio is undefined)."""
    n = len(num)
    if n_boot <= 0 or n == 0:
        return None
    cells = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    p = np.array([np.sum((num == a) & (den == b)) for a, b in cells], dtype=float) / n
    counts = quantity_rng(seed, name).multinomial(n, p, size=n_boot)
    a = np.array([c[0] for c in cells], dtype=float)
    b = np.array([c[1] for c in cells], dtype=float)
    s_num, s_den = counts @ a, counts @ b
    ok = s_den != 0
    if not ok.any():
        return None
    lo, hi = np.percentile(s_num[ok] / s_den[ok], [2.5, 97.5])
    return [float(lo), float(hi)]


def carry_through(
    qa_b: np.ndarray,
    qa_c: np.ndarray,
    enc_b: np.ndarray,
    enc_c: np.ndarray,
    n_boot: int,
    seed: int,
    name: str,
    denominator: str = "encoder gain",
) -> dict:
    """QA gain / encoder gain (paired 0/1 arrays over the same docs) with a bootstrap CI over docs;
    ``defined`` is False (ratio and CI None, ``why`` says so) when the denominator's CI contains 0."""
    enc = compare(enc_b, enc_c, n_boot, seed, f"{name}:{denominator}")
    out = {"ratio": None, "ci95": None, "defined": False, "denominator_ci95": enc["delta_ci95"], "why": None}
    if not excludes_zero(enc["delta_ci95"]):
        out["why"] = f"undefined: the {denominator}'s 95% CI contains 0 (or there is no CI)"
        return out
    d_qa, d_enc = (qa_c - qa_b).astype(int), (enc_c - enc_b).astype(int)
    out.update(
        ratio=float(d_qa.sum() / d_enc.sum()),
        ci95=_ratio_ci(d_qa, d_enc, n_boot, seed, f"{name}:carry_through"),
        defined=True,
    )
    return out


def _share(k: int, n: int) -> dict:
    return {"count": int(k), "share": k / n if n else math.nan, "share_ci95": wilson_ci(int(k), n)}


def decompose_errors(b: np.ndarray, oracle: np.ndarray | None, probe: np.ndarray | None) -> dict:
    """The baseline's errors (``b == 0``) split by the oracle input's QA outcome and the probe.

    With ``oracle`` (baseline QA on the oracle input) and ``probe`` (baseline probe on the oracle input):
    ``fixed_by_oracle`` / ``encoder_has_it_llm_does_not`` / ``encoder_cannot_resolve``. With only one of the
    two, a two-way split. Counts, shares of the errors (summing to 1) and Wilson CIs."""
    err = b == 0
    n = int(err.sum())
    if oracle is not None and probe is not None:
        parts = {
            "fixed_by_oracle": err & (oracle == 1),
            "encoder_has_it_llm_does_not": err & (oracle == 0) & (probe == 1),
            "encoder_cannot_resolve": err & (oracle == 0) & (probe == 0),
        }
    elif oracle is not None:
        parts = {"fixed_by_oracle": err & (oracle == 1), "not_fixed_by_oracle": err & (oracle == 0)}
    elif probe is not None:
        parts = {"probe_right": err & (probe == 1), "probe_wrong": err & (probe == 0)}
    else:
        return {}
    out = {"n_errors": n, "parts": {k: _share(int(m.sum()), n) for k, m in parts.items()}}
    if "encoder_has_it_llm_does_not" in parts:
        k = n - int(parts["encoder_has_it_llm_does_not"].sum())
        out["encoder_share"] = _share(k, n)
    return out


def _gain(b: np.ndarray, c: np.ndarray, n_boot: int, seed: int, name: str) -> dict:
    r = compare(b, c, n_boot, seed, name)
    keys = ("n", "baseline_acc", "candidate_acc", "baseline_ci95", "candidate_ci95", "delta", "delta_ci95")
    return {k: r[k] for k in (*keys, "mcnemar_p", "fixed", "broken", "ci_warning")}


def _headroom(a: dict, n_boot: int, seed: int, name: str) -> dict:
    """Oracle - baseline, and the share of it the candidate closes (QA gain / headroom)."""
    head = _gain(a["b"], a["o"], n_boot, seed, f"{name}:oracle_headroom")
    closes = carry_through(a["b"], a["c"], a["b"], a["o"], n_boot, seed, f"{name}:share", "oracle headroom")
    return {"headroom": head, "share_closed": closes}


def _quantities(a: dict, n_boot: int, seed: int, name: str) -> dict:
    """Every quantity the inputs in ``a`` allow, over one set of docs (0/1 arrays keyed b, c, pb, pc, o, po)."""
    # the QA gain draws from the same random stream as attribute's own delta ("all" / "field=value"), so the
    # two reports print the same CI for the same quantity
    qa_stream = name.removeprefix("encoder:") if name != "encoder" else "all"
    out: dict = {"n": len(a["b"]), "qa_gain": _gain(a["b"], a["c"], n_boot, seed, qa_stream)}
    if "pb" in a:
        out["encoder_gain"] = _gain(a["pb"], a["pc"], n_boot, seed, f"{name}:encoder_gain")
        out["carry_through"] = carry_through(a["b"], a["c"], a["pb"], a["pc"], n_boot, seed, name)
    if "o" in a:
        out["oracle"] = _headroom(a, n_boot, seed, name)
    out["decomposition"] = decompose_errors(
        a["b"], a.get("o"), a.get("po", a.get("pb") if "o" not in a else None)
    )
    return out


def _controls(a: dict, extra: dict[str, np.ndarray], n_boot: int, seed: int, prefix: str) -> dict:
    """Each control's accuracy and its paired delta against the full-video baseline."""
    return {name: _gain(a["b"], x, n_boot, seed, f"{prefix}:{name}") for name, x in extra.items()}


def _noise_curve(a: dict, noise: dict[float, np.ndarray]) -> list[dict]:
    points = [(0.0, a["b"]), *sorted(noise.items())]
    return [
        {"sigma": float(s), "n": len(x), "acc": float(x.mean()), "ci95": wilson_ci(int(x.sum()), len(x)),
         "mcnemar_p_vs_0": mcnemar_exact(int(np.sum((a["b"] == 0) & (x == 1))), int(np.sum((a["b"] == 1) & (x == 0))))}
        for s, x in points
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ the section


def _series(baseline, candidate, probe, probe_arms, probe_view, oracle, controls, noise) -> tuple[dict, dict]:
    """``({key: {id: 0/1}}, {key: {id: failed}})`` for every input given; QA keys b, c, o, ctrl:*, noise:*."""
    logs = {"b": _log(baseline, "baseline"), "c": _log(candidate, "candidate")}
    if oracle is not None:
        logs["o"] = _log(oracle, "oracle")
    for name, x in (controls or {}).items():
        logs[f"ctrl:{name}"] = _log(x, f"control {name}")
    for sigma, x in (noise or {}).items():
        logs[f"noise:{float(sigma)}"] = _log(x, f"noise {sigma}")
    qa = {k: _qa(v) for k, v in logs.items()}
    series = {k: {i: c for i, (c, _) in v.items()} for k, v in qa.items()}
    failed = {k: {i for i, (_, f) in v.items() if f} for k, v in qa.items()}
    if probe is not None:
        pr = _probe_rows(probe, probe_arms or _default_probe_arms(probe), probe_view)
        series.update({"pb": pr["base"], "pc": pr["cand"]})
        if "base_oracle" in pr and oracle is not None:
            series["po"] = pr["base_oracle"]
    return series, {"logs": logs, "failed": failed}


def encoder_section(
    baseline,
    candidate,
    probe=None,
    probe_arms: tuple[str, str] | None = None,
    probe_view: str | None = None,
    oracle=None,
    controls: dict | None = None,
    noise: dict | None = None,
    by: tuple[str, ...] = (),
    n_boot: int = 10_000,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> dict:
    """The Encoder section as a JSON-safe dict (see :data:`ENCODER_DEFINITIONS`).

    ``baseline`` / ``candidate`` / ``oracle`` / ``controls`` values / ``noise`` values: lmms-eval sample logs
    (paths or :class:`~dna_vlm.eval.logs.samples.SampleLog`); ``probe``: a ``probe.json`` path or its dict, with
    ``probe_arms = (baseline arm, candidate arm)`` (default: ``softmax``/``dna`` if present, else its last
    two arms) and ``probe_view`` (``asked`` (default when present) or ``label:FIELD``). ``by``: record fields
    of the baseline log to group by (e.g. density, category, task). Docs that failed in any QA log are
    excluded (counted in ``excluded_failed``). With ``noise`` and ``out_dir``, writes
    ``out_dir/encoder_noise_curve.png``. Returns ``{"n", "overall", "by_group", "controls", "noise_curve",
    "inputs", "definitions", ...}``."""
    series, meta = _series(baseline, candidate, probe, probe_arms, probe_view, oracle, controls, noise)
    ids = _align(series, "b")
    bad = set().union(*meta["failed"].values())
    ids = [i for i in ids if i not in bad]
    if not ids:
        raise EncoderError("encoder section: no question is answered (not failed) in every QA log")
    arr = {k: np.array([v[i] for i in ids], dtype=np.int64) for k, v in series.items()}
    core = {k: arr[k] for k in ("b", "c", "pb", "pc", "o", "po") if k in arr}
    ctrl = {k.split(":", 1)[1]: v for k, v in arr.items() if k.startswith("ctrl:")}
    nz = {float(k.split(":", 1)[1]): v for k, v in arr.items() if k.startswith("noise:")}
    section = {
        "n": len(ids),
        "excluded_failed": len(series["b"]) - len(ids),
        "inputs": {k: str(v.path) for k, v in meta["logs"].items()},
        "probe": None if probe is None else (str(probe) if not isinstance(probe, dict) else "probe result"),
        "probe_arms": list(probe_arms or _default_probe_arms(probe)) if probe is not None else None,
        "overall": _quantities(core, n_boot, seed, "encoder"),
        "by_group": _groups(meta["logs"]["b"], ids, core, by, n_boot, seed),
        "controls": _controls(core, ctrl, n_boot, seed, "control"),
        "noise_curve": _noise_curve(core, nz) if nz else [],
        "definitions": ENCODER_DEFINITIONS,
    }
    if nz and out_dir is not None:
        section["noise_curve_png"] = str(plot_noise_curve(section["noise_curve"], Path(out_dir)))
    return section


def _group_order(v: str):
    """Numeric group values in numeric order, then the others alphabetically."""
    num = v.lstrip("-").isdigit()
    return (not num, int(v) if num else 0, v)


def _groups(log: SampleLog, ids: list[str], core: dict, by, n_boot: int, seed: int) -> dict:
    out: dict = {}
    for field in by:
        vals = [log.records[i].fields.get(field) for i in ids]
        if all(v is None for v in vals):
            continue
        groups = {}
        for v in sorted({str(x) for x in vals}, key=_group_order):
            mask = np.array([str(x) == v for x in vals])
            sub = {k: a[mask] for k, a in core.items()}
            groups[v] = _quantities(sub, n_boot, seed, f"encoder:{field}={v}")
        out[field] = groups
    return out


# ------------------------------------------------------------------------------------------------ CLI glue


def add_encoder_args(parser) -> None:
    """Add the Encoder section's options to an ``argparse`` parser (``dna-vlm attribute``)::

        --probe PROBE_JSON [--probe-arms BASE CAND] [--probe-view asked|label:FIELD]
        --oracle LOG  --control NAME=LOG (repeatable)  --noise SIGMA=LOG (repeatable)

    Every one is optional; :func:`encoder_section_from_args` returns None when none is given."""
    g = parser.add_argument_group("encoder section (how much of the error is the encoder's)")
    g.add_argument("--probe", help="dna-vlm probe's probe.json with both arms' per-row predictions")
    g.add_argument(
        "--probe-arms", nargs=2, metavar=("BASE", "CAND"), help="probe arms of baseline and candidate"
    )
    g.add_argument("--probe-view", help="'asked' (default when present) or 'label:FIELD'")
    g.add_argument("--oracle", help="the baseline model's sample log on the oracle input (test_oracle.jsonl)")
    g.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="NAME=LOG",
        help="input-control run of the baseline model",
    )
    g.add_argument(
        "--noise",
        action="append",
        default=[],
        metavar="SIGMA=LOG",
        help="encoder_noise=SIGMA run of the baseline model",
    )


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, path = it.partition("=")
        if not sep or not key or not path:
            raise EncoderError(f"{flag} {it!r}: expected NAME=PATH")
        out[key] = path
    return out


def encoder_section_from_args(
    args, baseline, candidate, by=(), n_boot: int = 10_000, seed: int = 0, out_dir=None
):
    """:func:`encoder_section` from the options :func:`add_encoder_args` added, or None when none was given.
    ``baseline`` / ``candidate``: the QA sample logs as ``attribute`` takes them (paths, folders, globs, lists)."""
    controls, noise = _pairs(args.control, "--control"), _pairs(args.noise, "--noise")
    if not (args.probe or args.oracle or controls or noise):
        return None
    try:
        noise_f = {float(k): v for k, v in noise.items()}
    except ValueError:
        raise EncoderError(f"--noise: SIGMA must be a number, got {sorted(noise)}") from None
    return encoder_section(
        baseline, candidate, probe=args.probe, probe_arms=tuple(args.probe_arms) if args.probe_arms else None,
        probe_view=args.probe_view, oracle=args.oracle, controls=controls, noise=noise_f, by=tuple(by),
        n_boot=n_boot, seed=seed, out_dir=out_dir,
    )  # fmt: skip
