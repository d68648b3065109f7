"""Task arithmetic: add the weighted sum of task vectors to the base.

Ilharco et al., "Editing models with task arithmetic", ICLR 2023:
theta = theta0 + lambda * sum_i w_i (theta_i - theta0). As mergekit's
``task_arithmetic`` (no normalization by the weights' sum). Linear, so it streams in
chunks like the uniform soup. ``arithmetic="anchored"`` (default) sums
``(sum c) theta_a + sum_i c_i (theta_i - theta_a)`` anchored on the largest coefficient
(a merge of identical checkpoints is that checkpoint bit for bit); ``"sum"`` computes
``theta0 + lambda * sum_i w_i (theta_i - theta0)`` in that order, bit-identical to
mergekit's ``task_arithmetic``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from ..ops.arithmetic import Combination, linear_combination, weighted_average
from ..ops.tensorwise import Precision, Tensorwise
from .task_vectors import TrimmedMerge, model_weights, sparsified_merge


def task_arithmetic(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    arithmetic: str = "anchored",
    weights_for: Mapping[str, Sequence[float]] | None = None,
    precision: Precision = "float32",
    **options,
) -> Combination | TrimmedMerge | Tensorwise:
    """``base + lam * sum_i w_i (theta_i - base)``, lazy; ``weights`` default 1 each;
    ``weights_for``: {tensor name: its own weights w_i}. ``options`` as `Combination`
    (with ``arithmetic="sum"``: ``integers`` only, and no ``weights_for``)."""
    w = model_weights(len(ingredients), weights)
    for name, ws in (weights_for or {}).items():
        if len(ws) != len(ingredients):
            raise SoupError(f"{len(ws)} weights for {name}, {len(ingredients)} ingredients")
    if weights_for and arithmetic != "anchored":
        raise SoupError(
            f"per-tensor weights ({option('weights_for')}) need {option('arithmetic', 'anchored')}"
        )
    if precision != "float32":  # mergekit's order, in the inputs' dtype
        if arithmetic != "sum" or weights_for:
            raise SoupError("precision='inputs' computes as mergekit: arithmetic='sum' only")
        return sparsified_merge(
            ingredients, base, lambda name, i, tau: tau, kind="task arithmetic", weights=w,
            lam=lam, consensus=False, normalize=False,
            integers=options.pop("integers", "error"), precision=precision,
        )  # fmt: skip
    if arithmetic == "sum":
        dtype = options.pop("dtype", None)
        options.pop("accumulate", None)
        merged = TrimmedMerge(
            ingredients, base, density=1.0, weights=w, lam=lam, normalize=False,
            consensus=False, integers=options.pop("integers", "error"),
        )  # fmt: skip
        return merged if dtype is None else weighted_average([merged], dtype=dtype)
    if arithmetic != "anchored":
        raise SoupError(f"arithmetic must be 'anchored' or 'sum', got {arithmetic!r}")

    def coefficients(w: Sequence[float]) -> list[float]:
        return [lam * float(x) for x in w] + [1.0 - lam * sum(float(x) for x in w)]

    per = {n: coefficients(ws) for n, ws in (weights_for or {}).items()}
    return linear_combination(
        [*ingredients, base], coefficients(w), per_tensor=per or None, **options
    )
