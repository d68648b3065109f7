"""Task arithmetic, TIES, DARE and SLERP against their formulas on constructed tensors,
and their commands (fixed hyperparameters, or chosen on held-out from a grid)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import modelsoup as ms
from modelsoup.cli import main
from modelsoup.merges.dare import dare
from modelsoup.merges.registry import MERGES, applies_to_sweep
from modelsoup.merges.slerp import slerp
from modelsoup.merges.task_arithmetic import task_arithmetic
from modelsoup.merges.ties import ties

TESTS = Path(__file__).parent
S = ms.StateDictIngredient


def test_task_arithmetic_is_its_formula():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(50, generator=g, dtype=torch.float64)}
    fts = [{"w": base["w"] + torch.randn(50, generator=g, dtype=torch.float64)} for _ in range(3)]
    w, lam = [0.5, 1.0, 2.0], 0.7
    got = ms.materialize(task_arithmetic([S(f) for f in fts], S(base), weights=w, lam=lam))
    want = base["w"] + lam * sum(wi * (f["w"] - base["w"]) for wi, f in zip(w, fts))
    torch.testing.assert_close(got["w"], want, rtol=0, atol=1e-6)  # summed in float32


def test_ties_by_hand():
    """Hand-made signs and magnitudes; density 0.5 keeps the top 2 of 4 entries."""
    base = {"w": torch.zeros(4)}
    t1 = {"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}  # keeps 3 (0) and 2 (3)
    t2 = {"w": torch.tensor([-2.0, -4.0, 1.0, 0.1])}  # keeps -2 (0) and -4 (1)
    got = ms.materialize(ties([S(t1), S(t2)], S(base), density=0.5))["w"]
    # entry 0: 3 + -2 > 0 elects +, only 3 agrees; entry 1: -4 alone; entry 2: nothing kept;
    # entry 3: 2 alone. Normalized by the weights that agree (1 each).
    assert torch.equal(got, torch.tensor([3.0, -4.0, 0.0, 2.0]))
    weighted = ms.materialize(ties([S(t1), S(t2)], S(base), density=0.5, weights=[1, 3]))["w"]
    # weights 1 and 3: entry 0 is 3 - 6 < 0, so -2 wins, weighted 3 * -2 / 3 = -2
    assert torch.equal(weighted, torch.tensor([-2.0, -4.0, 0.0, 2.0]))
    lam = ms.materialize(ties([S(t1), S(t2)], S({"w": torch.ones(4)}), density=1.0, lam=0.5))
    # density 1 keeps all; relative to base 1: deltas [2,-2,-.5,1] and [-3,-5,0,-.9]; entry 0
    # elects - (2 - 3 < 0) and keeps -3; entry 2's zero delta has no sign and is left out
    want = 1 + 0.5 * torch.tensor([-3.0, (-2 - 5) / 2, -0.5, 1.0])
    torch.testing.assert_close(lam["w"], want)


def test_ties_thresholds_shared_over_a_lambda_grid_change_nothing():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(50, 40, generator=g), "b": torch.randn(7, generator=g)}
    fts = [S({k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}) for _ in range(3)]
    shared: dict = {}
    for density in (0.2, 0.5):
        for lam in (0.3, 1.0):
            got = ms.materialize(ties(fts, S(base), density=density, lam=lam, thresholds=shared))
            fresh = ms.materialize(ties(fts, S(base), density=density, lam=lam))
            assert all(torch.equal(got[k], fresh[k]) for k in base)
    # one entry per tensor and density, each with one threshold per task vector
    assert sorted(shared) == [("b", 0.2), ("b", 0.5), ("w", 0.2), ("w", 0.5)]
    assert all(len(v) == 3 for v in shared.values())


def test_dare_is_task_arithmetic_in_expectation_and_seeded():
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(200, generator=g)}
    fts = [S({"w": base["w"] + torch.randn(200, generator=g)}) for _ in range(2)]
    ref = ms.materialize(task_arithmetic(fts, S(base)))["w"]
    runs = torch.stack(
        [ms.materialize(dare(fts, S(base), density=0.5, seed=s))["w"] for s in range(400)]
    )
    assert (runs.mean(0) - ref).abs().max() < 0.35  # 400 draws: a few standard errors
    assert (runs.mean(0) - ref).abs().mean() < 0.06
    a = ms.materialize(dare(fts, S(base), density=0.5, seed=7))["w"]
    assert torch.equal(a, ms.materialize(dare(fts, S(base), density=0.5, seed=7))["w"])
    assert not torch.equal(a, ms.materialize(dare(fts, S(base), density=0.5, seed=8))["w"])
    kept = (a != base["w"]).float().mean()
    assert 0.6 < kept < 0.9  # each of 2 task vectors keeps about half: 1 - 0.25 differ


def test_slerp_keeps_norm_and_angle():
    """Each tensor is one vector on its sphere (as mergekit 0.1.5 merges)."""
    from modelsoup.merges.slerp import slerp_tensor

    g = torch.Generator().manual_seed(2)
    u = torch.randn(64, generator=g, dtype=torch.float64)
    v = torch.randn(64, generator=g, dtype=torch.float64)
    u = u / u.norm()
    v = v - (v @ u) * u
    v = v / v.norm()
    b = math.cos(1.2) * u + math.sin(1.2) * v  # 1.2 rad from u, unit norm
    for t in (0.0, 0.25, 0.5, 1.0):
        out = ms.materialize(slerp(S({"w": u.view(8, 8)}), S({"w": b.view(8, 8)}), t))["w"]
        out = out.reshape(-1)
        assert float(out.norm()) == pytest.approx(1.0, abs=1e-7)  # mergekit's eps
        assert math.acos(min(1.0, float(out @ u))) == pytest.approx(1.2 * t, abs=1e-6)
    near = u + 1e-4 * v  # nearly parallel: linear interpolation
    out = ms.materialize(slerp(S({"w": u}), S({"w": near}), 0.5))["w"]
    torch.testing.assert_close(out, torch.lerp(u, near, 0.5))
    # the kernel takes rows: each row on its own sphere
    rows = slerp_tensor(0.5, torch.stack([u, 3 * u]), torch.stack([b, 3 * v]))
    assert float(rows[1].norm()) == pytest.approx(3.0, abs=1e-6)
    assert math.acos(float(rows[1] @ u) / 3) == pytest.approx(math.pi / 4, abs=1e-6)


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


TUNED = [m for m in MERGES.values() if applies_to_sweep(m) and m.tuned]


@pytest.mark.parametrize("merge", TUNED, ids=[m.name for m in TUNED])
def test_the_commands_choose_on_held_out_and_match_the_library(merge, sweep_with_base, tmp_path):
    """Every registered merge of fine-tunes on a base with a grid: its command scores
    the grid on held-out and writes the library's merge at the best point."""
    base, paths = sweep_with_base
    out = tmp_path / "m.safetensors"
    ev = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu", "-q"]
    argv = [merge.name, *paths, "--base", base, "-o", str(out), *ev, "--lambdas", "0.5", "1.0"]
    tuned = {p.name for p in merge.tuned}
    if "density" in tuned:
        argv += (
            ["--densities", "0.3", "0.9"]
            if merge.name[:5] != "della"
            else ["--densities", "0.3", "0.7"]
        )
    assert main(argv) == 0
    record = json.loads(
        (tmp_path / "m.safetensors.run" / f"{merge.name.replace('-', '_')}.json").read_text()
    )
    rows = record["grid"]
    assert len(rows) == 2 ** len(tuned)
    best = max(rows, key=lambda r: r["heldout"])
    assert {k: best[k] for k in record["chosen"]} == record["chosen"]
    assert set(rows[0]) >= {"lam", "heldout", "val", "test", "shift"}
    # the written soup is the library's merge at the chosen point
    ings, b = [ms.open_ingredient(p) for p in paths], ms.open_ingredient(base)
    want = ms.materialize(merge.function(ings, b, **record["chosen"]))
    got = load_file(out)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_fixed_hyperparameters_and_slerp_commands(sweep_with_base, tmp_path, capsys):
    base, paths = sweep_with_base
    out = tmp_path / "t.safetensors"
    assert main(["ties", *paths, "--base", base, "-o", str(out), "--lambda", "0.8",
                 "--density", "0.4", "-q"]) == 0  # fmt: skip
    assert "lambda 0.8, density 0.4" in capsys.readouterr().out
    ings, b = [ms.open_ingredient(p) for p in paths], ms.open_ingredient(base)
    want = ms.materialize(ties(ings, b, lam=0.8, density=0.4))
    assert all(torch.equal(load_file(out)[k], want[k]) for k in want)
    s = tmp_path / "s.safetensors"
    assert main(["slerp", paths[0], paths[1], "--t", "0.3", "-o", str(s), "-q"]) == 0
    want = ms.materialize(slerp(ings[0], ings[1], 0.3))
    assert all(torch.equal(load_file(s)[k], want[k]) for k in want)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # refused when parsed: a usage error
        main(["slerp", paths[0], paths[1], "--t", "1.5", "-o", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2 and "--t must be at most 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["ties", *paths, "--base", base, "-o", str(tmp_path / "y.safetensors"),
              "--density", "0"])  # fmt: skip
    assert e.value.code == 2 and "--density must be more than 0" in capsys.readouterr().err


