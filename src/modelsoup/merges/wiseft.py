"""WiSE-FT: interpolate fine-tuned weights back toward the pretrained ones.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022:
theta(a) = (1 - a) theta0 + a theta_ft, for one scalar a. The model-soups paper notes
that interpolating a soup toward theta0 improves robustness further. `wiseft_scan`
scores a grid of a on the held-out split and reports every split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..evaluators.logits import split_scores
from ..evaluators.protocols import Evaluator, LogitEvaluator, evaluate
from ..ops.arithmetic import Combination, interpolate

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def wise_ft(base: Ingredient, finetuned: Ingredient, alpha: float, **options) -> Combination:
    """``(1 - alpha) * base + alpha * finetuned``, lazy (exact at 0 and 1)."""
    return interpolate(base, finetuned, alpha, **options)


def wiseft_scan(
    base: Ingredient,
    finetuned: Ingredient,
    evaluator: Evaluator,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    scores: Callable[[Mapping[str, torch.Tensor]], dict[str, float]] | None = None,
    **options,
) -> list[dict[str, Any]]:
    """Score ``wise_ft(base, finetuned, a)`` for each ``a``: the held-out score, and with
    a `LogitEvaluator` the score on every split (through ``scores``, a state's score per
    split, when given: e.g. a cached `analysis.compute.LogitScorer` of the evaluator).
    Returns one dict per ``a``."""
    out = []
    for a in alphas:
        state = materialize(wise_ft(base, finetuned, a, **options))
        row: dict[str, Any] = {"alpha": a}
        if isinstance(evaluator, LogitEvaluator):
            row.update(scores(state) if scores is not None else split_scores(evaluator, state))
            row["heldout"] = row[evaluator.selection]
        else:
            row["heldout"] = evaluate(evaluator, state, what=f"WiSE-FT at alpha={a}").score
        out.append(row)
    return out


def best_alpha(scan: Sequence[dict[str, Any]]) -> float:
    """The alpha with the best held-out score (the largest among ties: closest to the
    fine-tuned model)."""
    return max(scan, key=lambda r: (r["heldout"], r["alpha"]))["alpha"]
