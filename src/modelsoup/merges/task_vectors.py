"""The core the task-vector merges share (mergekit's "generalized task arithmetic"):
per tensor, sparsify each task vector tau_i = theta_i - theta0, weight it, sum (or merge
only the entries whose sign agrees with the weighted sum's, TIES' election), optionally
normalize by the weights summed, and add lambda times that to theta0.

A method that fits this pattern is a sparsifier: a function of (tensor name, ingredient
position, task vector) returning the sparsified task vector. DARE, DELLA and Model
Breadcrumbs are each one such function (see `sparsified_merge`); TIES and task
arithmetic in mergekit's order stream in chunks instead (`TrimmedMerge`), because TIES'
magnitude threshold can be found one task vector at a time.

Random drops come from `uniforms`: a CPU generator seeded by the merge's ``seed``, the
tensor's name and the ingredient's position, so that a seed gives the same merge on any
machine, whatever the order tensors are read in. (mergekit draws from torch's global
generator instead; the tests replace `uniforms` and mergekit's ``torch.bernoulli`` by the
same deterministic draws and find the merges equal.)
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient
from ..checkpoints.layout import is_float
from ..errors import NonFiniteError, SoupError, option
from ..ops.arithmetic import IntegerPolicy, all_finite
from ..ops.checks import check_compatible
from ..ops.tensorwise import Precision, Tensorwise, same_integers

# sparsify(name, i, tau) -> tau with entries dropped (and rescaled)
Sparsifier = Callable[[str, int, torch.Tensor], torch.Tensor]
Rescale = Literal["l1", "none"]


def uniforms(shape: Sequence[int], seed: int, name: str, i: int) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from a generator seeded by ``(seed, name, i)``."""
    key = hashlib.sha256(f"{seed}:{name}:{i}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))
    return torch.rand(tuple(shape), generator=g)


def work_dtype(tau: torch.Tensor) -> torch.dtype:
    """The dtype mergekit 0.1.5 draws random drops in on a CPU: bfloat16 for bfloat16
    task vectors, else at least float32 (its ``torch.bernoulli`` has no float16 kernel)."""
    if tau.dtype == torch.bfloat16:
        return tau.dtype
    return torch.promote_types(tau.dtype, torch.float32)


def rescale_l1(tau: torch.Tensor, kept: torch.Tensor, rescale: Rescale) -> torch.Tensor:
    """``tau * kept``; with ``rescale="l1"`` scaled so that its L1 norm is tau's (as
    mergekit's ``rescale: true``), unless either norm is under 1e-7."""
    masked = tau * kept
    if rescale == "none":
        return masked
    before, after = tau.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


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
    w = torch.tensor(list(weights), dtype=taus[0].dtype).view(-1, *([1] * taus[0].dim()))
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


def model_weights(k: int, weights: Sequence[float] | None) -> list[float]:
    """One weight per ingredient (default 1 each)."""
    w = [1.0] * k if weights is None else [float(x) for x in weights]
    if len(w) != k:
        raise SoupError(f"{len(w)} weights for {k} ingredients; give one each")
    return w


def check_density(density: float | Sequence[float]) -> None:
    for d in [density] if isinstance(density, (int, float)) else density:
        if not 0 < d <= 1:
            raise SoupError(f"{option('density')} must be in (0, 1], got {d}")


def per_model(value: float | Sequence[float], k: int, name: str) -> list[float]:
    """One value per ingredient: a number for each, or a list of k (mergekit sets
    ``density``, ``epsilon`` and ``gamma`` per model)."""
    if isinstance(value, (int, float)):
        return [float(value)] * k
    values = [float(v) for v in value]
    if len(values) != k:
        raise SoupError(f"{len(values)} values of {name} for {k} ingredients; give one each")
    return values


def sparsified_merge(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    sparsify: Sparsifier,
    *,
    kind: str,
    weights: Sequence[float] | None,
    lam: float,
    consensus: bool,
    normalize: bool,
    integers: IntegerPolicy,
    precision: Precision = "float32",
) -> Tensorwise:
    """theta0 + lam * merge(sparsify(tau_i)), one tensor at a time, lazy (memory: k + 1
    copies of one tensor); ``precision``: what it computes in (see `Tensorwise`)."""
    w = model_weights(len(ingredients), weights)

    def fn(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        *fts, theta0 = tensors
        taus = [sparsify(name, i, t - theta0) for i, t in enumerate(fts)]
        merged = merge_task_vectors(taus, w, consensus=consensus, normalize=normalize)
        return theta0 + lam * merged

    return Tensorwise(
        [*ingredients, base], fn, source=f"{kind} of {len(ingredients)}", integers=integers,
        precision=precision,
    )  # fmt: skip


class TrimmedMerge:
    """theta0 + lam * merge(trim(tau_i)) as a lazy ingredient streamed in chunks, TIES'
    and task arithmetic's (``consensus=False``, density 1): per tensor, each task vector's
    magnitude threshold (its k-th largest |tau_i|, k = max(1, int(density * n))) is found
    once, one task vector at a time; every chunk is then trimmed, sign-elected and merged
    on its own. Memory: two copies of one tensor while thresholds are found, then k chunks.
    An entry whose magnitude ties the threshold is kept (top-k keeps exactly k; they differ
    only on exact ties of nonzero magnitudes). With ``consensus=False`` and density 1 it
    is task arithmetic in mergekit's order of operations."""

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
