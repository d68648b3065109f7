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

import threading
from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient
from ..checkpoints.layout import is_float
from ..errors import NonFiniteError
from ..ops.arithmetic import IntegerPolicy, all_finite
from ..ops.tensorwise import Precision, Tensorwise, same_integers
from .task_vectors import (
    check_density,
    check_weights,
    merge_task_vectors,
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


class Ties:
    """TIES as a lazy ingredient streamed in chunks: per tensor, each task vector's
    magnitude threshold (its k-th largest |tau_i|, k = max(1, int(density * n))) is found
    once, one task vector at a time; every chunk is then trimmed, sign-elected and merged
    on its own. Memory: two copies of one tensor while thresholds are found, then k chunks.
    An entry whose magnitude ties the threshold is kept (top-k keeps exactly k; they differ
    only on exact ties of nonzero magnitudes). With ``consensus=False`` and density 1 it
    is task arithmetic in mergekit's order of operations, streamed the same way."""

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        base: Ingredient,
        *,
        density: float,
        weights: Sequence[float],
        lam: float,
        normalize: bool,
        integers: IntegerPolicy,
        thresholds: dict[tuple[str, float], list[float]] | None = None,
        consensus: bool = True,
    ):
        from ..ops.checks import check_compatible

        self.ingredients, self.base = list(ingredients), base
        self._layout = check_compatible([*ingredients, base])
        self.density, self.weights, self.lam = density, list(weights), lam
        self.normalize, self.integers, self.consensus = normalize, integers, consensus
        # (tensor, density) -> each task vector's threshold; shared between merges of the
        # same ingredients and base (a lambda grid) when the caller passes one dict.
        self._thresholds = thresholds if thresholds is not None else {}
        self._lock = threading.Lock()

    source = property(
        lambda self: f"{'TIES' if self.consensus else 'task arithmetic'} of {len(self.ingredients)}"
    )
    layout = property(lambda self: self._layout)
    files = property(lambda self: tuple(f for i in [*self.ingredients, self.base] for f in i.files))
    origin = NO_ORIGIN  # a merge of several models: nothing more to say

    def _threshold(self, name: str) -> list[float]:
        if self.density >= 1:  # every entry kept: nothing to find
            return [0.0] * len(self.ingredients)
        key = (name, self.density)
        with self._lock:
            if key not in self._thresholds:
                theta0 = self.base.get(name).float().reshape(-1)
                n = theta0.numel()
                k = max(int(self.density * n), 1)
                out = []
                for ing in self.ingredients:
                    if self.density >= 1 or n == 0:
                        out.append(0.0)
                        continue
                    tau = (ing.get(name).float().reshape(-1) - theta0).abs_()
                    out.append(float(torch.kthvalue(tau, n - k + 1).values))  # k-th largest
                    del tau
                self._thresholds[key] = out
            return self._thresholds[key]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        name = self._layout.canonical(name)
        spec = self._layout.spec(name)
        stop = spec.numel if stop is None else stop
        if not is_float(spec.dtype):
            return same_integers(name, [i.read(name, start, stop) for i in self.ingredients],
                                  self.integers)  # fmt: skip
        theta0 = self.base.read(name, start, stop).float()
        taus = []
        for ing, thr in zip(self.ingredients, self._threshold(name)):
            tau = ing.read(name, start, stop).float() - theta0
            taus.append(tau * (tau.abs() >= thr))
        merged = merge_task_vectors(
            taus, self.weights, consensus=self.consensus, normalize=self.normalize
        )
        out = (theta0 + self.lam * merged).to(spec.dtype)
        if not all_finite(out):
            raise NonFiniteError(f"the {self.source} of tensor {name!r} is not finite")
        return out

    def get(self, name: str) -> torch.Tensor:
        return self.read(name).view(self._layout.spec(name).shape)


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
) -> Ties | Tensorwise:
    """TIES: top-``density`` trim, sign election, disjoint merge; lazy, streamed in chunks
    (see `Ties`). ``thresholds``: a dict to share the magnitude thresholds (the costly
    part) between TIES merges of the same ingredients and base, such as a grid over
    ``lam``; it is keyed by tensor and density. ``precision="inputs"``: computed in the
    inputs' dtype one whole tensor at a time, keeping exactly the top k as mergekit's
    argsort does (in half precision, magnitudes tie at the threshold often)."""
    check_density(density)
    w = check_weights(len(ingredients), weights)
    densities = per_model(density, len(ingredients), "density")
    if precision != "float32" or len(set(densities)) > 1:
        return sparsified_merge(
            ingredients, base, lambda name, i, tau: top_k(tau, densities[i]), kind="TIES",
            weights=w, lam=lam, consensus=True, normalize=normalize, integers=integers,
            precision=precision,
        )  # fmt: skip
    return Ties(
        ingredients, base, density=densities[0], weights=w, lam=lam, normalize=normalize,
        integers=integers, thresholds=thresholds,
    )  # fmt: skip
