#!/usr/bin/env python
"""Rebuild the embedded default's pretrained baseline (dna_vlm/tiny/assets/): the curriculum of
dna_vlm.tiny.pretrained.Recipe on its own synthetic set, each stage's clips drawn its way (~21 min on 2 CPU
cores). Resumable: rerun with the same --work to continue. Commit both written files (weights + record)
together, and delete an asset of another name the demo no longer loads."""

import argparse

from dna_vlm.tiny.pretrained import ASSET_DIR, Recipe, build_asset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default="pretrain_work", help="scratch folder: data and each phase's run")
    ap.add_argument("--asset-dir", default=str(ASSET_DIR), help="where the weights and record go")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    rec = build_asset(a.work, Recipe(), a.asset_dir, device=a.device)
    print(
        f"wrote {a.asset_dir}: sha256 {rec['sha256']}, phases {rec['phases']}, {rec['seconds_this_invocation']} s"
    )


if __name__ == "__main__":
    main()
