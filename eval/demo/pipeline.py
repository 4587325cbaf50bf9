"""`dna-vlm demo`: the whole mission end to end on the embedded default, with an honest answer.

Stages (each resumable: a finished stage leaves ``OUT/stages/<name>.json`` and is skipped next time):

1. ``data``      synthetic dense-scene video QA set (``dna-vlm synth-data``)
2. ``model``     tiny LLaVA-OneVision video LLM from a config (``dna-vlm tiny-model``)
3. ``baseline``  full fine-tune of the stock (softmax) model on the train split: a competent but imperfect
                 video QA model that stands in for a pretrained checkpoint
4. ``arm-*``     from that checkpoint, softmax + LoRA and DnA (preserve init) + LoRA with the identical budget
                 (each video's frames decoded once per run: ``--frame-memory-mb``)
5. ``eval-*``    lmms-eval (real CLI, ``dna_vlm`` plugin) on the test split: baseline, blind, both arms, and the
                 softmax arm under the ``video=none`` / ``video=shuffled`` controls, with encoder noise, and on
                 the oracle input (test questions without distractors). Every run is its own resumable stage;
                 the runs left to do go through one lmms-eval process (its ``--config`` list), with one
                 on-disk frame cache
6. ``attribute`` paired statistics (softmax arm vs DnA arm, with blind)
7. ``probe`` / ``encoder-s*``  the encoder-level measurements: a linear probe on the visual tokens of
                 the baseline and both arms (train split -> test and oracle rows), then the Encoder section
                 (encoder gain, carry-through, error decomposition) from the probe and the control runs
8. ``inspect``   DnA diagnostics on the DnA arm
9. ``report``    ``OUT/report.md`` (opening with the answer in one paragraph) + ``OUT/report.json`` and a
                 summary table with every stage's seconds

The two arms differ only in the attention: same data, LoRA ranks, steps, learning rates and seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dna_vlm.eval.demo.encoder_stages import (
    ENCODER_RUNS,
    encoder_summary,
    run_encoder_section,
    run_probe_stage,
)
from dna_vlm.eval.demo.render import markdown_report, summary_text, verdict
from dna_vlm.eval.demo.stages import Stages
from dna_vlm.eval.stats import wilson_ci

from dna_vlm.files import atomic_write_bytes, atomic_write_json
from dna_vlm.options import COMPARISON, CONTROL_ARM


@dataclass(frozen=True)
class DemoSize:
    """Everything that sets the demo's cost. The arms' budget is shared by both arms by construction."""

    n_train: int
    n_val: int
    n_test: int
    model_size: str
    num_frames: int
    baseline_steps: int
    baseline_lr: float
    arm_steps: int
    arm_lr: float
    lora_rank: int
    batch_size: int
    dna_lr: float | None = None  # DnA's new parameters (negative branch); None: arm_lr (chosen on val)
    # "asset": load the shipped pretrained baseline (dna_vlm.tiny.pretrained; baseline_steps / baseline_lr
    # unused); "train": train the baseline here from the random tiny model
    baseline: str = "train"


SIZES = {
    # CI-sized: proves every stage runs end to end; the numbers mean nothing at this size.
    "ci": DemoSize(48, 8, 24, "small", 4, 20, 1e-3, 6, 1e-3, 4, 8),
    # default, targeted at <= 10 min on the slower 2-core CPU kind (README, "Is the demo an instrument yet?" has
    # the measured stage times). The baseline is the shipped pretrained asset (dna_vlm.tiny.pretrained: a
    # curriculum the demo's minutes cannot hold; baseline_steps / baseline_lr only serve --baseline train), read
    # at 4 sampled frames as it was trained; the arms get 250 steps each.
    # n_test 960: the QA-gain MDE (power 0.8, exact McNemar) is <= 3 points up to ~10% discordant questions
    # (2.9 at 10%). DnA's new parameters (dna_lr; the softmax arm has none): 3e-3, the pick of the val-split
    # sweep over 1e-3 / 3e-3 / 1e-2 / 3e-2 on this baseline (n_val 480; docs/measurements/dna-recipe-sweep-2026-12-06).
    "small": DemoSize(960, 480, 960, "small", 4, 450, 1e-3, 250, 1e-3, 8, 32, dna_lr=3e-3, baseline="asset"),
    # a stronger answer when there is more time or a GPU
    "medium": DemoSize(2400, 200, 600, "medium", 8, 2000, 1e-3, 500, 1e-3, 16, 32),
}


# Part of every stage fingerprint: bump it when a stage's result gains or changes fields, so markers written
# by an older dna-vlm are redone instead of read.
STAGES_FORMAT = 6


BASELINES = ("asset", "train")


def _size_cfg(size: str, device: str, baseline: str | None) -> DemoSize:
    """The size's settings, adjusted for the device and a ``--baseline`` override."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}: choose one of {sorted(SIZES)}")
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: choose one of {BASELINES}")
    cfg = replace(SIZES[size], baseline=baseline or SIZES[size].baseline)
    return replace(cfg, batch_size=cfg.batch_size * 2) if device == "cuda" else cfg


