"""The one analysis pipeline: compute the paper's analyses of a sweep, then render them.

`run_analyses` is the sequence both ``modelsoup analyze`` and the paper's experiment
run: task-vector angles, every pair's soup (and 2-model ensemble), one interpolation
curve and, optionally, the landscape on a plane; each drawn as a PNG. `analyze_sweep`
is ``modelsoup analyze``: it builds the scorer from an evaluator, runs the pipeline and
writes ``analysis.json`` and a self-contained ``report.html``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import compute, figures
from ..analysis import pairs as pairs_lib
from ..analysis import plane as plane_lib
from ..analysis.compute import Angles, Scorer, Scores
from ..analysis.page import Figure, Section, Table, write_page
from ..analysis.pairs import Curve, PairSoup
from ..analysis.plane import Landscape
from ..checkpoints.ingredients import Ingredient
from ..errors import option, render
from ..evaluators.protocols import Evaluator
from ..store.provenance import versions, write_json
from ..store.stages import Stages
from .scoring import Scoring, scoring_of

View = tuple[str, list[str]]  # a figure panel: its label and the splits it averages


@dataclass
class Analyses:
    """What `run_analyses` computed, and the figures it drew (name -> PNG path)."""

    angles: Angles
    pairs: list[PairSoup]
    curve: Curve
    pearson_angle_advantage: dict[str, float | None]
    pearson_soup_ensemble: dict[str, float | None] | None = None
    landscape: Landscape | None = None
    figures: dict[str, Path] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class AnalysisPlan:
    """What an analysis draws: the ingredients' ``names``, the figure panels
    (``views``), the interpolation ``curve``'s pair (0-based), the ``landscape``'s pair
    (None: none) on a ``grid`` x ``grid`` grid with its corners' ``landscape_labels``,
    the figures' ``titles`` (keys: cosine, angles, ensemble_vs_soup, interpolation,
    landscape) and the groups of splits that share their examples (``aligned``, for
    paired standard errors; see `paired.paired_mean`)."""

    names: Sequence[str]
    views: Sequence[View]
    curve: tuple[int, int]
    landscape: tuple[int, int] | None = None
    grid: int = 9
    titles: Mapping[str, str] = field(default_factory=dict)
    landscape_labels: Sequence[str] | None = None
    aligned: Sequence[Sequence[str]] = ()


def run_analyses(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    scoring: Scoring,
    plan: AnalysisPlan,
    folder: Path,
    *,
    integers: str = "error",
    progress: bool = False,
    stages: Stages | None = None,
) -> Analyses:
    """The paper's analyses (Figures 2-4) of fine-tunes ``ingredients`` of ``base`` (θ0),
    scored as ``scoring`` says and drawn as ``plan`` says, PNGs in ``folder``: angles,
    every pair's soup (and 2-model ensemble, with logits or a mixer), one interpolation
    curve and, with a landscape pair and a measure, the landscape on the plane through
    ``base`` and that pair. With per-example logits every pair carries the paired
    standard errors of its comparisons. Each step is a stage of ``stages`` (drawing is
    the stage ``figures``)."""
    stages = stages if stages is not None else Stages()
    mark = stages.mark()
    folder.mkdir(parents=True, exist_ok=True)
    with stages("angles"):
        geometry = compute.angles(ingredients, base, names=plan.names, progress=progress)
    with stages("pair soups"):
        pairs = pairs_lib.pair_soups(
            ingredients, geometry, scoring.score, scoring.individual, logits=scoring.logits,
            labels=scoring.labels, mix=scoring.mix, integers=integers, metric=scoring.metric,
            views=plan.views, aligned=plan.aligned, progress=progress,
        )  # fmt: skip
    with stages("figures"):
        result = _pair_figures(geometry, pairs, scoring, plan, folder)
    with stages("interpolation"):
        result.curve = _curve(ingredients, scoring, plan, integers, progress)
    result.figures["interpolation"] = folder / "interpolation.png"
    a, b = plan.curve
    with stages("figures"):
        figures.interpolation(
            result.curve, plan.views, result.figures["interpolation"],
            names=(plan.names[a], plan.names[b]), title=plan.titles.get("interpolation", ""),
        )  # fmt: skip
    if plan.landscape is not None and scoring.measure is not None:
        _landscape(result, base, ingredients, scoring.measure, plan, folder, stages, progress)
    result.timing = stages.children(mark)
    return result


def _pair_figures(
    geometry: Angles, pairs: list[PairSoup], scoring: Scoring, plan: AnalysisPlan, folder: Path
) -> Analyses:
    png = {key: folder / f"{key}.png" for key in ("cosine", "angles", "ensemble_vs_soup")}
    titles = plan.titles
    r_angle = figures.angle_vs_advantage(
        pairs, plan.views, png["angles"], title=titles.get("angles", "")
    )
    figures.cosine_heatmap(geometry, png["cosine"], title=titles.get("cosine", ""))
    drawn = {"cosine": png["cosine"], "angles": png["angles"]}
    r_ens = None
    if scoring.logits is not None or scoring.mix is not None:
        r_ens = figures.ensemble_vs_soup(
            pairs, plan.views, png["ensemble_vs_soup"], title=titles.get("ensemble_vs_soup", "")
        )
        drawn["ensemble_vs_soup"] = png["ensemble_vs_soup"]
    return Analyses(geometry, pairs, None, r_angle, r_ens, figures=drawn)  # type: ignore[arg-type]


def _curve(
    ingredients: Sequence[Ingredient],
    scoring: Scoring,
    plan: AnalysisPlan,
    integers: str,
    progress: bool,
) -> Curve:
    a, b = plan.curve
    logits = scoring.logits
    return pairs_lib.interpolation_curve(
        ingredients[a], ingredients[b], scoring.score,
        logits=(logits[a], logits[b]) if logits is not None else None, labels=scoring.labels,
        mix=scoring.mix, ids=(a, b), integers=integers, metric=scoring.metric,
        progress=progress,
    )  # fmt: skip


def _landscape(
    result: Analyses,
    base: Ingredient,
    ingredients: Sequence[Ingredient],
    measure: Scorer,
    plan: AnalysisPlan,
    folder: Path,
    stages: Stages,
    progress: bool,
) -> None:
    assert plan.landscape is not None
    i, j = plan.landscape
    names = plan.names
    with stages("landscape"):
        where = plane_lib.plane(base, ingredients[i], ingredients[j], progress=progress)
        result.landscape = plane_lib.landscape(
            where, measure, n=plan.grid, progress=progress,
            labels=plan.landscape_labels or ("θ0 (base)", f"θ1 {names[i]}", f"θ2 {names[j]}"),
        )  # fmt: skip
    result.figures["landscape"] = folder / "landscape.png"
    with stages("figures"):
        figures.landscape(
            result.landscape, result.figures["landscape"],
            title=plan.titles.get("landscape", ""),
        )  # fmt: skip


# --- modelsoup analyze -------------------------------------------------------------------


def analyze_sweep(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    evaluator: Evaluator | None,
    out: Path,
    *,
    curve: tuple[int, int] | None = None,
    landscape: tuple[int, int] | None = None,
    grid: int = 9,
    integers: str = "error",
    budget: int | None = None,
    args: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The paper's analyses of a sweep into ``out``: analysis.json, figures, report.html.

    Always the task-vector angles (``base`` is θ0). With an evaluator: every pair's soup
    and interpolation advantage, one interpolation curve (``curve``, 0-based; default the
    two best on the selection split) and, with ``landscape`` (0-based pair), the landscape
    on the plane through base and that pair. A `LogitEvaluator` gives accuracy on each of
    its splits, logit ensembles and losses; any other evaluator gives its score. A
    language model's 2-model ensembles hold at most ``budget`` bytes of logits.
    """
    from ..store.provenance import record_run

    out.mkdir(parents=True, exist_ok=True)
    record_run(out, "analyze", args=args, inputs=[*ingredients, base], evaluator=evaluator)
    names = [ing.source for ing in ingredients]
    short = [f"#{i + 1} {Path(n).name}" for i, n in enumerate(names)]  # 1-based, as the CLI
    result: dict[str, Any] = {"ingredients": names, "base": base.source}
    tables: list[Table] = []
    if evaluator is None:
        geometry = compute.angles(ingredients, base, names=short, progress=progress)
        figures.cosine_heatmap(geometry, out / "cosine.png")
        drawn = {"cosine": out / "cosine.png"}
        result["angles"] = geometry.to_json()
        result["note"] = render(  # a record: spelled for the caller now
            f"no evaluator: angles only (pass {option('model')} and {option('data')}, or "
            f"{option('evaluator')})"
        )
    else:
        drawn, tables = _evaluated(
            ingredients, base, evaluator, out, short, result,
            curve=curve, landscape=landscape, grid=grid, integers=integers, budget=budget,
            progress=progress,
        )  # fmt: skip
    write_json(out / "analysis.json", result)
    write_page(
        out / "report.html",
        "Model soup analysis",
        [
            Section(
                "Ingredients",
                [f"θ0 (base): {base.source}", *(f"{s}: {n}" for s, n in zip(short, names))],
                tables=tables,
            ),
            Section(
                "Figures",
                figures=[Figure(_CAPTIONS[k](short, result), p) for k, p in drawn.items()],
            ),
        ],
        config=dict(args or {}),
        versions=versions(),
    )
    return result


