"""DDP vs FSDP2 training, side by side: steps/s and peak memory per process (a prepared GPU check; it also
runs on CPU processes, which is how docs/measurements/fsdp-cpu-2026-12-05/ was measured).

    python scripts/gpu_check_fsdp.py --model MODEL_DIR --data train.jsonl --out OUT_DIR \
        [--processes 2] [--steps 20] [--device cuda|cpu] [--kinds ddp fsdp] [-- extra `dna-vlm train` args]

Each kind runs `accelerate launch` (DDP: --multi_gpu; FSDP: --use_fsdp --fsdp_version 2, transformer-based
wrap) of this file in child mode, which trains with `dna-vlm train` and writes, per process, its peak memory:
torch.cuda.max_memory_allocated (GPU) and the peak RSS (ru_maxrss; on the CPU the only one). OUT_DIR gets
one run dir per kind, <kind>.rank<R>.json, and fsdp_check.json (the table it prints). Exit 1 if a kind fails
or if FSDP's losses leave DDP's by more than 1e-3 (same data, same global batch: they must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAUNCH = {
    "ddp": ["--multi_gpu"],
    "fsdp": ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"],
}


def child(out: Path, kind: str, train_args: list[str]) -> int:
    """One process of a launch: train, then record this process's peak memory (also after a failure)."""
    import torch

    from dna_vlm.cli import main

    rank = int(os.environ.get("RANK", "0"))
    t0 = time.time()
    try:
        rc = main(["train", *train_args])
    finally:
        rec = {"kind": kind, "rank": rank, "wall_s": time.time() - t0,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip
        if torch.cuda.is_available():
            rec["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            rec["device_name"] = torch.cuda.get_device_name()
        (out / f"{kind}.rank{rank}.json").write_text(json.dumps(rec, indent=1))
    return rc


def run_kind(args, kind: str) -> dict:
    run = args.out / kind
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH[kind], "--num_processes",
           str(args.processes), "--num_machines", "1", "--mixed_precision", args.mixed_precision,
           "--dynamo_backend", "no", "--main_process_port", "0", __file__, "--child", kind, "--out", str(args.out),
           "--", "--model", args.model, "--data", args.data, "--output", str(run), "--max-steps", str(args.steps),
           "--device", args.device, "--no-progress", "--overwrite", *args.extra]  # fmt: skip
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    (args.out / f"{kind}.log").write_text(res.stdout + res.stderr)
    rec = {"kind": kind, "rc": res.returncode, "launch_wall_s": time.time() - t0}
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return rec
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    times = [m["step_time_s"] for m in steps[1:]]  # the first step includes warm-up
    ranks = [json.loads((args.out / f"{kind}.rank{r}.json").read_text()) for r in range(args.processes)]
    return rec | {"losses": [m["loss"] for m in steps], "median_step_s": statistics.median(times),
                  "steps_per_s": 1 / statistics.median(times), "per_process": ranks}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    p.add_argument("--kinds", nargs="+", default=["ddp", "fsdp"], choices=tuple(LAUNCH))
    p.add_argument("--child", choices=tuple(LAUNCH), help=argparse.SUPPRESS)
    p.add_argument("extra", nargs="*", help="more `dna-vlm train` arguments (after --)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args.out, args.child, args.extra)
    results = {k: run_kind(args, k) for k in args.kinds}
    rc = int(any(r["rc"] != 0 for r in results.values()))
    if "ddp" in results and "fsdp" in results and rc == 0:
        gap = max(
            abs(a - b) for a, b in zip(results["ddp"]["losses"], results["fsdp"]["losses"], strict=True)
        )
        results["max_loss_gap"] = gap
        rc = int(gap > 1e-3)
    (args.out / "fsdp_check.json").write_text(json.dumps(results, indent=1))
    for k in args.kinds:
        r = results[k]
        mem = ", ".join(f"rank{x['rank']}: RSS {x['peak_rss_mib']:.0f} MiB"
                        + (f", CUDA {x['peak_cuda_allocated_mib']:.0f} MiB" if "peak_cuda_allocated_mib" in x else "")
                        for x in r.get("per_process", []))  # fmt: skip
        speed = f"{r['steps_per_s']:.2f} steps/s" if "steps_per_s" in r else "FAILED"
        print(f"{k:<5} {speed}  {mem}")
    print(f"max |loss DDP - loss FSDP| = {results.get('max_loss_gap')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