def test_integer_tensors_are_never_merged(tmp_path):
    base = {"w": torch.zeros(3), "steps": torch.tensor(1)}
    a = {"w": torch.ones(3), "steps": torch.tensor(1)}
    c = {"w": -torch.ones(3), "steps": torch.tensor(2)}
    with pytest.raises(ms.MismatchError, match="steps"):
        ms.materialize(ties([S(a), S(c)], S(base)))
    got = ms.materialize(ties([S(a), S(c)], S(base), integers="first"))
    assert int(got["steps"]) == 1
    save_file(a, tmp_path / "a.safetensors")


def test_compare_has_every_row_and_its_greedy_row_is_greedys(sweep_with_base, tmp_path, capsys):
    base, paths = sweep_with_base
    ev = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu", "-q"]
    out = tmp_path / "cmp"
    argv = ["compare", *paths, "--base", base, "-o", str(out), *ev, "--orders", "2"]
    assert main([*argv, "--lambdas", "0.5", "1.0", "--densities", "0.5", "0.9"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["methods"]]
    della = next(r for r in results["methods"] if r["method"].startswith("DELLA ("))
    assert della["detail"]["chosen"]["density"] == 0.5  # 0.9 +/- 0.15 is not a density
    for name in ("best individual", "ensemble", "greedy ensemble", "uniform soup", "greedy soup",
                 "greedy soup, random order (2 orders)", "learned soup", "learned soup by layer",
                 "Model Stock"):  # fmt: skip
        assert name in methods, (name, methods)
    # every registered merge of fine-tunes on a base has its row (tuned ones with their choice)
    labels = [m.label + (" (" if m.tuned else "") for m in MERGES.values() if applies_to_sweep(m)]
    for prefix in ("WiSE-FT of greedy soup", *labels):
        assert any(m.startswith(prefix) for m in methods), (prefix, methods)
    assert "greedy soup" in printed and (out / "report.html").is_file()
    assert (out / "results.md").read_text().count("\n") == len(methods) + 2
    row = next(r for r in results["methods"] if r["method"] == "greedy soup")
    assert set(row["scores"]) == {"val", "test", "shift"} and row["seconds"] >= 0
    ensemble = next(r for r in results["methods"] if r["method"] == "ensemble")
    assert ensemble["models"] == len(paths)
    # its greedy row is what `modelsoup greedy` gives on the same sweep
    assert main(["greedy", *paths, "-o", str(tmp_path / "g.safetensors"), *ev]) == 0
    greedy = json.loads((tmp_path / "g.safetensors.run" / "result.json").read_text())
    assert row["detail"]["kept"] == greedy["kept"]
    assert row["scores"] == pytest.approx(greedy["splits"])
    # a rerun reuses the logits and journals: the ingredients' logits are not recomputed
    logits = sorted(p.name for p in (out / "logits").iterdir())
    assert main([*argv, "--lambdas", "0.5", "1.0", "--densities", "0.5", "0.9"]) == 0
    assert sorted(p.name for p in (out / "logits").iterdir()) == logits
    again = json.loads((out / "results.json").read_text())
    assert [r["scores"] for r in again["methods"]] == [r["scores"] for r in results["methods"]]


def test_della_keep_probabilities_follow_the_magnitude_rank():
    from modelsoup.merges.della import magprune_probabilities

    tau = torch.tensor([0.1, -3.0, 2.0, 0.5])  # ranks by magnitude: 1, 4, 3, 2
    p = magprune_probabilities(tau, 0.5, 0.1)
    torch.testing.assert_close(p, torch.tensor([[0.4, 0.6, 0.5 + 0.1 / 3, 0.5 - 0.1 / 3]]))
    rows = magprune_probabilities(torch.tensor([[1.0, 2.0], [5.0, -4.0]]), 0.5, 0.2)
    torch.testing.assert_close(rows, torch.tensor([[0.3, 0.7], [0.7, 0.3]]))  # per row
    one = magprune_probabilities(torch.tensor([[3.0], [1.0]]), 0.5, 0.2)  # rows of one
    torch.testing.assert_close(one, torch.full((2, 1), 0.3))


def test_breadcrumbs_drops_outliers_and_the_smallest():
    from modelsoup.merges.breadcrumbs import outlier_mask

    tau = torch.randperm(100).float() - 49.5  # distinct magnitudes
    mask = outlier_mask(tau, density=0.8, gamma=0.05)
    order = tau.abs().argsort()
    assert int(mask.sum()) == 80
    assert (mask[order[-5:]] == 0).all() and (mask[order[:15]] == 0).all()
    assert (mask[order[15:95]] == 1).all()
    # too many outliers for the density: fewer are dropped, the density is kept
    assert int(outlier_mask(tau, density=0.99, gamma=0.05).sum()) == 99


def test_della_and_breadcrumbs_at_density_1_are_task_arithmetic():
    from modelsoup.merges.breadcrumbs import breadcrumbs
    from modelsoup.merges.della import della_linear

    g = torch.Generator().manual_seed(3)
    sd = {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g)}
    base = S(sd)
    fts = [S({n: t + torch.randn(t.shape, generator=g) for n, t in sd.items()})
           for _ in range(3)]  # fmt: skip
    want = ms.materialize(task_arithmetic(fts, base, weights=[1, 0.5, 2], lam=0.7))
    for merge in (
        della_linear(fts, base, density=1.0, weights=[1, 0.5, 2], lam=0.7),
        breadcrumbs(fts, base, density=1.0, gamma=0.0, weights=[1, 0.5, 2], lam=0.7),
    ):
        got = ms.materialize(merge)
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6)


