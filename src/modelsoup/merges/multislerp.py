"""Multi-SLERP: the weighted mean of several models on a hypersphere (barycentric
interpolation through the tangent space at their normalized weighted mean).

Goddard, "Multi-SLERP" (2025), as mergekit 0.1.5's ``multislerp``, per tensor with
vectors x_i (the models, or their task vectors on a base when one is given) and weights
w_i (divided by their sum with ``normalize_weights``): the directions u_i = x_i /
(|x_i| + eps); their weighted mean m, normalized; the tangent vectors u_i - <u_i, m> m,
weighted and summed into v; the exponential map back, m cos|v| + v sin|v| / |v| (|v|
plus eps); times sum_i w_i |x_i|, plus the base. Two models whose weighted directions
cancel are interpolated linearly; more are refused. Computed in the inputs' dtype
(``precision="inputs"``, as mergekit) or in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise


def multislerp_tensor(
    name: str, xs: list[torch.Tensor], w: list[float], normalize_weights: bool, eps: float
) -> torch.Tensor:
    """Multi-SLERP of one tensor's values ``xs`` (see the module)."""
    if len(xs) == 1:
        return xs[0]
    x = torch.stack(xs, dim=0)
    flat = x.view(x.shape[0], -1)
    weights = torch.tensor(w, dtype=x.dtype)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    size = torch.norm(mean)
    if size < eps:
        if len(xs) != 2:
            raise SoupError(
                f"multislerp: the weighted directions of tensor {name!r} cancel out "
                "(opposite models with balancing weights): change the weights"
            )
        return (x[0] * weights[0] + x[1] * weights[1]).view(x.shape[1:])
    mean = mean / size
    tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * weights.view(-1, 1)).sum(0)
    length = torch.norm(tangent) + eps
    out = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    return (out * (norms.squeeze(-1) * weights).sum()).view(x.shape[1:])


def multislerp(
    models: Sequence[Ingredient],
    *,
    weights: Sequence[float] | None = None,
    base: Ingredient | None = None,
    normalize_weights: bool = True,
    eps: float = 1e-8,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """Multi-SLERP of ``models`` (of their task vectors on ``base`` when given); lazy."""
    w = [1.0] * len(models) if weights is None else [float(v) for v in weights]
    if len(w) != len(models):
        raise SoupError(f"{len(w)} weights for {len(models)} models; give one each")

    def fn(name: str, ts: list[torch.Tensor]) -> torch.Tensor:
        if base is None or len(models) == 1:  # one model: itself, as mergekit
            return multislerp_tensor(name, ts, w, normalize_weights, eps)
        theta0 = ts[-1]
        taus = [t - theta0 for t in ts[:-1]]
        return multislerp_tensor(name, taus, w, normalize_weights, eps) + theta0

    inputs = [*models, *([base] if base is not None else [])]
    return Tensorwise(inputs, fn, source=f"Multi-SLERP of {len(models)}", integers=integers,
                      precision=precision)  # fmt: skip
