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

import torch

from ..analysis import compute, figures
from ..analysis import pairs as pairs_lib
from ..analysis import plane as plane_lib
from ..analysis.compute import Angles, Logits, Mixer, Scorer, Scores
from ..analysis.page import Figure, Section, Table, write_page
from ..analysis.pairs import Curve, PairSoup
from ..analysis.plane import Landscape
from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..evaluators.protocols import (
    Evaluator,
    LogitEvaluator,
    LossEvaluator,
    TokenExamples,
    evaluate,
)
from ..store.cache import LogitCache
from ..store.provenance import versions, write_json
from ..store.stages import Stages

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


def run_analyses(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    score: Scorer,
    individual: Sequence[Scores],
    *,
    names: Sequence[str],
    views: Sequence[View],
    curve: tuple[int, int],
    folder: Path,
    logits: Sequence[Logits] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
    mix: Mixer | None = None,
    landscape: tuple[int, int] | None = None,
    measure: Scorer | None = None,
    grid: int = 9,
    integers: str = "error",
    metric: str = "accuracy",
    titles: Mapping[str, str] | None = None,
    landscape_labels: Sequence[str] | None = None,
    aligned: Sequence[Sequence[str]] = (),
    progress: bool = False,
    stages: Stages | None = None,
) -> Analyses:
    """The paper's analyses (Figures 2-4) of fine-tunes ``ingredients`` of ``base`` (θ0).

    ``score`` maps a state to scores per split, ``individual[i]`` are ingredient i's own
    (so advantages compare like with like); ``logits[i]`` with ``labels`` add 2-model
    ensembles, scored with ``metric`` (accuracy, or minus the loss), as does ``mix``
    without logits (a language model's, chunk by chunk). ``curve`` is the
    (0-based) pair of the interpolation curve; with
    ``landscape`` (a pair) and ``measure`` (a scorer), the landscape on the plane through
    ``base`` and that pair on a ``grid`` x ``grid`` grid. PNGs go to ``folder``, titled by
    ``titles`` (keys: cosine, angles, ensemble_vs_soup, interpolation, landscape).
    With per-example logits (a `compute.LogitSource` scorer and ``logits``), every pair
    carries the paired standard errors of its comparisons (``aligned``: groups of splits
    that share their examples, see `paired.paired_mean`). Each step is a stage of
    ``stages`` (drawing is the stage ``figures``).
    """
    titles = dict(titles or {})
    stages = stages if stages is not None else Stages()
    mark = stages.mark()
    folder.mkdir(parents=True, exist_ok=True)
    png = {key: folder / f"{key}.png" for key in ("cosine", "angles", "ensemble_vs_soup")}

    with stages("angles"):
        geometry = compute.angles(ingredients, base, names=names, progress=progress)
    with stages("pair soups"):
        pairs = pairs_lib.pair_soups(
            ingredients,
            geometry,
            score,
            individual,
            logits=logits,
            labels=labels,
            mix=mix,
            integers=integers,
            metric=metric,
            views=views,
            aligned=aligned,
            progress=progress,
        )
    drawn = {"cosine": png["cosine"], "angles": png["angles"]}
    r_ens = None
    with stages("figures"):
        r_angle = figures.angle_vs_advantage(
            pairs, views, png["angles"], title=titles.get("angles", "")
        )
        figures.cosine_heatmap(geometry, png["cosine"], title=titles.get("cosine", ""))
        if logits is not None or mix is not None:
            r_ens = figures.ensemble_vs_soup(
                pairs, views, png["ensemble_vs_soup"], title=titles.get("ensemble_vs_soup", "")
            )
            drawn["ensemble_vs_soup"] = png["ensemble_vs_soup"]

    a, b = curve
    with stages("interpolation"):
        line = pairs_lib.interpolation_curve(
            ingredients[a],
            ingredients[b],
            score,
            logits=(logits[a], logits[b]) if logits is not None else None,
            labels=labels,
            mix=mix,
            ids=(a, b),
            integers=integers,
            metric=metric,
            progress=progress,
        )
    drawn["interpolation"] = folder / "interpolation.png"
    with stages("figures"):
        figures.interpolation(
            line,
            views,
            drawn["interpolation"],
            names=(names[a], names[b]),
            title=titles.get("interpolation", ""),
        )
    result = Analyses(geometry, pairs, line, r_angle, r_ens, figures=drawn)

    if landscape is not None and measure is not None:
        i, j = landscape
        with stages("landscape"):
            where = plane_lib.plane(base, ingredients[i], ingredients[j], progress=progress)
            result.landscape = plane_lib.landscape(
                where,
                measure,
                n=grid,
                labels=landscape_labels or ("θ0 (base)", f"θ1 {names[i]}", f"θ2 {names[j]}"),
                progress=progress,
            )
        drawn["landscape"] = folder / "landscape.png"
        with stages("figures"):
            figures.landscape(
                result.landscape, drawn["landscape"], title=titles.get("landscape", "")
            )
    result.timing = stages.children(mark)
    return result


# --- modelsoup analyze -------------------------------------------------------------------


