"""Model Stock follows its formula; WiSE-FT's curve ends at its endpoints."""

import pytest
import tinytask
import torch
from helpers import vectors_at_angle

from modelsoup import SoupError, StateDictIngredient, materialize, model_stock, wise_ft
from modelsoup.evaluators import ClassificationEvaluator
from modelsoup.merges.model_stock import mean_pairwise_cosine, model_stock_ratio
from modelsoup.merges.wiseft import best_alpha, wiseft_scan


def _pair_at(theta_deg: float, n: int, seed: int):
    return vectors_at_angle(theta_deg, n, (2.0, 3.0), torch.Generator().manual_seed(seed))


def test_model_stock_matches_its_formula_per_layer():
    base = {
        "p": torch.randn(40, dtype=torch.float64),
        "q": torch.randn(30, dtype=torch.float64),
        "steps": torch.tensor(3),
    }
    (p1, p2), (q1, q2) = _pair_at(60.0, 40, 0), _pair_at(90.0, 30, 1)
    ft1 = {"p": base["p"] + p1, "q": base["q"] + q1, "steps": base["steps"]}
    ft2 = {"p": base["p"] + p2, "q": base["q"] + q2, "steps": base["steps"]}
    merged, ratios = model_stock(
        [StateDictIngredient(ft1), StateDictIngredient(ft2)], StateDictIngredient(base)
    )
    assert ratios["p"] == pytest.approx(2 * 0.5 / (0.5 + 1))  # cos 60 = 1/2 -> t = 2/3
    assert ratios["q"] == pytest.approx(0.0, abs=1e-12)  # orthogonal -> the base itself
    out = materialize(merged)
    t = ratios["p"]
    torch.testing.assert_close(out["p"], t * (ft1["p"] + ft2["p"]) / 2 + (1 - t) * base["p"])
    torch.testing.assert_close(out["q"], base["q"], atol=1e-6, rtol=0)  # float32 sums
    assert torch.equal(out["steps"], base["steps"])


def test_model_stock_helpers_and_errors():
    assert model_stock_ratio(1.0, 5) == pytest.approx(1.0)  # identical directions: the mean
    assert model_stock_ratio(0.0, 5) == 0.0
    g = torch.tensor([[4.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert mean_pairwise_cosine(g) == pytest.approx((0.5 + 0 + 0) / 3)
    one = StateDictIngredient({"w": torch.ones(3)})
    with pytest.raises(SoupError, match="at least 2"):
        model_stock([one], one)


def test_model_stock_keeps_untouched_tensors():
    base = {"w": torch.randn(10), "frozen": torch.randn(5)}
    fts = [{"w": base["w"] + torch.randn(10), "frozen": base["frozen"].clone()} for _ in range(3)]
    merged, ratios = model_stock([StateDictIngredient(f) for f in fts], StateDictIngredient(base))
    assert ratios["frozen"] == 1.0
    assert torch.equal(materialize(merged)["frozen"], base["frozen"])


def test_wiseft_curve_endpoints_are_the_models():
    base = tinytask.finetune(tinytask.model().state_dict(), lr=1e-2, steps=20, seed=0)
    ft = tinytask.finetune(base, lr=1e-2, steps=40, seed=1)
    b, f = StateDictIngredient(base), StateDictIngredient(ft)
    ev = ClassificationEvaluator(tinytask.model(), tinytask.data())
    scan = wiseft_scan(b, f, ev, alphas=(0.0, 0.5, 1.0))
    assert [r["alpha"] for r in scan] == [0.0, 0.5, 1.0]
    assert scan[0]["val"] == ev(base) and scan[-1]["val"] == ev(ft)
    assert set(scan[1]) == {"alpha", "heldout", "val", "test", "shift"}
    assert best_alpha(scan) in (0.0, 0.5, 1.0)
    assert (
        max(r["heldout"] for r in scan)
        == [r for r in scan if r["alpha"] == best_alpha(scan)][0]["heldout"]
    )
    mid = materialize(wise_ft(b, f, 0.25))
    torch.testing.assert_close(mid["0.weight"], 0.75 * base["0.weight"] + 0.25 * ft["0.weight"])


def test_model_stock_never_extrapolates_on_negative_cosines(tmp_path, capsys):
    """k = 2, base 0, the fine-tunes v and -v + noise: cos(phi) is about -1, where the
    formula's t would be about -2.9e6. cos is clamped to [0, 1]: the tensor keeps the
    base, is reported, and the soup stays within the inputs' range."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from modelsoup.cli import main

    g = torch.Generator().manual_seed(0)
    v = torch.rand(1000, generator=g) * 2 - 1
    tensors = {
        "base": {"w": torch.zeros(1000), "b": torch.zeros(4)},
        "pa": {"w": v, "b": torch.ones(4)},
        "pc": {"w": -v + 1e-3 * torch.randn(1000, generator=g), "b": torch.full((4,), 2.0)},
    }
    for name, sd in tensors.items():
        save_file(sd, tmp_path / f"{name}.safetensors")
    out = tmp_path / "stock.safetensors"
    args = [str(tmp_path / f"{n}.safetensors") for n in ("pa", "pc")]
    assert main(["model-stock", *args, "--base", str(tmp_path / "base.safetensors"),
                 "-o", str(out), "-q"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "1 tensor(s) with a negative mean cosine keep θ0 (t = 0): w" in printed
    with safe_open(str(out), "pt") as f:  # the ratios travel inside the output
        record = json.loads(f.metadata()["modelsoup"])
    assert set(record["clamped"]) == {"w"} and record["clamped"]["w"] < -0.99
    assert all(0.0 <= t <= 1.0 for t in record["ratios"].values())
    soup = load_file(out)
    for name in soup:
        stacked = torch.stack([sd[name] for sd in tensors.values()])
        assert (soup[name] >= stacked.min(0).values - 1e-6).all()
        assert (soup[name] <= stacked.max(0).values + 1e-6).all()
    assert torch.equal(soup["w"], tensors["base"]["w"])  # t = 0: the base
    # the positively correlated tensor is merged by the formula as before (cos = 1: t = 1)
    torch.testing.assert_close(soup["b"], torch.full((4,), 1.5))
