"""Hyperparameters chosen on the held-out split: score a small grid, keep the best.

Used by the merges with hyperparameters (task arithmetic's lambda, TIES' and DARE's
lambda and density), as WiSE-FT chooses its alpha.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..evaluators.logits import split_scores
from ..evaluators.protocols import Evaluator, LogitEvaluator, evaluate


def grid(**axes: Sequence[float]) -> list[dict[str, float]]:
    """Every combination of the axes' values, in order: ``grid(lam=[.5, 1], density=[.2])``."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def grid_search(
    make: Callable[..., Ingredient],
    points: Sequence[Mapping[str, float]],
    evaluator: Evaluator,
    *,
    what: str = "a merge",
    scores: Callable[[Mapping[str, Any]], dict[str, float]] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score ``make(**point)`` for every point on the held-out split; return the best point
    (the first among equal scores) and one row per point: the point, its held-out score
    and, with a `LogitEvaluator`, its score on every split. ``scores`` (a state's score
    per split, e.g. a cached `LogitScorer`) replaces the evaluator's own."""
    rows: list[dict[str, Any]] = []
    for point in points:
        state = materialize(make(**point))
        row: dict[str, Any] = dict(point)
        if isinstance(evaluator, LogitEvaluator):
            row.update(scores(state) if scores else split_scores(evaluator, state))
            row["heldout"] = row[evaluator.selection]
        else:
            label = ", ".join(f"{k}={v:g}" for k, v in point.items())
            row["heldout"] = evaluate(evaluator, state, what=f"{what} at {label}").score
        rows.append(row)
    best = max(range(len(rows)), key=lambda i: (rows[i]["heldout"], -i))
    return dict(points[best]), rows


def tune(
    merge: Any,
    inputs: Sequence[Any],
    evaluator: Evaluator,
    axes: Mapping[str, Sequence[float]],
    *,
    fixed: Mapping[str, Any] | None = None,
    scores: Callable[[Mapping[str, Any]], dict[str, float]] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The held-out search of a registered merge (`registry.Merge`) over ``axes`` (its
    tuned parameters' grids), the other parameters ``fixed``: the best point and one row
    per point (see `grid_search`). The state the merge shares across its grid (TIES'
    magnitude thresholds, found once per density) is made once for the whole search.
    What the merge commands and `compare` both call."""
    shared = merge.shared() if merge.shared else {}
    base = {**(fixed or {}), **shared}

    def make(**point: float) -> Any:
        return merge.make(tuple(inputs), **base, **point)[0]

    return grid_search(make, grid(**axes), evaluator, what=merge.name, scores=scores)