def test_della_is_seeded():
    from modelsoup.merges.della import della

    g = torch.Generator().manual_seed(4)
    w0 = torch.randn(40, 30, generator=g)
    base = S({"w": w0})
    fts = [S({"w": w0 + torch.randn(40, 30, generator=g)}) for _ in range(2)]
    a = ms.materialize(della(fts, base, seed=1))["w"]
    assert torch.equal(a, ms.materialize(della(fts, base, seed=1))["w"])
    assert not torch.equal(a, ms.materialize(della(fts, base, seed=2))["w"])
    with pytest.raises(ms.SoupError, match="epsilon"):
        della(fts, base, density=0.9, epsilon=0.15)


def test_nearswap_swaps_near_entries_and_moves_far_ones_by_t_over_the_distance():
    from modelsoup.merges.nearswap import nearswap

    a = {"w": torch.tensor([0.0, 0.0, 0.0, 1.0])}
    b = {"w": torch.tensor([0.05, 0.5, -2.0, 1.0])}
    got = ms.materialize(nearswap(S(a), S(b), 0.1))["w"]
    # |a-b| = 0.05 < t: b; 0.5: w = 0.2; 2.0: w = 0.05; equal entries stay
    torch.testing.assert_close(got, torch.tensor([0.05, 0.1, -0.1, 1.0]))
    assert torch.equal(ms.materialize(nearswap(S(a), S(a), 0.1))["w"], a["w"])
    with pytest.raises(ms.SoupError, match="positive"):
        nearswap(S(a), S(b), 0.0)


