"""Headroom experiment: target-outline level/width variants; from scratch (curriculum) or from the shipped asset; per-category/density, oracle, scramble."""
import argparse, json, time
from pathlib import Path
from collections import defaultdict
import torch
ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("--travel", type=float, default=0.5); ap.add_argument("--gap", type=float, nargs=2, default=[0.6, 0.15])
ap.add_argument("--dol", type=int, default=None); ap.add_argument("--tol", type=int, default=255); ap.add_argument("--layout", default="ring"); ap.add_argument("--above", type=int, default=None); ap.add_argument("--depth", default="top"); ap.add_argument("--cue", default="white outline"); ap.add_argument("--radius", type=float, default=0.16)
ap.add_argument("--phases", default="shape:600,motion:800,all:800"); ap.add_argument("--frames", type=int, default=4)
ap.add_argument("--ntrain", type=int, default=3000); ap.add_argument("--ntest", type=int, default=480)
ap.add_argument("--scr", type=float, nargs="*", default=[0.5, 0.75, 1.0]); ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--dseed", type=int, default=0); ap.add_argument("--pseed", type=int, default=None); ap.add_argument("--model", default=None)
a = ap.parse_args()
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
import dna_vlm.data.synth as synth
synth.TRAVEL = a.travel; synth.GAP = tuple(a.gap); synth.OBJECT_RADIUS = a.radius
synth.DISTRACTOR_OUTLINE = None if a.dol is None else (a.dol,) * 3
synth.OUTLINE = (a.tol,) * 3; synth.LAYOUT = a.layout; synth.OUTLINE_ABOVE_BG = a.above; synth.TARGET_DEPTH = a.depth; synth.CUE = a.cue
import dna_vlm.tiny.default as td
t0 = time.time()
synth.generate_dataset(out / "data", n_train=a.ntrain, n_val=8, n_test=a.ntest, seed=a.dseed, size=64)
data = {k: str(out / "data" / f"{k}.jsonl") for k in ("train", "test")}; data["oracle"] = str(out / "data/test_oracle.jsonl")
print("data", round(time.time() - t0), flush=True)
if a.model == "asset":
    from dna_vlm.tiny.pretrained import pretrained_baseline
    a.model = pretrained_baseline(out / "asset")["path"]
model = a.model or str(td.build_tiny_model(out / "model", seed=0))
from dna_vlm.train import TrainConfig, train
for i, ph in enumerate([p for p in a.phases.split(",") if p]):
    cat, steps = ph.split(":"); steps = int(steps)
    tr = data["train"]
    if cat != "all":
        rows = [json.dumps({**json.loads(l), "id": json.loads(l)["id"] + f"-{k}"}) + "\n" for k, t in enumerate(cat.split("+")) for l in open(data["train"]) if t == "all" or json.loads(l)["category"] == t]
        tr = str(out / f"data/train_{cat}.jsonl"); Path(tr).write_text("".join(rows))
    d = out / f"phase{i}"
    t1 = time.time()
    if not (d / "model").exists():
        train(TrainConfig(data=tr, model=model, attention="softmax", tune="full", max_steps=steps, lr=a.lr,
                          batch_size=32, num_frames=a.frames, seed=i if a.pseed is None else a.pseed, device="cpu", dtype="float32", save_every=1000,
                          warmup_steps=min(20, steps // 10), lr_schedule="cosine", output=str(d)))
    model = str(d / "model"); print("phase", ph, round(time.time() - t1), flush=True)
from dna_vlm.runs.loading import load_model, find_projector
from dna_vlm.data.dataset import load_dataset
from dna_vlm.train.evaluate import answer_accuracy
from dna_vlm.eval.degrade import degrade_tokens
m, proc = load_model(pretrained=model)
class Acc:
    process_index = 0; num_processes = 1; device = torch.device("cpu")
    def reduce(self, t, op): return t
cfg = type("C", (), dict(num_frames=a.frames, seek="exact", batch_size=16))()
state = {"p": 0.0, "i": 0}
def hook(mod, i, o):
    if state["p"] <= 0: return o
    state["i"] += 1
    return degrade_tokens(o, 1000 + state["i"], scramble=state["p"])
find_projector(m)[1].register_forward_hook(hook)
def per_group(path):
    ex = load_dataset(path); cells = defaultdict(list)
    for e in ex: cells[(e.extra["category"], e.extra.get("source_density", e.extra["density"]))].append(e)
    acc = {k: (answer_accuracy(m, proc, v, cfg, Acc(), torch.float32)[0], len(v)) for k, v in cells.items()}
    o = defaultdict(lambda: [0.0, 0])
    for (c, dd), (x, n) in acc.items():
        for g in ("all", "c:" + c, f"d:{dd}", f"{c}:{dd}"):
            o[g][0] += x * n; o[g][1] += n
    return {g: round(100 * s / n, 1) for g, (s, n) in sorted(o.items())}
res = {"test": per_group(data["test"]), "oracle": per_group(data["oracle"])}
print(json.dumps(res), flush=True)
for p in a.scr:
    state["p"] = p
    res[f"scr{p}"] = round(100 * answer_accuracy(m, proc, load_dataset(data["test"]), cfg, Acc(), torch.float32)[0], 1)
    print(p, res[f"scr{p}"], flush=True)
res["args"] = vars(a); res["wall"] = round(time.time() - t0)
(out / "res.json").write_text(json.dumps(res, indent=1)); print(json.dumps(res))
