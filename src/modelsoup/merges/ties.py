"""TIES merging and DARE: sparsify the task vectors, elect a sign, merge what agrees.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023:
per tensor, (1) trim each task vector tau_i = theta_i - theta0 to its top ``density``
fraction by magnitude, (2) elect a sign per entry, the sign of sum_i w_i tau_i, (3) keep
the entries that agree with it and, with ``normalize``, divide by the sum of the weights
that agree; theta = theta0 + lambda * merged.

Yu et al., "Language Models are Super Mario" (DARE), ICML 2024: instead of the top-k,
drop each task-vector entry with probability 1 - density and rescale the rest by
1 / density; ``dare-linear`` sums them (task arithmetic), ``dare-ties`` elects signs as
TIES does. Drops are drawn from a CPU generator seeded by ``seed``, the tensor's name and
the ingredient's position, so a seed gives the same soup on any machine.

TIES follows mergekit 0.1.5's ``ties`` (generalized task arithmetic: sparsify, then
weight, then the sign consensus "sum", normalized by default; at least one entry kept),
streamed in chunks through a magnitude threshold per task vector: an entry whose
magnitude ties the threshold exactly is kept, where mergekit's argsort keeps exactly k
(144 of 109M values differ on the BERT-base benchmark; none on untied data).
DARE follows the paper rather than mergekit: mergekit 0.1.5 rescales the kept entries so
that their L1 norm matches the task vector's, not by 1/density, and draws its drops from
torch's global generator (no seed); here the rescale is 1/density, as the paper's
expectation argument needs, and the drops are seeded.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.layout import is_float
from ..errors import NonFiniteError, SoupError
from ..ops.arithmetic import IntegerPolicy, all_finite
from ..ops.tensorwise import Tensorwise, same_integers


def random_mask(tau: torch.Tensor, density: float, seed: int, name: str, i: int) -> torch.Tensor:
    """Keep each entry with probability ``density``, from a generator seeded by
    ``(seed, name, i)``."""
    key = hashlib.sha256(f"{seed}:{name}:{i}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))
    return (torch.rand(tau.shape, generator=g) < density).to(tau.dtype)


def merge_task_vectors(
    taus: list[torch.Tensor],
    weights: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
) -> torch.Tensor:
    """Sum of ``w_i tau_i``: with ``consensus``, only entries whose sign agrees with the
    sign of the weighted sum; with ``normalize``, divided per entry by the weights
    summed (of the agreeing entries, with consensus)."""
    w = torch.tensor(list(weights), dtype=torch.float32).view(-1, *([1] * taus[0].dim()))
    weighted = torch.stack(taus) * w
    if consensus:
        sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
        mask = (weighted.sign() == sign).to(weighted.dtype)
        mixed = (weighted * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    return mixed / divisor if normalize else mixed


def _check(k: int, weights: Sequence[float] | None, density: float) -> list[float]:
    if not 0 < density <= 1:
        raise SoupError(f"--density must be in (0, 1], got {density}")
    w = [1.0] * k if weights is None else [float(x) for x in weights]
    if len(w) != k:
        raise SoupError(f"{len(w)} weights for {k} ingredients; give one each")
    return w


class Ties:
    """TIES as a lazy ingredient streamed in chunks: per tensor, each task vector's
    magnitude threshold (its k-th largest |tau_i|, k = max(1, int(density * n))) is found
    once, one task vector at a time; every chunk is then trimmed, sign-elected and merged
    on its own. Memory: two copies of one tensor while thresholds are found, then k chunks.
    An entry whose magnitude ties the threshold is kept (top-k keeps exactly k; they differ
    only on exact ties of nonzero magnitudes)."""

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
    ):
        from ..ops.checks import check_compatible

        self.ingredients, self.base = list(ingredients), base
        self._layout = check_compatible([*ingredients, base])
        self.density, self.weights, self.lam = density, list(weights), lam
        self.normalize, self.integers = normalize, integers
        # (tensor, density) -> each task vector's threshold; shared between merges of the
        # same ingredients and base (a lambda grid) when the caller passes one dict.
        self._thresholds = thresholds if thresholds is not None else {}
        self._lock = threading.Lock()

    source = property(lambda self: f"TIES of {len(self.ingredients)}")
    layout = property(lambda self: self._layout)
    files = property(lambda self: tuple(f for i in [*self.ingredients, self.base] for f in i.files))

    def _threshold(self, name: str) -> list[float]:
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
        merged = merge_task_vectors(taus, self.weights, consensus=True, normalize=self.normalize)
        out = (theta0 + self.lam * merged).to(spec.dtype)
        if not all_finite(out):
            raise NonFiniteError(f"the TIES merge of tensor {name!r} is not finite")
        return out

    def get(self, name: str) -> torch.Tensor:
        return self.read(name).view(self._layout.spec(name).shape)


def ties(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float = 0.5,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    normalize: bool = True,
    integers: IntegerPolicy = "error",
    thresholds: dict[tuple[str, float], list[float]] | None = None,
) -> Ties:
    """TIES: top-``density`` trim, sign election, disjoint merge; lazy, streamed in chunks
    (see `Ties`). ``thresholds``: a dict to share the magnitude thresholds (the costly
    part) between TIES merges of the same ingredients and base, such as a grid over
    ``lam``; it is keyed by tensor and density."""
    w = _check(len(ingredients), weights, density)
    return Ties(
        ingredients, base, density=density, weights=w, lam=lam, normalize=normalize,
        integers=integers, thresholds=thresholds,
    )  # fmt: skip


def dare(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    density: float = 0.5,
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    consensus: bool = False,
    normalize: bool = False,
    seed: int = 0,
    integers: IntegerPolicy = "error",
) -> Tensorwise:
    """DARE: random drops rescaled by 1/``density``, then summed (``dare-linear``) or
    merged by sign (``consensus``: ``dare-ties``); lazy, one tensor at a time."""
    w = _check(len(ingredients), weights, density)

    def fn(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        *fts, theta0 = tensors
        taus = [
            (t - theta0) * random_mask(t, density, seed, name, i) / density
            for i, t in enumerate(fts)
        ]
        merged = merge_task_vectors(taus, w, consensus=consensus, normalize=normalize)
        return theta0 + lam * merged

    kind = "dare-ties" if consensus else "dare-linear"
    return Tensorwise(
        [*ingredients, base], fn, source=f"{kind} of {len(ingredients)}", integers=integers
    )
