"""The paper's analyses (angles, pair soups, interpolation curves, the plane and its
landscape), the figures and the self-contained results page."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest
import torch
from helpers import vectors_at_angle

import modelsoup as ms
from modelsoup.analysis import compute as analysis
from modelsoup.analysis import figures
from modelsoup.analysis import pairs as pairs_lib
from modelsoup.analysis import plane as plane_lib
from modelsoup.analysis.page import Figure, Section, Table, render, write_page
from modelsoup.cli import main
from modelsoup.store import LogitCache

tinytask = pytest.importorskip("tinytask")


def _ing(**tensors: torch.Tensor) -> ms.StateDictIngredient:
    return ms.StateDictIngredient(tensors)


def test_angles_of_constructed_vectors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, dtype=torch.float64, generator=g)
    u, v = vectors_at_angle(37.0, 300, (2.0, 0.5), g)
    w, _ = vectors_at_angle(90.0, 300, (1.0, 1.0), g)
    ings = [_ing(w=base + u), _ing(w=base + v), _ing(w=base - u)]
    geo = analysis.angles(ings, _ing(w=base), names=["a", "b", "c"])
    assert geo.degrees[0][1] == pytest.approx(37.0, abs=1e-6)
    assert geo.degrees[1][0] == pytest.approx(37.0, abs=1e-6)
    assert geo.degrees[0][2] == pytest.approx(180.0, abs=1e-6)  # opposite updates
    assert geo.degrees[1][2] == pytest.approx(180.0 - 37.0, abs=1e-6)
    assert geo.norms[:2] == pytest.approx([2.0, 0.5])
    assert all(geo.degrees[i][i] == 0 for i in range(3))
    with pytest.raises(ms.SoupError, match="equals the base"):
        analysis.angles([ings[0], _ing(w=base)], _ing(w=base), names=["a", "same"])


def test_plane_basis_is_orthonormal_and_maps_the_three_models():
    base = torch.zeros(3, dtype=torch.float64)
    e1, e2 = torch.eye(3, dtype=torch.float64)[:2]
    # θ1 - θ0 = 3 e1, θ2 - θ0 = 2 e1 + 4 e2 (shifted by a common offset)
    off = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    p = plane_lib.plane(_ing(w=base + off), _ing(w=3 * e1 + off), _ing(w=2 * e1 + 4 * e2 + off))
    assert (p.length, p.proj, p.perp) == pytest.approx((3.0, 2.0, 4.0))
    assert [c for pt in p.points for c in pt] == pytest.approx([0, 0, 3, 0, 2, 4])

    g = torch.Generator().manual_seed(1)
    t0, t1, t2 = (torch.randn(50, dtype=torch.float64, generator=g) for _ in range(3))
    p = plane_lib.plane(_ing(w=t0), _ing(w=t1), _ing(w=t2))

    def at(x: float, y: float) -> torch.Tensor:
        return p.at(x, y, accumulate=torch.float64).get("w")

    u1, u2 = at(1, 0) - t0, at(0, 1) - t0
    assert float(u1 @ u1) == pytest.approx(1.0)
    assert float(u2 @ u2) == pytest.approx(1.0)
    assert float(u1 @ u2) == pytest.approx(0.0, abs=1e-12)
    for (x, y), theta in zip(p.points, (t0, t1, t2)):
        assert torch.allclose(at(x, y), theta, atol=1e-12)
    # the coordinates are those of Gram–Schmidt: θ2 - θ0 = proj u1 + perp u2
    d2 = t2 - t0
    assert p.proj == pytest.approx(float(d2 @ u1))
    assert p.perp == pytest.approx(float((d2 - p.proj * u1).norm()))
    with pytest.raises(ms.SoupError, match="span no plane"):
        plane_lib.plane(_ing(w=t0), _ing(w=t1), _ing(w=t0 + 2 * (t1 - t0)))


@pytest.mark.parametrize("ulps", [0, 1, 64, 512])
def test_collinear_models_are_refused_whatever_the_rounding_of_the_gram(ulps, monkeypatch):
    """Three collinear models give g11 = proj² up to the rounding of two float64 sums of
    millions of products, which differs between CPUs (AVX-512 rounded one case of the
    test above to 2e-14 relative, which the old absolute bound 1e-9 * length took for a
    plane). Every rounding of that size is refused; a true plane at a small angle is not."""
    length = 3.0
    g11 = (2 * length) ** 2  # θ2 - θ0 = 2 (θ1 - θ0)
    rounded = g11 * (1 + ulps * torch.finfo(torch.float64).eps)
    fake = torch.tensor([[length**2, 2 * length**2], [2 * length**2, rounded]], dtype=torch.float64)
    monkeypatch.setattr(plane_lib, "gram", lambda *a, **k: fake)
    w = _ing(w=torch.zeros(1))
    with pytest.raises(ms.SoupError, match="span no plane"):
        plane_lib.plane(w, w, w)
    # a real plane at 0.001 degrees (sine 1.7e-5) is kept
    s = math.sin(math.radians(0.001))
    fake[1, 1] = (2 * length) ** 2 / (1 - s * s)
    assert plane_lib.plane(w, w, w).perp > 0


def test_landscape_evaluates_the_grid_at_the_right_points():
    base = torch.zeros(2)
    p = plane_lib.plane(
        _ing(w=base), _ing(w=torch.tensor([2.0, 0.0])), _ing(w=torch.tensor([1.0, 1.0]))
    )
    seen = []

    def measure(state):
        seen.append(state["w"].clone())
        return {"x": float(state["w"][0]), "y": float(state["w"][1])}

    land = plane_lib.landscape(p, measure, n=4, margin=0.5)
    assert len(seen) == 16
    assert len(land.values["x"]) == 4 and all(len(r) == 4 for r in land.values["x"])
    for r, y in enumerate(land.ys):
        for c, x in enumerate(land.xs):  # the plane is the xy plane itself here
            assert land.values["x"][r][c] == pytest.approx(x, abs=1e-6)
            assert land.values["y"][r][c] == pytest.approx(y, abs=1e-6)
    # the grid covers the three points with the margin
    assert land.xs[0] == pytest.approx(-1.0) and land.xs[-1] == pytest.approx(3.0)
    assert land.ys[0] == pytest.approx(-0.5) and land.ys[-1] == pytest.approx(1.5)
    with pytest.raises(ms.SoupError, match="at least 2"):
        p.grid(1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    paths = tinytask.save_sweep(
        folder, [3e-3, 1e-2, 3e-2], base_steps=60, steps=40, seed0=10, save_base=True
    )
    return folder, paths


def _scorer(tmp_path=None):
    ev = ms.ClassificationEvaluator(tinytask.model(), tinytask.data())
    cache = LogitCache(tmp_path / "cache") if tmp_path else None
    return analysis.LogitScorer(ev, cache=cache)


def test_interpolation_curve_endpoints_are_the_models_own_scores(sweep):
    _, paths = sweep
    a, b = (ms.open_ingredient(p) for p in paths[:2])
    scorer = _scorer()
    la, lb = scorer.logits(ms.materialize(a)), scorer.logits(ms.materialize(b))
    own_a, own_b = (analysis.accuracies(lg, scorer.labels) for lg in (la, lb))
    curve = pairs_lib.interpolation_curve(
        a, b, scorer, [0.0, 0.25, 0.5, 1.0], logits=(la, lb), labels=scorer.labels
    )
    assert curve.weights[0] == own_a and curve.weights[-1] == own_b
    assert curve.logits[0] == own_a and curve.logits[-1] == own_b
    # in between, the weights really move: the midpoint is the 2-model soup
    mid = scorer(ms.materialize(ms.uniform_soup([a, b])))
    assert curve.weights[2] == mid
    assert set(curve.weights[1]) == {"val", "test", "shift"}


def test_pair_soups_advantage_and_ensemble(sweep, tmp_path):
    folder, paths = sweep
    ings = [ms.open_ingredient(p) for p in paths]
    base = ms.open_ingredient(folder / "base.safetensors")
    geo = analysis.angles(ings, base)
    scorer = _scorer(tmp_path)
    logits = [scorer.logits(ms.materialize(i)) for i in ings]
    own = [analysis.accuracies(lg, scorer.labels) for lg in logits]
    views = [("all", ["val", "test", "shift"])]
    pairs = pairs_lib.pair_soups(
        ings, geo, scorer, own, logits=logits, labels=scorer.labels, views=views
    )
    assert [(p.i, p.j) for p in pairs] == [(0, 1), (0, 2), (1, 2)]
    y = scorer.labels
    for p in pairs:
        soup = scorer(ms.materialize(ms.uniform_soup([ings[p.i], ings[p.j]])))
        assert p.soup == soup
        # the paired noise, by hand: per example, soup minus the mean of its two models
        soup_logits = scorer.logits(ms.materialize(ms.uniform_soup([ings[p.i], ings[p.j]])))
        d = {
            s: (soup_logits[s].argmax(1) == y[s]).double()
            - 0.5 * sum((logits[m][s].argmax(1) == y[s]).double() for m in (p.i, p.j))
            for s in soup
        }
        for s in soup:
            got = p.noise["advantage"][s]
            assert got["diff"] == pytest.approx(p.advantage[s], abs=1e-12)
            assert got["se"] == pytest.approx(float(d[s].std() / len(d[s]) ** 0.5), abs=1e-12)
        var = sum(float((d[s] / 3).var()) / len(d[s]) for s in soup)
        assert p.noise["advantage"]["all"]["se"] == pytest.approx(var**0.5, abs=1e-12)
        assert set(p.noise["ensemble - soup"]) == {"val", "test", "shift", "all"}
        for s in soup:
            assert p.advantage[s] == pytest.approx(soup[s] - (own[p.i][s] + own[p.j][s]) / 2)
        mixed = {s: (logits[p.i][s] + logits[p.j][s]) / 2 for s in soup}
        assert p.ensemble == analysis.accuracies(mixed, scorer.labels)
        assert p.angle == pytest.approx(ms.angle(ings[p.i], ings[p.j], base))
    # scored soups are cached by content: a second scorer reads them back
    again = _scorer(tmp_path)
    calls = []
    again.evaluator.logits = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    assert again(ms.materialize(ms.uniform_soup(ings[:2]))) == pairs[0].soup and not calls


def test_pearson_and_trend():
    assert figures.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert figures.pearson([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert figures.pearson([1, 2, 3], [5, 5, 5]) is None
    assert figures.trend([0, 1, 2], [1, 3, 5]) == pytest.approx((2.0, 1.0))


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?!data:|#)|url\(\s*["']?(?!data:)""", re.I)


