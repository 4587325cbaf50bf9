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
from pathlib import Path

import numpy as np
from dna_vlm.eval.attribute.calibration import calibrate
from dna_vlm.eval.attribute.encoder_section_render import encoder_markdown, plot_calibration, plot_noise_curve
from dna_vlm.eval.logs.samples import SampleLog, expand_sources, load_samples
from dna_vlm.eval.stats import (
    ALPHA,
    VERDICT_RULE,
    apply_family,
    bootstrap_ci,
    compare,
    quantity_rng,
    wilson_ci,
)

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
    "planted_pairs",
]

ENCODER_DEFINITIONS = """\
Encoder section (all paired on the question id; baseline = the control arm, candidate = the DnA arm):
- probe accuracy: share of test questions whose asked attribute a linear probe (dna-vlm probe: multinomial
  L2 logistic regression on the frozen visual tokens the LLM receives, pooled over tokens (mean, or mean and
  per-frame slope), standardised inside each cross-validation fold, C chosen by cross-validation on the
  training split) predicts right. It
  bounds from below what is linearly readable after pooling; it is not what the LLM, which reads every token,
  can resolve.
- verdicts: the report's one rule (verdict_rule). Paired gains (encoder gain, QA gain, oracle headroom,
  readout gap, controls, noise levels, planted changes) get the exact McNemar p, its exact CI and, when not
  significant, their minimal detectable effect (mde, power 0.8). A family is one quantity scanned over the
  rows of a table (the groups of a --by field, the controls, the noise levels, the planted changes):
  Bonferroni over its k rows, CIs at 1 - 0.05/k. Distinct, pre-specified quantities of the overall table are
  families of one; the QA gain is the main report's (headline, or its --by field's family).
- encoder gain: probe accuracy of the candidate minus the baseline's, on the same questions.
- QA gain: QA accuracy of the candidate minus the baseline's (as in the main report).
- carry-through: QA gain / encoder gain - the part of the encoder-level gain that reaches the answers (1:
  all of it; 0: none; > 1: QA gained more than the probe saw). Defined only when the encoder gain is
  significant by the rule (else reported undefined, with why). CI: percentile bootstrap over docs at the
  encoder gain's level, resampling the docs once for both gains; one draw, printed wherever it appears.
- oracle headroom = distractor effect (net): QA accuracy of the baseline on the oracle input (each test
  question re-rendered without its distractors) minus its accuracy on the test input; a net paired effect
  (questions the oracle input fixes minus those it breaks). The share of it the candidate closes = QA gain /
  oracle headroom (bootstrap CI; defined only when the headroom is significant).
- decomposition of the baseline's error rate E = 1 - acc(QA, test input), an accounting identity of three
  terms, each named for what it measures:
  distractor effect (net) = acc(QA, oracle input) - acc(QA, test input) (paired; exact CI; can be < 0);
  readout gap on the oracle input (net) = acc(probe, oracle input) - acc(QA, oracle input) (paired on the
  same questions; exact CI): > 0 when the pooled tokens linearly carry the asked attribute more often than
  the model answers it, < 0 when the model answers more than a linear probe on pooled tokens reads;
  not linearly readable after pooling (oracle input) = 1 - acc(probe, oracle input) (Wilson CI).
  E = distractor effect + readout gap + not linearly readable, exactly. Without an oracle log: readout gap
  and not linearly readable on the test input (E = their sum); without a probe: the distractor effect and
  the error left on the oracle input.
  Assumptions: (1) the oracle input differs from the test input only by the distractors (same question,
  target and clip otherwise), so the distractor effect is their causal net effect on this model; (2) the
  probe and the QA answer are scored on the same question, but the probe chooses among all values of the
  attribute while QA chooses among the listed options (different chance levels): the readout gap compares
  two read-outs, it does not locate an error in the LLM; (3) "not linearly readable after pooling" is an
  upper bound on what the tokens cannot convey: a non-linear or per-token read-out (the LLM's) may do
  better; (4) the terms are net population shares, not a partition of individual errors: no question is
  "caused" by one term.
- controls: QA accuracy of the baseline model with an input control (none: no video; shuffled: the frames
  in a seeded random order; single: the middle frame repeated; or the blind task) and its paired delta
  against the full-video baseline (exact CI, McNemar; the controls are one family).
- noise curve: QA accuracy of the baseline model with Gaussian noise of sigma times the visual tokens' RMS
  added to the tokens the LLM receives, against sigma (sigma 0 = the baseline run); Wilson 95% CIs; the
  paired test against sigma 0 (the noise levels are one family).
- planted changes and calibration (with --planted LABEL=QA_LOG:PROBE_ARM): encoder changes of known sign
  and size, each with its probe arm and QA log; for each, encoder gain and QA gain against the baseline
  (exact CI, p, mde; each column a family over the planted changes) and carry-through. Calibration line:
  QA gain = slope x encoder gain, least squares through the origin over the planted points, CI by one
  percentile bootstrap over docs that resamples every arm with the same doc indices; the DnA arm read
  against it: predicted QA gain = slope x DnA's encoder gain (CI from the same draw) vs the observed QA gain;
  their difference (residual) with its CI from the same draw. It assumes the planted changes move the QA
  answers through the same channel, and proportionally, as DnA's change does.
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


def _probe_arm(probe, name: str, view: str | None, flag: str) -> dict[str, int]:
    """``{id: 0/1}``: one probe arm's per-row correctness (a planted change's probe arm; ``<arm>@oracle``: that
    arm's probe on the oracle rows)."""
    probe = probe if isinstance(probe, dict) else json.loads(Path(probe).read_text())
    # "<arm>@oracle": the arm's probe scored on the oracle rows (the input without distractors, same ids)
    arm, oracle = (name.removesuffix("@oracle"), True) if name.endswith("@oracle") else (name, False)
    if arm not in probe.get("arms", {}):
        raise EncoderError(
            f"{flag}: the probe result has no arm {arm!r} (arms: {sorted(probe.get('arms', {}))})"
        )
    block = _probe_view(probe["arms"][arm], view, f"{flag}: probe arm {arm!r}")
    if oracle:
        if not block.get("oracle"):
            raise EncoderError(
                f"{flag}: probe arm {arm!r} has no oracle rows; rerun dna-vlm probe with --test-oracle"
            )
        block = block["oracle"]
    return {p["id"]: int(p["correct"]) for p in block["predictions"]}


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


