"""Karcher mean: the point on the unit sphere that minimizes the summed squared geodesic
distance to the models' directions, scaled by their mean norm.

As mergekit 0.1.5's ``karcher``, per tensor with equal weights a_i = 1/k: each tensor
x_i is one vector with norm n_i and direction u_i = x_i / n_i. Directions of norm at most
``tol`` are left out. From the normalized weighted mean of the directions, Riemannian
gradient steps: the tangent sum_i a_i (theta_i / sin theta_i) (u_i - cos theta_i m),
theta_i the angle between m and u_i, moves m along the great circle by its length, until
it is under ``tol`` or after ``max_iter`` steps. The result is (sum_i a_i n_i) m. Norms
are taken in float32 (float64 kept); the rest in the inputs' dtype by default, as mergekit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise


def _norm(x: torch.Tensor, wide: torch.dtype) -> torch.Tensor:
    return torch.linalg.vector_norm(x.to(wide))


def _tangent(m: torch.Tensor, units: list[torch.Tensor], alphas: list[float], tol: float):
    out = torch.zeros_like(m)
    for a, u in zip(alphas, units):
        cos = torch.clamp(torch.dot(m.flatten(), u.flatten()), -1.0, 1.0)
        theta = torch.arccos(cos)
        if theta.item() >= tol:
            out += a * (theta / torch.sin(theta)) * (u - cos * m)
    return out


def karcher_tensor(xs: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """The Karcher mean of one tensor's values in each model (see the module)."""
    if len(xs) == 1:
        return xs[0]
    wide = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    alphas = [1.0 / len(xs)] * len(xs)
    norms = [_norm(x, wide) for x in xs]
    units = [
        torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype) for x, n in zip(xs, norms)
    ]
    kept = [i for i, n in enumerate(norms) if n.item() > tol]
    if not kept:
        return sum(x * 0 for x in xs)
    total = sum(alphas[i] for i in kept)
    weights, directions = [alphas[i] / total for i in kept], [units[i] for i in kept]
    m = torch.zeros_like(directions[0])
    for a, u in zip(weights, directions):
        m += a * u
    size = _norm(m, wide)
    m = directions[0].clone() if size.item() < tol else (m / size).to(m.dtype)
    for _ in range(max_iter):
        step = _tangent(m, directions, weights, tol)
        length = _norm(step, wide)
        if length.item() < tol:
            break
        m = (torch.cos(length) * m + torch.sin(length) * (step / length)).to(m.dtype)
        size = _norm(m, wide)
        if size.item() > tol:
            m = (m / size).to(m.dtype)
    return sum(a * n for a, n in zip(alphas, norms)) * m


def karcher(
    models: Sequence[Ingredient],
    *,
    max_iter: int = 10,
    tol: float = 1e-5,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """The Karcher mean of ``models`` (k >= 2), lazy, one tensor at a time. In float32
    (modelsoup's precision, the default), a tensor equal in every model is that tensor
    bit for bit (`Tensorwise`; ``--keep`` relies on it); with
    ``precision="inputs"`` it is computed as mergekit computes it, rounding included."""

    if max_iter < 0 or not tol >= 0:
        raise SoupError(f"max_iter and tol must be >= 0, got {max_iter} and {tol}")
    return Tensorwise(
        list(models), lambda name, ts: karcher_tensor(ts, max_iter, tol),
        source=f"Karcher mean of {len(models)}", integers=integers, precision=precision,
    )  # fmt: skip
