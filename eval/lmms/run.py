"""Run the stock lmms-eval CLI in a subprocess and verify that it really produced results.

lmms-eval 0.7.3 exits 0 even when the evaluation failed (``lmms_eval/__main__.py:609-615`` catches the
exception, prints it and carries on), so a script cannot trust the exit code. :func:`run_lmms` checks for a
new ``*_results.json`` that holds every requested task (and the sample logs when asked) and raises
:class:`LmmsEvalError` with the tail of the CLI's stderr otherwise.

::

    from dna_vlm.eval.lmms.run import run_lmms, TASKS_DIR
    out = run_lmms("pretrained=/models/tiny,attention=dna", ["dna_vlm_synth"], "results/",
                   include_path=TASKS_DIR, env={"DNA_VLM_SYNTH_JSONL": "data/synth/test.jsonl"})
    out.results["results"]["dna_vlm_synth"]["acc,none"], out.samples["dna_vlm_synth"]

or ``python -m dna_vlm.eval.lmms.run --model_args ... --tasks ... --output_path ...`` (extra arguments after
``--`` go to lmms-eval unchanged).

:func:`run_lmms_many` runs several evaluations (:class:`LmmsSpec`) in ONE lmms-eval process through the
CLI's own ``--config FILE`` (a YAML list of runs), so torch / transformers / lmms-eval are imported once
(~6.5 s per process saved); each run is checked like :func:`run_lmms` checks its one::

    specs = [LmmsSpec({"dna": run_dir}, ["dna_vlm_synth"], "results/dna"),
             LmmsSpec({"dna": run_dir, "video": "none"}, ["dna_vlm_synth"], "results/blind")]
    runs = run_lmms_many(specs, env={"DNA_VLM_SYNTH_JSONL": "data/synth/test.jsonl"})
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = [
    "TASKS_DIR",
    "LmmsEvalError",
    "LmmsRun",
    "LmmsSpec",
    "bad_video_block",
    "build_command",
    "build_config_command",
    "build_parser",
    "config_entries",
    "evaluation_errors",
    "failure_summary",
    "format_failures",
    "main",
    "read_samples",
    "results_table",
    "run_lmms",
    "run_lmms_many",
]

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


class LmmsEvalError(RuntimeError):
    """The lmms-eval CLI did not produce the expected results; the message holds its stderr tail.

    ``completed``: the runs of a :func:`run_lmms_many` call that did produce valid results (kept on disk);
    ``failed``: the :class:`LmmsSpec` of those that did not. Both are empty for :func:`run_lmms`."""

    def __init__(self, message: str, completed: Sequence[LmmsRun] = (), failed: Sequence[LmmsSpec] = ()):
        super().__init__(message)
        self.completed: list[LmmsRun] = list(completed)
        self.failed: list[LmmsSpec] = list(failed)


@dataclass
class LmmsRun:
    results_path: Path
    results: dict
    samples: dict[str, Path] = field(default_factory=dict)  # task -> samples JSONL
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failures: dict[str, dict] = field(default_factory=dict)  # task -> failure_summary's entry


def _model_args(model_args: str | Mapping) -> str:
    if isinstance(model_args, str):
        return model_args
    return ",".join(f"{k}={v}" for k, v in model_args.items() if v is not None)


def _task_list(tasks: Sequence[str] | str) -> list[str]:
    return tasks.split(",") if isinstance(tasks, str) else list(tasks)


@dataclass(frozen=True)
class LmmsSpec:
    """One evaluation of :func:`run_lmms_many`: the arguments of :func:`run_lmms` that are per run."""

    model_args: str | Mapping
    tasks: Sequence[str] | str
    output_path: str | os.PathLike
    include_path: str | os.PathLike | None = TASKS_DIR
    model: str = "dna_vlm"
    batch_size: int | None = 1
    limit: int | float | None = None
    log_samples: bool = True

    def task_list(self) -> list[str]:
        return _task_list(self.tasks)

    def config_entry(self) -> dict:
        """This run as an entry of lmms-eval's ``--config`` YAML: argparse dests -> the values argparse would
        make of :func:`build_command`'s arguments (``batch_size`` a string, ``limit`` a float)."""
        entry = {
            "model": self.model,
            "model_args": _model_args(self.model_args),
            "tasks": ",".join(self.task_list()),
            "output_path": str(self.output_path),
            "log_samples": bool(self.log_samples),
        }
        if self.include_path is not None:
            entry["include_path"] = str(self.include_path)
        if self.batch_size is not None:
            entry["batch_size"] = str(self.batch_size)
        if self.limit is not None:
            entry["limit"] = float(self.limit)
        return entry

    def as_kwargs(self) -> dict:
        """The fields by name (the matching keyword arguments of :func:`build_command` / :func:`run_lmms`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        return f"output_path={self.output_path} model_args={_model_args(self.model_args)}"


def build_command(*args, extra_args: Sequence[str] = (), python: str | None = None, **kwargs) -> list[str]:
    """The ``python -m lmms_eval ...`` command line (the same CLI as the ``lmms-eval`` script) of the run
    ``LmmsSpec(*args, **kwargs)``; ``extra_args`` are appended as given."""
    spec = LmmsSpec(*args, **kwargs)
    cmd = [python or sys.executable, "-m", "lmms_eval", "--model", spec.model]
    cmd += ["--model_args", _model_args(spec.model_args), "--tasks", ",".join(spec.task_list())]
    cmd += ["--output_path", str(spec.output_path)]
    if spec.include_path is not None:
        cmd += ["--include_path", str(spec.include_path)]
    if spec.batch_size is not None:
        cmd += ["--batch_size", str(spec.batch_size)]
    if spec.limit is not None:
        cmd += ["--limit", str(spec.limit)]
    if spec.log_samples:
        cmd += ["--log_samples"]
    return cmd + list(extra_args)


def config_entries(specs: Sequence[LmmsSpec]) -> list[dict]:
    """The ``--config`` YAML document of ``specs`` (a list, one entry per run, in order)."""
    return [s.config_entry() for s in specs]


def build_config_command(
    specs: Sequence[LmmsSpec], config_path: str | os.PathLike, python: str | None = None
) -> list[str]:
    """Write the ``--config`` YAML of ``specs`` to ``config_path``; return ``python -m lmms_eval --config
    config_path`` (lmms-eval runs the entries one after the other in that one process)."""
    import yaml  # lmms-eval's dependency; only needed here

    Path(config_path).write_text(yaml.safe_dump(config_entries(specs), sort_keys=False))
    return [python or sys.executable, "-m", "lmms_eval", "--config", str(config_path)]


def _tail(text: str, n: int = 60) -> str:
    lines = (text or "").rstrip().splitlines()
    return "\n".join(lines[-n:])


def _new_files(root: Path, pattern: str, since: float) -> list[Path]:
    if not root.exists():
        return []
    return sorted(
        (p for p in root.rglob(pattern) if p.stat().st_mtime >= since - 1), key=lambda p: p.stat().st_mtime
    )


def run_lmms(
    *args,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    python: str | None = None,
    echo: bool = False,
    **kwargs,
) -> LmmsRun:
    """Run lmms-eval on the run ``LmmsSpec(*args, **kwargs)`` (its fields: model_args, tasks, output_path,
    include_path, model, batch_size, limit, log_samples); return the parsed results or raise
    :class:`LmmsEvalError`: its first lines are the
    errors lmms-eval stopped on (e.g. the plugin's, plainly: lmms-eval prints them after a traceback), then
    the command and the stderr tail. ``echo``: show lmms-eval's log and progress bars (its stderr) as it
    runs; they are captured either way."""
    spec = LmmsSpec(*args, **kwargs)  # model_args, tasks, output_path, include_path, model, batch_size, ...
    cmd = build_command(**spec.as_kwargs(), extra_args=extra_args, python=python)
    t0 = time.time()
    proc = _run(cmd, {**os.environ, **(env or {})}, timeout, echo)
    where = _where(cmd, proc)
    try:
        if proc.returncode != 0:
            raise LmmsEvalError(f"lmms-eval exited with status {proc.returncode}\n{where}")
        run = _collect(spec, t0, where)
    except LmmsEvalError as e:
        raise LmmsEvalError(f"{_plain_errors(proc)}{e}") from None
    return _attach(run, proc, cmd, time.time() - t0)


def run_lmms_many(
    runs: Sequence[LmmsSpec],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    python: str | None = None,
    echo: bool = False,
) -> list[LmmsRun]:
    """Run every :class:`LmmsSpec` of ``runs`` in ONE ``python -m lmms_eval --config FILE`` process (the
    imports are paid once) and check each like :func:`run_lmms`; one :class:`LmmsRun` per spec, in order.

    - ``env`` holds for the whole call: lmms-eval applies the ``env:`` of every config entry before it runs
      any, so runs of one process cannot differ in environment. Call once per environment instead.
    - lmms-eval goes on after a failed run (it prints the exception and exits 0). When any run produced no
      results (or the process failed / timed out), :class:`LmmsEvalError` names each failed run (its
      ``output_path`` and ``model_args``) with the stderr tail; its ``completed`` holds the runs that did
      validate (their files stay on disk) and ``failed`` the specs of the others.
    - ``stdout`` / ``stderr`` / ``command`` are the shared process's. ``seconds``: the run's own
      ``total_evaluation_time_seconds`` from its results JSON (lmms-eval's clock from the run's start,
      model load included, to the saving of its results) plus an equal share of the rest of the wall time
      (imports, sample logs, failed runs), so the ``seconds`` of a successful call add up to its wall time;
      without that field in every results JSON, the mean share (wall time / number of runs).
    - Output paths must be distinct and not nested (results are found per folder). The temporary config
      file named in ``command`` is deleted on return.
    """
    specs = _check_specs(runs)
    with tempfile.TemporaryDirectory(prefix="dna_vlm_lmms_config_") as tmp:
        cmd = build_config_command(specs, Path(tmp) / "lmms_config.yaml", python)
        t0 = time.time()
        try:
            proc, where, timed_out = _run(cmd, {**os.environ, **(env or {})}, timeout, echo), None, ""
        except LmmsEvalError as e:  # timed out: the runs finished before are still on disk
            proc, where, timed_out = subprocess.CompletedProcess(cmd, -1, "", ""), str(e), str(e)
    wall = time.time() - t0
    where = where or _where(cmd, proc)
    outcomes: list[LmmsRun | str] = []
    for i, spec in enumerate(specs):
        label = f"run {i + 1} of {len(specs)} ({spec.describe()})"
        try:
            outcomes.append(_attach(_collect(spec, t0, "", label), proc, cmd, 0.0))
        except LmmsEvalError as e:
            outcomes.append(str(e).strip().splitlines()[0])
    completed = [o for o in outcomes if isinstance(o, LmmsRun)]
    _share_seconds(completed, wall, len(specs))
    if timed_out or proc.returncode != 0 or len(completed) < len(specs):
        raise _many_error(specs, outcomes, proc, where, timed_out)
    return completed


def _check_specs(runs: Sequence[LmmsSpec]) -> list[LmmsSpec]:
    specs = list(runs)
    if not specs:
        raise ValueError("run_lmms_many: no runs given (expected at least one LmmsSpec)")
    bad = [type(s).__name__ for s in specs if not isinstance(s, LmmsSpec)]
    if bad:
        raise ValueError(f"run_lmms_many: runs must be LmmsSpec instances, got {bad}")
    paths = [Path(s.output_path).resolve() for s in specs]
    for i, a in enumerate(paths):
        for j in range(i + 1, len(paths)):
            b = paths[j]
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(
                    f"run_lmms_many: runs {i + 1} and {j + 1} share an output folder ({specs[i].output_path} "
                    f"and {specs[j].output_path}); give each run its own, not nested, output_path (each "
                    "run's results are found by the folder they land in)"
                )
    return specs


def _share_seconds(runs: list[LmmsRun], wall: float, n: int) -> None:
    """Set each run's ``seconds`` (see :func:`run_lmms_many`)."""
    own = [_float((r.results or {}).get("total_evaluation_time_seconds")) for r in runs]
    if any(x is None for x in own):
        for r in runs:
            r.seconds = wall / n
        return
    rest = max(wall - sum(own), 0.0) / n
    for r, x in zip(runs, own, strict=True):
        r.seconds = x + rest


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: lmms-eval's report of a run it gave up on (``__main__.py:614``): the message, which may span lines, ends
#: at this suffix
_REPORTED, _REPORTED_END = "Error during evaluation: ", ". Please set `--verbosity=DEBUG`"


def evaluation_errors(proc: subprocess.CompletedProcess) -> list[str]:
    """The message of each run lmms-eval gave up on (e.g. the plugin's ``ValueError``), whole and in order:
    lmms-eval prints it only after the traceback, in loguru colours even into a pipe."""
    text = _ANSI.sub("", f"{proc.stderr or ''}\n{proc.stdout or ''}")
    out = []
    for part in text.split(_REPORTED)[1:]:
        end = part.find(_REPORTED_END)
        out.append((part[:end] if end >= 0 else part.split("\n", 1)[0]).strip())
    return out


def _plain_errors(proc: subprocess.CompletedProcess) -> str:
    """The first lines of a failed run's error: what lmms-eval stopped on, before any tail."""
    return "".join(f"lmms-eval stopped: {e}\n" for e in evaluation_errors(proc))


def _many_error(
    specs: list[LmmsSpec], outcomes: list, proc: subprocess.CompletedProcess, where: str, timed_out: str
) -> LmmsEvalError:
    failed = [(i, specs[i], o) for i, o in enumerate(outcomes) if isinstance(o, str)]
    completed = [o for o in outcomes if isinstance(o, LmmsRun)]
    if timed_out:
        head = timed_out.splitlines()[0]
    elif proc.returncode != 0:
        head = f"lmms-eval exited with status {proc.returncode}"
    else:
        head = "lmms-eval exited 0 (it does so even when an evaluation failed)"
    lines = [f"{head}; {len(failed)} of {len(specs)} runs produced no valid results:"]
    reported = evaluation_errors(proc)
    for k, (i, spec, reason) in enumerate(failed):
        lines.append(f"  run {i + 1} ({spec.describe()}): {reason}")
        if len(reported) == len(failed) and not timed_out:  # lmms-eval reports failed runs in order
            lines.append(f"    lmms-eval: {reported[k]}")
    if reported and len(reported) != len(failed):
        lines += ["lmms-eval reported:"] + [f"  {r}" for r in reported]
    kept = [str(r.results_path) for r in completed]
    lines.append(f"{len(completed)} run(s) completed, results kept: {kept}")
    return LmmsEvalError("\n".join(lines) + f"\n{where}", completed, [s for _, s, _ in failed])


def _where(cmd: list[str], proc: subprocess.CompletedProcess) -> str:
    """The context of an error: command, stderr / stdout tails, and the plugin's unreadable-video list."""
    stdout, stderr = proc.stdout or "", proc.stderr or ""
    where = f"command: {' '.join(cmd)}\n--- stderr (tail) ---\n{_tail(stderr)}\n--- stdout (tail) ---\n{_tail(stdout, 20)}"
    block = bad_video_block(stderr)
    if block and any(block.splitlines()[0] in e for e in evaluation_errors(proc)):
        block = ""  # already whole in the error lmms-eval stopped on, which comes first
    return (
        f"{block}\n{where}" if block else where
    )  # the plugin's whole list of unreadable videos, however long


def _collect(spec: LmmsSpec, since: float, where: str, label: str = "") -> LmmsRun:
    """Check one run's outputs written since ``since`` (a results JSON holding every task, the sample logs
    when asked) -> its :class:`LmmsRun` without the process fields; else :class:`LmmsEvalError`."""
    output_path, task_list = Path(spec.output_path), spec.task_list()
    results_path, results = _results(output_path, since, task_list, where)
    samples = _sample_logs(results_path, output_path, since, task_list, where) if spec.log_samples else {}
    failures = failure_summary(results, samples)
    if failures:
        print((f"{label}:\n" if label else "") + format_failures(failures), file=sys.stderr)
    return LmmsRun(results_path=results_path, results=results, samples=samples, failures=failures)


def _attach(run: LmmsRun, proc: subprocess.CompletedProcess, cmd: list[str], seconds: float) -> LmmsRun:
    run.returncode, run.stdout, run.stderr = proc.returncode, proc.stdout or "", proc.stderr or ""
    run.command, run.seconds = list(cmd), seconds
    return run


def bad_video_block(stderr: str) -> str:
    """The plugin's ``bad_video=fail`` error(s): each first line and the ``task=`` lines after it (one block
    per process that raised), or ""."""
    lines = (stderr or "").splitlines()
    blocks: list[str] = []
    for i, line in enumerate(lines):
        if "unreadable video" in line and "bad_video=fail" in line:
            end = i + 1
            while end < len(lines) and lines[end].startswith("  task="):
                end += 1
            block = "\n".join(lines[i:end])
            if block not in blocks:
                blocks.append(block)
    return "\n".join(blocks)


def _metric_names(task_results: dict) -> list[str]:
    names = {k.split(",")[0] for k in task_results if "," in k and not k.split(",")[0].endswith("_stderr")}
    return sorted(names)


def failure_summary(results: dict, samples: dict[str, Path]) -> dict[str, dict]:
    """Per task with failed samples (:func:`dna_vlm.eval.logs.records.row_failure`): ``{"failed", "total",
    "scored": {metric: [value of each failed sample]}, "doc_ids"}``, plus, when the provenance has them,
    ``"stock_scores"`` (each stock score with and without the failed docs) and ``"gold_unknown"`` (the failed
    doc ids whose gold option was unknown: they could not be made to lose)."""
    from dna_vlm.eval.logs.records import PROVENANCE_KEY, row_failure

    prov = (results.get("config") or {}).get(PROVENANCE_KEY) or {}
    out: dict[str, dict] = {}
    for task, path in samples.items():
        rows = read_samples(path)
        failed = [r for r in rows if row_failure(r)[0]]
        if not failed:
            continue
        names = _metric_names((results.get("results") or {}).get(task, {}))
        scored = {m: [r.get(m) for r in failed] for m in names if any(m in r for r in failed)}
        out[task] = {
            "failed": len(failed),
            "total": len(rows),
            "scored": scored,
            "doc_ids": [r.get("doc_id") for r in failed],
        }
        scores = (prov.get("stock_scores") or {}).get(task)
        unknown = [g["doc_id"] for g in prov.get("gold_unknown") or [] if g.get("task") == task]
        if scores:
            out[task]["stock_scores"] = scores
        if unknown:
            out[task]["gold_unknown"] = unknown
    return out


def _how_scored(values: list) -> str:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(values):
        right = sum(1 for v in nums if v > 0)
        return f"{right} of {len(nums)} scored > 0 (values {sorted(set(nums))})"
    shown = json.dumps(values[:3], default=str)
    return shown[:200] + (" ..." if len(values) > 3 or len(shown) > 200 else "")


def format_failures(failures: dict[str, dict]) -> str:
    """The end-of-run lines: how many samples failed per task and how the stock metric scored them."""
    lines = ["dna_vlm: failed samples (bad_video=skip; see dna_vlm.eval.logs.records.row_failure):"]
    for task, f in failures.items():
        lines.append(f"  {task}: {f['failed']} of {f['total']} failed (doc ids {f['doc_ids'][:10]})")
        for metric, values in f["scored"].items():
            lines.append(f"    stock metric {metric}: {_how_scored(values)}")
        for key, sc in f.get("stock_scores", {}).items():
            kept = sc["n"] - sc["failed"]
            lines.append(
                f"    stock {key} = {_num(sc['stock'])} over {sc['n']} docs; without the {sc['failed']} failed "
                f"docs: {_num(sc['without_failed'])} over {kept}"
            )
        if f.get("gold_unknown"):
            lines.append(
                f"    GOLD UNKNOWN for failed doc ids {f['gold_unknown'][:10]}: they could not be made to lose, "
                "the stock metric may count them right (use the score without the failed docs)"
            )
    return "\n".join(lines)


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _run(cmd: list[str], env: dict, timeout: float | None, echo: bool) -> subprocess.CompletedProcess:
    """Run ``cmd``, capturing stdout and stderr; ``echo``: also pass the child's stderr (lmms-eval's log
    and progress bars) through to ours as it comes."""
    if echo:
        return _run_echoed(cmd, env, timeout)
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise LmmsEvalError(f"lmms-eval timed out after {timeout}s: {' '.join(cmd)}\n{_tail(err)}") from None


def _run_echoed(cmd: list[str], env: dict, timeout: float | None) -> subprocess.CompletedProcess:
    """:func:`_run` with the child's stderr copied to ours chunk by chunk (progress bars redraw in place)."""
    import threading

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def pump(stream, key: str, echo_to) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            chunks[key].append(chunk)
            if echo_to is not None:
                echo_to.write(chunk)
                echo_to.flush()

    err_sink = getattr(sys.stderr, "buffer", None)
    threads = [threading.Thread(target=pump, args=(proc.stdout, "out", None), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err", err_sink), daemon=True)]  # fmt: skip
    for t in threads:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(timeout=30)
        err = b"".join(chunks["err"]).decode(errors="replace")
        raise LmmsEvalError(f"lmms-eval timed out after {timeout}s: {' '.join(cmd)}\n{_tail(err)}") from None
    for t in threads:  # a process lmms-eval left behind may hold the pipes open: do not wait on it for ever
        t.join(timeout=30)
    out, err = (b"".join(chunks[k]).decode(errors="replace") for k in ("out", "err"))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def results_table(results: dict) -> str:
    """lmms-eval's own results table(s) of a results JSON (``lmms_eval.utils.make_table``), as its CLI
    prints them at the end of a run."""
    import copy

    from lmms_eval.utils import make_table

    results = copy.deepcopy(results)  # make_table pops the task aliases
    tables = [make_table(results)]
    if results.get("groups"):
        tables.append(make_table(results, "groups"))
    return "\n".join(tables)


def _results(output_path: Path, since: float, task_list: list[str], where: str) -> tuple[Path, dict]:
    """The newest ``*_results.json`` written since ``since``, checked to hold every task."""
    found = _new_files(output_path, "*_results.json", since)
    if not found:
        raise LmmsEvalError(
            f"lmms-eval exited 0 but wrote no results file under {output_path} (it exits 0 even when the "
            f"evaluation failed)\n{where}"
        )
    results_path = found[-1]
    try:
        results = json.loads(results_path.read_text())
    except ValueError as e:
        raise LmmsEvalError(f"{results_path}: not valid JSON ({e})\n{where}") from None
    missing = [t for t in task_list if t not in (results.get("results") or {})]
    if missing:
        raise LmmsEvalError(f"{results_path}: no results for task(s) {missing}\n{where}")
    return results_path, results


def _sample_logs(
    results_path: Path, output_path: Path, since: float, task_list: list[str], where: str
) -> dict[str, Path]:
    """task -> its samples JSONL: next to the results file, else the newest one written since ``since``."""
    samples: dict[str, Path] = {}
    prefix = results_path.name[: -len("_results.json")]
    for t in task_list:
        p = results_path.parent / f"{prefix}_samples_{t}.jsonl"
        if not p.is_file():
            cands = _new_files(output_path, f"*_samples_{t}.jsonl", since)
            p = cands[-1] if cands else p
        if not p.is_file():
            raise LmmsEvalError(f"no sample log for task {t} next to {results_path}\n{where}")
        samples[t] = p
    return samples


def read_samples(path: str | os.PathLike) -> list[dict]:
    """The records of a ``--log_samples`` JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m dna_vlm.eval.lmms.run``."""
    ap = argparse.ArgumentParser(
        prog="python -m dna_vlm.eval.lmms.run",
        description="Run lmms-eval with the dna_vlm model and fail loudly when it produced no results. "
        "lmms-eval's log and progress bars are shown as it runs (stderr); at the end its results table is "
        "printed, then one JSON line {results, samples} with the paths written (stdout).",
    )
    ap.add_argument(
        "--model_args",
        default=None,
        help="the plugin's arguments, comma-separated key=value, e.g. pretrained=PATH,dna=RUN_DIR,max_frames=8 "
        "(required)",
    )
    ap.add_argument(
        "--tasks", default=None, help="comma list, e.g. dna_vlm_synth,dna_vlm_synth_blind (required)"
    )
    ap.add_argument(
        "--output_path", default=None, help="folder for the results JSON and the sample logs (required)"
    )
    ap.add_argument("--model", default="dna_vlm", help="the lmms-eval model name (default: %(default)s)")
    ap.add_argument(
        "--include_path",
        default=str(TASKS_DIR),
        help="folder of extra task YAMLs for lmms-eval (default: dna-vlm's own tasks, see --print_tasks_dir)",
    )
    ap.add_argument("--batch_size", type=int, default=1, help="requests per batch (default: %(default)s)")
    ap.add_argument(
        "--limit",
        type=float,
        default=None,
        help="evaluate only the first N docs of each task (or a fraction < 1 of them) (default: all)",
    )
    ap.add_argument("--no_log_samples", action="store_true", help="do not write the per-sample logs")
    ap.add_argument(
        "--log_samples", action="store_true", help="the default (accepted as lmms-eval spells it)"
    )
    ap.add_argument(
        "--timeout", type=float, default=None, help="stop lmms-eval after this many seconds (default: none)"
    )
    ap.add_argument(
        "--quiet", action="store_true", help="do not show lmms-eval's log and progress while it runs"
    )
    ap.add_argument("--print_tasks_dir", action="store_true", help="print the --include_path folder and exit")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: passed to lmms-eval")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.print_tasks_dir:
        print(TASKS_DIR)
        return 0
    if not (args.model_args and args.tasks and args.output_path):
        ap.error("--model_args, --tasks and --output_path are required")
    extra = [a for a in args.extra if a != "--"]
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    if not args.quiet:
        print(f"dna_vlm: running lmms-eval on {args.tasks} (model_args {args.model_args})", file=sys.stderr)
    try:
        run = run_lmms(
            args.model_args,
            args.tasks,
            args.output_path,
            include_path=args.include_path or None,
            model=args.model,
            batch_size=args.batch_size,
            limit=limit,
            log_samples=not args.no_log_samples,
            extra_args=extra,
            timeout=args.timeout,
            echo=not args.quiet,
        )
    except LmmsEvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(results_table(run.results))
    print(f"results: {run.results_path} ({run.seconds:.0f} s)", file=sys.stderr)
    print(
        json.dumps({"results": str(run.results_path), "samples": {k: str(v) for k, v in run.samples.items()}})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
