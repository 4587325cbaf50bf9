#!/usr/bin/env python
"""GPU check of every family's patch: tiny models (tests/families.py) in bf16 on CUDA.

For each model type and attention implementation ("sdpa", plus "flash_attention_2" when flash_attn is
importable) it checks, and prints as a table:

* preserve: the patched model's logits equal the unpatched ones (bf16 tolerance);
* fair:     the softmax control arm (``patch(model, attention="softmax")``: DnA's layers and SDPA call, no
            negative branch) and the DnA arm at init give BIT-IDENTICAL bf16 logits, with DnA's parameters in
            bf16 and in fp32 master weights (``dna_dtype=torch.float32``, what ``dna-vlm train`` uses);
* tuned:    with perturbed DnA parameters, bf16 logits match the same patched model in fp32 on the GPU;
* generate: two new tokens on the video input.

Exits 1 if any check fails; without CUDA it prints "no CUDA" and exits 0.
Usage: python scripts/gpu_check_families.py [--device cuda|cpu] [model_type ...]
(``--device cpu`` runs the same bf16 checks on the CPU, sdpa only: a dry run of this script.)
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # families.py; dna_vlm itself is imported as installed (or staged)

import torch  # noqa: E402

PRESERVE_TOL = 3e-2  # bf16 logits of tiny models are O(1): a few bf16 ulps
TUNED_TOL = 6e-2


class Skip(Exception):
    """The unpatched HF model cannot run this configuration (e.g. no flash support for it)."""


def _to(inputs: dict, device, dtype) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}


def _perturb(model, seed: int = 1) -> None:
    from dna_vlm.patching import dna_named_parameters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dna_named_parameters(model):
            noise = torch.randn(p.shape, generator=g)
            p.add_((noise * (0.2 if name.endswith("neg_scale") else 0.3)).to(p))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / max(1.0, float(b.float().abs().max())))


def check(model_type: str, impl: str, device: str = "cuda") -> dict:
    import families as F

    import dna_vlm

    dev = torch.device(device)
    row = {"model_type": model_type, "impl": impl}
    model, inputs = F.build(model_type, "sdpa")
    model.to(dev, torch.bfloat16)
    if impl != "sdpa":
        try:
            model.set_attn_implementation(impl)
        except Exception as e:  # the HF model itself cannot run this implementation here: not a DnA failure
            raise Skip(f"{type(e).__name__}: {str(e)[:150]}") from e
        if model.config._attn_implementation != impl:
            raise Skip(f"HF kept attn_implementation={model.config._attn_implementation!r}")
    x = _to(inputs, dev, torch.bfloat16)
    with torch.no_grad():
        ref = model(**x).logits
        control, dna32 = copy.deepcopy(model), copy.deepcopy(model)
        dna_vlm.patch(control, attention="softmax")
        dna_vlm.patch(dna32, dna_dtype=torch.float32)
        report = dna_vlm.patch(model)
        row["family"], row["modules"] = report.family, len(report.modules)
        at_init, ctrl = model(**x).logits, control(**x).logits
        row["fair"] = bool(torch.equal(at_init, ctrl) and torch.equal(dna32(**x).logits, ctrl))
        del control, dna32
        row["preserve"] = _rel(at_init, ref)
        _perturb(model)
        tuned16 = model(**x).logits
        gen = model.generate(**x, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=F.PAD)
        row["generate"] = gen.shape[1] - x["input_ids"].shape[1]

        model32, inputs32 = F.build(model_type, "sdpa")
        model32.to(dev)
        dna_vlm.patch(model32)
        _perturb(model32)
        tuned32 = model32(**_to(inputs32, dev, torch.float32)).logits
    row["tuned"] = _rel(tuned16, tuned32)
    row["changed"] = _rel(tuned16, ref)
    row["ok"] = (
        row["fair"]
        and row["preserve"] <= PRESERVE_TOL
        and row["tuned"] <= TUNED_TOL
        and row["changed"] > row["preserve"]
        and row["generate"] == 2
    )
    return row


def main(argv: list[str]) -> int:
    device = "cuda"
    if argv[:1] == ["--device"]:
        device, argv = argv[1], argv[2:]
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA: nothing to check")
        return 0
    import families as F

    types = argv or F.model_types()
    unknown = sorted(set(types) - set(F.model_types()))
    if unknown:
        print(f"unknown model types {unknown}; known: {F.model_types()}")
        return 2
    has_flash = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
    impls = ["sdpa"] + (["flash_attention_2"] if has_flash else [])
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"card: {card} | torch {torch.__version__} | impls: {', '.join(impls)}")
    if not has_flash:
        print("flash_attn not importable (or not on CUDA): flash_attention_2 not checked")
    header = (
        f"{'model_type':<18} {'impl':<18} {'family':<12} {'mods':>4} {'fair':>5} {'preserve':>9} {'tuned':>9} "
        f"{'changed':>9} {'gen':>4} {'time':>6}  result"
    )
    print(header)
    print("-" * len(header))
    failed = 0
    for mt in types:
        for impl in impls:
            t0 = time.time()
            try:
                r = check(mt, impl, device)
                status = "ok" if r["ok"] else "FAIL"
                print(
                    f"{mt:<18} {impl:<18} {r['family']:<12} {r['modules']:>4} {r['fair']!s:>5} "
                    f"{r['preserve']:>9.2e} "
                    f"{r['tuned']:>9.2e} {r['changed']:>9.2e} {r['generate']:>4} {time.time() - t0:>5.1f}s  {status}"
                )
            except Skip as e:
                status = "ok"
                print(f"{mt:<18} {impl:<18} skipped: {e}")
            except Exception as e:  # report and go on: one family's failure must not hide the others
                status = "FAIL"
                print(f"{mt:<18} {impl:<18} ERROR {type(e).__name__}: {str(e)[:200]}")
                traceback.print_exc(limit=-3)
            failed += status != "ok"
    print(
        f"\n{failed} failed of {len(types) * len(impls)} "
        f"(fair: control == DnA at init bit for bit; preserve <= {PRESERVE_TOL}, tuned bf16-vs-fp32 <= "
        f"{TUNED_TOL}; relative max-abs logit error)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
