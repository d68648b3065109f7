"""Streamed arithmetic on ingredients: combinations, running means, inner products.

Everything here reads tensors by name, in bounded chunks, so memory does not grow with
the number of ingredients: a k-way average holds one chunk per step plus its result.
A combination is itself an ingredient, so operations compose lazily
(``task_vector(interpolate(a, b, 0.5), base)``) and only a writer or `materialize`
makes the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient
from ..checkpoints.layout import Layout, TensorSpec, is_float
from ..checkpoints.stream import chunk_ranges, stream_chunks
from ..errors import MismatchError, NonFiniteError, SoupError, option
from .checks import check_compatible, check_weights

IntegerPolicy = Literal["error", "first"]
INTEGER_POLICIES: tuple[str, ...] = ("error", "first")

# Gram matrices stack k chunks in float64; a larger budget keeps each matmul efficient.
GRAM_CHUNK_BYTES = 64 << 20


ARITHMETIC = ("mean", "sum")


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` has no NaN or Inf. One float64 sum (NaN and Inf propagate into it)
    settles the common case in a single pass; a non-finite sum (which a huge but finite
    tensor can also give) is confirmed element by element."""
    if t.numel() == 0 or math.isfinite(float(t.sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(t).all())


class Combination:
    """The ingredient ``sum_i c_i * theta_i``, computed one chunk at a time on demand.

    Floating tensors are accumulated in ``accumulate`` (float32 by default) and cast to
    ``dtype`` (default: each tensor's ingredient dtype). Both ways of summing below
    work on differences between ingredients, so a soup of identical ingredients (or an
    interpolation at an endpoint) returns the ingredient bit for bit, which a plain
    sum-then-divide cannot promise (measured: (x+x+x)/3 differs from x in 15% of
    float32 values), and fine-tunes of one model, being close, lose little to rounding:

    - non-negative coefficients (averages, interpolations): the running weighted mean
      ``m <- m + (c_i / W_i) (θi - m)`` with ``W_i = c_1 + ... + c_i``, one fused
      ``lerp`` per ingredient (the formula of torch.optim.swa_utils), scaled by
      ``sum c`` at the end when that is not 1;
    - any other coefficients (task arithmetic): anchored on the ingredient with the
      largest coefficient, ``(sum c) θa + sum_i c_i (θi - θa)``.

    ``arithmetic="sum"`` instead sums ``w_i θ_i`` from zero and divides by ``sum w``, as
    mergekit's linear merge does (bit-identical to it for uniform weights), at the cost
    of the exactness above.

    ``per_tensor`` gives some tensors their own coefficients (Model Stock, soups learned by
    layer); the others use ``coefficients``.

    Integer and bool tensors are never combined: ``integers="error"`` requires them to
    be equal in every ingredient, ``"first"`` takes the first ingredient's value.
    With ``check_finite`` (default), NaN or Inf in any ingredient, or an overflow of the
    output dtype, raises `NonFiniteError` naming the file and the tensor.
    """

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        coefficients: Sequence[float],
        *,
        accumulate: torch.dtype = torch.float32,
        dtype: torch.dtype | None = None,
        integers: IntegerPolicy = "error",
        check_finite: bool = True,
        per_tensor: Mapping[str, Sequence[float]] | None = None,
        arithmetic: str = "mean",
    ):
        if arithmetic not in ARITHMETIC:
            raise SoupError(f"arithmetic must be one of {ARITHMETIC}, got {arithmetic!r}")
        self.arithmetic = arithmetic
        self.ingredients = list(ingredients)
        self.coefficients = self._check([float(c) for c in coefficients])
        self.per_tensor = {
            n: self._check([float(c) for c in cs]) for n, cs in (per_tensor or {}).items()
        }
        if integers not in INTEGER_POLICIES:
            raise SoupError(f"integers must be one of {INTEGER_POLICIES}, got {integers!r}")
        if not accumulate.is_floating_point:
            raise SoupError(f"accumulate must be a floating dtype, got {accumulate}")
        self.accumulate = accumulate
        self.integers = integers
        self.check_finite = check_finite
        shared = check_compatible(self.ingredients, allow_float_dtype_mix=dtype is not None)
        self._layout = Layout(
            {
                n: TensorSpec(
                    s.shape, dtype if dtype is not None and is_float(s.dtype) else s.dtype
                )
                for n, s in shared.specs.items()
            },
            shared.aliases,
        )
        unknown = set(self.per_tensor) - set(shared.specs)
        if unknown:
            raise SoupError(
                f"per-tensor coefficients for tensors the ingredients lack: {sorted(unknown)[:5]}"
            )

    def _check(self, coefficients: list[float]) -> list[float]:
        if len(coefficients) != len(self.ingredients):
            raise SoupError(
                f"{len(coefficients)} coefficients for {len(self.ingredients)} "
                "ingredients; give one per ingredient"
            )
        if not all(math.isfinite(c) for c in coefficients):
            raise SoupError(f"coefficients must be finite, got {coefficients}")
        return coefficients

    @property
    def source(self) -> str:
        k = len(self.ingredients)
        return f"combination of {k} ingredient{'s' * (k != 1)} ({self.ingredients[0].source}, ...)"

    @property
    def layout(self) -> Layout:
        return self._layout

    origin = NO_ORIGIN  # arithmetic on ingredients: nothing more to say

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(f for ing in self.ingredients for f in ing.files))

    def get(self, name: str) -> torch.Tensor:
        spec = self._layout.spec(name)
        return _assemble(self, name, spec)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        name = self._layout.canonical(name)
        spec = self._layout.specs[name]
        stop = spec.numel if stop is None else stop
        if not is_float(spec.dtype):
            return self._read_integer(name, start, stop)
        coefs = self.per_tensor.get(name, self.coefficients)
        # The running mean needs non-negative coefficients and a positive total.
        if self.arithmetic == "sum":
            out = self._plain_sum(name, start, stop, coefs)
        elif all(c >= 0 for c in coefs) and sum(coefs) > 0:
            out = self._running_mean(name, start, stop, coefs)
        else:
            out = self._anchored_sum(name, start, stop, coefs)
        out = out.to(spec.dtype)
        if self.check_finite and not all_finite(out):
            raise self._nonfinite(name, start, stop, spec)
        return out

    def _running_mean(self, name: str, start: int, stop: int, coefs: list[float]) -> torch.Tensor:
        terms = [(ing, c) for ing, c in zip(self.ingredients, coefs) if c > 0]
        first, total = terms[0]
        m = first.read(name, start, stop).to(self.accumulate, copy=True)
        for ing, c in terms[1:]:
            total += c
            m.lerp_(ing.read(name, start, stop).to(self.accumulate), c / total)
        if abs(sum(coefs) - 1.0) > 1e-12:
            m.mul_(sum(coefs))
        return m

    def _plain_sum(self, name: str, start: int, stop: int, coefs: list[float]) -> torch.Tensor:
        # What most merging tools do (mergekit's linear merge): accumulate w_i * θ_i in
        # order from zero, then divide by sum w_i. Averages use w = c / max(c), so a
        # uniform soup sums the ingredients with weight 1 and divides by k, bit for bit
        # as mergekit does.
        acc = torch.zeros(stop - start, dtype=self.accumulate)
        average = all(c >= 0 for c in coefs) and sum(coefs) > 0
        top = max(coefs) if average else 1.0
        w = [c / top for c in coefs]
        for ing, wi in zip(self.ingredients, w):
            if wi != 0:
                coef = torch.tensor(wi, dtype=self.accumulate)
                acc.addcmul_(ing.read(name, start, stop).to(self.accumulate), coef)
        if average:
            acc.div_(torch.tensor(sum(w), dtype=self.accumulate))
            if abs(sum(coefs) - 1.0) > 1e-12:
                acc.mul_(sum(coefs))
        return acc

    def _anchored_sum(self, name: str, start: int, stop: int, coefs: list[float]) -> torch.Tensor:
        # Anchored on the largest coefficient (first among equals).
        a = max(range(len(coefs)), key=lambda i: coefs[i])
        anchor = self.ingredients[a].read(name, start, stop).to(self.accumulate)
        acc: torch.Tensor | None = None
        diff = torch.empty_like(anchor)
        for i, (ing, c) in enumerate(zip(self.ingredients, coefs)):
            if i == a:
                continue
            torch.sub(ing.read(name, start, stop), anchor, out=diff)
            if acc is None:
                acc = diff.mul(c)
            else:
                acc.add_(diff, alpha=c)
        total = sum(coefs)
        return anchor * total if acc is None else acc.add_(anchor, alpha=total)

    def _read_integer(self, name: str, start: int, stop: int) -> torch.Tensor:
        first = self.ingredients[0].read(name, start, stop)
        if self.integers == "error":
            for ing in self.ingredients[1:]:
                if not torch.equal(ing.read(name, start, stop), first):
                    raise MismatchError(
                        f"integer tensor {name!r} differs between {self.ingredients[0].source} "
                        f"and {ing.source} (BatchNorm's num_batches_tracked does after runs "
                        "of different lengths). Integer and bool tensors are never averaged: "
                        f"to keep the first ingredient's value pass {option('integers', 'first')}"
                    )
        return first.clone()

    def _nonfinite(self, name: str, start: int, stop: int, spec: TensorSpec) -> NonFiniteError:
        for ing in self.ingredients:
            x = ing.read(name, start, stop)
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                return NonFiniteError(
                    f"{ing.source}: tensor {name!r} holds {bad} NaN/Inf value(s). The "
                    "checkpoint is broken (a diverged run?): leave it out of the soup"
                )
        return NonFiniteError(
            f"tensor {name!r} overflows {spec.dtype} in the combination; write a wider "
            f"dtype ({option('dtype', 'float32')}) or accumulate in float64 "
            f"({option('accumulate', 'float64')})"
        )


