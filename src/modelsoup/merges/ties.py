"""TIES merging: sparsify the task vectors, elect a sign, merge what agrees.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023:
per tensor, (1) trim each task vector tau_i = theta_i - theta0 to its top ``density``
fraction by magnitude, (2) elect a sign per entry, the sign of sum_i w_i tau_i, (3) keep
the entries that agree with it and, with ``normalize``, divide by the sum of the weights
that agree; theta = theta0 + lambda * merged.

TIES follows mergekit 0.1.5's ``ties`` (generalized task arithmetic: sparsify, then
weight, then the sign consensus "sum", normalized by default; at least one entry kept),
streamed in chunks through a magnitude threshold per task vector: an entry whose
magnitude ties the threshold exactly is kept, where mergekit's argsort keeps exactly k
(144 of 109M values differ on the BERT-base benchmark; none on untied data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise
from .task_vectors import (
    TrimmedMerge,
    check_density,
    model_weights,
    per_model,
    sparsified_merge,
)


def top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """``tau`` with all but its k = max(1, int(density n)) largest magnitudes zeroed,
    exactly k kept (ties broken by the order of a descending argsort, as mergekit's)."""
    if density >= 1:
        return tau
    if tau.numel() == 0:
        return torch.zeros_like(tau)
    k = max(1, int(density * tau.numel()))
    mask = torch.zeros(tau.numel(), dtype=tau.dtype)
    mask[torch.argsort(tau.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return tau * mask.reshape(tau.shape)


def ties(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float | Sequence[float] = 0.5,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    normalize: bool = True,
    integers: IntegerPolicy = "error",
    thresholds: dict[tuple[str, float], list[float]] | None = None,
    precision: Precision = "float32",
) -> TrimmedMerge | Tensorwise:
    """TIES: top-``density`` trim, sign election, disjoint merge; lazy, streamed in chunks
    (see `TrimmedMerge`). ``thresholds``: a dict to share the magnitude thresholds (the costly
    part) between TIES merges of the same ingredients and base, such as a grid over
    ``lam``; it is keyed by tensor and density. ``precision="inputs"``: computed in the
    inputs' dtype one whole tensor at a time, keeping exactly the top k as mergekit's
    argsort does (in half precision, magnitudes tie at the threshold often)."""
    check_density(density)
    w = model_weights(len(ingredients), weights)
    densities = per_model(density, len(ingredients), "density")
    if precision != "float32" or len(set(densities)) > 1:
        return sparsified_merge(
            ingredients, base, lambda name, i, tau: top_k(tau, densities[i]), kind="TIES",
            weights=w, lam=lam, consensus=True, normalize=normalize, integers=integers,
            precision=precision,
        )  # fmt: skip
    return TrimmedMerge(
        ingredients, base, density=densities[0], weights=w, lam=lam, normalize=normalize,
        integers=integers, thresholds=thresholds,
    )  # fmt: skip
