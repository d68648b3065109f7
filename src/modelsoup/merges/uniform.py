"""Uniform soup: the plain average of every ingredient.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", ICML 2022, Table 2: f(x, mean_i θi).
With ``weights`` it is the weighted average sum_i wi θi (weights >= 0, summing to 1);
``weights_for`` gives some tensors weights of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..checkpoints.ingredients import Ingredient
from ..ops.arithmetic import Combination, weighted_average
from ..ops.checks import check_weights


def uniform_soup(
    ingredients: Sequence[Ingredient],
    weights: Sequence[float] | None = None,
    *,
    weights_for: Mapping[str, Sequence[float]] | None = None,
    arithmetic: str = "mean",
    **options,
) -> Combination:
    """The uniform (or weighted) soup of ``ingredients``, lazy: nothing is read until it is
    saved or evaluated. ``weights_for``: {tensor name: its weights} (each non-negative,
    summing to 1), for the tensors whose weights differ from ``weights``. Options as
    `modelsoup.Combination`: ``accumulate``, ``dtype``, ``integers``, ``check_finite``."""
    per = {n: check_weights(w, len(ingredients)) for n, w in (weights_for or {}).items()}
    return weighted_average(
        ingredients, weights, per_tensor=per or None, arithmetic=arithmetic, **options
    )