def _evaluated(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    evaluator: Evaluator,
    out: Path,
    short: list[str],
    result: dict[str, Any],
    *,
    curve: tuple[int, int] | None,
    landscape: tuple[int, int] | None,
    grid: int,
    integers: str,
    budget: int | None,
    progress: bool,
) -> tuple[dict[str, Path], list[Table]]:
    """`analyze_sweep` with an evaluator: the pipeline's numbers into ``result``; the
    figures drawn and the report's tables."""
    scoring = scoring_of(ingredients, evaluator, out, progress, budget)
    individual, sel = scoring.individual, scoring.selection
    splits = list(individual[0])
    others = [s for s in splits if s != sel]
    pair = curve or tuple(sorted(range(len(ingredients)), key=lambda i: -individual[i][sel])[:2])
    plan = AnalysisPlan(
        short,
        [(sel, [sel])] + ([("other splits", others)] if others else []),
        pair,  # type: ignore[arg-type]
        landscape=landscape,
        grid=grid,
        titles={
            "angles": "Angle vs interpolation advantage",
            "ensemble_vs_soup": "2-model ensemble vs soup",
        },
    )
    done = run_analyses(ingredients, base, scoring, plan, out, integers=integers, progress=progress)
    drawn = done.figures
    result["angles"] = done.angles.to_json()
    result["scores"] = individual
    result["pairs"] = [p.__dict__ for p in done.pairs]
    result["pearson_angle_advantage"] = done.pearson_angle_advantage
    if done.pearson_soup_ensemble is not None:
        result["pearson_soup_ensemble"] = done.pearson_soup_ensemble
    result["curve"] = done.curve.__dict__
    if done.landscape is not None:
        result["landscape"] = done.landscape.to_json()
    tables = _tables(done, short, individual, splits, sel)
    return drawn, tables


