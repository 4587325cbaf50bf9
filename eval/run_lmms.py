"""Run the stock lmms-eval CLI in a subprocess and verify that it really produced results.

lmms-eval 0.7.3 exits 0 even when the evaluation failed (``lmms_eval/__main__.py:609-615`` catches the
exception, prints it and carries on), so a script cannot trust the exit code. :func:`run_lmms` checks for a
new ``*_results.json`` that holds every requested task (and the sample logs when asked) and raises
:class:`LmmsEvalError` with the tail of the CLI's stderr otherwise.

::

    from dna_vlm.eval.run_lmms import run_lmms, TASKS_DIR
    out = run_lmms("pretrained=/models/tiny,attention=dna", ["dna_vlm_synth"], "results/",
                   include_path=TASKS_DIR, env={"DNA_VLM_SYNTH_JSONL": "data/synth/test.jsonl"})
    out.results["results"]["dna_vlm_synth"]["acc,none"], out.samples["dna_vlm_synth"]

or ``python -m dna_vlm.eval.run_lmms --model_args ... --tasks ... --output_path ...`` (extra arguments after
``--`` go to lmms-eval unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "TASKS_DIR",
    "LmmsEvalError",
    "LmmsRun",
    "bad_video_block",
    "build_command",
    "failure_summary",
    "format_failures",
    "main",
    "run_lmms",
]

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


class LmmsEvalError(RuntimeError):
    """The lmms-eval CLI did not produce the expected results; the message holds its stderr tail."""


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


def build_command(
    model_args: str | Mapping,
    tasks: Sequence[str] | str,
    output_path: str | os.PathLike,
    include_path: str | os.PathLike | None = TASKS_DIR,
    model: str = "dna_vlm",
    batch_size: int | None = 1,
    limit: int | float | None = None,
    log_samples: bool = True,
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The ``python -m lmms_eval ...`` command line (the same CLI as the ``lmms-eval`` script)."""
    tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
    cmd = [
        python or sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        model,
        "--model_args",
        _model_args(model_args),
    ]
    cmd += ["--tasks", tasks, "--output_path", str(output_path)]
    if include_path is not None:
        cmd += ["--include_path", str(include_path)]
    if batch_size is not None:
        cmd += ["--batch_size", str(batch_size)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if log_samples:
        cmd += ["--log_samples"]
    return cmd + list(extra_args)


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
    model_args: str | Mapping,
    tasks: Sequence[str] | str,
    output_path: str | os.PathLike,
    include_path: str | os.PathLike | None = TASKS_DIR,
    model: str = "dna_vlm",
    batch_size: int | None = 1,
    limit: int | float | None = None,
    log_samples: bool = True,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    python: str | None = None,
    echo: bool = False,
) -> LmmsRun:
    """Run lmms-eval; return the parsed results or raise :class:`LmmsEvalError` (stderr tail included)."""
    task_list = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    output_path = Path(output_path)
    cmd = build_command(
        model_args,
        task_list,
        output_path,
        include_path,
        model,
        batch_size,
        limit,
        log_samples,
        extra_args,
        python,
    )
    t0 = time.time()
    proc = _run(cmd, {**os.environ, **(env or {})}, timeout, echo)
    stdout, stderr = proc.stdout or "", proc.stderr or ""
    where = f"command: {' '.join(cmd)}\n--- stderr (tail) ---\n{_tail(stderr)}\n--- stdout (tail) ---\n{_tail(stdout, 20)}"
    block = bad_video_block(stderr)
    if block:  # the plugin's whole list of unreadable videos, however long
        where = f"{block}\n{where}"
    if proc.returncode != 0:
        raise LmmsEvalError(f"lmms-eval exited with status {proc.returncode}\n{where}")
    results_path, results = _results(output_path, t0, task_list, where)
    samples = _sample_logs(results_path, output_path, t0, task_list, where) if log_samples else {}
    failures = failure_summary(results, samples)
    if failures:
        print(format_failures(failures), file=sys.stderr)
    return LmmsRun(
        results_path=results_path,
        results=results,
        samples=samples,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        command=cmd,
        seconds=time.time() - t0,
        failures=failures,
    )


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
    """Per task with failed samples (:func:`dna_vlm.eval.records.row_failure`): ``{"failed", "total",
    "scored": {metric: [value of each failed sample]}, "doc_ids"}``."""
    from .records import row_failure

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
    lines = ["dna_vlm: failed samples (bad_video=skip; see dna_vlm.eval.records.row_failure):"]
    for task, f in failures.items():
        lines.append(f"  {task}: {f['failed']} of {f['total']} failed (doc ids {f['doc_ids'][:10]})")
        for metric, values in f["scored"].items():
            lines.append(f"    stock metric {metric}: {_how_scored(values)}")
    return "\n".join(lines)


def _run(cmd: list[str], env: dict, timeout: float | None, echo: bool) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=env, capture_output=not echo, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise LmmsEvalError(f"lmms-eval timed out after {timeout}s: {' '.join(cmd)}\n{_tail(err)}") from None


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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dna_vlm.eval.run_lmms",
        description="Run lmms-eval with the dna_vlm model and fail loudly when it produced no results.",
    )
    ap.add_argument("--model_args", default=None, help="e.g. pretrained=PATH,dna=RUN_DIR")
    ap.add_argument("--tasks", default=None, help="comma list, e.g. dna_vlm_synth,dna_vlm_synth_blind")
    ap.add_argument("--output_path", default=None)
    ap.add_argument("--model", default="dna_vlm")
    ap.add_argument("--include_path", default=str(TASKS_DIR))
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--no_log_samples", action="store_true")
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--print_tasks_dir", action="store_true", help="print the --include_path folder and exit")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: passed to lmms-eval")
    args = ap.parse_args(argv)
    if args.print_tasks_dir:
        print(TASKS_DIR)
        return 0
    if not (args.model_args and args.tasks and args.output_path):
        ap.error("--model_args, --tasks and --output_path are required")
    extra = [a for a in args.extra if a != "--"]
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
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
        )
    except LmmsEvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps({"results": str(run.results_path), "samples": {k: str(v) for k, v in run.samples.items()}})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
