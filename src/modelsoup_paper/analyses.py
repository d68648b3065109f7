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
from modelsoup.analysis import compute, figures
from modelsoup.evaluators import ClassificationEvaluator
from modelsoup.jobs.analyze import AnalysisPlan
from modelsoup.jobs.analyze import run_analyses as analysis_pipeline
from modelsoup.jobs.scoring import Scoring
from modelsoup.store import LogitCache, Stages

from .config import Config
from .tasks import Task


def evenly(n: int, m: int) -> list[int]:
    """``min(n, m)`` indices spread evenly over ``range(n)``."""
    m = min(n, m)
    return [i * n // m for i in range(m)]


def _evaluator(
    task: Task,
    sizes: Mapping[str, int],
    config: Config,
    prepare: Callable | None,
    identity: Mapping[str, Any] | None,
) -> tuple[ClassificationEvaluator, dict[str, list[int]]]:
    data = task.data.splits
    idx = {s: evenly(len(data[s]), m) for s, m in sizes.items()}
    ev = ClassificationEvaluator(
        task.build(),
        {s: Subset(data[s], idx[s]) for s in sizes},
        selection=next(iter(sizes)),
        batch_size=config.eval_batch_size,
        prepare=prepare,
        identity=identity,
    )
    return ev, idx


def experiment_analyses(
    config: Config,
    task: Task,
    ingredients: Sequence[ms.Ingredient],
    info: Sequence[Mapping[str, Any]],
    logits: Mapping[str, Sequence[torch.Tensor]],
    cache: LogitCache,
    out: Path,
    *,
    prepare: Callable | None = None,
    identity: Mapping[str, Any] | None = None,
    landscape: bool = True,
    landscape_pair: tuple[int, int] | None = None,
    grid: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """The library's analysis pipeline on the sweep: angles, pair soups, ensemble vs
    soup, one interpolation curve and (``landscape``) the error landscape; figures under
    ``out/figures``; returns the numbers as JSON-able data with the figures' paths
    relative to ``out``. ``identity`` adds to the evaluators' identities what ``prepare``
    depends on."""
    t0 = time.perf_counter()
    shifts = list(config.shifts)
    fine = list(range(1, len(ingredients)))
    names = [info[i]["name"] for i in fine]
    splits = ["test", *shifts]
    n = config.analysis_examples
    ev, idx = _evaluator(task, {s: n for s in splits}, config, prepare, identity)
    scorer = compute.LogitScorer(ev, splits, cache=cache)
    own = [{s: logits[s][i][idx[s]] for s in splits} for i in fine]
    individual = [compute.accuracies(lg, scorer.labels) for lg in own]

    a, b = _pair(info, landscape_pair)
    pair_names = (info[a]["name"], info[b]["name"])
    m = config.landscape_examples
    per_shift = max(1, m // len(shifts))
    measure = _landscape_measure(task, config, prepare, identity, cache) if landscape else None
    scoring = Scoring(scorer, individual, measure, "test", "accuracy", own, scorer.labels)
    plan = AnalysisPlan(
        names,
        [("ID test", ["test"]), ("shifts", shifts)],
        (a - 1, b - 1),
        landscape=(a - 1, b - 1) if landscape else None,
        grid=grid or config.landscape_grid,
        titles=_titles(len(fine), pair_names),
        landscape_labels=("θ0 (LP init)", f"θ1 ({pair_names[0]})", f"θ2 ({pair_names[1]})"),
        aligned=task.data.aligned,
    )
    done = analysis_pipeline(
        [ingredients[i] for i in fine], ingredients[0], scoring, plan, out / "figures",
        integers="first", progress=progress, stages=stages,
    )  # fmt: skip
    result = _numbers(done, names, (a, b), pair_names)
    result["examples_per_split"] = {s: len(idx[s]) for s in splits}
    if done.landscape is not None:
        result["landscape"] = {
            **done.landscape.to_json(),
            # the three models themselves, measured on the same examples as the grid
            "at_models": [measure(ms.materialize(ingredients[i])) for i in (0, a, b)],
            "models": ["model_0", *pair_names],
            "examples": {"train": m, "test": m, "per shift": per_shift},
        }
    timing = dict(done.timing)
    timing["total"] = time.perf_counter() - t0
    result["timing_seconds"] = timing
    r_angle = done.pearson_angle_advantage
    log(
        f"analyses: {len(done.pairs)} pair soups, r(angle, advantage) = "
        f"{_fmt(r_angle['ID test'])} ID / {_fmt(r_angle['shifts'])} shifts "
        f"({timing['total']:.0f} s)"
    )
    return result


def _numbers(
    done: Any, names: Sequence[str], pair: tuple[int, int], pair_names: tuple[str, str]
) -> dict[str, Any]:
    """The pipeline's results as JSON-able data, figures relative to the output folder."""
    a, b = pair
    return {
        "angles": done.angles.to_json(),
        "pairs": [
            {**asdict(p), "names": [names[p.i], names[p.j]]} for p in done.pairs
        ],  # i, j index the fine-tunes (model_1 is 0)
        "pearson_angle_advantage": done.pearson_angle_advantage,
        "pearson_soup_ensemble": done.pearson_soup_ensemble,
        "curve": {**asdict(done.curve), "i": a, "j": b, "names": list(pair_names)},
        "figures": {
            key: f"figures/{done.figures[key].name}"
            for key in ("angles", "cosine", "ensemble_vs_soup", "interpolation", "landscape")
            if key in done.figures
        },
    }


def _pair(info: Sequence[Mapping[str, Any]], given: tuple[int, int] | None) -> tuple[int, int]:
    """The pair of fine-tunes (indices into the ingredients) for the curve and the
    landscape: ``given``, or the two best on held-out."""
    by_val = sorted(range(1, len(info)), key=lambda i: -info[i]["scores"]["val"])
    a, b = given or (by_val[0], by_val[1])
    for i in (a, b):
        if not 1 <= i < len(info):
            raise ValueError(f"landscape models must be fine-tunes 1..{len(info) - 1}, got {i}")
    return a, b


def _landscape_measure(
    task: Task,
    config: Config,
    prepare: Callable | None,
    identity: Mapping[str, Any] | None,
    cache: LogitCache,
) -> Callable[[Mapping[str, torch.Tensor]], dict[str, float]]:
    """Train loss, test error and mean shift error of a state, on ``landscape_examples``
    of train and test and as many in all of the shifts (logits cached)."""
    shifts = list(config.shifts)
    m = config.landscape_examples
    sizes = {"train": m, "test": m, **{s: max(1, m // len(shifts)) for s in shifts}}
    scorer = compute.LogitScorer(_evaluator(task, sizes, config, prepare, identity)[0], cache=cache)

    def measure(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        lg = scorer.logits(state)
        acc = compute.accuracies(lg, scorer.labels)
        return {
            "train loss": float(F.cross_entropy(lg["train"], scorer.labels["train"])),
            "test error": 1 - acc["test"],
            "shift error": 1 - figures.mean_of(acc, shifts),
        }

    return measure


def _titles(k: int, names: tuple[str, str]) -> dict[str, str]:
    """The figures' titles, after the paper's figures; ``k`` fine-tunes."""
    return {
        "angles": f"Angle vs interpolation advantage, {k * (k - 1) // 2} pairs (Figure 3)",
        "cosine": "Cosine of task vectors θi − θ0",
        "ensemble_vs_soup": "2-model ensemble vs soup (Figure 4)",
        "interpolation": f"{names[0]} to {names[1]}: weights vs logits (Figure 4)",
        "landscape": f"Error landscape on the plane of model_0, {names[0]}, {names[1]} (Figure 2)",
    }


def _fmt(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"