def _ratio_ci(
    num: np.ndarray, den: np.ndarray, n_boot: int, seed: int, name: str, alpha: float = ALPHA
) -> list[float] | None:
    """Percentile 1 - alpha CI of sum(num)/sum(den) resampling docs (num, den: per-doc values in {-1, 0, 1}).

    A replicate depends only on the counts of the 9 (num, den) value pairs, so it is drawn exactly as
    multinomial counts of those cells. Replicates with den = 0 are dropped (their ratio is undefined)."""
    n = len(num)
    if n_boot <= 0 or n == 0:
        return None
    cells = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    p = np.array([np.sum((num == a) & (den == b)) for a, b in cells], dtype=float) / n
    counts = quantity_rng(seed, name).multinomial(n, p, size=n_boot)
    s_num = counts @ np.array([c[0] for c in cells], dtype=float)
    s_den = counts @ np.array([c[1] for c in cells], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return bootstrap_ci(np.where(s_den != 0, s_num / np.where(s_den != 0, s_den, 1), np.nan), alpha)


def carry_through(
    qa_b: np.ndarray,
    qa_c: np.ndarray,
    enc_b: np.ndarray,
    enc_c: np.ndarray,
    n_boot: int,
    seed: int,
    name: str,
    denominator: str = "encoder gain",
    den: dict | None = None,
) -> dict:
    """QA gain / encoder gain (paired 0/1 arrays over the same docs) with a bootstrap CI over docs (one
    draw, stream ``name:carry_through``). ``den``: the denominator's comparison as its table reports it
    (:func:`~dna_vlm.eval.stats.compare` in its family; default: a family of one). ``defined`` follows the
    verdict rule: only when the denominator is significant (else ratio and CI None, ``why`` says so)."""
    den = den if den is not None else compare(enc_b, enc_c)
    out = {"ratio": None, "ci": None, "ci_level": den["ci_level"], "defined": False,
           "denominator_significant": den["significant"], "denominator_p_adjusted": den["p_adjusted"],
           "why": None}  # fmt: skip
    if not den["significant"]:
        out["why"] = (
            f"undefined: the {denominator} is not significant (McNemar p {den['p_adjusted']:.3g}"
            f"{' Bonferroni-adjusted' if den['family_size'] > 1 else ''} >= 0.05): there is no {denominator} to divide by"
        )
        return out
    d_qa, d_enc = (qa_c - qa_b).astype(int), (enc_c - enc_b).astype(int)
    alpha = 1 - den["ci_level"]
    out.update(
        ratio=float(d_qa.sum() / d_enc.sum()),
        ci=_ratio_ci(d_qa, d_enc, n_boot, seed, f"{name}:carry_through", alpha),
        defined=True,
    )
    return out


def _net(x: np.ndarray, y: np.ndarray, what: str) -> dict:
    """acc(y) - acc(x) as a paired comparison (family of one) with its definition in words."""
    return {**_gain(x, y), "measures": what}


def decompose_errors(b: np.ndarray, oracle: np.ndarray | None, probe: np.ndarray | None) -> dict:
    """The baseline's error rate E = 1 - mean(b) as a sum of net, paired terms (ENCODER_DEFINITIONS).

    ``oracle``: the baseline's QA correctness on the oracle input; ``probe``: the baseline's probe on the
    oracle input when ``oracle`` is given, else on the test input. Returns ``{"error_rate", "n",
    "n_errors", "input", "parts": {name: term}}``: paired terms carry the comparison fields (delta,
    delta_ci, p, mde, ...), the probe's error the Wilson CI of a rate; ``sum_check`` = the parts' sum (= E)."""
    n = len(b)
    if n == 0 or (oracle is None and probe is None):
        return {}
    qa_ref = oracle if oracle is not None else b
    where = "oracle input" if oracle is not None else "test input"
    parts: dict = {}
    if oracle is not None:
        parts["distractor_effect"] = _net(b, oracle, "acc(QA, oracle input) - acc(QA, test input)")
    if probe is not None:
        parts["readout_gap"] = _net(qa_ref, probe, f"acc(probe, {where}) - acc(QA, {where})")
        k = int(n - probe.sum())
        parts["not_linearly_readable"] = {"rate": k / n, "ci95": wilson_ci(k, n), "count": k,
                                          "measures": f"1 - acc(probe, {where})"}  # fmt: skip
    else:
        k = int(n - qa_ref.sum())
        parts["error_left_on_oracle"] = {"rate": k / n, "ci95": wilson_ci(k, n), "count": k,
                                         "measures": "1 - acc(QA, oracle input)"}  # fmt: skip
    total = sum(p["delta"] if "delta" in p else p["rate"] for p in parts.values())
    return {"error_rate": 1 - float(b.mean()), "n": n, "n_errors": int(n - b.sum()), "input": where,
            "parts": parts, "sum_check": float(total)}  # fmt: skip


def _gain(b: np.ndarray, c: np.ndarray, family: str = "single", k: int = 1) -> dict:
    r = compare(b, c, family=family, family_size=k)
    keys = ("n", "baseline_acc", "candidate_acc", "baseline_ci95", "candidate_ci95", "delta", "delta_ci95")
    verdict = ("delta_ci", "ci_level", "significant", "p_adjusted", "family", "family_size", "mde")
    return {x: r[x] for x in (*keys, *verdict, "mcnemar_p", "fixed", "broken", "ci_warning")}


def _headroom(a: dict, head: dict, n_boot: int, seed: int, name: str) -> dict:
    """Oracle - baseline (``head``, in its family), and the share of it the candidate closes."""
    closes = carry_through(
        a["b"], a["c"], a["b"], a["o"], n_boot, seed, f"{name}:share", "oracle headroom", head
    )
    return {"headroom": head, "share_closed": closes}


def _quantities(a: dict, n_boot: int, seed: int, name: str, gains: dict | None = None) -> dict:
    """Every quantity the inputs in ``a`` allow, over one set of docs (0/1 arrays keyed b, c, pb, pc, o, po).
    ``gains``: the paired gains already set in their families (per-group tables); default families of one
    (the QA gain is then the main report's headline)."""
    gains = gains or _paired_gains(a)
    out: dict = {"n": len(a["b"]), "qa_gain": gains["qa_gain"]}
    if "pb" in a:
        out["encoder_gain"] = gains["encoder_gain"]
        out["carry_through"] = carry_through(a["b"], a["c"], a["pb"], a["pc"], n_boot, seed, name,
                                             den=gains["encoder_gain"])  # fmt: skip
    if "o" in a:
        out["oracle"] = _headroom(a, gains["oracle_headroom"], n_boot, seed, name)
    out["decomposition"] = decompose_errors(
        a["b"], a.get("o"), a.get("po", a.get("pb") if "o" not in a else None)
    )
    return out


def _paired_gains(a: dict, family: str = "", k: int = 1) -> dict:
    """QA gain, encoder gain and oracle headroom of ``a`` (each in a family ``<quantity><family>`` of k)."""
    out = {"qa_gain": _gain(a["b"], a["c"], f"QA gain{family}" if family else "headline", k)}
    if "pb" in a:
        out["encoder_gain"] = _gain(a["pb"], a["pc"], f"encoder gain{family}", k)
    if "o" in a:
        out["oracle_headroom"] = _gain(a["b"], a["o"], f"oracle headroom{family}", k)
    return out


def _controls(a: dict, extra: dict[str, np.ndarray]) -> dict:
    """Each control's accuracy and its paired delta against the full-video baseline (one family)."""
    out = {name: _gain(a["b"], x) for name, x in extra.items()}
    apply_family(out, "controls")
    return out


def _noise_curve(a: dict, noise: dict[float, np.ndarray]) -> list[dict]:
    """Accuracy per sigma (sigma 0 = the baseline run) and the paired test against sigma 0 (one family)."""
    tests = {s: _gain(a["b"], x) for s, x in sorted(noise.items())}
    apply_family(tests, "noise curve")
    points = [{"sigma": 0.0, "n": len(a["b"]), "acc": float(a["b"].mean()),
               "ci95": wilson_ci(int(a["b"].sum()), len(a["b"])), "vs_0": None}]  # fmt: skip
    for s, x in sorted(noise.items()):
        points.append({"sigma": float(s), "n": len(x), "acc": float(x.mean()), "ci95": wilson_ci(int(x.sum()), len(x)),
                       "mcnemar_p_vs_0": tests[s]["mcnemar_p"], "vs_0": tests[s]})  # fmt: skip
    points[0]["mcnemar_p_vs_0"] = 1.0
    return points


# ------------------------------------------------------------------------------------------------ the section


def _series(
    baseline, candidate, probe, probe_arms, probe_view, oracle, controls, noise, planted=None
) -> tuple[dict, dict]:
    """``({key: {id: 0/1}}, {key: {id: failed}})`` for every input given; QA keys b, c, o, ctrl:*, noise:*,
    planted:* (probe keys pb, pc, po, probe:* for the planted changes' probe arms)."""
    logs = {"b": _log(baseline, "baseline"), "c": _log(candidate, "candidate")}
    if oracle is not None:
        logs["o"] = _log(oracle, "oracle")
    for name, x in (controls or {}).items():
        logs[f"ctrl:{name}"] = _log(x, f"control {name}")
    for sigma, x in (noise or {}).items():
        logs[f"noise:{float(sigma)}"] = _log(x, f"noise {sigma}")
    for label, (x, _) in (planted or {}).items():
        logs[f"planted:{label}"] = _log(x, f"planted {label}")
    qa = {k: _qa(v) for k, v in logs.items()}
    series = {k: {i: c for i, (c, _) in v.items()} for k, v in qa.items()}
    failed = {k: {i for i, (_, f) in v.items() if f} for k, v in qa.items()}
    if probe is not None:
        pr = _probe_rows(probe, probe_arms or _default_probe_arms(probe), probe_view)
        series.update({"pb": pr["base"], "pc": pr["cand"]})
        if "base_oracle" in pr and oracle is not None:
            series["po"] = pr["base_oracle"]
        for label, (_, arm) in (planted or {}).items():
            series[f"probe:{label}"] = _probe_arm(probe, arm, probe_view, f"--planted {label}")
    elif planted:
        raise EncoderError(
            "--planted needs --probe: each planted change's encoder gain is read from its probe arm"
        )
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
    planted: dict | None = None,
) -> dict:
    """The Encoder section as a JSON-safe dict (see :data:`ENCODER_DEFINITIONS`).

    ``baseline`` / ``candidate`` / ``oracle`` / ``controls`` values / ``noise`` values: lmms-eval sample logs
    (paths or :class:`~dna_vlm.eval.logs.samples.SampleLog`); ``probe``: a ``probe.json`` path or its dict, with
    ``probe_arms = (baseline arm, candidate arm)`` (default: ``softmax``/``dna`` if present, else its last
    two arms) and ``probe_view`` (``asked`` (default when present) or ``label:FIELD``). ``by``: record fields
    of the baseline log to group by (e.g. density, category, task). Docs that failed in any QA log are
    excluded (counted in ``excluded_failed``). With ``noise`` and ``out_dir``, writes
    ``out_dir/encoder_noise_curve.png``. ``planted``: ``{label: (QA sample log, probe arm name)}`` of
    planted encoder changes (needs ``probe``): adds ``calibration``
    (:func:`~dna_vlm.eval.attribute.calibration.calibrate`) and, with ``out_dir``,
    ``out_dir/encoder_calibration.png``. Returns ``{"n", "overall", "by_group", "controls", "noise_curve",
    "calibration", "inputs", "definitions", "verdict_rule", ...}``."""
    series, meta = _series(
        baseline, candidate, probe, probe_arms, probe_view, oracle, controls, noise, planted
    )
    ids = _align(series, "b")
    bad = set().union(*meta["failed"].values())
    ids = [i for i in ids if i not in bad]
    if not ids:
        raise EncoderError("encoder section: no question is answered (not failed) in every QA log")
    arr = {k: np.array([v[i] for i in ids], dtype=np.int64) for k, v in series.items()}
    core = {k: arr[k] for k in ("b", "c", "pb", "pc", "o", "po") if k in arr}
    ctrl = {k.split(":", 1)[1]: v for k, v in arr.items() if k.startswith("ctrl:")}
    nz = {float(k.split(":", 1)[1]): v for k, v in arr.items() if k.startswith("noise:")}
    pl = {lab: (arr[f"planted:{lab}"], arr[f"probe:{lab}"]) for lab in (planted or {})}
    section = {
        "n": len(ids),
        "excluded_failed": len(series["b"]) - len(ids),
        "inputs": {k: str(v.path) for k, v in meta["logs"].items()},
        "probe": None if probe is None else (str(probe) if not isinstance(probe, dict) else "probe result"),
        "probe_arms": list(probe_arms or _default_probe_arms(probe)) if probe is not None else None,
        "overall": _quantities(core, n_boot, seed, "encoder"),
        "by_group": _groups(meta["logs"]["b"], ids, core, by, n_boot, seed),
        "controls": _controls(core, ctrl),
        "noise_curve": _noise_curve(core, nz) if nz else [],
        "calibration": calibrate(core, pl, n_boot, seed) if pl else None,
        "verdict_rule": VERDICT_RULE,
        "definitions": ENCODER_DEFINITIONS,
    }
    if nz and out_dir is not None:
        section["noise_curve_png"] = str(plot_noise_curve(section["noise_curve"], Path(out_dir)))
    if pl and out_dir is not None:
        section["calibration_png"] = str(plot_calibration(section["calibration"], Path(out_dir)))
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
        subs, gains = {}, {}
        values = sorted({str(x) for x in vals}, key=_group_order)
        for v in values:
            mask = np.array([str(x) == v for x in vals])
            subs[v] = {k: a[mask] for k, a in core.items()}
            # each column of the table is one family: a quantity scanned over the field's k groups
            gains[v] = _paired_gains(subs[v], f" by {field}", len(values))
        out[field] = {v: _quantities(subs[v], n_boot, seed, f"encoder:{field}={v}", gains[v]) for v in values}
    return out


