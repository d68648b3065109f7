"""DARE: drop task-vector entries at random, rescale the rest, then add or merge by sign.

Yu et al., "Language Models are Super Mario" (DARE), ICML 2024: drop each entry of
tau_i = theta_i - theta0 with probability 1 - density and rescale the rest by 1/density;
``dare-linear`` sums them (task arithmetic), ``dare-ties`` (``consensus``) elects signs as
TIES does. ``rescale="density"`` is the paper's 1/density (the default here: the
expectation argument needs it); ``"l1"`` is mergekit 0.1.5's ``rescale: true`` (the kept
entries scaled to the task vector's L1 norm) and ``"none"`` its ``rescale: false``.
Drops are seeded (see `task_vectors.uniforms`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise
from .task_vectors import (
    check_density,
    per_model,
    rescale_l1,
    sparsified_merge,
    uniforms,
    work_dtype,
)


def dare(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float | Sequence[float] = 0.5,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    consensus: bool = False,
    normalize: bool = False,
    rescale: Literal["density", "l1", "none"] = "density",
    seed: int = 0,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """DARE: random drops rescaled (see the module), then summed or merged by sign
    (``consensus``: dare-ties); lazy, one tensor at a time. ``precision``: what it
    computes in (``"inputs"``: the inputs' dtype, as mergekit)."""
    check_density(density)
    densities = per_model(density, len(ingredients), "density")
    if rescale not in ("density", "l1", "none"):
        raise SoupError(f"rescale must be 'density', 'l1' or 'none', got {rescale!r}")

    def sparsify(name: str, i: int, tau: torch.Tensor) -> torch.Tensor:
        density = densities[i]
        if density >= 1:
            return tau
        work = work_dtype(tau)  # the density as mergekit draws against it (0.53 -> 0.53125)
        kept = (uniforms(tau.shape, seed, name, i) < torch.tensor(density, dtype=work)).to(work)
        if rescale == "density":
            return tau * kept.to(tau.dtype) / density
        return rescale_l1(tau.to(work), kept, rescale).to(tau.dtype)

    return sparsified_merge(
        ingredients, base, sparsify, kind="dare-ties" if consensus else "dare-linear",
        weights=weights, lam=lam, consensus=consensus, normalize=normalize, integers=integers,
        precision=precision,
    )  # fmt: skip
