"""The plane through θ0, θ1, θ2 (an orthonormal basis by Gram–Schmidt) and measures
evaluated on a grid of it: the error landscape of Fig. 2."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..errors import SoupError
from ..ops.arithmetic import Combination
from ..ops.geometry import gram
from .compute import Scorer

# The smallest sine of the angle between θ1-θ0 and θ2-θ0 that counts as a plane. perp² is
# g11 - proj², a difference of two numbers of size g11 = |θ2-θ0|², each a float64 sum of
# millions of products; its rounding error is a few hundred ulps of g11 (measured:
# 2e-14 relative on AVX-512, under 1e-16 on AVX2, for three collinear models), so a sine
# below sqrt(1024 eps) = 4.8e-7 cannot be told from 0 on any CPU.
MIN_SINE = math.sqrt(1024 * torch.finfo(torch.float64).eps)


@dataclass
class Plane:
    """The plane through θ0 (``base``), θ1 and θ2.

    Orthonormal basis by Gram–Schmidt: ``u1 = (θ1-θ0)/|θ1-θ0|``, ``u2`` the normalized
    part of ``θ2-θ0`` orthogonal to u1. The point ``(x, y)`` is ``θ0 + x u1 + y u2``,
    a combination of the three models that `at` streams like any soup. In these
    coordinates θ0 is (0, 0), θ1 is (|θ1-θ0|, 0) and θ2 is (proj, perp).
    """

    base: Ingredient
    first: Ingredient
    second: Ingredient
    length: float  # |θ1 - θ0|
    proj: float  # <θ2 - θ0, u1>
    perp: float  # |θ2 - θ0 - proj u1|

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(0.0, 0.0), (self.length, 0.0), (self.proj, self.perp)]

    def coefficients(self, x: float, y: float) -> tuple[float, float, float]:
        """``(c0, c1, c2)`` with ``θ0 + x u1 + y u2 = c0 θ0 + c1 θ1 + c2 θ2``."""
        c2 = y / self.perp
        c1 = x / self.length - c2 * self.proj / self.length
        return 1.0 - c1 - c2, c1, c2

    def at(self, x: float, y: float, **options: Any) -> Combination:
        """The model at ``(x, y)``, lazily (options as for `Combination`)."""
        return Combination([self.base, self.first, self.second], self.coefficients(x, y), **options)

    def grid(self, n: int, margin: float = 0.2) -> tuple[list[float], list[float]]:
        """``n`` values per axis covering the three points with ``margin`` of each
        extent on every side."""
        if n < 2:
            raise SoupError(f"the grid needs at least 2 points per axis, got {n}")
        xs = [p[0] for p in self.points]
        lo, hi = min(xs), max(xs)
        w = hi - lo
        h = self.perp
        x0, x1 = lo - margin * w, hi + margin * w
        y0, y1 = -margin * h, h + margin * h
        return (
            [x0 + (x1 - x0) * t / (n - 1) for t in range(n)],
            [y0 + (y1 - y0) * t / (n - 1) for t in range(n)],
        )


def plane(
    base: Ingredient, first: Ingredient, second: Ingredient, *, progress: bool = False
) -> Plane:
    """The plane through three models (see `Plane`); one streamed pass over each."""
    g = gram([first, second], base, progress=progress).tolist()
    length = math.sqrt(max(g[0][0], 0.0))
    if length == 0:
        raise SoupError(f"{first.source} equals the base {base.source}: they span no plane")
    proj = g[0][1] / length
    perp = math.sqrt(max(g[1][1] - proj * proj, 0.0))
    # relative to |θ2-θ0|, not an absolute bound: see MIN_SINE
    if perp <= MIN_SINE * math.sqrt(max(g[1][1], 0.0)):
        raise SoupError(
            f"{second.source} lies on the line through {base.source} and {first.source}: "
            "the three models span no plane; pick another model"
        )
    return Plane(base, first, second, length, proj, perp)


@dataclass
class Landscape:
    """Measures on a grid of a `Plane`: ``values[name][row][col]`` at ``(xs[col], ys[row])``."""

    xs: list[float]
    ys: list[float]
    values: dict[str, list[list[float]]]
    points: list[tuple[float, float]]
    labels: list[str]
    seconds_per_point: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def landscape(
    where: Plane,
    measure: Scorer,
    *,
    n: int = 9,
    margin: float = 0.2,
    labels: Sequence[str] = ("θ0", "θ1", "θ2"),
    integers: str = "first",
    progress: bool = False,
) -> Landscape:
    """Evaluate ``measure`` at every point of an n x n grid of the plane.

    One model per grid point: batching points with ``torch.func.vmap`` over stacked
    parameters was measured 3.6-4.1x slower than this loop for the experiment's
    MobileNetV2 on CPU (depthwise convolutions fall back to slow batching rules) and no
    faster for an MLP (benchmarks/bench_landscape.py), so each point is materialized and
    evaluated with the evaluator's cached batches.
    """
    xs, ys = where.grid(n, margin)
    values: dict[str, list[list[float]]] = {}
    t = time.perf_counter()
    bar = tqdm(total=n * n, desc="landscape", disable=not progress, leave=False)
    for r, y in enumerate(ys):
        for x in xs:
            m = measure(materialize(where.at(x, y, integers=integers)))
            for name, v in m.items():
                values.setdefault(name, [[] for _ in ys])[r].append(float(v))
            bar.update()
    bar.close()
    return Landscape(
        xs, ys, values, where.points, list(labels), (time.perf_counter() - t) / (n * n)
    )
