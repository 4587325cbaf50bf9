"""Choose the demo's DnA recipe on the VALIDATION split (never on test): a small sweep of the learning rate of
DnA's new parameters (the negative branch: Q-, V-, lambda; ``dna-vlm train --dna-lr``), everything else the
demo's DnA arm (same baseline, data, LoRA, steps, schedule, seed).

    python scripts/dna_recipe_sweep.py --out demo_out --dna-lr 1e-3 1e-2 3e-2 --json sweep.json

``--out`` is a demo output folder (its data, model and baseline stages are reused or made). Per recipe it
records the val QA accuracy (lmms-eval, the ``dna_vlm_synth`` task on ``val.jsonl``), how far the negative
branch moved (mean ||W_v-|| / ||W_v+||, mean |lambda|) and the final train loss, plus the softmax arm on val
as the reference; the pick is the highest val accuracy (ties: the smaller rate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", default="demo_out", help="the demo output folder whose data/model/baseline to use"
    )
    p.add_argument("--size", default="small", help="demo size (dna_vlm.eval.demo.pipeline.SIZES)")
    p.add_argument(
        "--dna-lr", type=float, nargs="+", required=True, help="learning rates of DnA's new parameters"
    )
    p.add_argument("--json", required=True, help="where to write the sweep's numbers (JSON)")
    args = p.parse_args(argv)

    from dna_vlm.eval.demo.pipeline import sweep_dna_recipe

    t0 = time.perf_counter()
    res = sweep_dna_recipe(Path(args.out), args.size, list(args.dna_lr))
    res["seconds"] = time.perf_counter() - t0
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    for name, r in res["recipes"].items():
        print(
            f"{name:<16} val acc {100 * r['val_acc']:.1f}%  v-/v+ {r['v_neg_rel_norm'] or 0:.3f}  "
            f"|lambda| {r['lambda_mean_abs'] or 0:.3f}  loss {r['final_loss']:.4f}"
        )
    print(f"pick: {res['pick']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
