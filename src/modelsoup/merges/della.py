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
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Tensorwise
from .task_vectors import Rescale, rescale_l1, sparsified_merge, uniforms


def magprune_probabilities(tau: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Each entry's keep probability, by its magnitude's rank within its row."""
    rows = tau if tau.dim() >= 2 else tau.unsqueeze(0)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(rows.dtype) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    span = torch.where(high > low, high - low, 1)
    return (density - epsilon) + ((ranks - low) / span).clamp(0, 1) * 2 * epsilon


def della(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float = 0.5,
    epsilon: float = 0.15,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    consensus: bool = True,
    normalize: bool | None = None,
    rescale: Rescale = "l1",
    seed: int = 0,
    integers: IntegerPolicy = "error",
) -> Tensorwise:
    """DELLA (``consensus``, normalized by default) or linear DELLA (``consensus=False``,
    not normalized by default); lazy, one tensor at a time."""
    if density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        raise SoupError(
            f"--density {density:g} +/- --epsilon {epsilon:g} must lie in (0, 1): "
            "choose a smaller epsilon"
        )
    if normalize is None:
        normalize = consensus

    def sparsify(name: str, i: int, tau: torch.Tensor) -> torch.Tensor:
        if density >= 1:
            return tau
        p = magprune_probabilities(tau, density, epsilon)
        kept = (uniforms(p.shape, seed, name, i) < p).to(tau.dtype).reshape(tau.shape)
        return rescale_l1(tau, kept, rescale)

    return sparsified_merge(
        ingredients, base, sparsify, kind="DELLA" if consensus else "linear DELLA",
        weights=weights, lam=lam, consensus=consensus, normalize=normalize, integers=integers,
    )  # fmt: skip


def della_linear(ingredients: Sequence[Ingredient], base: Ingredient, **options) -> Tensorwise:
    """Linear DELLA: `della` without the sign election (mergekit's ``della_linear``)."""
    return della(ingredients, base, consensus=False, **options)
