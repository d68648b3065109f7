"""Uniform soup: the plain average of every ingredient.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", ICML 2022, Table 2: f(x, mean_i θi).
With ``weights`` it is the weighted average sum_i wi θi (weights >= 0, summing to 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..checkpoints.ingredients import Ingredient
from ..ops.arithmetic import Combination, weighted_average


def uniform_soup(
    ingredients: Sequence[Ingredient], weights: Sequence[float] | None = None, **options
) -> Combination:
    """The uniform (or weighted) soup of ``ingredients``, lazy: nothing is read until it is
    saved or evaluated. Options as `modelsoup.Combination`: ``accumulate``, ``dtype``,
    ``integers``, ``check_finite``."""
    return weighted_average(ingredients, weights, **options)
