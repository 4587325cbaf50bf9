"""Every shell command in README.md's ``bash`` blocks is classified here, and those that can run on a CPU
without downloads do run (slow smoke, ~2 min on 2 cores), in one bash script in a temp dir, as a user would
paste them.

Each README command (continuation lines joined, comments dropped, a ``for ... done`` loop as one) must be a
key of :data:`COMMANDS`; a new or changed command fails :func:`test_every_readme_command_is_classified` until
it is classified. Kinds:

- ``("run", subs)``: run as printed after the plain-text substitutions ``subs`` (tiny sizes, the files the
  earlier commands made for the README's placeholders); optional ``[...]`` groups left after them are dropped
  (a substitution includes the ones worth running);
- ``("help", reason)``: long-running: its subcommand's ``--help`` runs instead;
- ``("skip", reason)``: cannot run here (GPU, a hub id or stock benchmark data, placeholders for files only
  other skipped commands make).

The run order is :data:`COMMANDS`' order (the README introduces the workflow before the commands that set it
up). The lmms-eval wrapper's run also checks that it shows progress and prints lmms-eval's results table.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_TRAIN = "--max-steps 2 --batch-size 2 --num-frames 4"
HUB = "a hub model id (llava-hf/...): no downloads here"
STOCK = "stock lmms-eval benchmarks (videomme, mvbench, egoschema): their hub datasets are not here"

#: README command -> ("run", substitutions) | ("help", reason) | ("skip", reason); run ones in this order
COMMANDS: dict[str, tuple] = {
    # -- set-up: the embedded default (tiny sizes)
    "dna-vlm tiny-model models/tiny [--size small|medium] [--seed 0]": ("run", {}),
    "dna-vlm synth-data data/synth [--n-train 960 --n-val 64 --n-test 240 --seed 0 --max-density 3]": (
        "run",
        {
            "[--n-train 960 --n-val 64 --n-test 240 --seed 0 --max-density 3]": "--n-train 8 --n-val 4 --n-test 4"
        },
    ),
    # -- training: both arms on the tiny model (placeholders -> the files made above)
    "dna-vlm train --model PATH_OR_HUB_ID --data train.jsonl --output runs/dna --attention dna --lora-rank 8 "
    "--max-steps 500 --batch-size 8 --num-frames 8 [--projector full|lora|frozen] [--neg-branch lowrank "
    "--neg-rank 8] [--load-in-4bit] [--mixed-precision bf16] [--gradient-checkpointing] [--save-every 100] "
    "[--resume] [--bad-video skip|fail] [--eval-data val.jsonl] [--eval-every 50 --best-metric accuracy|loss] "
    "[--report-to tensorboard|wandb|none] [--seek exact|keyframe] [--frame-cache DIR] [--prefetch 2] "
    "[--dna-dtype float32|model]": (
        "run",
        {
            "PATH_OR_HUB_ID": "models/tiny",
            "train.jsonl": "data/synth/train.jsonl",
            "--max-steps 500 --batch-size 8 --num-frames 8": TINY_TRAIN,
            "[--eval-data val.jsonl] [--eval-every 50 --best-metric accuracy|loss]": "--eval-data data/synth/val.jsonl --eval-every 1 --best-metric accuracy",
            "[--report-to tensorboard|wandb|none]": "--report-to tensorboard",
            "[--save-every 100]": "--save-every 1",
            "[--frame-cache DIR]": "--frame-cache frame_cache",
            "[--seek exact|keyframe]": "--seek keyframe",
        },
    ),
    "dna-vlm train ... --attention softmax --output runs/softmax": (
        "run",
        {"...": f"--model models/tiny --data data/synth/train.jsonl {TINY_TRAIN} --no-progress"},
    ),
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m dna_vlm train ...": (
        "skip",
        "8 GPU processes (ddp.yaml); 2 CPU processes run in tests/test_train.py (torchrun launcher)",
    ),
    "accelerate launch --config_file configs/accelerate/fsdp.yaml -m dna_vlm train ... --dtype bfloat16 "
    "--mixed-precision bf16": (
        "skip",
        "8 GPU processes, FSDP in bf16 (fsdp.yaml); tests/test_fsdp.py covers FSDP on CPU",
    ),
    "dna-vlm export runs/dna exports/dna": ("run", {}),
    # -- the quick start's workflow
    "TASKS=$(python -m dna_vlm.eval.lmms.run --print_tasks_dir)": ("run", {}),
    "export DNA_VLM_MCQ_JSONL=my_test.jsonl": ("run", {"my_test.jsonl": "data/synth/test.jsonl"}),
    "python -m dna_vlm.eval.lmms.run --model dna_vlm --model_args dna=runs/softmax,video=none --tasks dna_vlm_mcq "
    '--include_path "$TASKS" --output_path results/blind': ("run", {}),
    "dna-vlm train --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --data my_train.jsonl --attention softmax "
    "--output runs/softmax": ("skip", HUB + "; the same command on the tiny model runs above"),
    "dna-vlm train --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --data my_train.jsonl --attention dna "
    "--output runs/dna": ("skip", HUB + "; the same command on the tiny model runs above"),
    "for arm in softmax dna; do python -m dna_vlm.eval.lmms.run --model dna_vlm --model_args dna=runs/$arm "
    '--tasks dna_vlm_mcq,videomme --include_path "$TASKS" --output_path results/$arm done': ("skip", STOCK),
    "dna-vlm attribute --baseline results/softmax --candidate results/dna --blind results/blind --by "
    "task,category --out report/": (
        "skip",
        "needs results/softmax and results/dna of the (skipped) stock loop",
    ),
    "dna-vlm inspect --run runs/dna --videos some.mp4 --out inspect/": (
        "run",
        {"some.mp4": "$(ls data/synth/videos/*.mp4 | head -1)", "--out": "--num-frames 4 --out"},
    ),
    # -- the demo
    "bash scripts/install.sh && .venv/bin/dna-vlm demo": ("skip", "creates the environment (network)"),
    "bash scripts/install.sh && .venv/bin/python -m pytest -q": (
        "skip",
        "creates the environment; the suite",
    ),
    "dna-vlm demo --out demo_out": ("help", "minutes of training and lmms-eval runs"),
    "dna-vlm demo --size medium --seeds 3 --device cuda --out demo_gpu": ("skip", "CUDA"),
    # -- evaluation on stock benchmarks
    "python -m dna_vlm.eval.lmms.run --model dna_vlm --model_args dna=runs/dna,max_frames=16 --tasks "
    "videomme,mvbench --output_path results/dna": ("skip", STOCK),
    "python -m dna_vlm.eval.lmms.run --model dna_vlm --model_args pretrained=$BASE --tasks "
    "videomme,mvbench,egoschema_subset --output_path results/base": ("skip", STOCK),
    "python -m dna_vlm.eval.lmms.run --model dna_vlm --model_args dna=runs/dna --tasks "
    "videomme,mvbench,egoschema_subset --output_path results/dna": ("skip", STOCK),
    "python -m dna_vlm.eval.lmms.run --model dna_vlm --model_args pretrained=$BASE,video=none --tasks "
    "videomme,mvbench,egoschema_subset --output_path results/blind": ("skip", STOCK),
    "dna-vlm attribute --baseline results/base --candidate results/dna --blind results/blind --by task --out "
    "reports/all": ("skip", "needs the stock-benchmark runs above"),
    "dna-vlm attribute --baseline results/softmax/..._samples_dna_vlm_synth.jsonl --candidate "
    "results/dna/..._samples_dna_vlm_synth.jsonl --blind results/blind/..._samples_dna_vlm_synth_blind.jsonl "
    "--by category,density --out report/": ("skip", "placeholder sample-log names (...) of runs not shown"),
    "dna-vlm inspect --run runs/dna --videos a.mp4 b.mp4 --out inspect/": (
        "run",
        {"a.mp4 b.mp4": "$(ls data/synth/videos/*.mp4 | head -2)", "--out": "--num-frames 4 --out"},
    ),
    # -- the encoder level
    "dna-vlm probe --model BASE --run softmax=runs/softmax --run dna=runs/dna --train data/train.jsonl --test "
    "data/test.jsonl --test-oracle data/test_oracle.jsonl --label target_color target_shape target_motion "
    "--asked 'target_{category}' --out probe_out": (
        "help",
        "cross-validated probes need >= 2 training rows per class of each label (24+ synthetic rows): "
        "~65 s of CPU on the tiny model, over this smoke's budget (tests/test_probe.py runs probe end to end)",
    ),
    "dna-vlm attribute --baseline S_LOGS --candidate D_LOGS --probe probe_out/probe.json --oracle ORACLE_LOGS "
    "--control none=BLIND_LOGS --control shuffled=SHUF_LOGS --noise 0.5=N05_LOGS --noise 2=N2_LOGS --by "
    "density --out report/": ("skip", "placeholder sample logs (S_LOGS, ...) of lmms-eval runs not shown"),
}


def readme_commands(text: str) -> list[str]:
    """The shell commands of the ``bash`` blocks of ``text``: continuation lines joined, comments dropped,
    whitespace normalised, a ``for ... done`` loop as one command."""
    out: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n", " ", block)
        loop: list[str] = []
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment (no command here quotes a '#')
            if not line:
                continue
            if loop or line.startswith("for "):
                loop.append(line)
                if line == "done":
                    out.append(" ".join(" ".join(loop).split()))
                    loop = []
                continue
            out.append(" ".join(line.split()))
    return out


def as_run(command: str, subs: dict[str, str]) -> str:
    """``command`` with ``subs`` applied (each must occur) and the optional ``[...]`` groups left dropped."""
    for old, new in subs.items():
        assert old in command, f"substitution {old!r} not in README command {command!r}"
        command = command.replace(old, new)
    return " ".join(re.sub(r"\[[^\]]*\]", "", command).split())


def _help_of(command: str) -> str:
    words = shlex.split(command)
    return " ".join([*words[:2], "--help"])  # "dna-vlm SUBCOMMAND --help"


def test_every_readme_command_is_classified():
    found = readme_commands((ROOT / "README.md").read_text())
    assert found, "no bash blocks found in README.md"
    unknown = [c for c in found if c not in COMMANDS]
    assert not unknown, "README commands not in tests/test_readme_commands.py COMMANDS (classify them):\n" + (
        "\n".join(unknown)
    )
    stale = [c for c in COMMANDS if c not in found]
    assert not stale, "COMMANDS entries no longer in README.md:\n" + "\n".join(stale)
    for command, (kind, arg) in COMMANDS.items():
        assert kind in ("run", "help", "skip") and (kind == "run" or arg.strip()), command


def test_extraction_joins_continuations_and_loops():
    text = "```bash\na --x \\\n    --y  # note\n# only a comment\nfor i in 1 2; do\n  echo $i\ndone\n```\n"
    assert readme_commands(text) == ["a --x --y", "for i in 1 2; do echo $i done"]
    assert as_run("t [--a 1] --b X [--c]", {"X": "y", "[--c]": "--c"}) == "t --b y --c"


def _script() -> str:
    lines = ["set -eo pipefail"]
    for command, (kind, arg) in COMMANDS.items():
        if kind == "skip":
            continue
        run = as_run(command, arg) if kind == "run" else _help_of(command)
        lines += [f"echo '>>> {run.replace(chr(39), '')}' >&2", run]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    bin_dir = str(Path(sys.executable).parent)  # the venv: `dna-vlm` and `python` as the README names them
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "COLUMNS": "200"}  # fmt: skip
    env.pop("DNA_VLM_LMMS_COMPAT", None)
    script = tmp_path / "readme.sh"
    script.write_text(_script())
    try:
        proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=480, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        ran = re.findall(r"^>>> (.*)$", err, flags=re.M)
        pytest.fail(f"timed out in: {ran[-1] if ran else '?'}\n{err[-5000:]}")
    ran = re.findall(r"^>>> (.*)$", proc.stderr, flags=re.M)
    assert proc.returncode == 0, (
        f"failed at: {ran[-1] if ran else '?'}\n{proc.stderr[-5000:]}\n{proc.stdout[-2000:]}"
    )

    # what the commands wrote
    assert (tmp_path / "runs" / "dna" / "best" / "run_config.json").is_file()  # --best-metric accuracy
    assert list((tmp_path / "runs" / "dna" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "runs" / "softmax" / "run_config.json").is_file()
    assert list((tmp_path / "results" / "blind").rglob("*_results.json"))
    assert (tmp_path / "inspect" / "inspect.json").is_file()
    # the lmms-eval wrapper: progress while it runs (stderr), then lmms-eval's results table (stdout)
    wrapper = proc.stderr[proc.stderr.index(">>> python -m dna_vlm.eval.lmms.run") :]
    assert "dna_vlm: running lmms-eval on dna_vlm_mcq" in wrapper
    assert re.search(r"\d+%\|", wrapper), "no progress bar in the wrapper's stderr"
    assert re.search(r"^\|\s*Tasks\s*\|", proc.stdout, flags=re.M), proc.stdout[-2000:]
    assert re.search(r"^\|\s*dna_vlm_mcq\s*\|", proc.stdout, flags=re.M), proc.stdout[-2000:]
