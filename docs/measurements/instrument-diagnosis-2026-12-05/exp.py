"""Data/model design experiment: train a full baseline and report per-category/density acc, oracle, scramble."""
import argparse, json, sys, time, math
from pathlib import Path
from collections import defaultdict
import numpy as np, torch

ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("--radius", type=float, default=0.16); ap.add_argument("--travel", type=float, default=0.35)
ap.add_argument("--image", type=int, default=32); ap.add_argument("--patch", type=int, default=8)
ap.add_argument("--vlayers", type=int, default=4); ap.add_argument("--tlayers", type=int, default=2)
ap.add_argument("--steps", type=int, default=450); ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--ntrain", type=int, default=960); ap.add_argument("--ntest", type=int, default=480)
ap.add_argument("--frames", type=int, default=8); ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--vsize", type=int, default=64); ap.add_argument("--model", default=None)
ap.add_argument("--gap", type=float, nargs=2, default=[0.9, -0.5]); ap.add_argument("--thidden", type=int, default=64); ap.add_argument("--colorkeep", type=float, default=None); ap.add_argument("--d0", action="store_true"); ap.add_argument("--cat", default=None); ap.add_argument("--vlr", type=float, default=None); ap.add_argument("--scronly", action="store_true"); ap.add_argument("--scr", type=float, nargs="*", default=[0.25, 0.5, 0.75])
a = ap.parse_args()
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
import dna_vlm.data.synth as synth
synth.OBJECT_RADIUS = a.radius; synth.GAP = tuple(a.gap); synth.TRAVEL = a.travel
import dna_vlm.tiny.default as td
td.SIZES["small"] = dict(td.SIZES["small"], image=a.image, patch=a.patch, v_layers=a.vlayers, t_layers=a.tlayers, t_hidden=a.thidden)
t0 = time.time()
data = synth.generate_dataset(out / "data", n_train=a.ntrain, n_val=8, n_test=a.ntest, seed=0, size=a.vsize) if not (out/"data/meta.json").exists() else None
data = {k: str(out / "data" / f"{k}.jsonl") for k in ("train", "test")}; data["oracle"] = str(out / "data/test_oracle.jsonl")
print("data", time.time() - t0, flush=True)
if a.d0 or a.cat or a.colorkeep is not None:
    keep = []; nc = 0
    for l in open(data["train"]):
        r = json.loads(l)
        if r["category"] == "color" and a.colorkeep is not None:
            nc += 1
            if nc % round(1 / a.colorkeep) != 0: continue
        if (not a.d0 or r["density"] == 0) and (a.cat is None or r["category"] == a.cat):
            keep.append(l)
    (out / "train_f.jsonl").write_text("".join(keep).replace('"video": "videos/', '"video": "data/videos/'))
    data["train"] = str(out / "train_f.jsonl"); print("filtered train", len(keep))
model_dir = a.model or str(td.build_tiny_model(out / "model", seed=0))
from dna_vlm.train import TrainConfig, train
t1 = time.time()
if not (out / "base/model").exists():
    train(TrainConfig(data=data["train"], model=model_dir, attention="softmax", tune="full", max_steps=a.steps, lr=a.lr,
                      batch_size=a.bs, num_frames=a.frames, seed=0, device="cpu", dtype="float32", save_every=1000,
                      warmup_steps=min(20, a.steps // 10), lr_schedule="cosine", output=str(out / "base")))
print("train", time.time() - t1, flush=True)
from dna_vlm.runs.loading import load_model
from dna_vlm.data.dataset import load_dataset
from dna_vlm.train.evaluate import answer_accuracy
from dna_vlm.eval.degrade import degrade_tokens
model, proc = load_model(pretrained=str(out / "base/model"))
class Acc:
    process_index = 0; num_processes = 1; device = torch.device("cpu")
    def reduce(self, t, op): return t
cfg = type("C", (), dict(num_frames=a.frames, seek="exact", batch_size=16))()
state = {"p": 0.0, "i": 0}
def hook(m, i, o):
    if state["p"] <= 0: return o
    # o: (frames_total, N, D) for a batch; degrade per whole tensor w/ changing seed (approx per-video)
    state["i"] += 1
    return degrade_tokens(o, 1000 + state["i"], scramble=state["p"])
from dna_vlm.runs.loading import find_projector; find_projector(model)[1].register_forward_hook(hook)
def per_group(path):
    ex = load_dataset(path)
    cells = defaultdict(list)
    for e in ex:
        cells[(e.extra["category"], e.extra.get("source_density", e.extra["density"]))].append(e)
    acc = {k: (answer_accuracy(model, proc, v, cfg, Acc(), torch.float32)[0], len(v)) for k, v in cells.items()}
    out = defaultdict(lambda: [0.0, 0])
    for (c, d), (x, n) in acc.items():
        for g in ("all", "c:" + c, f"d:{d}"):
            out[g][0] += x * n; out[g][1] += n
    return {g: round(100 * s / n, 1) for g, (s, n) in sorted(out.items())}
t2 = time.time()
res = {} if a.scronly else {"test": per_group(data["test"]), "oracle": per_group(data["oracle"])}
print(json.dumps(res), flush=True)
for p in a.scr:
    state["p"] = p
    ex = load_dataset(data["test"])
    res[f"scr{p}"] = round(100 * answer_accuracy(model, proc, ex, cfg, Acc(), torch.float32)[0], 1)
    print(p, res[f"scr{p}"], flush=True)
print("eval", time.time() - t2)
res["args"] = vars(a)
(out / "res.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res))