# ------------------------------------------------------------------------------------------------ CLI glue


def add_encoder_args(parser) -> None:
    """Add the Encoder section's options to an ``argparse`` parser (``dna-vlm attribute``)::

        --probe PROBE_JSON [--probe-arms BASE CAND] [--probe-view asked|label:FIELD]
        --oracle LOG  --control NAME=LOG (repeatable)  --noise SIGMA=LOG (repeatable)
        --planted LABEL=QA_LOG:PROBE_ARM (repeatable)

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
    g.add_argument(
        "--planted",
        action="append",
        default=[],
        metavar="LABEL=QA_LOG:PROBE_ARM",
        help="a planted encoder change of known sign: its QA sample log and its arm in --probe's probe.json "
        "(calibrates how much QA an encoder change carries; give >= 2 sizes)",
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
    planted = planted_pairs(getattr(args, "planted", []) or [])
    if not (args.probe or args.oracle or controls or noise or planted):
        return None
    try:
        noise_f = {float(k): v for k, v in noise.items()}
    except ValueError:
        raise EncoderError(f"--noise: SIGMA must be a number, got {sorted(noise)}") from None
    return encoder_section(
        baseline, candidate, probe=args.probe, probe_arms=tuple(args.probe_arms) if args.probe_arms else None,
        probe_view=args.probe_view, oracle=args.oracle, controls=controls, noise=noise_f, by=tuple(by),
        n_boot=n_boot, seed=seed, out_dir=out_dir, planted=planted or None,
    )  # fmt: skip


def planted_pairs(items: list[str]) -> dict[str, tuple[str, str]]:
    """``--planted LABEL=QA_LOG:PROBE_ARM`` values -> ``{label: (qa_log, probe_arm)}`` (the last ':' splits
    off the probe arm, so a log path may hold ':')."""
    out: dict[str, tuple[str, str]] = {}
    for it in items:
        label, sep, rest = it.partition("=")
        log, colon, arm = rest.rpartition(":")
        if not (sep and colon and label and log and arm):
            raise EncoderError(
                f"--planted {it!r}: expected LABEL=QA_LOG:PROBE_ARM (e.g. plus10=logs/plus10:plus10)"
            )
        if label in out:
            raise EncoderError(f"--planted: label {label!r} given twice")
        out[label] = (log, arm)
    return out
