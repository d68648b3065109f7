"""Task arithmetic: add the weighted sum of task vectors to the base.

Ilharco et al., "Editing models with task arithmetic", ICLR 2023:
theta = theta0 + lambda * sum_i w_i (theta_i - theta0). As mergekit's
``task_arithmetic`` (no normalization by the weights' sum). Linear, so it streams in
chunks like the uniform soup.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import Combination, linear_combination


def task_arithmetic(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    **options,
) -> Combination:
    """``base + lam * sum_i w_i (theta_i - base)``, lazy; ``weights`` default 1 each."""
    w = [1.0] * len(ingredients) if weights is None else [float(x) for x in weights]
    if len(w) != len(ingredients):
        raise SoupError(f"{len(w)} weights for {len(ingredients)} ingredients; give one each")
    coefficients = [lam * x for x in w] + [1.0 - lam * sum(w)]
    return linear_combination([*ingredients, base], coefficients, **options)
