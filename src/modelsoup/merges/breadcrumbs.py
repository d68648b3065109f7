"""Model Breadcrumbs: drop each task vector's smallest entries and its largest outliers.

Davari and Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks", ECCV 2024, as mergekit 0.1.5's ``breadcrumbs`` and ``breadcrumbs_ties``: per
tensor, of the n entries of tau_i = theta_i - theta0 sorted by magnitude, the largest
int(gamma n) are dropped as outliers and the smallest as many as leave int(density n)
(fewer outliers are dropped if needed to keep that many); the rest are weighted and
summed (``breadcrumbs``) or merged by sign (``breadcrumbs_ties``); not normalized and
not rescaled by default; theta0 + lambda * that. Deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise
from .task_vectors import Rescale, check_density, per_model, rescale_l1, sparsified_merge


def outlier_mask(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """1 for the kept entries: ranks n_bot .. n_bot + int(density n) by magnitude."""
    n = tau.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = torch.sort(tau.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=tau.dtype)
    mask[order[bottom : bottom + keep]] = 1
    return mask.reshape(tau.shape)


def breadcrumbs(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float | Sequence[float] = 0.9,
    gamma: float | Sequence[float] = 0.01,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    consensus: bool = False,
    normalize: bool = False,
    rescale: Rescale = "none",
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """Model Breadcrumbs (``consensus``: with TIES' sign election); lazy, per tensor."""
    check_density(density)
    densities = per_model(density, len(ingredients), "density")
    gammas = per_model(gamma, len(ingredients), "gamma")
    for g in gammas:
        if not 0 <= g < 1:
            raise SoupError(f"{option('gamma')} must be in [0, 1), got {g}")

    def sparsify(name: str, i: int, tau: torch.Tensor) -> torch.Tensor:
        if densities[i] >= 1:
            return tau
        return rescale_l1(tau, outlier_mask(tau, densities[i], gammas[i]), rescale)

    return sparsified_merge(
        ingredients, base, sparsify,
        kind="breadcrumbs-ties" if consensus else "breadcrumbs", weights=weights, lam=lam,
        consensus=consensus, normalize=normalize, integers=integers, precision=precision,
    )  # fmt: skip


def breadcrumbs_ties(ingredients: Sequence[Ingredient], base: Ingredient, **options) -> Tensorwise:
    """Model Breadcrumbs with TIES' sign election (mergekit's ``breadcrumbs_ties``)."""
    return breadcrumbs(ingredients, base, consensus=True, **options)


breadcrumbs_ties.__wrapped__ = breadcrumbs  # type: ignore[attr-defined]  # its signature
