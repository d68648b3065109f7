"""DELLA: drop task-vector entries with a probability that falls with their magnitude.

Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", 2024, as mergekit 0.1.5's ``della`` and ``della_linear``
(MagPrune): per row of each task vector (a 1-D tensor is one row), entries are ranked by
magnitude and kept with probability from density - epsilon (smallest) to
density + epsilon (largest), linear in the rank; the kept entries are scaled to the task
vector's L1 norm (``rescale``), weighted, and summed (``della_linear``) or merged by sign
and normalized by the agreeing weights (``della``); theta0 + lambda * that.
A row of one entry is kept with probability density (mergekit divides 0 by 0 there).
Drops are seeded (see `task_vectors.uniforms`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise
from .task_vectors import Rescale, per_model, rescale_l1, sparsified_merge, uniforms, work_dtype


def magprune_probabilities(tau: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Each entry's keep probability, by its magnitude's rank within its row (in
    `work_dtype`, as mergekit)."""
    rows = tau if tau.dim() >= 2 else tau.unsqueeze(0)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(work_dtype(tau)) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    span = torch.where(high > low, high - low, 1)
    return (density - epsilon) + ((ranks - low) / span).clamp(0, 1) * 2 * epsilon


def della(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float | Sequence[float] = 0.5,
    epsilon: float | Sequence[float] = 0.15,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    consensus: bool = True,
    normalize: bool | None = None,
    rescale: Rescale = "l1",
    seed: int = 0,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """DELLA (``consensus``, normalized by default) or linear DELLA (``consensus=False``,
    not normalized by default); lazy, one tensor at a time."""
    densities = per_model(density, len(ingredients), "density")
    epsilons = per_model(epsilon, len(ingredients), "epsilon")
    for d, e in zip(densities, epsilons):
        if d < 1 and not (d - e > 0 and d + e < 1):
            raise SoupError(
                f"{option('density', f'{d:g}')} +/- {option('epsilon', f'{e:g}')} must lie in "
                "(0, 1): choose a smaller epsilon"
            )
    if normalize is None:
        normalize = consensus

    def sparsify(name: str, i: int, tau: torch.Tensor) -> torch.Tensor:
        if densities[i] >= 1:
            return tau
        p = magprune_probabilities(tau, densities[i], epsilons[i])
        kept = (uniforms(p.shape, seed, name, i) < p).to(p.dtype).reshape(tau.shape)
        return rescale_l1(tau.to(p.dtype), kept, rescale).to(tau.dtype)

    return sparsified_merge(
        ingredients, base, sparsify, kind="DELLA" if consensus else "linear DELLA",
        weights=weights, lam=lam, consensus=consensus, normalize=normalize, integers=integers,
        precision=precision,
    )  # fmt: skip


def della_linear(ingredients: Sequence[Ingredient], base: Ingredient, **options) -> Tensorwise:
    """Linear DELLA: `della` without the sign election (mergekit's ``della_linear``)."""
    return della(ingredients, base, consensus=False, **options)


della_linear.__wrapped__ = della  # type: ignore[attr-defined]  # its signature: della's