def _settings(size: str, cfg: DemoSize, device: str, seed: int) -> dict:
    """What every stage's fingerprint covers (a rebuilt pretrained asset redoes every stage after it)."""
    settings = {
        "size": size,
        "cfg": asdict(cfg),
        "device": device,
        "seed": seed,
        "stages_format": STAGES_FORMAT,
    }
    if cfg.baseline == "asset":
        from dna_vlm.tiny.pretrained import asset_record

        settings["asset_sha256"] = asset_record()["sha256"]
    return settings


def _fingerprint(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def run_demo(
    out: str | Path = "demo_out",
    size: str = "small",
    seeds: int = 1,
    device: str = "cpu",
    force: bool = False,
    seed: int = 0,
    baseline: str | None = None,
) -> dict:
    """Run (or resume) the demo in ``out``; returns the report dict also written to ``out/report.json``.
    ``baseline``: "asset" / "train" overrides the size's way of getting the pretrained baseline."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    cfg = _size_cfg(size, device, baseline)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(size, cfg, device, seed)
    run = _DemoRun(out, cfg, device, seed, force, Stages(out, force, _fingerprint(settings)))
    t_start = time.perf_counter()
    run.prepare()
    seed_list = list(range(seed, seed + seeds))
    arms = {(a, s): run.arm(a, s) for s in seed_list for a in COMPARISON}
    evals = run.evaluate_all(arms)
    reports = {s: run.attribute(s, evals) for s in seed_list}
    encoder = run.encoder_all(arms, evals, seed_list)
    inspect = run.inspect(arms["dna", seed])
    wall = time.perf_counter() - t_start
    controls = {f"{n}-softmax-s{s}" for n, _, _ in ENCODER_RUNS for s in seed_list}  # in encoder's tables
    main = {k: v for k, v in evals.items() if k not in controls}
    return _final_report(
        out, settings, run.data, run.baseline, main, reports, inspect, run.stages, wall, encoder=encoder
    )


@dataclass
class _DemoRun:
    """One demo output folder: each method is one or more resumable stages."""

    out: Path
    cfg: DemoSize
    device: str
    seed: int
    force: bool
    stages: Stages

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.device == "cuda" else "float32"

    def prepare(self) -> None:
        """Data, tiny model and the stand-in pretrained baseline (trained here, or the shipped asset)."""
        from dna_vlm.data.synth import generate_dataset
        from dna_vlm.tiny.default import build_tiny_model

        c, out = self.cfg, self.out
        self.data = self.stages.run(
            "data",
            lambda: _strs(
                generate_dataset(
                    out / "data",
                    n_train=c.n_train,
                    n_val=c.n_val,
                    n_test=c.n_test,
                    seed=self.seed,
                    force=self.force,
                )
            ),
        )
        if c.baseline == "asset":  # the shipped weights on the tiny model's config: no random model to build
            self.baseline = self.stages.run("baseline", lambda: _asset_baseline(self.data, out / "baseline"))
            return
        model_dir = self.stages.run(
            "model",
            lambda: {"path": str(build_tiny_model(out / "tiny_model", seed=self.seed, size=c.model_size))},
        )["path"]
        self.baseline = self.stages.run(
            "baseline",
            lambda: _train_baseline(
                c, model_dir, self.data, out / "baseline", self.device, self.dtype, self.seed
            ),
        )

    def arm(self, attention: str, s: int) -> str:
        dest = self.out / "runs" / f"{attention}-s{s}"
        args = (self.cfg, self.baseline["path"], self.data, dest, attention, self.device, self.dtype, s)
        return self.stages.run(f"arm-{attention}-s{s}", lambda: _train_arm(*args))["path"]

    def evaluate_all(self, arms: dict[tuple[str, int], str]) -> dict[str, dict]:
        """Every lmms-eval run of the demo, each its own resumable stage ``eval-<name>``: 'baseline', 'blind',
        '<attention>-s<seed>' and each seed's softmax-arm runs of :data:`ENCODER_RUNS`
        ('<control>-softmax-s<seed>'). The runs left to do go through one lmms-eval process (its ``--config``
        list), so torch, transformers and lmms-eval are imported, and the task index built, once."""
        plan = {"baseline": EvalPlan(None), "blind": EvalPlan(None, task="dna_vlm_synth_blind")}
        for attention in COMPARISON:
            plan.update({f"{a}-s{s}": EvalPlan(r) for (a, s), r in arms.items() if a == attention})
        for (a, s), r in arms.items():
            if a == CONTROL_ARM:
                plan.update({f"{n}-softmax-s{s}": EvalPlan(r, m, t) for n, m, t in ENCODER_RUNS})
        evals = {n: r for n in plan if (r := self.stages.cached(f"eval-{n}")) is not None}
        todo = {n: p for n, p in plan.items() if n not in evals}
        if todo:
            evals.update(self._evaluate_group(todo))
        return {n: evals[n] for n in plan}

    def _evaluate_group(self, plan: dict[str, EvalPlan]) -> dict[str, dict]:
        """The runs of ``plan`` in one lmms-eval process; each finished run's stage marker is written even
        when another run of the group fails. The oracle questions are their own task
        (``dna_vlm_synth_oracle``, its own data variable), so every run shares the process."""
        from dna_vlm.eval.lmms.run import LmmsEvalError, run_lmms_many

        specs = {n: self._eval_spec(n, p) for n, p in plan.items()}
        env = {
            "DNA_VLM_SYNTH_JSONL": self.data["test"],
            "DNA_VLM_SYNTH_ORACLE_JSONL": self.data["test_oracle"],
        }
        print(f"[demo] eval-{{{','.join(plan)}}} (one lmms-eval process) ...", flush=True)
        try:
            runs = run_lmms_many(list(specs.values()), env=env)
        except LmmsEvalError as e:
            for run in e.completed:
                name = next(
                    n for n, sp in specs.items() if Path(run.results_path).is_relative_to(sp.output_path)
                )
                self.stages.record(f"eval-{name}", _eval_result(run, specs[name]), run.seconds)
            raise
        return {
            n: self.stages.record(f"eval-{n}", _eval_result(run, specs[n]), run.seconds)
            for n, run in zip(specs, runs, strict=True)
        }

    def _eval_spec(self, name: str, plan: EvalPlan):
        """lmms-eval (real CLI, ``dna_vlm`` plugin) on the synthetic test questions, with sample logs; every
        run shares one on-disk frame cache, so each test video is decoded once for all of them."""
        from dna_vlm.eval.lmms.run import LmmsSpec

        args = {
            "pretrained": self.baseline["path"], "dna": plan.run_dir, "device": self.device,
            "dtype": self.dtype, "max_frames": self.cfg.num_frames,
            "frame_cache": str(self.out / "frame_cache"), **plan.model_args,
        }  # fmt: skip
        return LmmsSpec(args, [plan.task], self.out / "eval" / name, batch_size=8)

    def attribute(self, s: int, evals: dict) -> dict:
        dest = self.out / "attribution" / f"s{s}"
        return self.stages.run(
            f"attribute-s{s}",
            lambda: _attribute(dest, evals[f"softmax-s{s}"], evals[f"dna-s{s}"], evals["blind"]),
        )

    def encoder_all(self, arms: dict[tuple[str, int], str], evals: dict, seeds: list[int]) -> dict:
        """The probe (baseline and every arm, one feature pipeline) and the Encoder section per seed, from the
        softmax arm's oracle, control and noise runs in ``evals``: ``{seed: {"section", "evals", "probe"}}``."""
        runs = [f"{a}-s{s}={r}" for (a, s), r in arms.items()]
        planted_arms = [f"{CONTROL_ARM}-s{s}" for s in seeds]
        base = self.baseline["path"]
        probe = self.stages.run(
            "probe",
            lambda: run_probe_stage(self.out / "probe", base, runs, self.data, self.cfg, planted_arms),
        )
        out = {}
        for s in seeds:
            ctl = {name: evals[f"{name}-softmax-s{s}"] for name, _, _ in ENCODER_RUNS}
            args = (self.out / "encoder" / f"s{s}", evals[f"softmax-s{s}"], evals[f"dna-s{s}"], ctl, probe, s)
            section = self.stages.run(f"encoder-s{s}", lambda a=args: run_encoder_section(*a))
            out[s] = {"section": section, "evals": ctl, "probe": probe}
        return out

    def inspect(self, dna_run: str) -> dict:
        args = (
            self.out / "inspect",
            self.baseline["path"],
            dna_run,
            self.data,
            self.cfg,
            self.device,
            self.dtype,
        )
        return self.stages.run("inspect", lambda: _inspect(*args))


def sweep_dna_recipe(
    out: Path,
    size: str,
    dna_lrs: list[float],
    device: str = "cpu",
    seed: int = 0,
    baseline: str | None = None,
) -> dict:
    """The DnA recipe sweep (``scripts/dna_recipe_sweep.py``), scored on the VALIDATION split only: the DnA arm
    trained with each learning rate of its new parameters (``dna_lrs``; everything else the demo's), and the
    softmax arm as the reference. Reuses ``out``'s data, model and baseline stages (the demo's own settings,
    so a later ``dna-vlm demo --out out`` reuses them too). Returns ``{"recipes", "softmax", "pick", ...}``."""
    from dna_vlm.eval.lmms.run import run_lmms_many

    from dna_vlm.runs.loading import load_model

    cfg = _size_cfg(size, device, baseline)
    settings = _settings(size, cfg, device, seed)
    run = _DemoRun(
        out.resolve(), cfg, device, seed, False, Stages(out.resolve(), False, _fingerprint(settings))
    )
    run.prepare()
    arms = {"softmax": run.arm("softmax", seed)}
    for lr in dna_lrs:
        dest = run.out / "sweep" / f"dna-lr{lr:g}"
        args = (replace(cfg, dna_lr=lr), run.baseline["path"], run.data, dest, "dna", device, run.dtype, seed)
        arms[f"dna-lr{lr:g}"] = run.stages.run(f"sweep-dna-lr{lr:g}", lambda a=args: _train_arm(*a))["path"]
    specs = [run._eval_spec(f"val-{n}", EvalPlan(r)) for n, r in arms.items()]
    env = {"DNA_VLM_SYNTH_JSONL": run.data["val"], "DNA_VLM_SYNTH_ORACLE_JSONL": run.data["test_oracle"]}
    done = run_lmms_many(specs, env=env)
    res = {}
    for (name, path), r in zip(arms.items(), done, strict=True):
        acc = _accuracy(str(r.samples["dna_vlm_synth"]))
        model, _ = load_model(pretrained=run.baseline["path"], run_dir=path, device=device, dtype=run.dtype)
        summary = json.loads((Path(path) / "summary.json").read_text())
        res[name] = {"run": path, "val_acc": acc["acc"], "val_ci95": acc["ci95"], "n_val": acc["n"],
                     "final_loss": summary["final_loss"], **_neg_branch_movement(model)}  # fmt: skip
    recipes = {k: v for k, v in res.items() if k != "softmax"}
    pick = max(recipes, key=lambda k: (recipes[k]["val_acc"], -float(k.removeprefix("dna-lr"))))
    return {"split": "val", "recipes": recipes, "softmax": res["softmax"], "pick": pick,
            "pick_dna_lr": float(pick.removeprefix("dna-lr")), "cfg": asdict(cfg)}  # fmt: skip


def _strs(obj):
    """JSON-safe copy with paths as strings."""
    return json.loads(json.dumps(obj, default=str))


def _train(cfg_kwargs: dict, out: Path) -> Path:
    """dna-vlm train, resuming a stage that was interrupted mid-run."""
    from dna_vlm.train import TrainConfig, train

    resume = (out / "checkpoints").is_dir() and not (out / "run_config.json").is_file()
    overwrite = not resume and out.exists()
    return Path(train(TrainConfig(**cfg_kwargs, output=str(out), resume=resume, overwrite=overwrite)))


def _common(cfg: DemoSize, data: dict, device: str, dtype: str, seed: int) -> dict:
    return dict(
        data=data["train"], batch_size=cfg.batch_size, num_frames=cfg.num_frames, seed=seed, device=device,
        dtype=dtype, save_every=50, warmup_steps=min(20, cfg.baseline_steps // 10), lr_schedule="cosine",
    )  # fmt: skip


def _asset_baseline(data: dict, out: Path) -> dict:
    """The shipped pretrained tiny model (its record says how it was trained); refuses data rendered otherwise."""
    from dna_vlm.tiny.pretrained import AssetError, pretrained_baseline

    res = pretrained_baseline(out)
    rec = res["record"]
    if rec["data"]["render"] != data["meta"]["render"]:
        raise AssetError("the pretrained baseline was trained on clips rendered with "
                         f"{rec['data']['render']}, the demo's data uses {data['meta']['render']}: rebuild the "
                         "asset (python scripts/pretrain_default.py) or run with --baseline train")  # fmt: skip
    return {"path": res["path"], "run": None, "final_loss": rec["phases"][-1]["final_loss"],
            "asset": {k: rec[k] for k in ("name", "sha256", "recipe", "phases")}}  # fmt: skip


def _train_baseline(
    cfg: DemoSize, model_dir: str, data: dict, out: Path, device: str, dtype: str, seed: int
) -> dict:
    """Every weight of the stock tiny model: the stand-in for a pretrained video LLM."""
    kw = _common(cfg, data, device, dtype, seed)
    run = _train(
        dict(
            kw,
            model=model_dir,
            attention="softmax",
            tune="full",
            max_steps=cfg.baseline_steps,
            lr=cfg.baseline_lr,
        ),
        out,
    )
    summary = json.loads((run / "summary.json").read_text())
    return {"path": str(run / "model"), "run": str(run), "final_loss": summary["final_loss"]}


def _train_arm(
    cfg: DemoSize, base: str, data: dict, out: Path, attention: str, device: str, dtype: str, seed: int
) -> dict:
    """One arm; both arms get exactly these arguments except ``attention`` (and the DnA arm's learning rate of
    its new parameters, ``cfg.dna_lr``: the softmax arm has none)."""
    kw = _common(cfg, data, device, dtype, seed)
    if attention == "dna" and cfg.dna_lr is not None:
        kw["dna_lr"] = cfg.dna_lr
    kw.update(
        model=base, attention=attention, tune="lora", lora_rank=cfg.lora_rank, lora_alpha=2.0 * cfg.lora_rank
    )
    kw.update(
        projector="full", max_steps=cfg.arm_steps, lr=cfg.arm_lr, warmup_steps=min(10, cfg.arm_steps // 10)
    )
    run = _train(kw, out)
    summary = json.loads((run / "summary.json").read_text())
    return {
        "path": str(run),
        "final_loss": summary["final_loss"],
        "lambda_mean_abs": summary.get("lambda_mean_abs"),
    }


@dataclass(frozen=True)
class EvalPlan:
    """One lmms-eval run of the demo: the arm's run dir (None: the baseline), extra plugin ``model_args``
    (input controls) and the task: ``dna_vlm_synth`` (the test questions), ``dna_vlm_synth_blind`` (the
    same without video) or ``dna_vlm_synth_oracle`` (the same questions without distractors)."""

    run_dir: str | None
    model_args: dict = field(default_factory=dict)
    task: str = "dna_vlm_synth"


def _eval_result(run, spec) -> dict:
    """A stage marker's view of one finished lmms-eval run."""
    (task,) = spec.task_list()
    res = run.results["results"][task]
    return {
        "samples": str(run.samples[task]),
        "results": str(run.results_path),
        "acc": res.get("acc,none"),
        "seconds": run.seconds,
    }


def _attribute(dest: Path, softmax: dict, dna: dict, blind: dict) -> dict:
    from dna_vlm.eval.attribute.compare import attribute

    rep = attribute(
        softmax["samples"], dna["samples"], blind=blind["samples"], by=("density", "category"), out_dir=dest
    )
    return {"dir": str(dest), "report": rep}


def _inspect(dest: Path, base: str, dna_run: str, data: dict, cfg: DemoSize, device: str, dtype: str) -> dict:
    """V+/V- angles, lambdas, entropies and overlays for the DnA arm on the densest test clips."""
    from dna_vlm.eval.inspection.run import inspect_model

    from dna_vlm.data.dataset import load_dataset
    from dna_vlm.runs.loading import load_model

    rows = sorted(load_dataset(data["test"]), key=lambda e: (-int(e.extra.get("density", 0)), e.id))
    videos = list(dict.fromkeys(e.video for e in rows))[:3]
    model, processor = load_model(pretrained=base, run_dir=dna_run, device=device, dtype=dtype)
    rep = inspect_model(model, processor, videos, out_dir=dest, num_frames=cfg.num_frames)
    return {"dir": str(dest), "summary": rep["summary"], "neg_branch": _neg_branch_movement(model)}


def _neg_branch_movement(model) -> dict:
    """How far training moved DnA's negative branch from its start (V- = 0, lambda = 0.5)."""
    from dna_vlm.patching import dna_layers

    rel, lam = [], []
    for _, layer in dna_layers(model):
        if layer.neg is None:  # a softmax model: no negative branch
            continue
        _, v_pos = layer.positive_qv()
        if layer.neg.v_neg is not None:
            rel.append(float(layer.neg.v_neg.weight.norm() / v_pos.weight.norm()))
        lam.append(float(layer.neg.neg_scale.abs().mean()))
    return {
        "v_neg_rel_norm": sum(rel) / len(rel) if rel else None,  # mean ||W_v-|| / ||W_v+|| over layers
        "lambda_mean_abs": sum(lam) / len(lam) if lam else None,
    }


BUDGET_NOTE = (
    "Both arms start from the same baseline checkpoint and get the same budget: LoRA rank r (alpha 2r) on "
    "every tower linear, the full projector, the same steps, learning rate, schedule, data order and seed; they "
    "differ only in the attention, and in the learning rate of DnA's new parameters (its negative branch: "
    "Q-, V-, lambda; `dna_lr`; the softmax arm has no new parameters), so that the branch, which starts at "
    "V- = 0, actually trains within the same steps (with one shared rate it barely moved: ||W_v-||/||W_v+|| "
    "0.048 after 250 steps). `dna_lr` was chosen on the validation split, never on test: "
    "scripts/dna_recipe_sweep.py over 1e-3 / 3e-3 / 1e-2 / 3e-2 on the pretrained baseline "
    "llava_onevision-small-dense (val accuracy 73.5 / 73.8 / 72.3 / 73.1%, n = 480, softmax arm 72.9%: all "
    "within noise; the pre-declared rule, the highest val accuracy and the smaller rate on a tie, picked 3e-3; "
    "docs/measurements/dna-recipe-sweep-dense-2026-12-06). "
    "README.md records the budget history."
)


def _accuracy(samples: str) -> dict:
    from dna_vlm.eval.logs.samples import load_samples

    recs = list(load_samples(samples).records.values())
    k, n = sum(r.correct for r in recs), len(recs)
    return {
        "acc": k / n if n else None,
        "ci95": wilson_ci(k, n),
        "n": n,
        "failed": sum(r.failed for r in recs),
    }


def _final_report(
    out: Path, settings, data, baseline, evals, reports, inspect, stages: Stages, wall: float, encoder=None
) -> dict:
    from dna_vlm.bench.timing import machine

    acc = {name: _accuracy(e["samples"]) for name, e in evals.items()}
    seeds = sorted(int(k) for k in reports)
    effects = {}
    for s in seeds:
        r = reports[s]["report"] if s in reports else reports[str(s)]["report"]
        dens = r.get("by_group", {}).get("density", {})
        effects[s] = {
            "delta": r["delta"], "delta_ci95": r["delta_ci95"], "mcnemar_p": r["mcnemar_p"],
            "significant": r.get("significant"), "mde": r.get("mde"), "fixed": r["fixed"], "broken": r["broken"], "n": r["n"],
            "by_density": {v: {k: g.get(k) for k in ("n", "baseline_acc", "candidate_acc", "delta", "delta_ci95", "mcnemar_p")} for v, g in dens.items()},
            "report_dir": reports[s]["dir"] if s in reports else reports[str(s)]["dir"],
        }  # fmt: skip
    deltas = [e["delta"] for e in effects.values()]
    verdict_text = verdict(effects)
    report = {
        "settings": settings, "machine": machine(), "wall_time_s": wall,
        "stage_seconds": {k: v[0] for k, v in stages.times.items()},
        "accuracy": acc, "effect_dna_minus_softmax": effects,
        "mean_delta_over_seeds": sum(deltas) / len(deltas), "verdict": verdict_text,
        "inspect": inspect["summary"], "neg_branch": inspect["neg_branch"], "budget": BUDGET_NOTE, "baseline_final_train_loss": baseline["final_loss"],
        "baseline_asset": baseline.get("asset"),
    }  # fmt: skip
    if encoder:
        report["encoder"] = {s: encoder_summary(e) for s, e in encoder.items()}
        report["instrument"] = {s: _instrument(evals, e, data, s) for s, e in encoder.items()}
    atomic_write_json(out / "report.json", report)
    md = markdown_report(report, out, reports, inspect, stages, encoder)
    atomic_write_bytes(out / "report.md", md.encode())
    print("\n" + summary_text(report, stages), flush=True)
    return report


def _instrument(evals: dict, enc: dict, data: dict, s: int) -> dict:
    """The acceptance checks of :mod:`dna_vlm.eval.demo.instrument` for seed ``s`` (control arm's runs)."""
    from dna_vlm.eval.demo.encoder_stages import PLANTED
    from dna_vlm.eval.demo.instrument import instrument_checks

    from dna_vlm.data.dataset import load_dataset

    chance: dict[str, float] = {}
    for e in load_dataset(data["test"]):
        chance[str(e.extra.get("category"))] = 1.0 / len(e.options or [None])
    ctl = enc["evals"]
    return instrument_checks(
        evals[f"{CONTROL_ARM}-s{s}"]["samples"], ctl["oracle"]["samples"],
        {d.p: ctl[d.name]["samples"] for d in PLANTED}, enc["section"], chance,
        enc["section"].get("calibration"), seed=s, degradation=PLANTED[0].model_arg,
    )  # fmt: skip


def add_parser(sub) -> None:
    """``dna-vlm demo`` (its one-line help is in :data:`dna_vlm.cli.SUBCOMMANDS`)."""
    p = sub.add_parser(
        "demo",
        description="Run the whole mission on the embedded default (no downloads): synthetic data, a tiny video "
        "LLM, a softmax and a DnA arm with the same budget, lmms-eval, attribute and inspect, then one report. "
        "Re-running resumes finished stages.",
    )
    p.add_argument("--out", default="demo_out", help="output folder; re-running resumes finished stages")
    p.add_argument(
        "--size",
        default="small",
        choices=sorted(SIZES),
        help="small: the default (README: its measured time); medium: stronger, slower; ci: smoke",
    )
    p.add_argument("--seeds", type=int, default=1, help="train both arms with this many seeds")
    p.add_argument(
        "--seed", type=int, default=0, help="first seed (data, arms; the baseline too with --baseline train)"
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where to train and evaluate (default: cpu)"
    )
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="asset: load the shipped pretrained baseline (small's default); train: train one here (ci, medium)",
    )
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 2 ``--out`` is in use by another writer, 130 interrupted (Ctrl-C / SIGTERM:
    finished stages are kept, rerunning resumes)."""
    import signal
    import sys

    from dna_vlm.runs.lock import LockedError, OutputLock
    from dna_vlm.train import TrainInterrupted

    def terminate(signum, frame):  # SIGTERM outside training: unwind like Ctrl-C (locks released)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        with OutputLock(args.out, "dna-vlm demo"):
            run_demo(
                args.out,
                size=args.size,
                seeds=args.seeds,
                device=args.device,
                force=args.force,
                seed=args.seed,
                baseline=args.baseline,
            )
    except LockedError as e:
        print(f"dna-vlm demo: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TrainInterrupted):
        print(
            f"dna-vlm demo: interrupted; finished stages in {args.out} are kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    print(f"\nreport: {Path(args.out).resolve() / 'report.md'}")
    return 0