def _assemble(ing: Ingredient, name: str, spec: TensorSpec) -> torch.Tensor:
    """Whole tensor from chunked reads (one read when the tensor fits one chunk)."""
    ranges = list(chunk_ranges(spec.numel))
    if len(ranges) == 1:
        return ing.read(name).view(spec.shape)
    out = torch.empty(spec.numel, dtype=spec.dtype)
    for _, start, chunk in stream_chunks(ing, [name]):
        out[start : start + chunk.numel()] = chunk
    return out.view(spec.shape)


def linear_combination(
    ingredients: Sequence[Ingredient], coefficients: Sequence[float], **options
) -> Combination:
    """``sum_i c_i θ_i`` with any real coefficients (task arithmetic); lazy.

    Options are those of `Combination` (``accumulate``, ``dtype``, ``integers``,
    ``check_finite``).
    """
    return Combination(ingredients, coefficients, **options)


def weighted_average(
    ingredients: Sequence[Ingredient], weights: Sequence[float] | None = None, **options
) -> Combination:
    """Average of ingredients, uniform or with ``weights`` (non-negative, summing to 1); lazy.

    Raises `SoupError` when the weights are negative, do not sum to 1 (within 1e-6) or
    do not match the number of ingredients.
    """
    k = len(ingredients)
    if k == 0:
        raise SoupError("no ingredients: give at least one checkpoint")
    w = [1.0 / k] * k if weights is None else check_weights(weights, k)
    return Combination(ingredients, w, **options)


def interpolate(a: Ingredient, b: Ingredient, alpha: float, **options) -> Combination:
    """``(1 - alpha) * a + alpha * b``; exactly ``a`` at 0 and ``b`` at 1; lazy.

    ``alpha`` outside [0, 1] extrapolates (allowed, as WiSE-FT plots do).
    """
    return Combination([a, b], [1.0 - alpha, alpha], **options)


def task_vector(a: Ingredient, base: Ingredient, **options) -> Combination:
    """``a - base`` (the fine-tuning update), kept in the accumulation dtype; lazy.

    The difference of two nearby weights loses most of its bits if cast back to fp16,
    so floating tensors stay in float32 (or ``accumulate``) unless ``dtype`` is given.
    """
    options.setdefault("dtype", options.get("accumulate", torch.float32))
    return Combination([a, base], [1.0, -1.0], **options)
