"""Issue 25 item 6: unknown or misspelt ``model_args`` are refused, and the run wrapper says why plainly.

Before the fix ``max_frame=4`` and ``foo=bar`` were ignored with a warning that ``run_lmms`` hid (exit 0, the
provenance showed the defaults), and a plugin error appeared only at the bottom of lmms-eval's traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval")

from dna_vlm.eval.lmms.run import evaluation_errors
from train_helpers import lmms_env, make_dataset, tiny_model


def test_unknown_model_args_are_refused_before_loading(tmp_path):
    from dna_vlm.eval.lmms.plugin import DnaVLM, known_model_args

    known = known_model_args()
    assert {"max_frames", "pretrained", "dna", "bad_video", "video"} <= set(known) and "kwargs" not in known
    with pytest.raises(ValueError) as e:  # no model at that path: the check comes before any load
        DnaVLM(pretrained=str(tmp_path / "absent"), max_frame="4", foo="bar")
    msg = str(e.value)
    assert "unknown model_args foo, max_frame (did you mean max_frames?)" in msg
    assert "the known keys are " + ", ".join(known) in msg


def test_evaluation_errors_are_read_whole_from_lmms_eval_output():
    red = "\x1b[31m\x1b[1m"
    stderr = (
        "Traceback (most recent call last):\n  ...\nValueError: dna_vlm: first\n"
        f"{red}2026-01-01 | ERROR | lmms_eval.__main__:cli_evaluate:614 - {red}Error during evaluation: dna_vlm: "
        "2 unreadable video(s) (bad_video=fail):\n  task=t doc_id=1 path=/a.mp4: gone\n  task=t doc_id=2 "
        "path=/b.mp4: gone. Please set `--verbosity=DEBUG` to get more information.\x1b[0m\n"
        "... | ERROR | x - Error during evaluation: second. Please set `--verbosity=DEBUG` to get more.\n"
    )
    proc = subprocess.CompletedProcess([], 0, "", stderr)
    assert evaluation_errors(proc) == [
        "dna_vlm: 2 unreadable video(s) (bad_video=fail):\n  task=t doc_id=1 path=/a.mp4: gone\n"
        "  task=t doc_id=2 path=/b.mp4: gone",
        "second",
    ]


@pytest.mark.slow
def test_the_run_wrapper_exits_non_zero_and_prints_the_plugin_error_first(tmp_path):
    """Item 6 end to end: the stock CLI with a misspelt key; the wrapper's first error line is the plugin's."""
    tiny = tiny_model(tmp_path)
    data = make_dataset(tmp_path / "data", n=2, name="test.jsonl")
    cmd = [sys.executable, "-m", "dna_vlm.eval.lmms.run", "--model_args", f"pretrained={tiny},max_frame=4",
           "--tasks", "dna_vlm_mcq_mcppl", "--output_path", str(tmp_path / "out")]  # fmt: skip
    env = lmms_env(tmp_path, DNA_VLM_MCQ_JSONL=str(data))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    first = proc.stderr[proc.stderr.index("error: ") :].splitlines()[0]
    assert first.startswith(
        "error: lmms-eval stopped: dna_vlm: unknown model_args max_frame (did you mean max_frames?)"
    )
    assert not list((tmp_path / "out").rglob("*_results.json"))