def _assert_self_contained(text: str) -> int:
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    assert "http://" not in text and "https://" not in text
    images = re.findall(r"<img [^>]*src=\"data:image/png;base64,", text)
    return len(images)


def test_page_embeds_figures_and_escapes_text(tmp_path):
    png = tmp_path / "f.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(png)
    plt.close(fig)
    text = render(
        "A <title>",
        [
            Section(
                "S", ["a & b"], tables=[Table("t", ["x"], [["<1>"]])], figures=[Figure("c", png)]
            )
        ],
        config={"lr": 0.1},
        versions={"torch": "2"},
    )
    assert _assert_self_contained(text) == 1
    assert "A &lt;title&gt;" in text and "a &amp; b" in text and "&lt;1&gt;" in text
    assert "&quot;lr&quot;: 0.1" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render_in_chromium(path) -> str:
    out = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_cli_analyze_ingredients(sweep, tmp_path, capsys):
    folder, paths = sweep
    out = tmp_path / "analysis"
    args = [
        "analyze",
        *map(str, paths),
        "--base",
        str(folder / "base.safetensors"),
        "--model",
        "tinytask:model",
        "--data",
        "tinytask:data",
        "--landscape",
        "1",
        "3",
        "--grid",
        "3",
        "-o",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "r(angle, interpolation advantage)" in printed
    res = json.loads((out / "analysis.json").read_text())
    assert len(res["pairs"]) == 3
    # every pair's comparisons carry their paired noise, and the command counts them
    for p in res["pairs"]:
        for what in ("advantage", "ensemble - soup"):
            assert set(p["noise"][what]) == {"val", "test", "shift", "other splits"}
    adv = res["pairs"][0]["noise"]["advantage"]["val"]
    assert adv["diff"] == pytest.approx(res["pairs"][0]["advantage"]["val"])
    line = next(
        ln for ln in printed.splitlines() if ln.startswith("soup vs its models' mean on val")
    )
    counts = [int(n) for n in re.findall(r"\d+", line)]
    assert sum(counts[:3]) == counts[3] == 3
    assert "± " in (out / "report.html").read_text()
    deg = res["angles"]["degrees"]
    ings = [ms.open_ingredient(p) for p in paths]
    base = ms.open_ingredient(folder / "base.safetensors")
    assert deg[0][2] == pytest.approx(ms.angle(ings[0], ings[2], base))
    land = res["landscape"]
    assert len(land["xs"]) == 3 and set(land["values"]) == {
        "val loss",
        "val error",
        "test error",
        "shift error",
    }
    assert land["points"][0] == [0.0, 0.0] and land["points"][1][1] == 0.0
    text = (out / "report.html").read_text()
    # cosine, angles, ensemble vs soup, interpolation, landscape
    assert _assert_self_contained(text) == 5
    for name in ("cosine", "angles", "ensemble_vs_soup", "interpolation", "landscape"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if _chromium():
        assert 'data-images="5/5"' in _render_in_chromium(out / "report.html")


def test_cli_analyze_angles_only_and_errors(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command without -o writes to ./analysis
    folder, paths = sweep
    out = tmp_path / "a"
    base = str(folder / "base.safetensors")
    assert main(["analyze", *map(str, paths), "--base", base, "-o", str(out), "-q"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert "pairs" not in res and "no evaluator" in res["note"]
    assert main(["analyze", *map(str, paths), "-o", str(out)]) == 2
    assert "--base is required" in capsys.readouterr().err
    assert main(["analyze", *map(str, paths), "--base", base, "--landscape", "1", "2"]) == 2
    assert "need an evaluator" in capsys.readouterr().err
    args = ["analyze", *map(str, paths), "--base", base, "--model", "tinytask:model"]
    assert main([*args, "--data", "tinytask:data", "--landscape", "1", "9"]) == 2
    assert "1..3" in capsys.readouterr().err


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [i, 1 - i])
        figs.append(Figure(f"f{i}", tmp_path / f"f{i}.png"))
        fig.savefig(figs[-1].path)
        plt.close(fig)
    page = write_page(tmp_path / "p.html", "t", [Section("s", figures=figs)])
    dom = _render_in_chromium(page)
    assert 'data-images="2/2"' in dom
    # a broken image is reported as such: the check can fail
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    page = write_page(tmp_path / "q.html", "t", [Section("s", figures=[figs[0], Figure("x", bad)])])
    assert 'data-images="1/2"' in _render_in_chromium(page)


def test_cli_analyze_with_a_function_evaluator(sweep, tmp_path, monkeypatch):
    """Any evaluator (model -> float) drives the pair soups and the landscape: its one
    score, no logits, so no ensembles."""
    monkeypatch.setenv("TINYTASK_SLEEP", "0")
    folder, paths = sweep
    out = tmp_path / "f"
    args = ["analyze", *map(str, paths), "--base", str(folder / "base.safetensors")]
    args += ["--model", "tinytask:model", "--evaluator", "tinytask:slow_accuracy"]
    assert main([*args, "--landscape", "2", "3", "--grid", "2", "-o", str(out), "-q"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    x, y = tinytask.data()["val"].tensors
    m = tinytask.model()
    for p in res["pairs"]:
        soup = ms.materialize(ms.uniform_soup([ms.open_ingredient(paths[p["i"]]),
                                               ms.open_ingredient(paths[p["j"]])]))  # fmt: skip
        m.load_state_dict(soup)
        with torch.no_grad():
            assert p["soup"]["score"] == pytest.approx(float((m(x).argmax(-1) == y).float().mean()))
    assert set(res["landscape"]["values"]) == {"score"} and "pearson_soup_ensemble" not in res
    assert not (out / "ensemble_vs_soup.png").exists()
