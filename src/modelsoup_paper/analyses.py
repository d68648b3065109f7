"""The paper's Figures 2-4 on the experiment's sweep (Figure 1 is in report.py).

θ0 is model_0 (the LP initialization every fine-tune starts from); the analyses look at
the fine-tunes model_1..model_{k-1}. Soups of pairs and grid points are scored on evenly
spaced subsets of the splits (``analysis_examples`` / ``landscape_examples`` per split),
and the individual models on the same subsets (sliced from their cached full logits),
so every comparison is paired. Logits of every model scored are cached in the run
folder: a rerun evaluates nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import Subset

import modelsoup as ms
from modelsoup import analysis, figures
from modelsoup.evaluation import ClassificationEvaluator
from modelsoup.runs import LogitCache

from .config import Config
from .tasks import Task


def evenly(n: int, m: int) -> list[int]:
    """``min(n, m)`` indices spread evenly over ``range(n)``."""
    m = min(n, m)
    return [i * n // m for i in range(m)]


def _evaluator(
    task: Task, sizes: Mapping[str, int], config: Config, prepare: Callable | None
) -> tuple[ClassificationEvaluator, dict[str, list[int]]]:
    data = task.data.splits
    idx = {s: evenly(len(data[s]), m) for s, m in sizes.items()}
    ev = ClassificationEvaluator(
        task.build(),
        {s: Subset(data[s], idx[s]) for s in sizes},
        selection=next(iter(sizes)),
        batch_size=config.eval_batch_size,
        prepare=prepare,
    )
    return ev, idx


def run_analyses(
    config: Config,
    task: Task,
    ingredients: Sequence[ms.Ingredient],
    info: Sequence[Mapping[str, Any]],
    logits: Mapping[str, Sequence[torch.Tensor]],
    cache: LogitCache,
    out: Path,
    *,
    prepare: Callable | None = None,
    landscape: bool = True,
    landscape_pair: tuple[int, int] | None = None,
    grid: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Angles, pair soups, ensemble vs soup, one interpolation curve and (``landscape``)
    the error landscape; figures under ``out/figures``; returns the numbers as JSON-able
    data with the figures' paths relative to ``out``."""
    t0 = time.perf_counter()
    shifts = list(config.shifts)
    views = [("ID test", ["test"]), ("shifts", shifts)]
    fine = list(range(1, len(ingredients)))
    names = [info[i]["name"] for i in fine]
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    tag = "-bn" if prepare else ""
    timing: dict[str, float] = {}

    t = time.perf_counter()
    geometry = analysis.angles(
        [ingredients[i] for i in fine], ingredients[0], names=names, progress=progress
    )
    timing["angles"] = time.perf_counter() - t

    t = time.perf_counter()
    splits = ["test", *shifts]
    n = config.analysis_examples
    ev, idx = _evaluator(task, {s: n for s in splits}, config, prepare)
    scorer = analysis.LogitScorer(ev, splits, cache=cache, tag=f"-sub{n}{tag}")
    own = [{s: logits[s][i][idx[s]] for s in splits} for i in fine]
    individual = [analysis.accuracies(lg, scorer.labels) for lg in own]
    pairs = analysis.pair_soups(
        [ingredients[i] for i in fine],
        geometry,
        scorer,
        individual,
        logits=own,
        labels=scorer.labels,
        integers="first",
        progress=progress,
    )
    timing["pair soups"] = time.perf_counter() - t
    r_angle = figures.angle_vs_advantage(
        pairs,
        views,
        figs / "angles.png",
        title=f"Angle vs interpolation advantage, {len(pairs)} pairs (Figure 3)",
    )
    figures.cosine_heatmap(geometry, figs / "cosine.png", title="Cosine of task vectors θi − θ0")
    r_ens = figures.ensemble_vs_soup(
        pairs, views, figs / "ensemble_vs_soup.png", title="2-model ensemble vs soup (Figure 4)"
    )

    # One pair, the two best fine-tunes on held-out, for the curve and the landscape.
    by_val = sorted(fine, key=lambda i: -info[i]["scores"]["val"])
    a, b = landscape_pair or (by_val[0], by_val[1])
    for i in (a, b):
        if not 1 <= i < len(ingredients):
            raise ValueError(
                f"landscape models must be fine-tunes 1..{len(ingredients) - 1}, got {i}"
            )
    t = time.perf_counter()
    curve = analysis.interpolation_curve(
        ingredients[a],
        ingredients[b],
        scorer,
        logits=(own[a - 1], own[b - 1]),
        labels=scorer.labels,
        ids=(a, b),
        integers="first",
        progress=progress,
    )
    timing["interpolation"] = time.perf_counter() - t
    pair_names = (info[a]["name"], info[b]["name"])
    figures.interpolation(
        curve,
        views,
        figs / "interpolation.png",
        names=pair_names,
        title=f"{pair_names[0]} to {pair_names[1]}: weights vs logits (Figure 4)",
    )
    result: dict[str, Any] = {
        "examples_per_split": {s: len(idx[s]) for s in splits},
        "angles": geometry.to_json(),
        "pairs": [
            {**asdict(p), "names": [names[p.i], names[p.j]]} for p in pairs
        ],  # i, j index the fine-tunes (model_1 is 0)
        "pearson_angle_advantage": r_angle,
        "pearson_soup_ensemble": r_ens,
        "curve": {**asdict(curve), "names": list(pair_names)},
        "figures": {
            "angles": "figures/angles.png",
            "cosine": "figures/cosine.png",
            "ensemble_vs_soup": "figures/ensemble_vs_soup.png",
            "interpolation": "figures/interpolation.png",
        },
    }

    if landscape:
        t = time.perf_counter()
        grid = grid or config.landscape_grid
        m = config.landscape_examples
        per_shift = max(1, m // len(shifts))
        lev, _ = _evaluator(
            task, {"train": m, "test": m, **{s: per_shift for s in shifts}}, config, prepare
        )
        lscorer = analysis.LogitScorer(lev, cache=cache, tag=f"-land{m}-{per_shift}{tag}")

        def measure(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
            lg = lscorer.logits(state)
            acc = analysis.accuracies(lg, lscorer.labels)
            return {
                "train loss": float(F.cross_entropy(lg["train"], lscorer.labels["train"])),
                "test error": 1 - acc["test"],
                "shift error": 1 - figures.mean_of(acc, shifts),
            }

        where = analysis.plane(ingredients[0], ingredients[a], ingredients[b])
        land = analysis.landscape(
            where,
            measure,
            n=grid,
            labels=("θ0 (LP init)", f"θ1 ({pair_names[0]})", f"θ2 ({pair_names[1]})"),
            progress=progress,
        )
        figures.landscape(
            land,
            figs / "landscape.png",
            title=f"Error landscape on the plane of model_0, {pair_names[0]}, "
            f"{pair_names[1]} (Figure 2)",
        )
        timing["landscape"] = time.perf_counter() - t
        result["landscape"] = {
            **land.to_json(),
            # the three models themselves, measured on the same examples as the grid
            "at_models": [measure(ms.materialize(ingredients[i])) for i in (0, a, b)],
            "models": ["model_0", *pair_names],
            "examples": {"train": m, "test": m, "per shift": per_shift},
        }
        result["figures"]["landscape"] = "figures/landscape.png"
    timing["total"] = time.perf_counter() - t0
    result["timing_seconds"] = timing
    log(
        f"analyses: {len(pairs)} pair soups, r(angle, advantage) = "
        f"{_fmt(r_angle['ID test'])} ID / {_fmt(r_angle['shifts'])} shifts "
        f"({timing['total']:.0f} s)"
    )
    return result


def _fmt(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"
