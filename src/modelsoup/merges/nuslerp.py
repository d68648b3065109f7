"""NuSLERP: SLERP of two models (or of their task vectors on a base) at the ratio of
their weights, per row or over the flattened tensor.

As mergekit 0.1.5's ``nuslerp``: with weights w_1, w_2, t = w_2 / (w_1 + w_2) (0.5 when
they sum to under 1e-6). Without a base it interpolates the two models; with one it
interpolates their task vectors tau_i = theta_i - theta0 and adds the result to theta0.
Vectors are the flattened tensor (``flatten``, the default), else each row
(``row_wise``: each column), each normalized by its norm (at least 1e-7); where the two
are parallel (1 - cos² <= 1e-16), linear interpolation. Computed in the inputs' dtype
(``precision="inputs"``, as mergekit) or in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise

EPS = 1e-8


def nuslerp_tensor(
    t: float, a: torch.Tensor, b: torch.Tensor, *, row_wise: bool, flatten: bool
) -> torch.Tensor:
    """Spherical interpolation of ``a`` and ``b`` at ``t`` (see the module)."""
    shape = a.shape
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(a) * unit(b), dim=-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos.square()) <= EPS**2
    theta = torch.acos(torch.where(parallel, 0, cos))
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    out = torch.where(parallel, (1 - t) * a + t * b, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(
    models: Sequence[Ingredient],
    *,
    weights: Sequence[float] | None = None,
    base: Ingredient | None = None,
    row_wise: bool = False,
    flatten: bool = True,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """NuSLERP of two ``models`` (of their task vectors on ``base`` when given); lazy."""
    if len(models) != 2:
        raise SoupError(f"nuslerp merges exactly two models, got {len(models)}")
    w = [1.0, 1.0] if weights is None else [float(x) for x in weights]
    if len(w) != 2:
        raise SoupError(f"{len(w)} weights for 2 models; give one each")
    total = sum(w)
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    opts = {"row_wise": row_wise, "flatten": flatten}

    def fn(name: str, ts: list[torch.Tensor]) -> torch.Tensor:
        if base is None:
            return nuslerp_tensor(t, ts[0], ts[1], **opts)
        return ts[2] + nuslerp_tensor(t, ts[0] - ts[2], ts[1] - ts[2], **opts)

    inputs = [*models, *([base] if base is not None else [])]
    return Tensorwise(inputs, fn, source=f"NuSLERP at t={t:g}", integers=integers,
                      precision=precision)  # fmt: skip
