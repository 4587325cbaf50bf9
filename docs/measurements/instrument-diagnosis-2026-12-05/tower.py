"""Can the tiny SigLIP tower (+projector) learn shape/motion with a direct head? mean+slope pooled tokens -> linear."""
import json, sys, time, numpy as np, torch
from transformers import LlavaOnevisionForConditionalGeneration, AutoProcessor
from dna_vlm.video.decode import sample_frames
torch.manual_seed(0)
mdir = sys.argv[1]; data = sys.argv[2]; field = sys.argv[3]; steps = int(sys.argv[4]); pool = sys.argv[5] if len(sys.argv) > 5 else "llava"
model = LlavaOnevisionForConditionalGeneration.from_pretrained(mdir); proc = AutoProcessor.from_pretrained(mdir)
rows = [json.loads(l) for l in open(f"{data}/train.jsonl")][:2000]
test = [json.loads(l) for l in open(f"{data}/test.jsonl")][:480]
def load(rs):
    fr = [sample_frames(f"{data}/{r['video']}", num_frames=8).frames for r in rs]
    pv = proc.video_processor(videos=fr, return_tensors="pt")["pixel_values_videos"]
    return pv
t0 = time.time(); Xtr = load(rows); Xte = load(test); print("load", time.time() - t0, flush=True)
vals = sorted({r[field] for r in rows}); ytr = torch.tensor([vals.index(r[field]) for r in rows]); yte = torch.tensor([vals.index(r[field]) for r in test])
tower = model.model.vision_tower; projector = model.model.multi_modal_projector
head = torch.nn.Linear(2 * 64 * (4 if pool == "llava" else 1), len(vals))
params = list(tower.parameters()) + list(projector.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-3)
def feats(pv):
    b, t = pv.shape[:2]
    h = tower(pv.flatten(0, 1), output_hidden_states=True).hidden_states[-1]  # (bt, 16, D)
    h = projector(h)  # (bt, 16, 64)
    h = h.view(b * t, 4, 4, -1).permute(0, 3, 1, 2)
    h = torch.nn.functional.interpolate(h, size=(2, 2), mode="bilinear")  # llava-ov pooling
    h = h.flatten(2).transpose(1, 2).reshape(b, t, -1)  # (b, t, 4*64): per-frame, tokens kept apart
    tt = torch.arange(t, dtype=torch.float32) - (t - 1) / 2
    slope = torch.einsum("t,btd->bd", tt, h) / (tt * tt).sum()
    return torch.cat([h.mean(1), slope], 1)
for step in range(steps):
    idx = torch.randint(0, len(rows), (32,))
    loss = torch.nn.functional.cross_entropy(head(feats(Xtr[idx])), ytr[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0 or step == steps - 1:
        with torch.no_grad():
            acc = (head(feats(Xte)).argmax(1) == yte).float().mean().item()
        print(step, round(loss.item(), 3), "test acc", round(100 * acc, 1), flush=True)