def test_passthrough_is_its_model_or_scaled():
    from modelsoup.merges.passthrough import passthrough

    a = {"w": torch.tensor([1.0, -2.0]), "n": torch.tensor([3])}
    assert passthrough([S(a)]) is not None
    assert torch.equal(ms.materialize(passthrough([S(a)]))["w"], a["w"])
    got = ms.materialize(passthrough([S(a)], scale=0.5))
    assert torch.equal(got["w"], a["w"] * 0.5) and torch.equal(got["n"], a["n"])
    with pytest.raises(ms.SoupError, match="exactly one"):
        passthrough([S(a), S(a)])


def test_mergekits_model_stock_extrapolates_where_ours_clamps():
    """A tensor whose two task vectors point apart (cosine -0.5): mergekit's t =
    2 cos / (1 + cos) = -2 moves away from the mean; the command's keeps the base."""
    from modelsoup.merges.model_stock import model_stock, model_stock_mergekit

    base = {"w": torch.zeros(2), "b": torch.zeros(2)}
    u = torch.tensor([1.0, 0.0])
    v = torch.tensor([-0.5, math.sqrt(3) / 2])  # 120 degrees from u
    fts = [{"w": u, "b": u * 2}, {"w": v, "b": u}]  # b: parallel, cosine 1 (t = 1)
    ours, ratios = model_stock([S(f) for f in fts], S(base))
    theirs = ms.materialize(model_stock_mergekit([S(f) for f in fts], S(base)))
    assert torch.equal(ms.materialize(ours)["w"], base["w"]) and "w" in ratios.clamped
    torch.testing.assert_close(theirs["w"], -2 * (u + v) / 2)
    torch.testing.assert_close(theirs["b"], ms.materialize(ours)["b"])


