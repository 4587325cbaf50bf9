"""dna-vlm probe: pooling, the linear probe's honesty (planted signal, shuffled labels), paired arms, end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
from dna_vlm.eval.probe.features import pool_tokens
from dna_vlm.eval.probe.fit import fit_many, fit_probe
from dna_vlm.eval.probe.run import compare_arms, probe_arms, run_probe
from dna_vlm.eval.stats import wilson_ci


def test_pool_tokens_mean_and_temporal_difference():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 1, 5, 3))
    t = np.arange(4.0)[None, :, None, None]
    tokens = base + t * np.array([1.0, -2.0, 0.0])  # (B=2, T=4, N=5, D=3), linear drift per frame
    mean = pool_tokens(tokens, "mean")
    assert mean.shape == (2, 3) and np.allclose(mean, tokens.mean(axis=(1, 2)))
    both = pool_tokens(tokens, "mean+diff")
    assert both.shape == (2, 6) and np.allclose(both[:, :3], mean)
    assert np.allclose(both[:, 3:], [[1.0, -2.0, 0.0]] * 2)  # the slope per frame
    assert np.allclose(pool_tokens(tokens[:, ::-1], "mean+diff")[:, 3:], [[-1.0, 2.0, 0.0]] * 2)
    with pytest.raises(ValueError, match="pooling"):
        pool_tokens(tokens, "max")


def _planted(n, d, seed, strength):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 4)  # balanced: chance is 1/4
    x = rng.normal(size=(n, d))
    x[:, :4] += strength * np.eye(4)[y]  # the label planted along 4 directions
    return x, [f"c{v}" for v in y]


def test_probe_recovers_planted_signal_and_not_shuffled_labels():
    x_tr, y_tr = _planted(400, 32, 0, 3.0)
    x_te, y_te = _planted(300, 32, 1, 3.0)
    probe = fit_probe(x_tr, y_tr, seed=0)
    acc = np.mean(probe.predict(x_te) == np.array(y_te))
    assert acc > 0.85 and probe.classes == ["c0", "c1", "c2", "c3"] and probe.C > 0
    # the same probe with the labels shuffled among the rows (train and test): its CI holds chance (0.25)
    rng = np.random.default_rng(2)
    shuffled = fit_probe(x_tr, [y_tr[i] for i in rng.permutation(len(y_tr))], seed=0)
    y_te_perm = np.array(y_te)[rng.permutation(len(y_te))]
    k = int(np.sum(shuffled.predict(x_te) == y_te_perm))
    lo, hi = wilson_ci(k, len(y_te))
    assert lo <= 0.25 <= hi
    # no signal at all: at chance too
    rng = np.random.default_rng(3)
    noise = fit_probe(rng.normal(size=(400, 32)), y_tr, seed=0)
    lo, hi = wilson_ci(int(np.sum(noise.predict(rng.normal(size=(300, 32))) == np.array(y_te))), len(y_te))
    assert lo <= 0.25 <= hi


def test_probe_cv_scales_inside_each_fold_and_extends_an_edge_grid():
    """The CV accuracy is that of the whole pipeline (scaler refitted in each training fold) at the chosen C;
    a C at the grid's edge extends the grid, and an edge left is recorded."""
    from dna_vlm.eval.probe.fit import C_GRID, _pipeline
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x, y = _planted(200, 16, 4, 1.5)
    x[:, 5] *= 1e3  # a feature on another scale: the scaler matters
    p = fit_probe(x, y, seed=0)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    ref = cross_val_score(_pipeline().set_params(lr__C=p.C), x, np.array(y, dtype=object), cv=cv).mean()
    assert p.cv_acc == pytest.approx(ref) and p.C_at_edge is None and p.C_grid[0] < p.C < p.C_grid[-1]
    # a label that is a linear function of one feature with no noise: CV accuracy keeps rising with C
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(120, 3))
    ys = ["a" if v > 0 else "b" for v in xs[:, 0] + 1e-3 * xs[:, 1]]
    q = fit_probe(xs, ys, seed=0)
    assert len(q.C_grid) >= len(C_GRID) and (q.C_at_edge is None) == (q.C_grid[0] < q.C < q.C_grid[-1])


def test_fit_many_in_processes_equals_serial_fits():
    """Parallel fitting (joblib worker processes) changes where the fits run, not what they find."""
    jobs = {k: _planted(120, 8, k, 1.0) for k in range(3)}
    serial, parallel = fit_many(jobs, seed=0, n_jobs=1), fit_many(jobs, seed=0, n_jobs=2)
    x_te, _ = _planted(50, 8, 9, 1.0)
    for k in jobs:
        assert serial[k].C == parallel[k].C and serial[k].cv_acc == parallel[k].cv_acc
        assert list(serial[k].predict(x_te)) == list(parallel[k].predict(x_te))