@dataclass
class Scoring:
    """How `analyze_sweep` scores: ``score`` (a state's scores per split), each
    ingredient's own (``individual``), their logits and ``labels`` (classifiers) or a
    ``mix`` of two models' logits (language models), the landscape's ``measure``, the
    ``selection`` split and the ``metric``."""

    score: Scorer
    individual: list[Scores]
    measure: Scorer
    selection: str
    metric: str
    logits: list[Logits] | None = None
    labels: dict | None = None
    mix: Mixer | None = None


def _scorers(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    out: Path,
    progress: bool,
    budget: int | None = None,
) -> Scoring:
    """The `Scoring` of an evaluator: with a `LogitEvaluator`, its metric per split from
    (cached) logits, ensembles, and a landscape of the selection loss and every split's
    error; a language model (a `LossEvaluator`): per-token losses cached, ensembles chunk
    by chunk within ``budget`` bytes, a landscape of every split's loss; else its score
    alone."""
    if isinstance(evaluator, LogitEvaluator):
        from ..soups.ensemble import compute_logits

        cache = LogitCache(out / "cache" / "logits")
        scorer = compute.LogitScorer(evaluator, cache=cache)
        sel = evaluator.selection
        per_split, labels, _ = compute_logits(
            ingredients, evaluator, scorer.splits, cache, progress=progress
        )
        logits = [{s: per_split[s][i] for s in scorer.splits} for i in range(len(ingredients))]
        individual = [compute.scores(lg, labels, scorer.metric) for lg in logits]

        def measure(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
            lg = scorer.logits(state)
            if scorer.metric == "loss":  # a language model: its loss on every split
                return {f"{s} loss": -v for s, v in compute.scores(lg, labels, "loss").items()}
            loss = torch.nn.functional.cross_entropy(lg[sel], labels[sel])
            acc = compute.accuracies(lg, labels)
            return {f"{sel} loss": float(loss), **{f"{s} error": 1 - acc[s] for s in acc}}

        if isinstance(evaluator, LossEvaluator):  # logits too large to keep: mixed by chunks
            mixer = LMMixer(ingredients, evaluator, scorer.splits, budget, labels)
            mixer.members = logits  # computed above: pairs need not read them again
            # Paired errors need each token's example; without it, scores only.
            mix = mixer if isinstance(evaluator, TokenExamples) else mixer.__call__
            return Scoring(scorer, individual, measure, sel, "loss", mix=mix)
        return Scoring(scorer, individual, measure, sel, scorer.metric, logits, labels)

    def score(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        value = evaluate(evaluator, state, what="a soup of the analysis").score
        assert value is not None
        return {"score": value}

    individual = [score(materialize(ing)) for ing in ingredients]
    return Scoring(score, individual, score, "score", "accuracy")


class LMMixer:
    """Logit mixtures of two language models, scored chunk by chunk (`mixture_losses`):
    a `compute.LossMixer`, so pairs get paired standard errors from per-token losses."""

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        evaluator: Any,
        splits: Sequence[str],
        budget: int | None,
        labels: Mapping[str, torch.Tensor],
    ):
        self.ingredients = ingredients
        self.evaluator = evaluator
        self.splits = list(splits)
        self.budget = budget
        self.labels = labels
        self.members: list[Logits] = []  # each ingredient's per-token losses
        self.example_of = (
            {s: evaluator.example_of(s) for s in self.splits}
            if isinstance(evaluator, TokenExamples)
            else {}
        )

    def losses(self, i: int, j: int, alphas: Sequence[float]) -> list[Logits]:
        from ..soups.ensemble import mixture_losses

        pair = [self.ingredients[i], self.ingredients[j]]
        mixtures = [{0: 1 - a, 1: a} for a in alphas]
        per = {
            s: mixture_losses(self.evaluator, pair, mixtures, s, budget=self.budget)
            for s in self.splits
        }
        return [{s: per[s][n] for s in self.splits} for n in range(len(alphas))]

    def score(self, losses: Logits) -> Scores:
        return compute.scores(losses, self.labels, "loss")

    def __call__(self, i: int, j: int, alphas: Sequence[float]) -> list[Scores]:
        return [self.score(lo) for lo in self.losses(i, j, alphas)]


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
        result["note"] = "no evaluator: angles only (pass --model and --data, or --evaluator)"
    else:
        scoring = _scorers(ingredients, evaluator, out, progress, budget)
        score, individual, sel = scoring.score, scoring.individual, scoring.selection
        splits = list(individual[0])
        others = [s for s in splits if s != sel]
        pair = curve or tuple(
            sorted(range(len(ingredients)), key=lambda i: -individual[i][sel])[:2]
        )
        done = run_analyses(
            ingredients,
            base,
            score,
            individual,
            names=short,
            views=[(sel, [sel])] + ([("other splits", others)] if others else []),
            curve=pair,  # type: ignore[arg-type]
            folder=out,
            logits=scoring.logits,
            labels=scoring.labels,
            mix=scoring.mix,
            landscape=landscape,
            measure=scoring.measure,
            grid=grid,
            integers=integers,
            metric=scoring.metric,
            titles={
                "angles": "Angle vs interpolation advantage",
                "ensemble_vs_soup": "2-model ensemble vs soup",
            },
            progress=progress,
        )
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