def test_the_karcher_mean_of_two_directions_is_their_midpoint_at_their_mean_norm():
    from modelsoup.merges.karcher import karcher

    a, b = {"w": torch.tensor([2.0, 0.0, 0.0])}, {"w": torch.tensor([0.0, 4.0, 0.0])}
    got = ms.materialize(karcher([S(a), S(b)], max_iter=50, tol=1e-7))["w"]
    torch.testing.assert_close(got, 3 * torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    same = ms.materialize(karcher([S(a), S(a), S(a)]))["w"]
    assert torch.equal(same, a["w"])  # a tensor equal in every model is kept (float32)


def test_sce_by_hand():
    """Two task vectors: entry 0 agrees (+), entry 1 disagrees (sum > 0 elects +)."""
    from modelsoup.merges.sce import sce

    base = {"w": torch.zeros(2)}
    t1, t2 = {"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([3.0, -1.0])}
    got = ms.materialize(sce([S(t1), S(t2)], S(base)))["w"]
    e1, e2 = (1 + 9) / 2, (9 + 1) / 2  # mean squares: equal weights 0.5 each
    w1, w2 = e1 / (e1 + e2), e2 / (e1 + e2)
    want = torch.tensor([(w1 * 1 + w2 * 3) / (w1 + w2), 3.0])  # entry 1: only t1 agrees
    torch.testing.assert_close(got, want)
    # select_topk keeps the entries whose values spread most: entry 0 (var 1) < entry 1 (4)
    top = ms.materialize(sce([S(t1), S(t2)], S(base), select_topk=0.5))["w"]
    assert top[0] == 0
    torch.testing.assert_close(top[1], torch.tensor(3.0))


def test_nuslerp_is_slerp_at_the_weights_ratio_on_models_or_task_vectors():
    from modelsoup.merges.nuslerp import nuslerp

    a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}
    got = ms.materialize(nuslerp([S(a), S(b)], weights=[1.0, 1.0]))["w"]
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0]) / math.sqrt(2))  # 45 degrees
    got = ms.materialize(nuslerp([S(a), S(b)], weights=[1.0, 2.0]))["w"]  # t = 2/3: 60 deg
    torch.testing.assert_close(got, torch.tensor([0.5, math.sqrt(3) / 2]))
    base = {"w": torch.tensor([5.0, 5.0])}
    shifted = [S({"w": t["w"] + base["w"]}) for t in (a, b)]
    got = ms.materialize(nuslerp(shifted, weights=[1.0, 1.0], base=S(base)))["w"]
    torch.testing.assert_close(got, base["w"] + torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_multislerp_of_two_is_their_slerp_midpoint_and_of_one_is_the_model():
    from modelsoup.merges.multislerp import multislerp

    a, b = {"w": torch.tensor([2.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}
    got = ms.materialize(multislerp([S(a), S(b)]))["w"]
    torch.testing.assert_close(got, 2 * torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.equal(ms.materialize(multislerp([S(a)]))["w"], a["w"])
    with pytest.raises(ms.SoupError, match="cancel"):
        c = {"w": torch.tensor([-2.0, 0.0])}
        ms.materialize(multislerp([S(a), S(c), S({"w": torch.tensor([0.0, 0.0])})],
                                  weights=[1, 1, 1]))  # fmt: skip


def test_ram_keeps_a_lone_change_and_averages_shared_ones_by_hand():
    """Entry 0: only model 1 changed it; 1: both; 2: neither (under epsilon)."""
    from modelsoup.merges.ram import ram, ram_plus

    base = {"w": torch.tensor([1.0, 1.0, 1.0])}
    f1 = {"w": torch.tensor([3.0, 2.0, 1.0 + 1e-7])}
    f2 = {"w": torch.tensor([1.0, 4.0, 1.0])}
    got = ms.materialize(ram([S(f1), S(f2)], S(base)))["w"]
    torch.testing.assert_close(got, torch.tensor([3.0, 1.0 + (1 + 3) / 2, 1.0]))
    # RAM+: model 1 has 1 shared and 1 unique entry (rho 1, capped at alpha): its unique
    # change scaled by 1 + r alpha; model 2 has no unique entry
    plus = ms.materialize(ram_plus([S(f1), S(f2)], S(base), r=0.5, alpha=0.3))["w"]
    torch.testing.assert_close(plus, torch.tensor([1.0 + 2 * 1.15, 3.0, 1.0]))
    with pytest.raises(ms.SoupError, match="alpha"):
        ram_plus([S(f1)], S(base), alpha=-1)


def test_ram_plus_and_arcee_fusion_widen_half_precision_as_mergekit_writes_it():
    from modelsoup.merges.arcee_fusion import arcee_fusion
    from modelsoup.merges.ram import ram, ram_plus

    base = {"w": torch.zeros(4, 8, dtype=torch.bfloat16)}
    ft = {"w": torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).bfloat16()}
    for made, dtype in (
        (ram_plus([S(ft)], S(base), precision="inputs"), torch.float32),
        (arcee_fusion(S(base), S(ft), precision="inputs"), torch.float32),
        (ram([S(ft)], S(base), precision="inputs"), torch.bfloat16),
        (ram_plus([S(ft)], S(base)), torch.bfloat16),  # float32 precision: the inputs' dtype
    ):
        assert made.layout.spec("w").dtype == dtype
        assert ms.materialize(made)["w"].dtype == dtype


def test_arcee_fusion_takes_the_outlying_changes_by_exact_quantiles():
    from modelsoup.merges.arcee_fusion import arcee_fusion, quantiles

    x = torch.randn(1001, generator=torch.Generator().manual_seed(1))
    s = x.sort().values
    assert [float(v) for v in quantiles(x)] == [float(s[250]), float(s[500]), float(s[750])]
    big = torch.randn(3 * 10**6 + 7, generator=torch.Generator().manual_seed(2))
    n, sb = big.numel(), big.sort().values  # above mergekit's 10^6 sample: exact still
    assert float(quantiles(big)[2]) == float(sb[3 * (n - 1) // 4])
    # one row: entries whose change is outlying (score above median + 1.5 IQR) move
    a = {"w": torch.zeros(1, 20)}
    change = torch.linspace(0.01, 0.02, 20).reshape(1, 20)  # IQR 0.005: threshold 0.0225
    change[0, 3] = 5.0
    got = ms.materialize(arcee_fusion(S(a), S({"w": change})))["w"]
    assert torch.equal(got, torch.where(change > 1, change, 0.0))