def _rows(n, split):
    return [{"id": f"{split}-{i}", "density": i % 2, "lab": None} for i in range(n)]


def test_probe_arms_pairs_arms_on_test_rows():
    x_tr, y_tr = _planted(300, 16, 0, 3.0)
    x_te, y_te = _planted(200, 16, 1, 3.0)
    rows = {"train": _rows(300, "tr"), "test": _rows(200, "te")}
    for r, y in zip(rows["train"], y_tr, strict=True):
        r["lab"] = y
    for r, y in zip(rows["test"], y_te, strict=True):
        r["lab"] = y
    noise = np.random.default_rng(5)
    feats = {
        "weak": {"train": noise.normal(size=x_tr.shape), "test": noise.normal(size=x_te.shape)},
        "strong": {"train": x_tr, "test": x_te},
    }
    arms = probe_arms(feats, rows, ["lab"], None, ("density",), seed=0)
    weak, strong = arms["weak"]["labels"]["lab"], arms["strong"]["labels"]["lab"]
    assert strong["acc"] > 0.85 and weak["acc_ci95"][0] <= 0.25 <= weak["acc_ci95"][1]
    assert [p["id"] for p in strong["predictions"]] == [r["id"] for r in rows["test"]]
    assert set(strong["by_group"]["density"]) == {"0", "1"}
    assert strong["n_train"] == 300 and strong["n_test"] == 200
    sc = strong["shuffled_labels_control"]
    assert sc["acc_ci95"][0] <= sc["expected_if_independent"] <= sc["acc_ci95"][1]
    assert sc["expected_if_independent"] <= sc["chance"] + 1e-12
    (cmp,) = compare_arms(arms)
    assert cmp["baseline"] == "weak" and cmp["candidate"] == "strong" and cmp["view"] == "label:lab"
    assert cmp["delta"] == pytest.approx(strong["acc"] - weak["acc"])
    assert cmp["delta_ci95"][0] > 0 and cmp["mcnemar_p"] < 1e-6


@pytest.mark.slow
def test_probe_end_to_end_on_the_synthetic_set(tmp_path):
    """Real features of the embedded tiny model: colour is far above chance, shuffled labels are not, the
    oracle rows are scored, and the asked view follows each row's category."""
    from dna_vlm.data.synth import generate_dataset
    from dna_vlm.tiny.default import build_tiny_model

    data = generate_dataset(tmp_path / "d", n_train=120, n_val=0, n_test=48)
    model = build_tiny_model(tmp_path / "m")
    res = run_probe(
        tmp_path / "p", data["train"], data["test"], ["target_color", "target_shape", "target_motion"], model=str(model),
        test_oracle=data["test_oracle"], asked="target_{category}", n_boot=500, batch_size=32,
    )  # fmt: skip
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["arms"] == res["arms"]
    color = res["arms"]["stock"]["labels"]["target_color"]
    assert color["acc_ci95"][0] > color["chance_ci95"][1]  # far above chance
    sc = color["shuffled_labels_control"]
    assert sc["acc_ci95"][0] <= sc["expected_if_independent"] <= sc["acc_ci95"][1]
    assert sc["expected_if_independent"] <= sc["chance"] + 1e-12
    assert color["oracle"]["n_test"] == 48 and len(color["oracle"]["predictions"]) == 48
    asked = res["arms"]["stock"]["asked"]
    rows = [json.loads(line) for line in Path(data["test"]).read_text().splitlines()]
    assert len(asked["predictions"]) == len(rows)
    for p, r in zip(asked["predictions"], rows, strict=True):
        assert p["id"] == r["id"] and p["label"] == r[f"target_{r['category']}"]
    assert res["settings"]["num_frames"] == 8 and len(asked["oracle"]["predictions"]) == len(rows)


def test_cli_refuses_a_missing_label_before_loading_models(tmp_path, capsys):
    from dna_vlm.cli import main
    from dna_vlm.data.synth import generate_dataset

    data = generate_dataset(tmp_path / "d", n_train=8, n_val=0, n_test=4)
    args = ["probe", "--model", str(tmp_path / "no-model"), "--train", data["train"], "--test", data["test"]]
    assert main([*args, "--label", "target_size", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "target_size" in err and "target_color" in err
    assert (
        main([*args, "--label", "target_color", "--asked", "target_{category}", "--out", str(tmp_path / "p")])
        == 2
    )
    assert "target_shape" in capsys.readouterr().err