_CAPTIONS: dict[str, Callable[[list[str], dict], str]] = {
    "cosine": lambda s, r: "Cosine similarity of the task vectors θi − θ0.",
    "angles": lambda s, r: "Angle between task vectors vs interpolation advantage.",
    "ensemble_vs_soup": lambda s, r: "2-model soup vs 2-model logit ensemble.",
    "interpolation": lambda s, r: (
        f"Interpolation from {s[r['curve']['i']]} (α = 0) to {s[r['curve']['j']]} (α = 1)."
    ),
    "landscape": lambda s, r: "Landscape on the plane through θ0, θ1, θ2 (Gram–Schmidt basis).",
}


def _tables(
    done: Analyses, short: list[str], individual: list[Scores], splits: list[str], sel: str
) -> list[Table]:
    ens = done.pearson_soup_ensemble is not None
    noisy = any(p.noise for p in done.pairs)
    return [
        Table(
            "Ingredients: task-vector norm and scores",
            ["ingredient", "|θi − θ0|", *splits],
            [
                [short[i], f"{done.angles.norms[i]:.4g}", *(f"{ind[s]:.4f}" for s in splits)]
                for i, ind in enumerate(individual)
            ],
        ),
        Table(
            f"Pairs: angle, soup score and interpolation advantage on {sel!r}"
            + (
                " (± paired standard error; * beyond noise, |difference| ≥ 1.96 SE)"
                if noisy
                else ""
            ),
            [
                "pair",
                "angle (deg)",
                "soup",
                "advantage",
                *(["ensemble", "ensemble − soup"] if ens else []),
            ],
            [
                [
                    f"{short[p.i]} + {short[p.j]}",
                    f"{p.angle:.2f}",
                    f"{p.soup[sel]:.4f}",
                    _with_noise(p.advantage[sel], p.noise.get("advantage", {}).get(sel)),
                    *(
                        [
                            f"{p.ensemble[sel]:.4f}",
                            _with_noise(
                                p.ensemble[sel] - p.soup[sel],
                                p.noise.get("ensemble - soup", {}).get(sel),
                            ),
                        ]
                        if p.ensemble
                        else []
                    ),
                ]
                for p in done.pairs
            ],
        ),
    ]


def _with_noise(value: float, noise: Mapping[str, Any] | None) -> str:
    """``+0.0120 ± 0.0050*``: a difference, its paired SE, * when beyond noise."""
    if not noise or noise.get("se") is None:
        return f"{value:+.4f}"
    return f"{value:+.4f} ± {noise['se']:.4f}{'' if noise['within_noise'] else '*'}"
